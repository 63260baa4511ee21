"""Settings of ``lstm-stream run``: sources, precedence, validation, redaction, --help, and
the pass-through Kafka client options."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from processor.config.declare import Shape
from processor.config.engine_options import EngineOptions, add_engine_arguments
from processor.errors import ConfigError
from processor.kafka import command
from processor.kafka.io.clients import METADATA_MAX_AGE_MS, REBALANCE_MARGIN_MS, client_kwargs
from processor.kafka.settings import (
    Settings,
    add_settings_arguments,
    run_options,
    settings_from_args,
)

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
    assert s.engine == EngineOptions(model="m.keras")  # the engine's own defaults
    assert s.dlq_max_value_bytes == 65_536
    assert (s.topic_partitions, s.topic_replication_factor, s.create_input_topics) == (
        -1,
        -1,
        False,
    )


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
    assert s.engine.max_batch == 256  # flag beats env and file
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
    assert s2.input_topics == ("a", "b") and s2.engine.model == "file.keras"
    assert s2.engine.max_batch == 64  # a flat engine key in the file


def test_bool_and_optional_values_from_the_environment() -> None:
    s = parse(REQUIRED, {"LSTM_STREAM_XLA": "true", "LSTM_STREAM_IDLE_TIMEOUT": "30"})
    assert s.engine.xla is True and s.engine.idle_timeout == 30.0
    s = parse(REQUIRED, {"LSTM_STREAM_XLA": "0", "LSTM_STREAM_IDLE_TIMEOUT": "never"})
    assert s.engine.xla is False and s.engine.idle_timeout is None
    # A switch given as a flag beats the environment both ways.
    s = parse([*REQUIRED, "--no-xla"], {"LSTM_STREAM_XLA": "true"})
    assert s.engine.xla is False
    s = parse([*REQUIRED, "--create-input-topics"], {"LSTM_STREAM_CREATE_INPUT_TOPICS": "no"})
    assert s.create_input_topics is True


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
        ([*REQUIRED, "--scan-min-steps", "1"], {}, "--scan-min-steps must be 0 .* or >= 2"),
        ([*REQUIRED, "--max-scan-steps", "1"], {}, "--max-scan-steps must be >= 2"),
        ([*REQUIRED, "--idle-timeout", "0"], {}, "--idle-timeout must be > 0"),
        (REQUIRED, {"LSTM_STREAM_STATE_DTYPE": "int8"}, "not one of"),
        ([*REQUIRED, "--topic-partitions", "0"], {}, "--topic-partitions must be -1 .* or >= 1"),
        ([*REQUIRED, "--topic-replication-factor", "-2"], {}, "--topic-replication-factor"),
        (REQUIRED, {"LSTM_STREAM_CREATE_INPUT_TOPICS": "maybe"}, "not a boolean"),
        ([*REQUIRED, "--metrics-port", "70000"], {}, "--metrics-port must be <= 65535"),
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


def test_secrets_are_redacted_in_repr_and_in_the_commands_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [
        *REQUIRED,
        "--kafka-option",
        "sasl_plain_password=hunter2",
        "--kafka-option",
        "ssl_keyfile=/secret/path.pem",
        "--kafka-option",
        "sasl_plain_username=alice",
    ]
    env = {"LSTM_STREAM_KAFKA_SASL_OAUTH_TOKEN": "tok-123"}
    s = parse(argv, env)
    text = repr(s)
    for secret in ("hunter2", "/secret/path.pem", "tok-123"):
        assert secret not in text
    assert "alice" in text and "***" in text
    assert s.kafka["sasl_plain_password"] == "hunter2"  # the clients still get it

    # What `run` itself logs about its settings before it starts (the processor is replaced:
    # this test is about the log, not about Kafka).
    started: list[Settings] = []

    async def fake_run(settings: Settings) -> int:
        started.append(settings)
        return 0

    monkeypatch.setenv("LSTM_STREAM_KAFKA_SASL_OAUTH_TOKEN", "tok-123")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    with caplog.at_level(logging.INFO, logger=command.log.name):
        assert command.main(parser.parse_args(argv), serve=fake_run) == 0
    assert started and started[0].kafka["sasl_oauth_token"] == "tok-123"
    assert "alice" in caplog.text  # the settings were logged...
    for secret in ("hunter2", "/secret/path.pem", "tok-123"):
        assert secret not in caplog.text  # ...without their secrets


def test_run_exits_2_on_invalid_engine_settings_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def must_not_run(settings: Settings) -> int:
        raise AssertionError("the processor started with invalid settings")

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([*REQUIRED, "--max-batch", "64", "--cache-capacity", "32"])
    assert command.main(args, serve=must_not_run) == 2
    assert "--max-batch 64 exceeds --cache-capacity 32" in capsys.readouterr().err


def test_help_documents_every_option_with_its_sources_and_default() -> None:
    parser = argparse.ArgumentParser(
        # One line per option: no wrapping, help beside the flag.
        formatter_class=lambda prog: argparse.HelpFormatter(
            prog, width=10_000, max_help_position=10_000
        )
    )
    add_settings_arguments(parser)
    text = parser.format_help()
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  --")}
    assert "--config" in lines and "LSTM_STREAM_CONFIG" in lines["--config"]
    for opt in run_options():
        [line] = [v for k, v in lines.items() if k.rstrip(",") == opt.flag]
        if opt.shape == Shape.MAP:
            assert f"{opt.env}<KEY>" in line and f"TOML [{opt.toml_key}]" in line
        else:
            assert opt.env in line and f"TOML {opt.toml_key}" in line, opt.flag
        assert f"(default: {opt.shown_default()}" in line, opt.flag
    # Spot checks of what the declarations say.
    assert "LSTM_STREAM_DLQ_MAX_VALUE_BYTES" in lines["--dlq-max-value-bytes"]
    assert "(default: 65536)" in lines["--dlq-max-value-bytes"]
    assert "LSTM_STREAM_KAFKA_<KEY>" in lines["--kafka-option"]
    assert "(default: -1)" in lines["--topic-partitions"]
    assert "(default: off)" in lines["--create-input-topics,"]
    assert "required" in lines["--model"]


def test_engine_flags_of_the_other_commands_use_the_declared_defaults() -> None:
    """replay/demo/bench: the flags default to the declarations, and from_args treats a
    flag left at None as not given (demo fills its cache capacity in itself)."""
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser, model_required=False, max_batch=256)
    assert EngineOptions.from_args(parser.parse_args([])) == EngineOptions(max_batch=256)
    parser.set_defaults(cache_capacity=None)
    args = parser.parse_args(["--xla", "--idle-timeout", "never", "--model", "m.keras"])
    assert EngineOptions.from_args(args) == EngineOptions(
        model="m.keras", max_batch=256, xla=True, idle_timeout=None
    )
    with pytest.raises(ConfigError, match="--max-batch 256 exceeds --cache-capacity 8"):
        EngineOptions.from_args(parser.parse_args(["--cache-capacity", "8"]))
    required = argparse.ArgumentParser()
    add_engine_arguments(required)
    with pytest.raises(SystemExit):
        required.parse_args([])  # --model is a required flag by default


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


def test_clients_refresh_metadata_within_seconds_unless_told_otherwise() -> None:
    """New input topics and partitions are seen on a metadata refresh: both clients refresh
    every few seconds by default, and an explicit value wins, per client too."""
    consumer, producer = client_kwargs("h:1", "g", {})
    assert consumer["metadata_max_age_ms"] == producer["metadata_max_age_ms"] == 5000
    assert METADATA_MAX_AGE_MS == 5000
    consumer, producer = client_kwargs("h:1", "g", {"metadata_max_age_ms": "60000"})
    assert consumer["metadata_max_age_ms"] == producer["metadata_max_age_ms"] == 60_000
    consumer, producer = client_kwargs("h:1", "g", {"producer.metadata_max_age_ms": "1000"})
    assert (consumer["metadata_max_age_ms"], producer["metadata_max_age_ms"]) == (5000, 1000)


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
    from processor.kafka.tools.flags import kafka_options_from

    def tool_options(pairs: list[str]) -> dict[str, object]:
        return kafka_options_from(argparse.Namespace(kafka=pairs, config=None), environ={})

    flags = ["a=b=c", " request_timeout_ms =5", "empty="]
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    argv = [*REQUIRED] + [x for f in flags for x in ("--kafka-option", f)]
    run = settings_from_args(parser.parse_args(argv), environ={}).kafka
    assert tool_options(flags) == run == {"a": "b=c", "request_timeout_ms": "5", "empty": ""}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        tool_options(["novalue"])
