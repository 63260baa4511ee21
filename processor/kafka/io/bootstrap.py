"""Starting an aiokafka client, with a failed bootstrap explained on one line.

:func:`start_client` turns a bootstrap that failed on every server into one
:class:`~processor.errors.KafkaAccessError` line naming the server and the cause (SASL
authentication, TLS verification, a security protocol mismatch, an unreachable server):
aiokafka itself only logs each server's failure and raises a bare "Unable to bootstrap".
:func:`describe_connection_failure` and :func:`describe_bootstrap_failure` are the pure
wording of those lines; a server's own text is withheld when it holds a secret setting
(:mod:`processor.kafka.io.redaction`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import errors as kafka_errors

from processor.errors import KafkaAccessError
from processor.kafka.io.redaction import scrub_secrets, secret_values

__all__ = [
    "BootstrapFailure",
    "describe_bootstrap_failure",
    "describe_connection_failure",
    "start_client",
]

log = logging.getLogger(__name__)

#: What aiokafka logs (logger ``aiokafka``, arguments host, port, exception) for each
#: bootstrap server that failed, before it raises a KafkaConnectionError without the cause.
_BOOTSTRAP_LOG_MESSAGES: Final = frozenset(
    {'Unable connect to "%s:%s": %s', 'Unable to request metadata from "%s:%s": %s'}
)
_AIOKAFKA_LOGGER: Final = "aiokafka"
#: Raised by a TLS peer that is not one: the server closed the socket on the ClientHello.
_CLOSED_ERRORS: Final = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    asyncio.IncompleteReadError,
)

#: A listener that closes the connection on a client's first request after connecting with
#: this security protocol probably expects what follows.
_LIKELY_EXPECTED: Final = {
    "PLAINTEXT": "TLS or SASL",
    "SSL": "SASL (security_protocol SASL_SSL)",
    "SASL_PLAINTEXT": "TLS (security_protocol SASL_SSL)",
}


@dataclass(frozen=True)
class BootstrapFailure:
    """One bootstrap server's failure, as aiokafka met it."""

    host: str
    port: int
    error: BaseException


class _BootstrapFailures(logging.Filter):
    """Collects aiokafka's per-server bootstrap failure records and keeps them off the log
    (the failure is reported once, explained, by :func:`start_client`)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[BootstrapFailure] = []

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg in _BOOTSTRAP_LOG_MESSAGES and isinstance(args, tuple) and len(args) == 3:
            host, port, error = args
            if not isinstance(error, BaseException):
                error = RuntimeError(str(error))
            if not isinstance(port, int | str) or not str(port).isdigit():
                return True  # not the record this filter knows: let it through
            self.failures.append(BootstrapFailure(str(host), int(port), error))
            return False
        return True


def _text(error: BaseException) -> str:
    """The error's own text on one line: a broker's message without aiokafka's
    ``[Error N] Name:`` prefix, else ``str()``, else the type's name."""
    if isinstance(error, kafka_errors.BrokerResponseError) and error.args:
        first = error.args[0]
        text = first if isinstance(first, str) else ""
    else:
        text = str(error)
    text = " ".join(text.split())
    return text or type(error).__name__


def describe_connection_failure(
    host: str,
    port: int,
    error: BaseException,
    client_kw: Mapping[str, Any],
    cafile: str | None = None,
    secrets: Collection[str] = (),
) -> str:
    """One line saying why connecting to ``host:port`` failed, with what to check.

    ``error`` is what aiokafka met on that server; ``client_kw`` the client's keyword
    arguments (security protocol, SASL mechanism and user: never the password); ``cafile``
    the ``ssl_cafile`` option if one was given. The error's own text (which comes from
    outside: a server could quote what it was sent) is withheld if it holds any of
    ``secrets``; the line's own wording is never touched, so a short or guessable password
    cannot be revealed by the gaps a scrub would leave there. Pure.
    """
    where = f"{host}:{port}"
    protocol = str(client_kw.get("security_protocol") or "PLAINTEXT").upper()
    mechanism = client_kw.get("sasl_mechanism") or "PLAIN"
    user = client_kw.get("sasl_plain_username")
    tls = protocol in ("SSL", "SASL_SSL")
    text = scrub_secrets(_text(error), secrets)
    if isinstance(error, kafka_errors.SaslAuthenticationFailed):
        who = f" as user {user!r}" if user else ""
        return f"Kafka authentication failed at {where} (SASL {mechanism}{who}): {text}"
    if isinstance(error, kafka_errors.UnsupportedSaslMechanismError):
        return f"Kafka at {where} refused SASL mechanism {mechanism}: {text} (check sasl_mechanism)"
    if isinstance(error, kafka_errors.IllegalSaslStateError):
        return (
            f"Kafka at {where} did not expect a SASL handshake (security_protocol {protocol}): "
            "the listener on that port is not a SASL one; check security_protocol and the port"
        )
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or text
        if error.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            hint = "connect by a name or address the broker's certificate lists"
        elif cafile:
            hint = f"check ssl_cafile: {cafile} does not hold the CA of the broker's certificate"
        else:
            hint = "check ssl_cafile: none given, so the system's CAs were used"
        return f"TLS certificate verification failed at {where}: {detail} ({hint})"
    if isinstance(error, ssl.SSLError):
        return (
            f"TLS handshake failed at {where}: {text} (is it a TLS listener? check "
            f"security_protocol {protocol} and the port)"
        )
    if tls and isinstance(error, _CLOSED_ERRORS):
        return (
            f"Kafka at {where} closed the connection during the TLS handshake: the listener on "
            f"that port is probably not a TLS one (security_protocol {protocol}); check "
            "security_protocol and the port"
        )
    if isinstance(error, (kafka_errors.KafkaConnectionError, EOFError, *_CLOSED_ERRORS)):
        expects = _LIKELY_EXPECTED.get(protocol, "another security protocol")
        return (
            f"Kafka at {where} closed the connection on the first request (security_protocol "
            f"{protocol}): the listener on that port probably expects {expects}; check "
            "security_protocol and the port"
        )
    if isinstance(error, ConnectionRefusedError):
        return (
            f"cannot connect to Kafka at {where}: connection refused (is a broker listening there?)"
        )
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the Kafka host {host!r}: {text}"
    if isinstance(error, TimeoutError):
        timeout = client_kw.get("request_timeout_ms", 40_000)
        return (
            f"no answer from Kafka at {where} within request_timeout_ms={timeout} "
            f"(security_protocol {protocol}: a listener expecting another protocol may stay "
            "silent)"
        )
    return f"cannot connect to Kafka at {where}: {type(error).__name__}: {text}"


def describe_bootstrap_failure(
    failures: Sequence[BootstrapFailure],
    client_kw: Mapping[str, Any],
    cafile: str | None = None,
    secrets: Collection[str] = (),
) -> str:
    """One line for a bootstrap that failed on every server: each server's cause (the same
    cause once), with ``secrets`` scrubbed from the servers' own texts (see
    :func:`describe_connection_failure`). Pure."""
    if not failures:
        servers = client_kw.get("bootstrap_servers")
        return f"cannot bootstrap from Kafka at {servers}: no server answered"
    lines = [
        describe_connection_failure(f.host, f.port, f.error, client_kw, cafile, secrets)
        for f in failures
    ]
    return "; ".join(dict.fromkeys(lines))


def _cafile(options: Mapping[str, Any] | None) -> str | None:
    """The ``ssl_cafile`` pseudo-option (or a client-prefixed one) of ``options``."""
    for key in ("ssl_cafile", "consumer.ssl_cafile", "producer.ssl_cafile"):
        value = (options or {}).get(key)
        if value:
            return str(value)
    return None


async def start_client(
    client: Any, client_kw: Mapping[str, Any], options: Mapping[str, Any] | None = None
) -> None:
    """``await client.start()`` (an aiokafka producer, consumer or admin client built from
    ``client_kw``; ``options`` are the Kafka options it was built from, for the messages).

    When the bootstrap fails on every server (aiokafka's ``Unable to bootstrap``), the client
    is stopped and :class:`KafkaAccessError` says why, on one line
    (:func:`describe_bootstrap_failure`); aiokafka's own per-server error lines are kept off
    the log. Any other failure of ``start`` propagates as it is, after the client is stopped.
    Servers that failed before another one answered are logged as one WARNING each.

    The per-server lines are caught by a filter on the process-wide ``aiokafka`` logger
    while this start runs: two clients starting at once in one process may each collect the
    other's lines (only the wording of a failure can suffer, never its detection).
    """
    catcher = _BootstrapFailures()
    aiokafka_log = logging.getLogger(_AIOKAFKA_LOGGER)
    aiokafka_log.addFilter(catcher)
    cafile, secrets = _cafile(options), secret_values(client_kw, options)
    try:
        await client.start()
    except kafka_errors.KafkaConnectionError as exc:
        await _stop_quietly(client)
        if "Unable to bootstrap" in str(exc):
            raise KafkaAccessError(
                describe_bootstrap_failure(catcher.failures, client_kw, cafile, secrets)
            ) from None
        _warn_failed_servers(catcher.failures, client_kw, cafile, secrets)
        raise
    except BaseException:
        await _stop_quietly(client)
        raise
    finally:
        aiokafka_log.removeFilter(catcher)
    _warn_failed_servers(catcher.failures, client_kw, cafile, secrets)


def _warn_failed_servers(
    failures: Sequence[BootstrapFailure],
    client_kw: Mapping[str, Any],
    cafile: str | None,
    secrets: Collection[str],
) -> None:
    for f in failures:
        log.warning(
            "bootstrap server failed, another one answered: %s",
            describe_bootstrap_failure([f], client_kw, cafile, secrets),
        )


async def _stop_quietly(client: Any) -> None:
    """Stop a client whose start failed (producer/consumer ``stop``, admin ``close``), so no
    "Unclosed" warning follows the error line; a stand-in without either is left alone."""
    stop = getattr(client, "stop", None) or getattr(client, "close", None)
    if stop is None:
        return
    try:
        await stop()
    except Exception as exc:  # the start's failure is the one to report
        log.debug("stopping a client that failed to start: %r", exc)
