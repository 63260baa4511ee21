"""Every declared option reaches what it configures, from every source.

One table row per declared option: a value, and how to observe it on the object the
option configures (the Engine and its cache for the engine options, the aiokafka keyword
arguments for the Kafka client options, the Settings field for the runtime's own values).
The test is parametrized over the declarations, not over the table, so an option declared
without a row fails here; a row whose option is gone fails too.

``run`` takes each option as a flag, an environment variable and a TOML key; ``replay``
takes the engine options as flags (its results must follow from its command line alone).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

import processor  # noqa: F401  (TF/Keras environment defaults before keras)
from processor import options as options_module
from processor import replay
from processor.config import Option, options_of
from processor.engine import Engine
from processor.kafka.clients import REBALANCE_MARGIN_MS, client_kwargs
from processor.kafka.settings import (
    Settings,
    add_settings_arguments,
    run_options,
    settings_from_args,
)
from processor.model import KerasStepModel, StepModel
from processor.options import EngineOptions, build_engine

import keras  # isort: skip

FILE_FEATURES = 3  # the saved model (loaded by the --model / --init-model rows)
MEMORY_FEATURES = 5  # the in-memory model (every other engine row)
UNITS = 4


@dataclass
class Reached:
    """What a set of options configured: the settings, the Kafka clients' keyword
    arguments and (built on first use) the Engine, with the calls ``build_engine`` made."""

    settings: Settings | None
    engine_options: EngineOptions
    memory_model: StepModel
    load_from_file: bool
    devices: list[str] = field(default_factory=list)
    threads: list[tuple[int | None, int | None]] = field(default_factory=list)

    @cached_property
    def clients(self) -> tuple[dict[str, Any], dict[str, Any]]:
        s = self.settings
        assert s is not None
        return client_kwargs(
            s.bootstrap_servers, s.group_id, s.kafka, drain_timeout=s.drain_timeout
        )

    @cached_property
    def engine(self) -> Engine:
        model = None if self.load_from_file else self.memory_model
        return build_engine(self.engine_options, model)

    @property
    def run(self) -> Settings:
        assert self.settings is not None, "a runtime option observed without run's settings"
        return self.settings


@dataclass(frozen=True)
class Row:
    """``text``: the value as a flag/environment string (``"true"`` for a switch; a
    comma-separated list; ``KEY=VALUE`` for a map). ``observe``: what the option changed.
    ``expected``: the observation with the value given (it must differ from the
    observation without it, or the row proves nothing)."""

    text: str
    observe: Callable[[Reached], Any]
    expected: Any


def _engine(attr: Callable[[Engine], Any]) -> Callable[[Reached], Any]:
    return lambda r: attr(r.engine)


def _thread_requests(r: Reached) -> list[tuple[int | None, int | None]]:
    r.engine  # noqa: B018  (building the engine is what sizes the pools)
    return r.threads


ROWS: dict[str, Row] = {
    # Kafka: the clients' keyword arguments.
    "bootstrap_servers": Row(
        "broker-a:9093",
        lambda r: (r.clients[0]["bootstrap_servers"], r.clients[1]["bootstrap_servers"]),
        ("broker-a:9093", "broker-a:9093"),
    ),
    "group_id": Row("grp-7", lambda r: r.clients[0]["group_id"], "grp-7"),
    "kafka": Row(
        "consumer.max_poll_records=7",
        lambda r: (r.clients[0].get("max_poll_records"), "max_poll_records" in r.clients[1]),
        (7, False),
    ),
    # Topics and runtime values: the Settings fields.
    "input_topics": Row("a,b", lambda r: r.run.input_topics, ("a", "b")),
    "output_topic": Row(
        "results", lambda r: (r.run.output_topic, r.run.dlq_topic), ("results", "results-dlq")
    ),
    "dlq_topic": Row("bad", lambda r: r.run.dlq_topic, "bad"),
    "max_delay_ms": Row("12.5", lambda r: r.run.max_delay_ms, 12.5),
    "queue_max_records": Row(
        "4096", lambda r: (r.run.queue_max_records, r.run.queue_low_records), (4096, 2048)
    ),
    "queue_low_records": Row("100", lambda r: r.run.queue_low_records, 100),
    "commit_interval_ms": Row("250", lambda r: r.run.commit_interval_ms, 250),
    "drain_timeout": Row(
        "12",
        lambda r: (r.run.drain_timeout, r.clients[0]["rebalance_timeout_ms"]),
        (12.0, 12_000 + REBALANCE_MARGIN_MS),
    ),
    "max_record_bytes": Row("2048", lambda r: r.run.max_record_bytes, 2048),
    "dlq_max_value_bytes": Row("100", lambda r: r.run.dlq_max_value_bytes, 100),
    "metrics_port": Row("9100", lambda r: r.run.metrics_port, 9100),
    "metrics_host": Row("127.0.0.1", lambda r: r.run.metrics_host, "127.0.0.1"),
    "log_level": Row("DEBUG", lambda r: r.run.log_level, "DEBUG"),
    "topic_partitions": Row("6", lambda r: r.run.topic_partitions, 6),
    "topic_replication_factor": Row("3", lambda r: r.run.topic_replication_factor, 3),
    "create_input_topics": Row("true", lambda r: r.run.create_input_topics, True),
    # Engine: the Engine, its cache and the calls build_engine makes.
    "model": Row("<model>", _engine(lambda e: e.model.input_shape), (FILE_FEATURES,)),
    "init_model": Row("<init>", _engine(lambda e: e.model.has_init_model), True),
    "device": Row("cpu", lambda r: (r.engine.cache.device, r.devices), ("/CPU:0", ["cpu"])),
    "state_dtype": Row("float16", _engine(lambda e: e.cache.storage_dtype.name), "float16"),
    "cache_capacity": Row("2048", _engine(lambda e: e.cache.capacity), 2048),
    "spill_capacity": Row("77", _engine(lambda e: e.cache.spill_capacity), 77),
    "idle_timeout": Row("2.5", _engine(lambda e: e.cache.idle_timeout_s), 2.5),
    "max_batch": Row("64", _engine(lambda e: e.max_batch), 64),
    "scan_min_steps": Row("8", _engine(lambda e: e.scan_min_steps), 8),
    "max_scan_steps": Row("16", _engine(lambda e: e.max_scan_steps), 16),
    # XLA pads the catch-up scan's time axis to buckets; without it there are none.
    "xla": Row("true", _engine(lambda e: e.scan_buckets != ()), True),
    "threads": Row("3", _thread_requests, [(3, 1)]),
}

#: Options ``run`` needs in every case (given as flags unless the row under test is theirs).
REQUIRED = ("input_topics", "output_topic", "model")
#: Rows observed on a model loaded from the files rather than on the in-memory model.
FROM_FILES = ("model", "init_model")

RUN = {o.name: o for o in run_options()}
ENGINE = {o.name: o for o in options_of(EngineOptions)}
CASES = [(name, source) for name in RUN for source in ("flag", "env", "toml")] + [
    (name, "replay-flag") for name in ENGINE
]


@dataclass(frozen=True)
class Models:
    memory: StepModel
    path: str
    init_path: str


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A tiny in-memory LSTM, and a saved one (other feature count) with an init model."""
    keras.utils.set_random_seed(5)
    folder = tmp_path_factory.mktemp("option-models")

    def lstm(features: int) -> Any:
        inp = keras.Input((None, features))
        out = keras.layers.Dense(2)(keras.layers.LSTM(UNITS, return_sequences=True)(inp))
        return keras.Model(inp, out)

    path = folder / "model.keras"
    lstm(FILE_FEATURES).save(path)
    x0 = keras.Input((FILE_FEATURES,))  # first input -> (h, c) of the LSTM
    init_path = folder / "init.keras"
    keras.Model(x0, [keras.layers.Dense(UNITS)(x0), keras.layers.Dense(UNITS)(x0)]).save(init_path)
    return Models(KerasStepModel.from_model(lstm(MEMORY_FEATURES)), str(path), str(init_path))


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], list[Any]]]:
    """Record build_engine's device lookups (still performed) and thread-pool sizing (not
    performed: TensorFlow's pools are fixed once it has run, and the test only needs to see
    the request)."""
    devices: list[str] = []
    threads: list[Any] = []
    real = options_module.resolve_device

    def resolve(device: str | None) -> str:
        devices.append(str(device))
        return real(device)

    monkeypatch.setattr(options_module, "resolve_device", resolve)
    monkeypatch.setattr(options_module, "configure_threads", lambda *a: threads.append(a))
    yield devices, threads


def _text(row: Row, models: Models) -> str:
    return {"<model>": models.path, "<init>": models.init_path}.get(row.text, row.text)


def _flag_args(opt: Option, text: str) -> list[str]:
    if opt.type is bool:
        return [opt.flag]
    if opt.shape == "list":
        return [arg for item in text.split(",") for arg in (opt.flag, item)]
    return [opt.flag, text]


def _env(opt: Option, text: str) -> dict[str, str]:
    if opt.shape == "map":
        key, _, value = text.partition("=")
        return {opt.env + key.upper().replace(".", "__"): value}
    return {opt.env: text}


def _toml(opt: Option, text: str) -> str:
    def literal(value: str) -> str:
        if opt.type is bool:
            return value
        if opt.shape == "list":
            return json.dumps(value.split(","))
        if opt.type in (int, float):
            return value
        return json.dumps(value)  # a JSON string is a TOML basic string

    if opt.shape == "map":
        key, _, value = text.partition("=")
        prefix, _, leaf = key.rpartition(".")
        table = f"{opt.toml_key}.{prefix}" if prefix else opt.toml_key
        return f"[{table}]\n{leaf} = {int(value) if value.isdigit() else json.dumps(value)}\n"
    return f"{opt.toml_key} = {literal(text)}\n"


def _base_flags(skip: str, models: Models) -> list[str]:
    values = {"input_topics": "in", "output_topic": "out", "model": models.path}
    return [arg for name in REQUIRED if name != skip for arg in _flag_args(RUN[name], values[name])]


def _run(name: str, source: str | None, models: Models, tmp_path: Path) -> Settings:
    """Settings of ``run`` given the row's value through ``source`` (None: not at all)."""
    opt, row = RUN[name], ROWS[name]
    text = _text(row, models)
    argv = _base_flags(name, models)
    environ: dict[str, str] = {}
    if source == "flag":
        argv += _flag_args(opt, text)
    elif source == "env":
        environ = _env(opt, text)
    elif source == "toml":
        path = tmp_path / "run.toml"
        path.write_text(_toml(opt, text))
        argv += ["--config", str(path)]
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return settings_from_args(parser.parse_args(argv), environ=environ)


def _reached(
    name: str,
    settings: Settings | None,
    engine: EngineOptions,
    models: Models,
    spies: tuple[list[str], list[Any]],
) -> Reached:
    return Reached(settings, engine, models.memory, name in FROM_FILES, spies[0], spies[1])


@pytest.mark.parametrize(("name", "source"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_every_option_reaches_what_it_configures(
    name: str,
    source: str,
    models: Models,
    spies: tuple[list[str], list[Any]],
    tmp_path: Path,
) -> None:
    row = ROWS.get(name)
    if row is None:
        pytest.fail(f"option {name!r} is declared but has no row in ROWS: add one")
    if source == "replay-flag":
        parser = argparse.ArgumentParser()
        replay.add_arguments(parser)
        argv = ["--input", "-", "--output", "-"]
        if name != "model":
            argv += ["--model", models.path]
        argv += _flag_args(ENGINE[name], _text(row, models))
        engine = EngineOptions.from_args(parser.parse_args(argv))
        reached = _reached(name, None, engine, models, spies)
    else:
        settings = _run(name, source, models, tmp_path)
        reached = _reached(name, settings, settings.engine, models, spies)
    assert row.observe(reached) == row.expected

    if name not in REQUIRED:
        # Without the value the observation differs: the row would notice a lost value.
        spies[0].clear()
        spies[1].clear()
        settings = _run(name, None, models, tmp_path)
        without = _reached(name, settings, settings.engine, models, spies)
        assert row.observe(without) != row.expected


def test_every_row_is_a_declared_option() -> None:
    assert set(ROWS) - set(RUN) == set()
