"""Settings of ``lstm-stream run``: sources, precedence, validation, redaction, --help, and
the pass-through Kafka client options."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from processor.errors import ConfigError
from processor.kafka.clients import REBALANCE_MARGIN_MS, client_kwargs
from processor.settings import Settings, add_settings_arguments, settings_from_args

REQUIRED = ["--input-topic", "in", "--output-topic", "out", "--model", "m.keras"]


def parse(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return settings_from_args(parser.parse_args(argv), environ=env or {})


def test_defaults_and_derived_values() -> None:
    s = parse(REQUIRED)
    assert s.input_topics == ("in",)
    assert s.dlq_topic == "out-dlq"
    assert s.queue_low_records == s.queue_max_records // 2
    assert s.bootstrap_servers == "localhost:9092" and s.metrics_port == 0
    assert s.engine_options().model == "m.keras"
    assert s.engine_options().max_batch == s.max_batch
    assert s.dlq_max_value_bytes == 65_536


def test_dlq_max_value_bytes_from_flag_env_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("dlq-max-value-bytes = 100\n")
    assert parse([*REQUIRED, "--config", str(cfg)]).dlq_max_value_bytes == 100
    env = {"LSTM_STREAM_DLQ_MAX_VALUE_BYTES": "200"}
    assert parse([*REQUIRED, "--config", str(cfg)], env).dlq_max_value_bytes == 200
    flag = [*REQUIRED, "--config", str(cfg), "--dlq-max-value-bytes", "0"]
    assert parse(flag, env).dlq_max_value_bytes == 0  # 0: dead letters carry no value


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'input-topic = ["f1", "f2"]\noutput_topic = "from-file"\nmodel = "file.keras"\n'
        "max_batch = 64\ncommit_interval_ms = 250\nmax_delay_ms = 7\n"
        '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nrequest_timeout_ms = 1000\n'
        "[kafka.consumer]\nmax_poll_records = 10\n"
    )
    env = {
        "LSTM_STREAM_MAX_BATCH": "128",
        "LSTM_STREAM_OUTPUT_TOPIC": "from-env",
        "LSTM_STREAM_KAFKA_REQUEST_TIMEOUT_MS": "2000",
        "LSTM_STREAM_KAFKA_CONSUMER__FETCH_MAX_BYTES": "1000000",
        "LSTM_STREAM_UNRELATED_THING": "ignored",
    }
    s = parse(
        ["--config", str(cfg), "--max-batch", "256", "--kafka-option", "request_timeout_ms=3000"],
        env,
    )
    assert s.input_topics == ("f1", "f2")  # file only
    assert s.output_topic == "from-env"  # env beats file
    assert s.max_batch == 256  # flag beats env and file
    assert s.commit_interval_ms == 250 and s.max_delay_ms == 7.0  # file beats defaults
    assert s.kafka == {
        "security_protocol": "SASL_PLAINTEXT",
        "request_timeout_ms": "3000",
        "consumer.max_poll_records": 10,
        "consumer.fetch_max_bytes": "1000000",
    }
    assert s.config_file == str(cfg)
    # The config file can come from the environment too; lists from env are comma-separated.
    s2 = parse([], {"LSTM_STREAM_CONFIG": str(cfg), "LSTM_STREAM_INPUT_TOPIC": "a, b"})
    assert s2.input_topics == ("a", "b") and s2.model == "file.keras"


def test_bool_and_optional_values_from_the_environment() -> None:
    s = parse(REQUIRED, {"LSTM_STREAM_XLA": "true", "LSTM_STREAM_IDLE_TIMEOUT": "30"})
    assert s.xla is True and s.idle_timeout == 30.0
    s = parse(REQUIRED, {"LSTM_STREAM_XLA": "0", "LSTM_STREAM_IDLE_TIMEOUT": "never"})
    assert s.xla is False and s.idle_timeout is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "at least one --input-topic"),
        (["--input-topic", "in", "--model", "m"], {}, "--output-topic is required"),
        ([*REQUIRED, "--max-batch", "0"], {}, "--max-batch must be >= 1"),
        ([*REQUIRED, "--cache-capacity", "8", "--max-batch", "16"], {}, "exceeds --cache"),
        ([*REQUIRED, "--queue-low-records", "99999"], {}, "must be below"),
        ([*REQUIRED, "--queue-max-records", "10"], {}, "a full batch must fit"),
        ([*REQUIRED, "--dlq-topic", "out"], {}, "must differ"),
        ([*REQUIRED, "--input-topic", "out"], {}, "both an input and an output"),
        (REQUIRED, {"LSTM_STREAM_MAX_BATCH": "lots"}, "LSTM_STREAM_MAX_BATCH"),
        (REQUIRED, {"LSTM_STREAM_LOG_LEVEL": "LOUD"}, "not one of"),
        ([*REQUIRED, "--kafka-option", "novalue"], {}, "KEY=VALUE"),
        ([*REQUIRED, "--dlq-max-value-bytes", "-1"], {}, "--dlq-max-value-bytes must be >= 0"),
    ],
)
def test_invalid_settings_name_the_problem(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv, env)


def test_unknown_or_bad_toml_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("max_bacth = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'max_bacth'"):
        parse(["--config", str(cfg)])
    cfg.write_text("max_batch = true\n")
    with pytest.raises(ConfigError, match="boolean"):
        parse([*REQUIRED, "--config", str(cfg)])
    cfg.write_text("this is not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse(["--config", str(cfg)])


def test_secrets_are_redacted_in_repr_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    s = parse(
        [
            *REQUIRED,
            "--kafka-option",
            "sasl_plain_password=hunter2",
            "--kafka-option",
            "ssl_keyfile=/secret/path.pem",
            "--kafka-option",
            "sasl_plain_username=alice",
        ],
        {"LSTM_STREAM_KAFKA_SASL_OAUTH_TOKEN": "tok-123"},
    )
    text = repr(s)
    for secret in ("hunter2", "/secret/path.pem", "tok-123"):
        assert secret not in text
    assert "alice" in text and "***" in text
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings: %r", s)
    assert "hunter2" not in caplog.text
    assert s.kafka["sasl_plain_password"] == "hunter2"  # the clients still get it


def test_help_documents_every_option_with_its_default() -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert "(default:" in (action.help or ""), action.option_strings
    text = parser.format_help()
    for flag in (
        "--bootstrap-servers", "--input-topic", "--output-topic", "--dlq-topic", "--group-id",
        "--model", "--init-model", "--device", "--state-dtype", "--cache-capacity",
        "--spill-capacity", "--idle-timeout", "--max-batch", "--max-delay-ms",
        "--queue-max-records", "--queue-low-records", "--commit-interval-ms", "--metrics-port",
        "--threads", "--log-level", "--config", "--kafka-option", "--dlq-max-value-bytes",
    ):  # fmt: skip
        assert flag in text
    [dlq] = [a for a in parser._actions if a.dest == "dlq_max_value_bytes"]
    assert "LSTM_STREAM_DLQ_MAX_VALUE_BYTES" in (dlq.help or "")
    assert "(default: 65536)" in (dlq.help or "")


def test_kafka_options_reach_the_right_client_with_types() -> None:
    consumer, producer = client_kwargs(
        "h:1",
        "g",
        {
            "security_protocol": "SASL_PLAINTEXT",
            "request_timeout_ms": "1234",
            "consumer.max_poll_interval_ms": "60000",
            "producer.acks": "1",
            "enable_idempotence": "true",
            "isolation_level": "read_uncommitted",
        },
    )
    assert consumer["security_protocol"] == producer["security_protocol"] == "SASL_PLAINTEXT"
    assert consumer["request_timeout_ms"] == producer["request_timeout_ms"] == 1234
    assert consumer["max_poll_interval_ms"] == 60000 and "max_poll_interval_ms" not in producer
    assert producer["acks"] == 1
    assert producer["enable_idempotence"] is True and "enable_idempotence" not in consumer
    assert consumer["isolation_level"] == "read_uncommitted"
    assert consumer["enable_auto_commit"] is False and consumer["group_id"] == "g"
    assert producer["bootstrap_servers"] == "h:1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"no_such_option": "1"}, "not an aiokafka"),
        ({"consumer.linger_ms": "5"}, "not an aiokafka consumer"),
        ({"enable_auto_commit": "true"}, "set by lstm-stream"),
        ({"group_id": "x"}, "set by lstm-stream"),
        ({"request_timeout_ms": "soon"}, "request_timeout_ms"),
        ({"broker.x": "1"}, "prefix"),
        ({"ssl_cafile": "/does/not/exist.pem"}, "SSL context"),
        ({"enable_idempotence": "maybe"}, "enable_idempotence.*not a boolean"),
    ],
)
def test_bad_kafka_options_are_config_errors(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        client_kwargs("h:1", "g", options)


def test_rebalance_timeout_outlasts_the_drain_timeout() -> None:
    """On revocation the processor waits up to the drain timeout before rejoining, so the
    coordinator's rebalance timeout defaults to more than that, and a shorter one given by
    the user is refused."""
    consumer, _ = client_kwargs("h:1", "g", {}, drain_timeout=30.0)
    assert consumer["rebalance_timeout_ms"] == 30_000 + REBALANCE_MARGIN_MS
    consumer, _ = client_kwargs("h:1", "g", {"rebalance_timeout_ms": "60000"}, drain_timeout=30)
    assert consumer["rebalance_timeout_ms"] == 60_000  # the user's, when long enough
    consumer, _ = client_kwargs(
        "h:1", "g", {"consumer.rebalance_timeout_ms": 2500}, drain_timeout=2
    )
    assert consumer["rebalance_timeout_ms"] == 2500
    for given in ("30000", "10000", 30_000):
        with pytest.raises(ConfigError, match=r"rebalance_timeout_ms=.*above the drain timeout"):
            client_kwargs("h:1", "g", {"rebalance_timeout_ms": given}, drain_timeout=30.0)
    # The tools (no drain) leave aiokafka's default alone.
    consumer, _ = client_kwargs("h:1", "g", {})
    assert "rebalance_timeout_ms" not in consumer


def test_kafka_option_flags_parse_the_same_in_run_and_the_tools() -> None:
    from processor.tools import _kafka_options

    flags = ["a=b=c", " request_timeout_ms =5", "empty="]
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    argv = [*REQUIRED] + [x for f in flags for x in ("--kafka-option", f)]
    run = settings_from_args(parser.parse_args(argv), environ={}).kafka
    assert _kafka_options(flags) == run == {"a": "b=c", "request_timeout_ms": "5", "empty": ""}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _kafka_options(["novalue"])
