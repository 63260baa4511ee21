"""The declaration machinery on a small settings class of its own: what one field declares
(flag, variable, TOML key, shape), the checks, and the layered sources' precedence."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from processor.config.declare import Shape, at_least, option, options_of, problems
from processor.config.flags import add_arguments
from processor.config.secrets import REDACTED, is_secret_option
from processor.config.sources import CONFIG_ENV, load_toml, resolve
from processor.config.syntax import parse_bool, split_assignment
from processor.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    max_batch: int = option(8, "rows", check=at_least(1))
    topics: tuple[str, ...] = option((), "topics", flag="--topic")
    timeout: float | None = option(None, "seconds")
    verbose: bool = option(False, "talk")
    kafka: dict[str, str] = option({}, "client options")  # noqa: RUF009 (a default_factory)
    not_an_option: int = 0


def test_one_field_declares_flag_variable_toml_key_and_shape() -> None:
    by_name = {o.name: o for o in options_of(Sample)}
    assert list(by_name) == ["max_batch", "topics", "timeout", "verbose", "kafka"]
    batch, topics, timeout, kafka = (
        by_name[n] for n in ("max_batch", "topics", "timeout", "kafka")
    )
    assert (batch.flag, batch.env, batch.toml_key) == (
        "--max-batch",
        "LSTM_STREAM_MAX_BATCH",
        "max-batch",
    )
    assert batch.toml_aliases == ("max-batch", "max_batch")
    assert (topics.flag, topics.shape, topics.parse("a, b,")) == ("--topic", Shape.LIST, ("a", "b"))
    assert (timeout.shape, timeout.optional, timeout.parse("none")) == (Shape.SCALAR, True, None)
    assert (kafka.shape, kafka.env, kafka.toml_key) == (Shape.MAP, "LSTM_STREAM_KAFKA_", "kafka")
    assert CONFIG_ENV == "LSTM_STREAM_CONFIG"


def test_checks_name_the_flag_and_the_value() -> None:
    assert problems(Sample(max_batch=0)) == ["--max-batch must be >= 1, got 0"]
    assert problems(Sample()) == []


def test_flags_over_environment_over_toml_and_maps_merge_key_by_key() -> None:
    opts = options_of(Sample)
    parser = argparse.ArgumentParser()
    add_arguments(parser, opts, layered=True)
    given = vars(parser.parse_args(["--max-batch", "4", "--kafka", "acks=all"]))
    environ = {
        "LSTM_STREAM_MAX_BATCH": "5",
        "LSTM_STREAM_TIMEOUT": "2",
        "LSTM_STREAM_KAFKA_A__B": "x",
    }
    table = {"max_batch": 6, "timeout": 3, "verbose": True, "kafka": {"acks": "1", "c": 7}}
    assert resolve(opts, given, environ, table) == {
        "max_batch": 4,
        "timeout": 2.0,
        "verbose": True,
        "kafka": {"a.b": "x", "acks": "all", "c": 7},
    }
    with pytest.raises(ConfigError, match=r"unknown key 'max-batches'"):
        resolve(opts, {}, {}, {"max-batches": 1})
    with pytest.raises(ConfigError, match=r"environment variable LSTM_STREAM_MAX_BATCH"):
        resolve(opts, {}, {"LSTM_STREAM_MAX_BATCH": "many"})


def test_a_toml_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_toml(str(tmp_path / "missing.toml"))


def test_the_shared_syntax_and_the_secrets() -> None:
    assert [parse_bool(t) for t in ("1", " Yes ", "off", "FALSE")] == [True, True, False, False]
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("maybe")
    assert split_assignment(" sasl.password =a=b", "--kafka") == ("sasl.password", "a=b")
    with pytest.raises(ConfigError, match="--kafka expects KEY=VALUE"):
        split_assignment("=x", "--kafka")
    assert is_secret_option("sasl_plain_password") and not is_secret_option("acks")
    assert REDACTED == "***"
