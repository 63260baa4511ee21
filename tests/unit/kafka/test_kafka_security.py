"""Secured Kafka, without a broker: how a refused connection becomes one error line, and how
``produce`` and ``tail`` take the Kafka options ``run`` takes.

* :func:`describe_connection_failure` names the cause of each kind of failure aiokafka meets
  (SASL authentication, TLS verification, a security protocol mismatch, an unreachable
  server) and what to check, and never the password;
* :func:`start_client` turns aiokafka's bare "Unable to bootstrap" into that line and keeps
  aiokafka's own per-server error records off the log (checked with a real aiokafka client
  against a closed local port, so a change of aiokafka's records shows up here);
* the commands exit with :attr:`KafkaAccessError.exit_code` and print one line;
* ``produce``/``tail`` read ``LSTM_STREAM_KAFKA_*`` and a TOML ``[kafka]`` table with
  ``run``'s precedence, and ``--help`` never shows the variables' values.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors

from processor import cli
from processor.errors import ConfigError, KafkaAccessError
from processor.kafka import command as run_command
from processor.kafka.command import run_until_signalled
from processor.kafka.io.bootstrap import (
    BootstrapFailure,
    describe_bootstrap_failure,
    describe_connection_failure,
    start_client,
)
from processor.kafka.io.clients import client_kwargs
from processor.kafka.io.redaction import secret_values
from processor.kafka.tools import flags as tool_flags
from processor.kafka.tools import produce as produce_tool
from processor.kafka.tools import tail as tail_tool

#: The module of each Kafka tool; its library function has the command's name.
TOOLS = {"produce": produce_tool, "tail": tail_tool}

SASL_KW: dict[str, Any] = {
    "bootstrap_servers": "kafka:9094",
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "svc",
    "sasl_plain_password": "s3cret-pw",
}


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    return error


# ---- one line per cause --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kw", "cafile", "expected"),
    [
        (
            kafka_errors.SaslAuthenticationFailed("Authentication failed: invalid credentials"),
            SASL_KW,
            None,
            "Kafka authentication failed at kafka:9094 (SASL SCRAM-SHA-512 as user 'svc'): "
            "Authentication failed: invalid credentials",
        ),
        (
            _verify_error(20, "unable to get local issuer certificate"),
            SASL_KW,
            "/etc/ca.pem",
            "TLS certificate verification failed at kafka:9094: unable to get local issuer "
            "certificate (check ssl_cafile: /etc/ca.pem does not hold the CA of the broker's "
            "certificate)",
        ),
        (
            _verify_error(20, "unable to get local issuer certificate"),
            SASL_KW,
            None,
            "TLS certificate verification failed at kafka:9094: unable to get local issuer "
            "certificate (check ssl_cafile: none given, so the system's CAs were used)",
        ),
        (
            _verify_error(62, "Hostname mismatch, certificate is not valid for 'kafka'."),
            SASL_KW,
            "/etc/ca.pem",
            "TLS certificate verification failed at kafka:9094: Hostname mismatch, certificate "
            "is not valid for 'kafka'. (connect by a name or address the broker's certificate "
            "lists)",
        ),
        (
            ConnectionResetError(),
            SASL_KW,
            None,
            "Kafka at kafka:9094 closed the connection during the TLS handshake: the listener "
            "on that port is probably not a TLS one (security_protocol SASL_SSL); check "
            "security_protocol and the port",
        ),
        (
            kafka_errors.KafkaConnectionError("Connection at kafka:9094 closed"),
            {"bootstrap_servers": "kafka:9094"},
            None,
            "Kafka at kafka:9094 closed the connection on the first request (security_protocol "
            "PLAINTEXT): the listener on that port probably expects TLS or SASL; check "
            "security_protocol and the port",
        ),
        (
            kafka_errors.KafkaConnectionError("Connection at kafka:9094 closed"),
            {**SASL_KW, "security_protocol": "SSL"},
            None,
            "Kafka at kafka:9094 closed the connection on the first request (security_protocol "
            "SSL): the listener on that port probably expects SASL (security_protocol "
            "SASL_SSL); check security_protocol and the port",
        ),
        (
            kafka_errors.IllegalSaslStateError(object()),
            {**SASL_KW, "security_protocol": "SASL_PLAINTEXT"},
            None,
            "Kafka at kafka:9094 did not expect a SASL handshake (security_protocol "
            "SASL_PLAINTEXT): the listener on that port is not a SASL one; check "
            "security_protocol and the port",
        ),
        (
            kafka_errors.UnsupportedSaslMechanismError("enabled: [PLAIN]"),
            SASL_KW,
            None,
            "Kafka at kafka:9094 refused SASL mechanism SCRAM-SHA-512: enabled: [PLAIN] "
            "(check sasl_mechanism)",
        ),
        (
            ConnectionRefusedError(111, "Connect call failed"),
            SASL_KW,
            None,
            "cannot connect to Kafka at kafka:9094: connection refused (is a broker listening "
            "there?)",
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            SASL_KW,
            None,
            "cannot resolve the Kafka host 'kafka': [Errno -2] Name or service not known",
        ),
        (
            TimeoutError(),
            {**SASL_KW, "request_timeout_ms": 5000},
            None,
            "no answer from Kafka at kafka:9094 within request_timeout_ms=5000 "
            "(security_protocol SASL_SSL: a listener expecting another protocol may stay "
            "silent)",
        ),
        (
            ValueError("odd"),
            SASL_KW,
            None,
            "cannot connect to Kafka at kafka:9094: ValueError: odd",
        ),
    ],
    ids=[
        "sasl-auth-failed",
        "untrusted-ca-given",
        "untrusted-no-cafile",
        "hostname-mismatch",
        "tls-to-plaintext-listener",
        "plaintext-to-secured-listener",
        "ssl-to-sasl-listener",
        "sasl-to-plain-listener",
        "unsupported-mechanism",
        "refused",
        "unresolvable",
        "timeout",
        "other",
    ],
)
def test_each_cause_is_one_line_with_what_to_check(
    error: BaseException, kw: dict[str, Any], cafile: str | None, expected: str
) -> None:
    line = describe_connection_failure("kafka", 9094, error, kw, cafile)
    assert line == expected
    assert "\n" not in line and "s3cret-pw" not in line


def test_every_server_is_named_once_per_cause_and_the_password_never() -> None:
    auth = kafka_errors.SaslAuthenticationFailed("bad credentials for s3cret-pw")
    failures = [
        BootstrapFailure("a", 1, auth),
        BootstrapFailure("b", 2, ConnectionRefusedError()),
        BootstrapFailure("b", 2, ConnectionRefusedError()),
    ]
    line = describe_bootstrap_failure(failures, SASL_KW, secrets=secret_values(SASL_KW))
    assert line == (
        "Kafka authentication failed at a:1 (SASL SCRAM-SHA-512 as user 'svc'): *** (the "
        "server's message is withheld: it holds a secret setting's value); cannot connect to "
        "Kafka at b:2: connection refused (is a broker listening there?)"
    )
    assert describe_bootstrap_failure([], SASL_KW) == (
        "cannot bootstrap from Kafka at kafka:9094: no server answered"
    )


@pytest.mark.parametrize("password", ["a", "svc", "Kafka"])
def test_a_short_or_guessable_password_leaves_the_line_intact(password: str) -> None:
    """Only the server's own text is withheld (whole, not cut): a password that is a letter,
    the user name or a word of the line must not punch tell-tale gaps into the line."""
    kw = {**SASL_KW, "sasl_plain_password": password}
    auth = kafka_errors.SaslAuthenticationFailed(f"invalid credentials ({password})")
    line = describe_bootstrap_failure(
        [BootstrapFailure("kafka", 9094, auth)], kw, secrets=secret_values(kw)
    )
    assert line == (
        "Kafka authentication failed at kafka:9094 (SASL SCRAM-SHA-512 as user 'svc'): *** "
        "(the server's message is withheld: it holds a secret setting's value)"
    )


def test_secret_values_come_from_the_options_too() -> None:
    """``ssl_password`` never reaches the client's keywords (it unlocks the ssl_context), and
    an option may target one client; both are secrets to scrub."""
    options = {"ssl_password": "key-pass", "consumer.sasl_plain_password": "c-pw", "acks": "all"}
    assert sorted(secret_values(SASL_KW, options)) == ["c-pw", "key-pass", "s3cret-pw"]


# ---- start_client: aiokafka's bootstrap failure explained ------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on return: nothing listens there


async def test_a_failed_bootstrap_is_one_explained_error_and_aiokafka_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _closed_port()
    _, producer_kw = client_kwargs(f"127.0.0.1:{port}", "unused", {})

    class Producer(AIOKafkaProducer):
        """The real producer, recording that it was stopped."""

        stopped = False

        async def stop(self) -> None:
            self.stopped = True
            await super().stop()

    producer = Producer(**producer_kw)
    with caplog.at_level(logging.DEBUG), pytest.raises(KafkaAccessError) as raised:
        await start_client(producer, producer_kw)
    assert str(raised.value) == (
        f"cannot connect to Kafka at 127.0.0.1:{port}: connection refused (is a broker "
        "listening there?)"
    )
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    assert producer.stopped  # no "Unclosed AIOKafkaProducer" later


async def test_the_filter_is_removed_after_the_start() -> None:
    port = _closed_port()
    _, producer_kw = client_kwargs(f"127.0.0.1:{port}", "unused", {})
    before = list(logging.getLogger("aiokafka").filters)
    with pytest.raises(KafkaAccessError):
        await start_client(AIOKafkaProducer(**producer_kw), producer_kw)
    assert logging.getLogger("aiokafka").filters == before


class _Client:
    """A stand-in client: ``start`` raises ``error``; records whether it was stopped."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.stopped = False

    async def start(self) -> None:
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), kafka_errors.KafkaConnectionError("broken later")],
    ids=["other-error", "connection-error-after-bootstrap"],
)
async def test_other_start_failures_pass_through_after_a_stop(error: BaseException) -> None:
    client = _Client(error)
    with pytest.raises(type(error)) as raised:
        await start_client(client, SASL_KW)
    assert raised.value is error and client.stopped


async def test_a_later_failure_is_not_blamed_on_a_server_that_failed_before_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Server a failed, b answered, then start failed for another reason: that error
    propagates as it is, and a's failure is only a warning."""
    later = kafka_errors.KafkaConnectionError("Connection at b:2 closed")

    class Client(_Client):
        async def start(self) -> None:
            logging.getLogger("aiokafka").error(
                'Unable connect to "%s:%s": %s', "a", 1, ConnectionRefusedError()
            )
            raise later

    client = Client(None)
    with caplog.at_level(logging.WARNING), pytest.raises(kafka_errors.KafkaConnectionError) as e:
        await start_client(client, SASL_KW)
    assert e.value is later and client.stopped
    assert [r.getMessage() for r in caplog.records] == [
        "bootstrap server failed, another one answered: cannot connect to Kafka at a:1: "
        "connection refused (is a broker listening there?)"
    ]


async def test_a_started_client_is_left_running() -> None:
    client = _Client(None)
    await start_client(client, SASL_KW)
    assert not client.stopped


async def test_earlier_servers_failures_are_warnings_when_a_later_one_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Client(_Client):
        async def start(self) -> None:
            logging.getLogger("aiokafka").error(
                'Unable connect to "%s:%s": %s', "a", 1, ConnectionRefusedError()
            )

    with caplog.at_level(logging.WARNING):
        await start_client(Client(None), SASL_KW)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "processor.kafka.io.bootstrap",
            "WARNING",
            "bootstrap server failed, another one answered: cannot connect to Kafka at a:1: "
            "connection refused (is a broker listening there?)",
        )
    ]


# ---- the commands: exit code and one line ---------------------------------------------------


@pytest.mark.parametrize("command", ["produce", "tail"])
def test_the_tools_print_one_line_and_exit_3(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise KafkaAccessError("Kafka authentication failed at k:1 (SASL PLAIN): no")

    for name in [n for n in os.environ if n.startswith("LSTM_STREAM_")]:
        monkeypatch.delenv(name)  # an ambient settings file or option would change the outcome
    rc = TOOLS[command].main(_tool_args(command, ["--bootstrap-servers", "k:1"]), run=refused)
    captured = capsys.readouterr()
    assert rc == KafkaAccessError.exit_code == 3
    assert (
        captured.err
        == f"lstm-stream {command}: Kafka authentication failed at k:1 (SASL PLAIN): no\n"
    )
    assert captured.out == ""


def test_run_prints_one_line_and_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Refused:
        def __init__(self, settings: Any) -> None:
            pass

        async def run(self, stop_event: Any = None) -> Any:
            raise KafkaAccessError("TLS certificate verification failed at k:1: x (y)")

    async def serve(settings: Any) -> int:
        return await run_until_signalled(settings, processor_factory=Refused)

    for name in [n for n in os.environ if n.startswith("LSTM_STREAM_")]:
        monkeypatch.delenv(name)
    parser, _ = cli.command_parser("run")
    args = parser.parse_args(
        ["--bootstrap-servers", "k:1", "--input-topic", "i", "--output-topic", "o",
         "--model", "m.keras", "--log-level", "WARNING"]
    )  # fmt: skip
    root = logging.getLogger()
    level = root.level
    try:
        rc = run_command.main(args, serve=serve)
    finally:
        root.setLevel(level)
    captured = capsys.readouterr()
    assert rc == 3
    assert captured.err.splitlines()[-1:] == [
        "lstm-stream run: TLS certificate verification failed at k:1: x (y)"
    ]
    assert "Traceback" not in captured.err


# ---- produce/tail: the Kafka options from run's sources ------------------------------------


def _tool_args(command: str, argv: list[str]) -> argparse.Namespace:
    parser, _ = cli.command_parser(command)
    return parser.parse_args(["--topic", "t", *argv])


@pytest.mark.parametrize("command", ["produce", "tail"])
def test_flags_over_variables_over_the_file_key_by_key(command: str, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        'output-topic = "run-only keys are ignored here"\n'
        "[kafka]\n"
        'security_protocol = "SASL_SSL"\n'
        'sasl_plain_username = "from-file"\n'
        'sasl_plain_password = "file-pw"\n'
        "[kafka.consumer]\n"
        "fetch_max_wait_ms = 51\n"
    )
    env = {
        "LSTM_STREAM_KAFKA_SASL_PLAIN_USERNAME": "from-env",
        "LSTM_STREAM_KAFKA_SASL_PLAIN_PASSWORD": "env-pw",
        "LSTM_STREAM_KAFKA_PRODUCER__LINGER_MS": "7",
        "LSTM_STREAM_OTHER": "ignored",
    }
    args = _tool_args(
        command, ["--config", str(config), "--kafka-option", "sasl_plain_password=flag-pw"]
    )
    assert tool_flags.kafka_options_from(args, env) == {
        "consumer.fetch_max_wait_ms": 51,
        "producer.linger_ms": "7",
        "sasl_plain_password": "flag-pw",
        "sasl_plain_username": "from-env",
        "security_protocol": "SASL_SSL",
    }


def test_the_file_can_come_from_the_variable_run_reads(tmp_path: Path) -> None:
    from processor.kafka.settings import CONFIG_ENV

    config = tmp_path / "run.toml"
    config.write_text('[kafka]\nsecurity_protocol = "SSL"\n')
    args = _tool_args("tail", [])
    assert tool_flags.kafka_options_from(args, {CONFIG_ENV: str(config)}) == {
        "security_protocol": "SSL"
    }
    assert tool_flags.kafka_options_from(args, {}) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('kafka = "SASL_SSL"\n', "'kafka' must be a table"),
        ("[kafka\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        tool_flags.kafka_options_from(_tool_args("produce", ["--config", str(config)]), {})
    with pytest.raises(ConfigError, match="cannot read config file"):
        tool_flags.kafka_options_from(_tool_args("produce", ["--config", str(tmp_path / "no")]), {})


@pytest.mark.parametrize("command", ["run", "produce", "tail"])
def test_help_names_the_variables_but_never_their_values(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[kafka]\nsasl_plain_password = "file-secret-1"\n')
    monkeypatch.setenv("LSTM_STREAM_KAFKA_SASL_PLAIN_PASSWORD", "env-secret-2")
    monkeypatch.setenv("LSTM_STREAM_CONFIG", str(config))
    parser, _ = cli.command_parser(command)
    text = parser.format_help()
    assert "LSTM_STREAM_KAFKA_" in text and "--kafka-option" in text
    assert "env-secret-2" not in text and "file-secret-1" not in text


def test_a_wrong_password_never_reaches_the_tools_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The line a refused authentication prints holds the user, never the password (the
    broker's reason is scrubbed too, should it ever quote it)."""
    monkeypatch.setenv("LSTM_STREAM_KAFKA_SASL_PLAIN_PASSWORD", "wrong-pw-77")

    class Refusing(_Client):
        """aiokafka's failed bootstrap: the server's error logged, then a bare error."""

        async def start(self) -> None:
            reason = kafka_errors.SaslAuthenticationFailed("no such password: wrong-pw-77")
            logging.getLogger("aiokafka").error('Unable connect to "%s:%s": %s', "k", 1, reason)
            raise kafka_errors.KafkaConnectionError("Unable to bootstrap from [('k', 1)]")

    async def refused(bootstrap_servers: str, topic: str, **kw: Any) -> Any:
        options = kw["kafka_options"]
        _, producer_kw = client_kwargs(bootstrap_servers, "unused", options)
        await start_client(Refusing(None), producer_kw, options)  # as produce starts its client

    args = ["--bootstrap-servers", "k:1"]
    args += ["--kafka-option", "sasl_plain_username=svc", "--kafka-option", "sasl_mechanism=PLAIN"]
    assert produce_tool.main(_tool_args("produce", args), run=refused) == 3
    err = capsys.readouterr().err
    assert err == (
        "lstm-stream produce: Kafka authentication failed at k:1 (SASL PLAIN as user 'svc'): "
        "*** (the server's message is withheld: it holds a secret setting's value)\n"
    )
