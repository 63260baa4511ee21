"""Kafka client options: pass-through settings -> aiokafka constructor keyword arguments.

Options are not re-modelled: each key is an ``AIOKafkaConsumer``/``AIOKafkaProducer``
keyword. A plain key goes to every client whose constructor accepts it (an option neither
accepts is a :class:`ConfigError`, so a typo cannot be silently ignored); ``consumer.KEY``
or ``producer.KEY`` targets one client. String values (from flags and the environment) are
converted to the type of the keyword's default (int, float, bool).

Four pseudo-options build the ``ssl_context`` aiokafka needs (it takes no file paths):
``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password`` (the key's passphrase).

The processor owns a few keywords (group membership, manual commits, serializers) and
refuses overrides of those. ``rebalance_timeout_ms`` defaults to the drain timeout plus
:data:`REBALANCE_MARGIN_MS` (see :func:`client_kwargs`).

Starting a client (:func:`start_client`) turns a failed bootstrap into one
:class:`~processor.errors.KafkaAccessError` line naming the server and the cause (SASL
authentication, TLS verification, a security protocol mismatch, an unreachable server):
aiokafka itself only logs each server's failure and raises a bare "Unable to bootstrap".
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.helpers import create_ssl_context

from processor.config.declare import REDACTED, is_secret_option, parse_bool, split_assignment
from processor.errors import ConfigError, KafkaAccessError

__all__ = [
    "CONSUMER_DEFAULTS",
    "METADATA_MAX_AGE_MS",
    "PRODUCER_DEFAULTS",
    "REBALANCE_MARGIN_MS",
    "BootstrapFailure",
    "client_kwargs",
    "describe_bootstrap_failure",
    "describe_connection_failure",
    "parse_bool",
    "secret_values",
    "split_kafka_option",
    "start_client",
]

log = logging.getLogger(__name__)

#: Metadata refresh interval of both clients (aiokafka's default: 5 minutes). The consumer
#: learns of new partitions of its input topics, and of input topics that appear, only on a
#: refresh, so a short interval lets it pick them up within seconds; a refresh is one small
#: request to one broker.
METADATA_MAX_AGE_MS: Final = 5_000

#: Consumer defaults of the processor (overridable): manual commits are required for the
#: at-least-once guarantee, so enable_auto_commit is not overridable at all.
CONSUMER_DEFAULTS: Final[dict[str, Any]] = {
    "auto_offset_reset": "earliest",  # a new group processes the topic from the start
    "isolation_level": "read_committed",  # never process inputs of aborted transactions
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 1_000,  # notice rebalances quickly (a member joined/left)
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "metadata_max_age_ms": METADATA_MAX_AGE_MS,
}

#: Producer defaults: acks=all so that an acknowledged output survives a broker failure
#: (offsets are committed on that acknowledgement); a little linger and large batches
#: because outputs are sent in bursts of a whole engine batch.
PRODUCER_DEFAULTS: Final[dict[str, Any]] = {
    "acks": "all",
    "linger_ms": 5,
    "max_batch_size": 512 * 1024,
    "max_request_size": 8 * 1024 * 1024,
    "metadata_max_age_ms": METADATA_MAX_AGE_MS,
}

#: rebalance_timeout_ms = drain timeout + this: on revocation the processor waits up to the
#: drain timeout for in-flight work before it commits and rejoins, and the group coordinator
#: must not give up on it (and fence it out of the generation) before that wait ends.
REBALANCE_MARGIN_MS: Final = 15_000

_OWNED: Final = frozenset(
    {
        "bootstrap_servers",
        "group_id",
        "enable_auto_commit",
        "key_serializer",
        "value_serializer",
        "key_deserializer",
        "value_deserializer",
        "transactional_id",
        "transaction_timeout_ms",  # --transaction-timeout-ms
        "loop",
        "topics",
        "partitioner",
    }
)
_SSL_PSEUDO: Final = {
    "ssl_cafile": "cafile",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_password": "password",
}


def split_kafka_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a ``--kafka-option`` flag -> (stripped key, value as given);
    :class:`ConfigError` without ``=`` or with an empty key. ``run`` parses its flags the
    same way (:func:`processor.config.declare.split_assignment`)."""
    return split_assignment(text, "--kafka-option")


def _params(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls)  # the constructor's keywords (without self)
    return {n: p for n, p in sig.parameters.items() if n != "self"}


_CONSUMER_PARAMS: Final = _params(AIOKafkaConsumer)
_PRODUCER_PARAMS: Final = _params(AIOKafkaProducer)


def _convert(name: str, value: Any, param: inspect.Parameter) -> Any:
    """``name`` is the keyword (for messages and the ``acks`` special case)."""
    # Strings become the type of the keyword's default; typed (TOML) values pass as they are.
    if not isinstance(value, str):
        return value
    default = param.default
    try:
        if isinstance(default, bool):
            return parse_bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError as exc:
        raise ConfigError(f"Kafka option {param.name}={value!r}: {exc}") from None
    if name == "acks" and value.strip().lstrip("-").isdigit():
        return int(value)
    if default is None and value.strip().isdigit():
        return int(value)  # e.g. max_poll_records, rebalance_timeout_ms
    return value


def client_kwargs(
    bootstrap_servers: str,
    group_id: str,
    options: Mapping[str, Any],
    *,
    drain_timeout: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(consumer kwargs, producer kwargs) for the processor's two clients.

    With ``drain_timeout`` (seconds the processor may wait for in-flight work when its
    partitions are revoked), the consumer's ``rebalance_timeout_ms`` defaults to it plus
    :data:`REBALANCE_MARGIN_MS`; one given in ``options`` must exceed it.

    Raises :class:`ConfigError` for an unknown option, a keyword the processor owns, a
    value of the wrong type, or a ``rebalance_timeout_ms`` not above the drain timeout.
    """
    consumer: dict[str, Any] = dict(CONSUMER_DEFAULTS)
    producer: dict[str, Any] = dict(PRODUCER_DEFAULTS)
    ssl: dict[str, dict[str, Any]] = {"consumer": {}, "producer": {}}
    for raw_key, value in options.items():
        target, _, key = raw_key.rpartition(".")
        if target not in ("", "consumer", "producer"):
            raise ConfigError(
                f"Kafka option {raw_key!r}: prefix must be 'consumer.' or 'producer.'"
            )
        targets = ("consumer", "producer") if not target else (target,)
        if key in _OWNED:
            raise ConfigError(f"Kafka option {raw_key!r} is set by lstm-stream itself")
        if key in _SSL_PSEUDO:
            for t in targets:
                ssl[t][_SSL_PSEUDO[key]] = value
            continue
        used = False
        for t, params, kwargs in (
            ("consumer", _CONSUMER_PARAMS, consumer),
            ("producer", _PRODUCER_PARAMS, producer),
        ):
            if t in targets and key in params:
                kwargs[key] = _convert(key, value, params[key])
                used = True
        if not used:
            who = " and ".join(targets)
            raise ConfigError(f"Kafka option {raw_key!r} is not an aiokafka {who} option")
    for t, kwargs in (("consumer", consumer), ("producer", producer)):
        if ssl[t]:
            if "ssl_context" in kwargs:
                raise ConfigError("give either ssl_context or ssl_* file options, not both")
            try:
                kwargs["ssl_context"] = create_ssl_context(**ssl[t])
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot build the SSL context: {exc}") from None
    if drain_timeout is not None:
        drain_ms = int(drain_timeout * 1000)
        given = consumer.get("rebalance_timeout_ms")
        if given is None:
            consumer["rebalance_timeout_ms"] = drain_ms + REBALANCE_MARGIN_MS
        elif not isinstance(given, int) or isinstance(given, bool) or given <= drain_ms:
            raise ConfigError(
                f"Kafka option rebalance_timeout_ms={given!r} must be an integer above the "
                f"drain timeout ({drain_ms} ms): on revocation the processor waits up to the "
                "drain timeout before it rejoins the group, and the coordinator would evict "
                f"it first (default: drain timeout + {REBALANCE_MARGIN_MS} ms)"
            )
    consumer.update(bootstrap_servers=bootstrap_servers, group_id=group_id)
    consumer["enable_auto_commit"] = False
    producer["bootstrap_servers"] = bootstrap_servers
    return consumer, producer


# ---- start-up failures ------------------------------------------------------------------------

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
    text = _scrub(_text(error), secrets)
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


def secret_values(*sources: Mapping[str, Any] | None) -> list[str]:
    """The values of every secret option (:func:`processor.config.declare.is_secret_option`, with or
    without a ``consumer.``/``producer.`` prefix) in ``sources``: client keyword arguments
    and the Kafka options they were built from (``ssl_password`` only exists there)."""
    return [
        str(value)
        for source in sources
        for name, value in (source or {}).items()
        if is_secret_option(name) and isinstance(value, str) and value
    ]


def _scrub(text: str, secrets: Collection[str]) -> str:
    """``text``, or a stand-in when it contains any of ``secrets``: the whole text is
    withheld rather than the secret cut out, because the gaps a cut leaves would show where
    (and so what) a short secret is."""
    if any(secret and secret in text for secret in secrets):
        return f"{REDACTED} (the server's message is withheld: it holds a secret setting's value)"
    return text


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
