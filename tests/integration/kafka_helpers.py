"""Helpers for the ``lstm-stream run`` integration tests (real broker, no Kafka mocks).

Fixtures (import them into a test module to use them):

* ``no_leftover_tasks`` -- fails a test that leaves asyncio tasks running;
* ``tiny_model`` -- a small LSTM saved to a temporary ``.keras`` file (session-wide).

Functions: producing raw or synthetic records, reading a whole topic, running a processor
in-process, and the reference outputs of the same records through an in-process Engine
(the replay path).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

import processor  # noqa: F401  (TF environment defaults before keras)
from processor.codec import decode_output, encode_input, iter_framed
from processor.kafka.runtime import Processor
from processor.kafka.settings import Settings
from processor.options import EngineOptions, build_engine
from processor.replay import replay

ROOT = Path(__file__).resolve().parents[2]
FEATURES = 4


@pytest.fixture
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fail the test if it leaves asyncio tasks running (they are cancelled first, so the
    next test starts clean)."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and t not in before]
    leftover = [t for t in leftover if not t.done()]
    for t in leftover:
        t.cancel()
    if leftover:
        await asyncio.gather(*leftover, return_exceptions=True)
        pytest.fail(f"test left {len(leftover)} tasks running: {leftover}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1-layer LSTM(8) + Dense(2) on 4 features, saved as .keras (fast to load/trace)."""
    import keras

    keras.utils.set_random_seed(11)
    inp = keras.Input((None, FEATURES))
    h = keras.layers.LSTM(8, return_sequences=True)(inp)
    out = keras.layers.Dense(2)(h)
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    keras.Model(inp, out).save(path)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(
    bootstrap: str, model: str, inputs: Sequence[str], output: str, group: str, **kw: Any
) -> Settings:
    """Small, fast settings for tests (override anything with keywords: the engine's
    options, such as ``max_batch``, go to ``Settings.engine``)."""
    engine: dict[str, Any] = {"model": model, "max_batch": 64, "cache_capacity": 1024, "threads": 1}
    base: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "input_topics": tuple(inputs),
        "output_topic": output,
        "group_id": group,
        "queue_max_records": 512,
        "commit_interval_ms": 200,
        "drain_timeout": 30.0,
    }
    engine_names = {f.name for f in fields(EngineOptions)}
    for name, value in kw.items():
        (engine if name in engine_names else base)[name] = value
    return Settings(engine=EngineOptions(**engine), **base)


# ---- producing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One produced record and where it landed."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


async def send_raw(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> list[Sent]:
    """Produce ``(key, value)`` records in order (each partition keeps this order)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        futures = []
        pairs = list(records)
        for key, value in pairs:
            futures.append(await producer.send(topic, value=value, key=key))
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(k, v, m.partition, m.offset) for (k, v), m in zip(pairs, metas, strict=True)]


def synthetic_records(
    streams: int, steps: int, seed: int = 0, prefix: str = "s", start_seq: int = 0
) -> list[tuple[str, bytes]]:
    """``steps`` records per stream, step-major (every stream's seq k before seq k+1),
    as ``(stream id, encoded input)`` with the ``stream`` field included."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        xs = rng.standard_normal((streams, FEATURES)).astype(np.float32)
        for i in range(streams):
            stream = f"{prefix}{i}"
            out.append((stream, encode_input(stream, start_seq + t, xs[i])))
    return out


async def send_synthetic(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    await send_raw(bootstrap, topic, [(s.encode(), v) for s, v in records])


# ---- reading ------------------------------------------------------------------------------


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout: float = 60.0,
    settle: float = 0.5,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning, read until ``until(records)`` holds
    (fails the test after ``timeout``), then ``settle`` seconds more to catch extras."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        parts = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + 30
        while not parts:
            assert time.monotonic() < deadline, f"topic {topic} has no metadata"
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, p) for p in parts])
        deadline = time.monotonic() + timeout
        while not until(out):
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: condition not met after {timeout}s with {len(out)} records")
            batch = await consumer.getmany(timeout_ms=200)
            out.extend(r for rs in batch.values() for r in rs)
        end = time.monotonic() + settle
        while time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=100)
            out.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return out


def outputs_by_key(
    records: Iterable[ConsumerRecord[bytes, bytes]],
) -> dict[tuple[str, int], list[np.ndarray]]:
    """Decoded outputs grouped by (stream, seq); also checks key == stream id."""
    out: dict[tuple[str, int], list[np.ndarray]] = {}
    for r in records:
        d = decode_output(r.value or b"")
        assert r.key == d["stream"].encode(), (r.key, d["stream"])
        out.setdefault((d["stream"], d["seq"]), []).append(d["y"])
    return out


# ---- running ------------------------------------------------------------------------------


@dataclass
class Running:
    """A processor running in this event loop (see :func:`running`)."""

    proc: Processor
    task: asyncio.Task[Any]
    stop: asyncio.Event

    def check(self) -> None:
        """Raise the processor's failure now if its run already ended with one."""
        if self.task.done() and not self.task.cancelled() and self.task.exception():
            raise AssertionError(f"processor failed: {self.task.exception()!r}")


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    engine_factory: Callable[[EngineOptions], Any] | None = None,
) -> AsyncIterator[Running]:
    """Run a processor in this event loop; on exit it is stopped gracefully (drain +
    commit) and a failure of the run is raised."""
    proc = Processor(
        settings, registry=registry or CollectorRegistry(), engine_factory=engine_factory
    )
    stop = asyncio.Event()
    run = Running(proc, asyncio.create_task(proc.run(stop)), stop)
    try:
        yield run
    finally:
        stop.set()
        try:
            await asyncio.wait_for(run.task, 60)
        finally:
            if not run.task.done():
                run.task.cancel()


async def wait_for(
    cond: Callable[[], bool], timeout: float, what: str, run: Running | None = None
) -> None:
    """Poll ``cond`` every 50 ms; fail the test after ``timeout`` seconds, or at once when
    the processor's run ended with an error."""
    deadline = time.monotonic() + timeout
    while not cond():
        if run is not None:
            run.check()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# ---- reference (replay path) ---------------------------------------------------------------


def reference_outputs(
    model: str, records: Iterable[bytes], **engine: Any
) -> dict[tuple[str, int], np.ndarray]:
    """The same input records through an in-process Engine with ``processor.replay``."""
    options = EngineOptions(model=model, threads=1, max_batch=64, cache_capacity=1024, **engine)
    eng = build_engine(options)
    out = io.BytesIO()
    replay(eng, io.BytesIO(b"".join(records)), out, io.BytesIO())
    out.seek(0)
    ref: dict[tuple[str, int], np.ndarray] = {}
    for frame in iter_framed(out, 1 << 20):
        assert frame.raw is not None
        d = decode_output(frame.raw)
        ref[(d["stream"], d["seq"])] = d["y"]
    return ref


def subprocess_env() -> dict[str, str]:
    """Environment for ``python -m processor.cli`` children: this interpreter's packages,
    quiet TensorFlow, and no LSTM_STREAM_* settings leaking in from the developer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_STREAM_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


PYTHON = sys.executable
