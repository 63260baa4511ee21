"""Helpers for the ``lstm-stream run`` integration tests (real broker, no Kafka mocks).

Fixtures (import them into a test module to use them):

* ``no_leftover_tasks`` -- fails a test that leaves asyncio tasks running;
* ``tiny_model`` -- a small LSTM saved to a temporary ``.keras`` file (session-wide).

Functions: producing raw or synthetic records (at once, or step after step until stopped:
``SteppedProducer``), reading a whole topic, each stream's outputs in topic order
(``seqs_by_stream``, ``assert_outputs_in_seq_order``), running a processor in-process or as
a ``lstm-stream run`` subprocess (``RunProcess``), and the reference outputs of the same
records through an in-process Engine (the replay path).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
from processor.config.engine_options import EngineOptions
from processor.engine.build import build_engine
from processor.kafka.runtime import Processor
from processor.kafka.settings import Settings
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


def save_lstm_model(path: Path, units: int, seed: int) -> str:
    """A 1-layer LSTM(``units``) + Dense(2) on ``FEATURES`` inputs with seeded random
    weights, saved as .keras at ``path``; returns the path."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, FEATURES))
    h = keras.layers.LSTM(units, return_sequences=True)(inp)
    out = keras.layers.Dense(2)(h)
    keras.Model(inp, out).save(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1-layer LSTM(8) + Dense(2) on 4 features, saved as .keras (fast to load/trace)."""
    return save_lstm_model(tmp_path_factory.mktemp("models") / "tiny.keras", 8, seed=11)


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


class SteppedProducer:
    """Produces one record per stream per step (``synthetic_records``, step k has seq k),
    a step every ``interval`` seconds, until :meth:`stop`: input keeps arriving for as long
    as a test needs, however slow or fast the machine. ``steps`` counts complete steps."""

    def __init__(self, bootstrap: str, topic: str, streams: int, interval: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.streams = streams
        self.interval = interval
        self.steps = 0
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2)
        await producer.start()
        try:
            while not self._stop.is_set():
                step = synthetic_records(self.streams, 1, seed=self.steps, start_seq=self.steps)
                futures = [
                    await producer.send(self.topic, value=v, key=s.encode()) for s, v in step
                ]
                await asyncio.gather(*futures)
                self.steps += 1
                await asyncio.sleep(self.interval)
        finally:
            await producer.stop()

    async def wait_steps(self, n: int, timeout: float = 60) -> None:
        """Until ``n`` steps are complete (fails the test if the producer failed)."""
        deadline = time.monotonic() + timeout
        while self.steps < n:
            assert not self.task.done(), self.task
            if time.monotonic() > deadline:
                pytest.fail(f"only {self.steps} of {n} steps produced after {timeout}s")
            await asyncio.sleep(0.02)

    async def stop(self) -> int:
        """Stop after the current step; returns the number of complete steps produced."""
        self._stop.set()
        await self.task
        return self.steps


def transactional_producer(bootstrap: str, transactional_id: str) -> AIOKafkaProducer:
    """An unstarted transactional producer, idempotent with ``acks="all"`` (what
    transactions require, and how the processor's own transactional producers run)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        enable_idempotence=True,
        acks="all",
    )


# ---- reading ------------------------------------------------------------------------------


def topic_reader(bootstrap: str, isolation_level: str = "read_committed") -> AIOKafkaConsumer:
    """An unstarted consumer outside any group for tests that ``assign()`` the partitions
    they read: it starts at the earliest offset and commits nothing. ``read_committed`` (the
    default) sees committed transactions only; ``read_uncommitted`` sees every record in the
    log, aborted ones included."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level=isolation_level,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


def group_member(
    bootstrap: str, group: str, *topics: str, isolation_level: str = "read_uncommitted"
) -> AIOKafkaConsumer:
    """An unstarted member of consumer group ``group`` (subscribed to ``topics`` if any, else
    the caller subscribes), starting at the earliest offset where the group has none and
    committing nothing by itself; a short heartbeat interval so that rebalances settle
    quickly."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
    )


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
    consumer = topic_reader(bootstrap, "read_uncommitted")
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


def seqs_by_stream(records: Iterable[ConsumerRecord[bytes, bytes]]) -> dict[str, list[int]]:
    """Each stream's output seqs in the order the output topic holds them (by partition and
    offset); also checks that every stream's outputs are in one partition (keyed by stream
    id), the only place where their order is defined."""
    seqs: dict[str, list[int]] = {}
    partition_of: dict[str, int] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        d = decode_output(r.value or b"")
        stream = d["stream"]
        assert partition_of.setdefault(stream, r.partition) == r.partition, (
            f"{stream}: outputs in partitions {partition_of[stream]} and {r.partition}"
        )
        seqs.setdefault(stream, []).append(d["seq"])
    return seqs


def assert_outputs_in_seq_order(
    records: Iterable[ConsumerRecord[bytes, bytes]], *, redelivered: bool = False
) -> dict[str, list[int]]:
    """Every stream's outputs are in the output topic in seq order: strictly increasing; with
    ``redelivered`` (at-least-once re-deliveries after a rebalance), each seq's first output
    comes after the first outputs of every lower seq (repeats of earlier seqs may follow).
    Returns :func:`seqs_by_stream`."""
    seqs = seqs_by_stream(records)
    for stream, order in seqs.items():
        if redelivered:
            first: list[int] = []
            for seq in order:
                if seq not in first:
                    first.append(seq)
            assert first == sorted(first), f"{stream}: first outputs out of seq order: {order}"
        else:
            assert all(a < b for a, b in itertools.pairwise(order)), (
                f"{stream}: outputs out of seq order: {order}"
            )
    return seqs


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


# ---- ``lstm-stream run`` as a subprocess ----------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def metric_total(body: str, name: str) -> float:
    """The sum of every sample of metric ``name`` in a /metrics text body."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


class RunProcess:
    """``python -m processor.cli run ARGS`` with its output (stdout and stderr) in ``log``
    and a metrics server on a free port. Call :meth:`kill` in a ``finally``."""

    def __init__(self, args: list[str], log: Path, *, metrics: bool = True) -> None:
        self.port = free_port()
        self.log = log
        self._fp = log.open("w")
        extra = ["--metrics-port", str(self.port), "--metrics-host", "127.0.0.1"] if metrics else []
        self.popen = subprocess.Popen(
            [PYTHON, "-m", "processor.cli", "run", *args, *extra],
            stdout=self._fp,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(),
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_ready(self, timeout: float = 120) -> None:
        """Until /readyz answers 200 (fails the test if the process exits first)."""
        await self.wait_until(lambda: http_get(self.url("/readyz"))[0] == 200, timeout, "readiness")

    async def wait_for_log(self, text: str, timeout: float = 120) -> None:
        """Until ``text`` appears in the log (fails the test if the process exits first)."""
        await self.wait_until(lambda: text in self.log.read_text(), timeout, repr(text))

    async def wait_until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(cond):
            if self.popen.poll() is not None:
                pytest.fail(f"run exited ({self.popen.returncode}) before {what}:\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout}s:\n{self.text()}")
            await asyncio.sleep(0.2)

    async def outputs_acked(self) -> float:
        status, body = await asyncio.to_thread(http_get, self.url("/metrics"))
        return metric_total(body, "lstm_stream_records_out_total") if status == 200 else 0.0

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.popen.send_signal(signum)

    async def wait(self, timeout: float = 60) -> int:
        """The exit code (fails the test if the process is still running after ``timeout``)."""
        try:
            rc = await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail(f"run did not exit within {timeout}s:\n{self.text()}")
        self._fp.close()
        return rc

    async def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code."""
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._fp.close()

    def text(self) -> str:
        if not self._fp.closed:
            self._fp.flush()
        return self.log.read_text()[-5000:]
