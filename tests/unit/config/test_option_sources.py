"""Every declared option reaches what it configures, from every source.

One table row per declared option: a value, and how to observe it on the object the
option configures (the Engine and its cache for the engine options, the aiokafka keyword
arguments for the Kafka client options, the Settings field for the runtime's own values).
The test is parametrized over the declarations, not over the table, so an option declared
without a row fails here; a row whose option is gone fails too.

``run`` takes each option as a flag, an environment variable and a TOML key; ``replay``
takes the engine options as flags (its results must follow from its command line alone).

A second table (``RUNTIME_ROWS``) follows every ``run`` option one step further, through
the real command line (the parser and ``main`` of ``lstm-stream run``, which serves the
settings with the real signal handling), the environment or a TOML file into a started
:class:`processor.kafka.runtime.Processor`: the Batcher, the FlowControl, the Pipeline's
decoder, the Kafka clients, topic preparation, the writers, the checkpoint cycle, the
recovery, the commit loop, the metrics server, the EngineOptions the engine is built from
and the root log level. Only the Processor's :class:`~processor.kafka.network.Network` is
stood in for (clients, admin, topic preparation and metrics server record what they were
given) and the engine is a stand-in, so a start costs milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import processor  # noqa: F401  (TF/Keras environment defaults before keras)
from processor import cli, replay
from processor.codec.reasons import OVERSIZE
from processor.config.declare import Option, Shape, options_of
from processor.config.engine_options import EngineOptions
from processor.engine.build import build_engine
from processor.engine.device import resolve_device
from processor.engine.engine import Engine
from processor.engine.pipeline import gc_tuned
from processor.kafka import command, runtime
from processor.kafka.checkpoint.cycle import Checkpoint, TransactionalCheckpoint
from processor.kafka.checkpoint.transactions import PartitionProducers
from processor.kafka.durable.recovery import Recovery
from processor.kafka.io.clients import REBALANCE_MARGIN_MS, client_kwargs
from processor.kafka.network import Network
from processor.kafka.settings import (
    Settings,
    add_settings_arguments,
    run_options,
    settings_from_args,
)
from processor.kafka.wiring import Stages
from processor.model import KerasStepModel, StepModel

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

        def resolve(device: str | None) -> str:
            self.devices.append(str(device))
            return resolve_device(device)

        # Thread pools are recorded, not sized: TensorFlow's are fixed once it has run, and
        # the rows only need to see the request.
        return build_engine(
            self.engine_options,
            model,
            configure=lambda intra, inter: self.threads.append((intra, inter)),
            resolve=resolve,
        )

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
    "processing_guarantee": Row(
        "exactly-once", lambda r: r.run.processing_guarantee, "exactly-once"
    ),
    "transaction_timeout_ms": Row("45000", lambda r: r.run.transaction_timeout_ms, 45_000),
    "state_topic": Row("states", lambda r: r.run.state_topics(), {"in": "states"}),
    "on_state_mismatch": Row("reset", lambda r: r.run.on_state_mismatch, "reset"),
    # Engine: the Engine, its cache and the calls build_engine makes.
    "model": Row("<model>", _engine(lambda e: e.model.input_shape), (FILE_FEATURES,)),
    "init_model": Row("<init>", _engine(lambda e: e.model.has_init_model), True),
    "device": Row("cpu", lambda r: (r.engine.cache.device, r.devices), ("/CPU:0", ["cpu"])),
    "state_dtype": Row("float16", _engine(lambda e: e.cache.storage_dtype.name), "float16"),
    "cache_capacity": Row("2048", _engine(lambda e: e.cache.capacity), 2048),
    "spill_capacity": Row("77", _engine(lambda e: e.cache.spill_capacity), 77),
    "idle_timeout": Row("2.5", _engine(lambda e: e.cache.idle_timeout_s), 2.5),
    "state_dir": Row("/tmp/lstm-states", _engine(lambda e: e.cache.state_dir), "/tmp/lstm-states"),
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
def spies() -> tuple[list[str], list[Any]]:
    """The lists that record build_engine's device lookups and thread-pool requests."""
    return [], []


def _text(row: Row, models: Models) -> str:
    return {"<model>": models.path, "<init>": models.init_path}.get(row.text, row.text)


def _flag_args(opt: Option, text: str) -> list[str]:
    if opt.type is bool:
        return [opt.flag]
    if opt.shape == Shape.LIST:
        return [arg for item in text.split(",") for arg in (opt.flag, item)]
    return [opt.flag, text]


def _env(opt: Option, text: str) -> dict[str, str]:
    if opt.shape == Shape.MAP:
        key, _, value = text.partition("=")
        return {opt.env + key.upper().replace(".", "__"): value}
    return {opt.env: text}


def _toml(opt: Option, text: str) -> str:
    def literal(value: str) -> str:
        if opt.type is bool:
            return value
        if opt.shape == Shape.LIST:
            return json.dumps(value.split(","))
        if opt.type in (int, float):
            return value
        return json.dumps(value)  # a JSON string is a TOML basic string

    if opt.shape == Shape.MAP:
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


# ---- run: through the command line into a started Processor --------------------------------

RUNTIME_MODEL = "/models/step.keras"  # never loaded: the engine builder is a stand-in here
RUNTIME_INIT = "/models/init.keras"
STANDIN_SHAPE = (3,)


@dataclass
class Started:
    """What ``lstm-stream run`` configured, recorded while its Processor started: keyword
    arguments of the (stand-in) Kafka clients, admin client, topic preparation and metrics
    server, the EngineOptions the engine was built from, the Processor itself (its batcher,
    flow control, pipeline, recovery and transactional producers are the real ones) and its
    started stages (real too: writers, checkpoint cycle, commit loop)."""

    processor: runtime.Processor | None = None
    engine_options: list[EngineOptions] = field(default_factory=list)
    consumer: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    admin: dict[str, Any] = field(default_factory=dict)
    subscribed: list[str] = field(default_factory=list)
    topics: dict[str, Any] = field(default_factory=dict)
    state_topics: dict[str, str] = field(default_factory=dict)
    built: Stages | None = None
    server: dict[str, Any] | None = None
    root_level: int = logging.NOTSET
    #: How ``run``'s main serves the settings: the real signal handling around the Processor
    #: that starts and closes (set by the ``started`` fixture).
    serve: Callable[[Settings], Coroutine[Any, Any, int]] | None = None

    @property
    def proc(self) -> runtime.Processor:
        assert self.processor is not None, "run did not build a Processor"
        return self.processor

    @property
    def stages(self) -> Stages:
        assert self.built is not None, "run did not start the stages"
        return self.built

    @property
    def engine(self) -> EngineOptions:
        (only,) = self.engine_options  # the engine is built exactly once, at start
        return only

    def oversize(self, size: int) -> bool:
        """Whether the started pipeline rejects a ``size``-byte value as oversize."""
        (result,) = self.proc.pipeline.decode([b"\x00" * size], [b"k"])
        return getattr(result, "reason", None) == OVERSIZE

    def delay_s(self) -> float:
        """How long a lone record waits in the batcher before its batch is due."""
        batcher = self.proc.batcher
        batcher.add([SimpleNamespace(tp="t-0", arrived=100.0)])  # type: ignore[list-item]
        wait = batcher.time_until_due(100.0)
        batcher.take()
        assert wait is not None
        return wait

    def flow_marks(self) -> tuple[str | None, str | None]:
        """Where the flow control pauses and resumes: the decisions one record above and
        below the marks (hysteresis: resume only once paused)."""
        flow = self.proc.flow
        flow.acquire(flow.high - 1)
        below = flow.decide()
        flow.acquire(1)
        paused = flow.decide()
        flow.release(flow.in_flight - flow.low - 1)
        above_low = flow.decide()
        flow.release(1)
        resumed = flow.decide()
        assert (below, above_low) == (None, None)
        return paused, resumed


class _StandinEngine:
    """Just enough of an Engine for the pipeline to start: a model signature, a warm-up."""

    model = SimpleNamespace(
        input_shape=STANDIN_SHAPE, input_dtype=np.dtype("float32"), state_spec=(), identity="x"
    )
    cache = SimpleNamespace(close=lambda: None)  # the pipeline closes it on shutdown

    def warmup(self, scan: bool = False) -> None:
        pass


@dataclass(frozen=True)
class RuntimeRow:
    """As :class:`Row`, observed on :class:`Started`. ``extra``: flags given in both runs
    (with and without the value) that the observation needs."""

    text: str
    observe: Callable[[Started], Any]
    expected: Any
    extra: tuple[str, ...] = ()


def _engine_row(name: str) -> RuntimeRow:
    """The value reaches the EngineOptions the Processor builds its engine from (how those
    reach the Engine is the first table's job)."""
    text = {"<model>": RUNTIME_MODEL, "<init>": RUNTIME_INIT}.get(ROWS[name].text, ROWS[name].text)
    return RuntimeRow(text, lambda s: getattr(s.engine, name), ENGINE[name].parse(text))


def _state_writer_topics(s: Started) -> dict[str, str]:
    """Where the at-least-once checkpoint cycle writes the state records."""
    cycle = s.stages.cycle
    assert isinstance(cycle, Checkpoint), f"not the at-least-once cycle: {cycle!r}"
    return cycle.writer.state_topics


def _producers(s: Started) -> PartitionProducers:
    assert s.proc.producers is not None, "no transactional producers"
    return s.proc.producers


def _recovery(s: Started) -> Recovery:
    assert s.proc.recovery is not None, "no recovery (durable state is off)"
    return s.proc.recovery


RUNTIME_ROWS: dict[str, RuntimeRow] = {
    # Kafka: the clients the Processor creates.
    "bootstrap_servers": RuntimeRow(
        "broker-a:9093",
        lambda s: {
            s.consumer["bootstrap_servers"],
            s.producer["bootstrap_servers"],
            s.admin["bootstrap_servers"],
        },
        {"broker-a:9093"},
    ),
    "group_id": RuntimeRow("grp-7", lambda s: s.consumer["group_id"], "grp-7"),
    "kafka": RuntimeRow(
        "consumer.max_poll_records=7",
        lambda s: (s.consumer["max_poll_records"], "max_poll_records" in s.producer),
        (7, False),
    ),
    # Topics: prepared, subscribed, written to.
    "input_topics": RuntimeRow(
        "a,b", lambda s: (s.subscribed, tuple(s.topics["input_topics"])), (["a", "b"], ("a", "b"))
    ),
    "output_topic": RuntimeRow(
        "results",
        lambda s: (
            s.stages.outputs.topic,
            s.stages.dead_letters.topic,
            tuple(s.topics["output_topics"]),
        ),
        ("results", "results-dlq", ("results", "results-dlq")),
    ),
    "dlq_topic": RuntimeRow(
        "bad",
        lambda s: (s.stages.dead_letters.topic, tuple(s.topics["output_topics"])[1]),
        ("bad", "bad"),
    ),
    "topic_partitions": RuntimeRow("6", lambda s: s.topics["partitions"], 6),
    "topic_replication_factor": RuntimeRow("3", lambda s: s.topics["replication_factor"], 3),
    "create_input_topics": RuntimeRow("true", lambda s: s.topics["create_inputs"], True),
    # Runtime: batching, backpressure, decoding, dead letters, commits, shutdown.
    "max_delay_ms": RuntimeRow("12.5", lambda s: s.delay_s(), pytest.approx(0.0125)),
    "queue_max_records": RuntimeRow(
        "4096",
        lambda s: (s.proc.flow.high, s.proc.flow.low, s.flow_marks()),
        (4096, 2048, ("pause", "resume")),
    ),
    "queue_low_records": RuntimeRow(
        "100", lambda s: (s.proc.flow.low, s.flow_marks()), (100, ("pause", "resume"))
    ),
    # Durable state: the state topics prepared and written, and the restore's policy.
    "state_topic": RuntimeRow(
        "states",
        lambda s: (s.state_topics, _state_writer_topics(s)),
        ({"in": "states"}, {"in": "states"}),
    ),
    "on_state_mismatch": RuntimeRow("reset", lambda s: _recovery(s).reset_on_mismatch, True),
    # Exactly-once: per-partition transactional producers and the transactional cycle.
    "processing_guarantee": RuntimeRow(
        "exactly-once",
        lambda s: (
            s.proc.producers is not None,
            isinstance(s.stages.cycle, TransactionalCheckpoint),
        ),
        (True, True),
    ),
    "transaction_timeout_ms": RuntimeRow(
        "45000",
        lambda s: _producers(s).transaction_timeout_ms,
        45_000,
        extra=("--processing-guarantee", "exactly-once"),
    ),
    "commit_interval_ms": RuntimeRow(
        "250", lambda s: s.stages.committer.interval_s, pytest.approx(0.25)
    ),
    # The consumer may take this long to rejoin while in-flight work drains.
    "drain_timeout": RuntimeRow(
        "12",
        lambda s: (s.consumer["rebalance_timeout_ms"], s.proc.settings.drain_timeout),
        (12_000 + REBALANCE_MARGIN_MS, 12.0),
    ),
    "max_record_bytes": RuntimeRow(
        "2048", lambda s: (s.oversize(2048), s.oversize(2049)), (False, True)
    ),
    "dlq_max_value_bytes": RuntimeRow("100", lambda s: s.stages.dead_letters.max_value_bytes, 100),
    "metrics_port": RuntimeRow("9100", lambda s: s.server and s.server["port"], 9100),
    "metrics_host": RuntimeRow(
        "127.0.0.1",
        lambda s: s.server and s.server["host"],
        "127.0.0.1",
        extra=("--metrics-port", "9100"),
    ),
    "log_level": RuntimeRow("DEBUG", lambda s: s.root_level, logging.DEBUG),
    # Engine: what the engine is built from; max_batch also sizes batches and fetches.
    **{name: _engine_row(name) for name in ENGINE if name != "max_batch"},
    "max_batch": RuntimeRow(
        "64",
        lambda s: (s.engine.max_batch, s.proc.batcher.max_batch, s.consumer["max_poll_records"]),
        (64, 64, 64),
        # a full batch must fit the queue: keep the queue within reach of the default batch
        extra=("--queue-max-records", "1024"),
    ),
}

RUNTIME_CASES = [(name, source) for name in RUN for source in ("flag", "env", "toml")]


class _Recorder:
    """A stand-in client: records its keyword arguments into ``Started``."""

    def __init__(self, into: dict[str, Any], **kwargs: Any) -> None:
        into.update(kwargs)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def tuned_gc() -> Iterator[None]:
    """The hot path's collector policy applied once for the module's starts: each started
    Processor applies it too, and the policy composes (reference-counted), so a start costs
    no full collection and freeze (a second each in a process that has imported
    TensorFlow); the policy is no option's business."""
    gc_tuned(True)
    try:
        yield
    finally:
        gc_tuned(False)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tuned_gc: None) -> Iterator[Started]:
    """Make ``lstm-stream run`` start its real Processor without a network: the
    Processor's :class:`Network` makes clients, admin and metrics server that record their
    arguments and prepares no topic but records what it was asked, its engine factory
    records its EngineOptions, and ``run`` keeps the started stages and returns right after
    the start. The root logger's level is restored afterwards (``--log-level`` sets it)."""
    seen = Started()

    class StartOnly(runtime.Processor):
        def __init__(self, settings: Settings) -> None:
            # A registry of its own (not the process-wide one), the recording engine builder
            # and the recording network.
            super().__init__(
                settings, registry=CollectorRegistry(), engine_factory=build, network=network
            )
            seen.processor = self

        async def run(self, stop_event: asyncio.Event | None = None) -> Any:
            try:
                await self.start(stop_event)
                seen.built = self.stages  # the close drops them
            finally:
                await self.close()
            return self.stats

    class Consumer(_Recorder):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(seen.consumer, **kwargs)

        def subscribe(self, topics: list[str], listener: Any = None) -> None:
            seen.subscribed.extend(topics)

        async def getmany(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
            await asyncio.Event().wait()  # nothing to fetch; the loop is cancelled on close
            return {}

        def assignment(self) -> set[Any]:
            return set()

        def paused(self) -> set[Any]:
            return set()

    class Producer(_Recorder):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(seen.producer, **kwargs)

    class Admin(_Recorder):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(seen.admin, **kwargs)

    async def prepare_topics(admin_kw: Any, **kwargs: Any) -> Any:
        seen.topics.update(kwargs)
        names = [*kwargs["input_topics"], *kwargs["output_topics"]]
        return SimpleNamespace(partitions=dict.fromkeys(names, 1))

    async def prepare_state_topics(admin_kw: Any, state_topics: Any, *args: Any, **kw: Any) -> None:
        seen.state_topics.update(state_topics)

    class Server:
        port = 0  # never bound

        def __init__(self, registry: Any, **kwargs: Any) -> None:
            seen.server = kwargs

        def start(self) -> None:
            pass

        def close(self) -> None:
            pass

    def build(options: EngineOptions, model: Any = None) -> Any:
        seen.engine_options.append(options)
        return _StandinEngine()

    network = Network(
        consumer=Consumer,
        producer=Producer,
        admin=Admin,
        prepare_topics=prepare_topics,
        prepare_state_topics=prepare_state_topics,
        metrics_server=Server,
    )
    seen.serve = lambda settings: command.run_until_signalled(settings, StartOnly)
    for name in list(os.environ):
        if name.startswith("LSTM_STREAM_"):
            monkeypatch.delenv(name)  # only the case's own variables
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        yield seen
    finally:
        root.setLevel(level)


def _start_run(
    name: str, source: str | None, seen: Started, monkeypatch: pytest.MonkeyPatch, tmp: Path
) -> Started:
    """``lstm-stream run`` with the row's value given through ``source`` (None: not at
    all), started and closed; what it configured."""
    opt, row = RUN[name], RUNTIME_ROWS[name]
    base = {"input_topics": "in", "output_topic": "out", "model": RUNTIME_MODEL}
    argv = [a for n in REQUIRED if n != name for a in _flag_args(RUN[n], base[n])]
    argv += row.extra
    if source == "flag":
        argv += _flag_args(opt, row.text)
    elif source == "env":
        for key, value in _env(opt, row.text).items():
            monkeypatch.setenv(key, value)
    elif source == "toml":
        path = tmp / "run.toml"
        path.write_text(_toml(opt, row.text))
        argv += ["--config", str(path)]
    parser, _ = cli.command_parser("run")
    assert seen.serve is not None
    assert command.main(parser.parse_args(argv), serve=seen.serve) == 0
    seen.root_level = logging.getLogger().level
    return seen


@pytest.mark.parametrize(
    ("name", "source"), RUNTIME_CASES, ids=[f"{n}-{s}" for n, s in RUNTIME_CASES]
)
def test_every_run_option_reaches_the_started_processor(
    name: str,
    source: str,
    started: Started,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    row = RUNTIME_ROWS.get(name)
    if row is None:
        pytest.fail(f"run option {name!r} has no row in RUNTIME_ROWS: add one")
    assert row.observe(_start_run(name, source, started, monkeypatch, tmp_path)) == row.expected


@pytest.mark.parametrize("name", [n for n in RUN if n not in REQUIRED])
def test_without_the_option_the_started_processor_differs(
    name: str, started: Started, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The observation of every runtime row changes with the value: without it the row
    would not notice a lost value."""
    row = RUNTIME_ROWS.get(name)
    if row is None:
        pytest.fail(f"run option {name!r} has no row in RUNTIME_ROWS: add one")
    assert row.observe(_start_run(name, None, started, monkeypatch, tmp_path)) != row.expected


def test_every_runtime_row_is_a_run_option() -> None:
    assert set(RUNTIME_ROWS) - set(RUN) == set()
