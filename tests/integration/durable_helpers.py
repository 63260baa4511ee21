"""Shared pieces of the durable-state fault-injection tests (real broker, processors as
``lstm-stream run`` subprocesses killed and restarted).

* :func:`make_workload` -- a seeded input: many streams with resets, ends, rebirths after an
  end, interleaved with bad records of known reasons;
* :class:`PacedProducer` -- produces a workload in order at a set rate in the background (so
  records arrive throughout a run), up to a budget the test can raise, pausable;
* :func:`read_to_end` -- a whole topic up to its current end offsets;
* :func:`state_last_values` -- the last value per key of a state topic, partition by
  partition (what a compacted topic converges to);
* :class:`Topics` / :func:`make_topics` -- the input, output and dead-letter topics of one
  test;
* :func:`verify_run` -- the verifier: compares everything a run left in Kafka with an
  uninterrupted in-process reference and raises one ``AssertionError`` listing every kind
  of problem found (with counts and examples); :func:`verify_finished_run` -- what every
  fault test calls at its end: the reference, the verifier, the count of aborted output
  records and the cleanup of the state topic;
* the names of the metrics these tests watch, and small waits on conditions with deadlines
  (committed offsets, metrics).

Durable state, as these tests expect it: ``lstm-stream run`` keeps each stream's state in a
compacted topic per input topic, ``f"{group}-{input}-state"`` by default (:func:`state_topic`),
keyed by stream id, in the input record's partition, with a msgpack map value holding at
least ``seq`` (the last applied seq) and ``src`` (``[input topic, partition, next offset]``),
and a tombstone for a stream that ended with an ``end`` record.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import os
import random
import signal
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from kafka_helpers import (
    FEATURES,
    RunProcess,
    http_get,
    metric_total,
    reference_outputs,
)

from processor.codec import (
    MISSING_KEY,
    NOT_A_MAP,
    SHAPE_MISMATCH,
    UNDECODABLE,
    decode_output,
    encode_input,
)

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka-local" / "kafka.sh"
RTOL = 1e-5
ATOL = 1e-6
REASON_HEADER = "lstm-stream.reason"
EXAMPLES = 5  # examples per problem kind in a failure message

# Metrics of ``lstm-stream run`` that the fault tests wait on or report (sums over labels
# unless a label is named).
OUT = "lstm_stream_records_out_total"
ASSIGNED = "lstm_stream_assigned_partitions"
PRODUCERS = "lstm_stream_producers_active"
COMMITTED = 'lstm_stream_transactions_total{result="committed"}'
FENCED = 'lstm_stream_transactions_total{result="fenced"}'
TXN_COUNT = "lstm_stream_transaction_seconds_count"


def state_topic(group: str, input_topic: str) -> str:
    """The default name of the state topic of ``input_topic`` for consumer group ``group``."""
    return f"{group}-{input_topic}-state"


@dataclass
class Topics:
    """The three topics of one test run: input, output and dead letters."""

    source: str
    out: str
    dlq: str


async def make_topics(factory: Callable[..., Awaitable[str]], inputs: int = 3) -> Topics:
    """Fresh topics from the ``topic_factory`` fixture: ``inputs`` input partitions, three
    output partitions, one dead-letter partition (the factory deletes them after the test)."""
    return Topics(
        source=await factory(partitions=inputs, prefix="in"),
        out=await factory(partitions=3, prefix="out"),
        dlq=await factory(partitions=1, prefix="dlq"),
    )


# ---- workload -----------------------------------------------------------------------------


@dataclass
class Workload:
    """A seeded input for one test.

    ``records`` are ``(key, value)`` in produce order (each stream's records in seq order);
    ``valid`` the values of the valid ones in that order (the reference's input);
    ``expected`` every valid ``(stream, seq)`` (seqs keep increasing across a stream's
    lives, so the pair names one record); ``bad`` maps a bad record's value (unique) to its
    expected dead-letter reason; ``last`` maps each stream to ``(last seq, ended)`` of its
    last valid record.
    """

    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    valid: list[bytes] = field(default_factory=list)
    expected: set[tuple[str, int]] = field(default_factory=set)
    bad: dict[bytes, str] = field(default_factory=dict)
    last: dict[str, tuple[int, bool]] = field(default_factory=dict)
    resets: int = 0
    ends: int = 0
    reborn: int = 0


def _stream_script(
    stream: str, n: int, rng: np.random.Generator, *, reset_p: float, fate: str
) -> list[tuple[int, np.ndarray, bool, bool]]:
    """``n`` records ``(seq, x, reset, end)`` of one stream. ``fate``: ``"plain"``, ``"end"``
    (ends with its last record), ``"reborn"`` (an end in the middle, then a new life) or
    ``"reborn_end"`` (both)."""
    seq = int(rng.integers(0, 5))
    xs = rng.standard_normal((n, FEATURES)).astype(np.float32)
    mid = int(rng.integers(1, max(2, n - 1))) if fate.startswith("reborn") else -1
    out = []
    for i in range(n):
        end = i == mid or (i == n - 1 and fate in ("end", "reborn_end"))
        reset = bool(i > 0 and i - 1 != mid and not end and rng.random() < reset_p)
        out.append((seq, xs[i], reset, end))
        seq += int(rng.integers(1, 4))
    return out


def make_workload(
    seed: int,
    *,
    streams: int,
    records: int,
    reset_p: float = 0.02,
    end_share: float = 0.15,
    reborn_share: float = 0.1,
    bad_share: float = 0.015,
    prefix: str = "d",
) -> Workload:
    """About ``records`` valid records over ``streams`` streams (every stream at least two),
    shuffled across streams and kept in order within each, with about ``bad_share`` bad
    records mixed in (undecodable bytes, a msgpack non-map, a wrong shape, a missing key).
    """
    rng = np.random.default_rng(seed)
    fates = rng.choice(
        ["plain", "end", "reborn", "reborn_end"],
        size=streams,
        p=[1 - end_share - reborn_share, end_share, reborn_share / 2, reborn_share / 2],
    )
    per = max(2, records // streams)
    scripts: list[list[tuple[bytes, bytes, str, int, bool]]] = []
    w = Workload()
    for j in range(streams):
        stream = f"{prefix}{j}"
        n = int(rng.integers(max(2, per // 2), per + per // 2 + 1))
        script = _stream_script(stream, n, rng, reset_p=reset_p, fate=str(fates[j]))
        rows: list[tuple[bytes, bytes, str, int, bool]] = []
        for seq, x, reset, end in script:
            rows.append((stream.encode(), encode_input(stream, seq, x, reset=reset, end=end),
                         stream, seq, end))  # fmt: skip
            w.resets += reset
            w.ends += end
        w.reborn += str(fates[j]).startswith("reborn")
        w.last[stream] = (script[-1][0], script[-1][3])
        scripts.append(rows)
    # Interleave: a random owner per slot, each stream's records in order.
    owner = np.repeat(np.arange(streams), [len(s) for s in scripts])
    rng.shuffle(owner)
    pos = [0] * streams
    n_valid = len(owner)
    bad_at = set(rng.choice(n_valid, size=int(n_valid * bad_share), replace=False).tolist())
    for i, j in enumerate(owner.tolist()):
        if i in bad_at:
            key, value, reason = _bad_record(len(w.bad), f"{prefix}{j}", rng)
            w.records.append((key, value))
            w.bad[value] = reason
        key, value, stream, seq, _end = scripts[j][pos[j]]
        pos[j] += 1
        w.records.append((key, value))
        w.valid.append(value)
        w.expected.add((stream, seq))
    return w


def _bad_record(i: int, stream: str, rng: np.random.Generator) -> tuple[bytes | None, bytes, str]:
    """The ``i``-th bad record (a value unique to it) for ``stream`` and its expected reason."""
    kind = i % 4
    tag = f"bad-{i}".encode()
    if kind == 0:  # 0xc1 is never used by msgpack
        return stream.encode(), b"\xc1" + tag, UNDECODABLE
    if kind == 1:
        return stream.encode(), msgpack.packb([tag.decode(), 1, 2]), NOT_A_MAP
    if kind == 2:
        x = rng.standard_normal(FEATURES - 1).astype(np.float32)
        return stream.encode(), encode_input(stream, 10**9 + i, x), SHAPE_MISMATCH
    x = rng.standard_normal(FEATURES).astype(np.float32)
    return None, encode_input(stream, 10**9 + i, x), MISSING_KEY


# ---- producing ----------------------------------------------------------------------------


class PacedProducer:
    """Produces ``records`` in order, ``chunk`` records at a time, at about ``rate`` records
    per second, in a background task: input keeps arriving while processors start, run, are
    killed and restarted. It stops before record ``budget`` until :meth:`allow` raises the
    budget (default: everything), and between :meth:`pause` and :meth:`resume`.

    ``sent`` counts records acknowledged by the broker (each chunk is acknowledged before
    the next one is sent, so each partition keeps the records' order); ``partition_of``
    maps each key to the partition its records went to.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes]],
        rate: float,
        *,
        chunk: int = 50,
        budget: int | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records = records
        self.rate = rate
        self.chunk = chunk
        self.budget = len(records) if budget is None else budget
        self.sent = 0
        self.partition_of: dict[bytes, int] = {}
        self._more = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._idle = asyncio.Event()  # set while waiting for a budget or a resume
        self._repace = False
        self.task = asyncio.create_task(self._run())

    def allow(self, n: int | None = None) -> None:
        """Let the producer go on up to record ``n`` (default: the end)."""
        self.budget = len(self.records) if n is None else min(n, len(self.records))
        self._more.set()

    def set_rate(self, rate: float) -> None:
        """Pace at ``rate`` records per second from now on."""
        self.rate = rate
        self._repace = True

    def pause(self) -> None:
        """Stop after the chunk in flight (:meth:`wait_paused` waits for it)."""
        self._running.clear()

    async def wait_paused(self, timeout: float = 60) -> None:
        """Until the producer, paused, has nothing in flight."""
        deadline = time.monotonic() + timeout
        while not self._idle.is_set() and not self.task.done():
            assert time.monotonic() < deadline, "the producer did not pause"
            await asyncio.sleep(0.02)

    def resume(self) -> None:
        self._running.set()

    @property
    def done(self) -> bool:
        return self.sent >= len(self.records)

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, request_timeout_ms=60000
        )
        await producer.start()
        try:
            t0 = time.monotonic()
            base = 0
            while self.sent < len(self.records):
                if self.sent >= self.budget or not self._running.is_set():
                    self._more.clear()
                    self._idle.set()
                    if self.sent >= self.budget:
                        await self._more.wait()
                    await self._running.wait()
                    self._idle.clear()
                    t0, base = time.monotonic(), self.sent  # pace from here on
                    continue
                if self._repace:
                    self._repace = False
                    t0, base = time.monotonic(), self.sent
                end = min(self.sent + self.chunk, self.budget)
                batch = self.records[self.sent : end]
                futures = [await producer.send(self.topic, value=v, key=k) for k, v in batch]
                metas = await asyncio.gather(*futures)
                for (k, _v), m in zip(batch, metas, strict=True):
                    if k is not None:
                        self.partition_of[k] = m.partition
                self.sent = end
                ahead = t0 + (self.sent - base) / self.rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing, not synchronisation
        finally:
            await producer.stop()

    async def wait_sent(self, n: int, timeout: float = 120) -> None:
        """Until ``n`` records are acknowledged (fails the test if the producer failed)."""
        deadline = time.monotonic() + timeout
        while self.sent < n:
            if self.task.done():
                self.task.result()
                pytest.fail(f"producer ended after {self.sent} of {n} records")
            if time.monotonic() > deadline:
                pytest.fail(f"only {self.sent} of {n} records produced after {timeout}s")
            await asyncio.sleep(0.05)

    async def finish(self, timeout: float = 300) -> None:
        """Until every record is acknowledged."""
        self.allow()
        self.resume()
        await self.wait_sent(len(self.records), timeout)
        await asyncio.wait_for(self.task, 30)

    async def close(self) -> None:
        """Cancel the background task (for ``finally`` blocks)."""
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


# ---- reading ------------------------------------------------------------------------------


async def _consumer(bootstrap: str, isolation_level: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    await consumer.start()
    # Let the consumer's own tasks start: stopping it before they ran raises CancelledError.
    await asyncio.sleep(0)
    return consumer


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (waits up to 30 s for its metadata)."""
    parts = consumer.partitions_for_topic(topic)
    deadline = time.monotonic() + 30
    while not parts:
        assert time.monotonic() < deadline, f"topic {topic} has no metadata"
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def topic_exists(bootstrap: str, topic: str) -> bool:
    consumer = await _consumer(bootstrap, "read_uncommitted")
    try:
        return topic in await consumer.topics()
    finally:
        await consumer.stop()


async def read_to_end(
    bootstrap: str,
    topic: str,
    *,
    isolation_level: str = "read_committed",
    timeout: float = 120,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to the end offsets it has now (for topics nobody writes
    any more), in partition and offset order."""
    consumer = await _consumer(bootstrap, isolation_level)
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: not read to its end offsets {ends} in {timeout}s")
            batch = await consumer.getmany(timeout_ms=200, max_records=10000)
            out.extend(r for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


async def end_offsets(
    bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted"
) -> dict[int, int]:
    """Partition -> high watermark; with ``isolation_level="read_committed"`` the last
    stable offset instead (below the high watermark while a transaction with records in the
    partition is open)."""
    consumer = await _consumer(bootstrap, isolation_level)
    try:
        tps = await _partitions(consumer, topic)
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def state_last_values(bootstrap: str, topic: str) -> dict[bytes, tuple[int, bytes | None]]:
    """Key -> (partition, last value) of a state topic: each partition read to its end in
    order, a later record of a key replacing an earlier one (a tombstone's value is None)."""
    last: dict[bytes, tuple[int, bytes | None]] = {}
    for r in await read_to_end(bootstrap, topic):
        assert r.key is not None, f"{topic}: a record without a key at {r.partition}/{r.offset}"
        last[r.key] = (r.partition, r.value)
    return last


async def committed(admin: AIOKafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    """Partition -> the group's committed offset (partitions without one are absent)."""
    offsets = await admin.list_consumer_group_offsets(group)
    return {
        tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic and m.offset >= 0
    }


async def wait_committed_to_end(
    admin: AIOKafkaAdminClient,
    bootstrap: str,
    group: str,
    topic: str,
    *,
    timeout: float,
    alive: Sequence[RunProcess] = (),
) -> None:
    """Until the group's committed offsets reach the end of every partition of ``topic``
    (fails at the deadline, or when one of ``alive`` exits)."""
    deadline = time.monotonic() + timeout
    ends: dict[int, int] = {}
    done: dict[int, int] = {}
    while True:
        ends = await end_offsets(bootstrap, topic)
        done = await committed(admin, group, topic)
        if ends and all(done.get(p, 0) >= end for p, end in ends.items()):
            return
        for proc in alive:
            if proc.popen.poll() is not None:
                pytest.fail(f"run exited ({proc.popen.returncode}):\n{proc.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"committed {done} did not reach the end {ends} in {timeout}s")
        await asyncio.sleep(0.3)


async def open_transactions(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> records a read_committed reader cannot see yet (high watermark minus last
    stable offset), for the partitions of ``topic`` that have an open transaction."""
    high = await end_offsets(bootstrap, topic)
    stable = await end_offsets(bootstrap, topic, isolation_level="read_committed")
    return {p: high[p] - stable.get(p, 0) for p in high if high[p] > stable.get(p, 0)}


async def metric(proc: RunProcess, name: str) -> float:
    """The sum of metric ``name`` on ``proc``'s /metrics (0 when it does not answer). ``name``
    may carry labels: ``'lstm_stream_transactions_total{result="fenced"}'``."""
    status, body = await asyncio.to_thread(http_get, proc.url("/metrics"))
    return metric_total(body, name) if status == 200 else 0.0


async def wait_metric(
    proc: RunProcess, name: str, cond: Callable[[float], bool], timeout: float, what: str
) -> float:
    """Until ``cond(metric)`` holds on ``proc`` (fails if it exits first or at the deadline)."""
    value = 0.0

    def check() -> bool:
        nonlocal value
        status, body = http_get(proc.url("/metrics"))
        value = metric_total(body, name) if status == 200 else 0.0
        return status == 200 and cond(value)

    await proc.wait_until(check, timeout, what)
    return value


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


# ---- the verifier -------------------------------------------------------------------------


@dataclass
class Problems:
    """Problems found by :func:`verify_run`, by kind (each a list of one-line examples)."""

    kinds: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, text: str) -> None:
        self.kinds[kind].append(text)

    def report(self) -> str:
        lines = []
        for kind, items in self.kinds.items():
            lines.append(f"{kind}: {len(items)}")
            lines.extend(f"    {t}" for t in items[:EXAMPLES])
        return "\n".join(lines)


@dataclass
class Verified:
    """What :func:`verify_run` read (for the test's own extra checks and its report)."""

    outputs: int
    distinct: int
    redelivered: int
    dead_letters: int
    problems: Problems


async def verify_run(
    bootstrap: str,
    admin: AIOKafkaAdminClient,
    *,
    workload: Workload,
    reference: dict[tuple[str, int], np.ndarray],
    group: str,
    input_topic: str,
    output_topic: str,
    dlq_topic: str,
    partition_of: dict[bytes, int],
    check_state: bool = True,
    exact: bool = False,
) -> Verified:
    """Compare what a finished run left in Kafka with the uninterrupted reference; raise one
    ``AssertionError`` that lists every kind of problem (count and examples) if any:

    * ``gap``: a valid input record without an output; ``unexpected output``: an output of
      no valid input record;
    * ``wrong value``: an output copy not equal to the reference (``RTOL``/``ATOL``): what a
      stream that restarted from its initial state produces;
    * ``seq order``: a stream's outputs, first occurrences only, not strictly increasing in
      topic order (a re-delivery may repeat a suffix), or in more than one partition;
    * ``dead letter``: a bad record without a dead letter of its expected reason;
    * with ``exact`` (exactly-once: the topics are read read_committed): ``duplicate``, a
      valid record with more than one output; ``duplicate dead letter``, a bad record with
      more than one dead letter;
    * ``commit``: the group's committed offsets not at the end of an input partition;
    * ``state``: the state topic missing, or its last value of a stream not the stream's
      last seq (msgpack ``seq``, ``src`` naming the input topic and partition), or not a
      tombstone for a stream whose last record was ``end``.
    """
    problems = Problems()
    outputs = await read_to_end(bootstrap, output_topic)
    got: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    firsts: dict[str, list[int]] = defaultdict(list)
    part: dict[str, int] = {}
    for r in outputs:
        d = decode_output(r.value or b"")
        stream, seq = d["stream"], d["seq"]
        if r.key != stream.encode():
            problems.add("key", f"{r.partition}/{r.offset}: key {r.key!r} for stream {stream}")
        p = r.partition
        if part.setdefault(stream, p) != p:
            problems.add("seq order", f"{stream}: outputs in partitions {part[stream]} and {p}")
        if (stream, seq) not in got:
            firsts[stream].append(seq)
        got[(stream, seq)].append(d["y"])
    for key in sorted(workload.expected - set(got)):
        problems.add("gap", f"no output for {key}")
    if exact:
        for key, ys in sorted(got.items()):
            if len(ys) > 1:
                problems.add("duplicate", f"{key}: {len(ys)} outputs")
    for key in sorted(set(got) - workload.expected):
        problems.add("unexpected output", f"{key} ({len(got[key])} copies)")
    wrong_streams: set[str] = set()
    for key, ys in sorted(got.items()):
        want = reference.get(key)
        if want is None:
            continue
        for i, y in enumerate(ys):
            if not np.allclose(y, want, rtol=RTOL, atol=ATOL):
                wrong_streams.add(key[0])
                problems.add(
                    "wrong value",
                    f"{key} copy {i + 1}/{len(ys)}: {_fmt(y)} != reference {_fmt(want)}",
                )
    for stream, seqs in firsts.items():
        if any(a >= b for a, b in itertools.pairwise(seqs)):
            problems.add("seq order", f"{stream}: first outputs {seqs}")

    dead = await read_to_end(bootstrap, dlq_topic)
    reasons: dict[bytes, set[str]] = defaultdict(set)
    copies: dict[bytes, int] = defaultdict(int)
    for r in dead:
        headers = dict(r.headers or ())
        reasons[r.value or b""].add(headers.get(REASON_HEADER, b"").decode())
        copies[r.value or b""] += 1
    if exact:
        for value, count in copies.items():
            if count > 1:
                problems.add("duplicate dead letter", f"{value[:24]!r}: {count} dead letters")
    for value, reason in workload.bad.items():
        if reason not in reasons.get(value, set()):
            problems.add(
                "dead letter",
                f"{value[:24]!r}: want {reason}, got {sorted(reasons.get(value, ()))}",
            )

    ends = await end_offsets(bootstrap, input_topic)
    done = await committed(admin, group, input_topic)
    for p, end in sorted(ends.items()):
        if done.get(p, 0) < end:
            problems.add("commit", f"partition {p}: committed {done.get(p)} < end {end}")

    if check_state:
        await _check_state(bootstrap, workload, group, input_topic, partition_of, problems)

    if problems.kinds:
        raise AssertionError(
            f"{len(outputs)} outputs ({len(got)} distinct) of {len(workload.expected)} valid "
            f"records, {len(wrong_streams)} of {len(firsts)} streams with a wrong value, "
            f"{len(dead)} dead letters of {len(workload.bad)} bad records:\n" + problems.report()
        )
    return Verified(len(outputs), len(got), len(outputs) - len(got), len(dead), problems)


async def verify_finished_run(
    bootstrap: str,
    admin: AIOKafkaAdminClient,
    *,
    workload: Workload,
    model: str,
    group: str,
    topics: Topics,
    producer: PacedProducer | None,
    exact: bool = False,
) -> tuple[Verified, int]:
    """The end of a fault test, once every processor of the run has stopped: the
    uninterrupted reference of ``workload.valid`` through ``model`` (computed now, not while
    processors run: they need the two cores), :func:`verify_run` of ``topics`` with
    ``exact``, and a printed summary. Returns what the verifier read and, with ``exact``, the
    number of output records that only a read_uncommitted reader sees (records of aborted
    transactions; 0 without ``exact``, where nothing is written in transactions). The state
    topic the run created is deleted whatever the outcome. ``producer`` is the run's
    :class:`PacedProducer` (None only if the test failed before it existed)."""
    try:
        assert producer is not None
        t0 = time.monotonic()
        reference = await asyncio.to_thread(reference_outputs, model, workload.valid)
        t_ref = time.monotonic() - t0
        verified = await verify_run(
            bootstrap, admin, workload=workload, reference=reference, group=group,
            input_topic=topics.source, output_topic=topics.out, dlq_topic=topics.dlq,
            partition_of=producer.partition_of, exact=exact,
        )  # fmt: skip
        aborted = 0
        seen = (
            f"{verified.outputs} outputs ({verified.redelivered} re-delivered copies), "
            f"{verified.dead_letters} dead letters"
        )
        if exact:
            raw = await read_to_end(bootstrap, topics.out, isolation_level="read_uncommitted")
            aborted = len(raw) - verified.outputs
            seen += f" read_committed; {aborted} more output records read_uncommitted (aborted)"
        print(f"verified{' exactly once' if exact else ''}: {seen}; reference {t_ref:.0f} s")
        return verified, aborted
    finally:
        await delete_topics_quietly(admin, [state_topic(group, topics.source)])


def _fmt(y: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.5f}" for v in np.ravel(y)) + "]"


async def _check_state(
    bootstrap: str,
    workload: Workload,
    group: str,
    input_topic: str,
    partition_of: dict[bytes, int],
    problems: Problems,
) -> None:
    name = state_topic(group, input_topic)
    if not await topic_exists(bootstrap, name):
        problems.add("state", f"state topic {name} does not exist")
        return
    last = await state_last_values(bootstrap, name)
    for stream, (seq, ended) in sorted(workload.last.items()):
        key = stream.encode()
        if key not in last:
            if not ended:  # a tombstone may already be compacted away
                problems.add("state", f"{stream}: no state (last seq {seq})")
            continue
        p, value = last[key]
        if p != partition_of.get(key, p):
            problems.add("state", f"{stream}: state in partition {p}, input in {partition_of[key]}")
        if ended:
            if value is not None:
                problems.add("state", f"{stream}: ended at seq {seq}, state is not a tombstone")
            continue
        if value is None:
            problems.add(
                "state", f"{stream}: a tombstone, but its last record (seq {seq}) is no end"
            )
            continue
        state: Any = msgpack.unpackb(value, raw=False)
        if not isinstance(state, dict) or state.get("seq") != seq:
            got = state.get("seq") if isinstance(state, dict) else state
            problems.add("state", f"{stream}: state seq {got}, last seq {seq}")
            continue
        src = state.get("src")
        if not (isinstance(src, list) and src[:2] == [input_topic, p]):
            problems.add("state", f"{stream}: src {src!r}, want [{input_topic!r}, {p}, ...]")


def run_args(
    bootstrap: str,
    model: str,
    *,
    topics: Topics,
    group: str,
    commit_interval_ms: int = 1000,
    extra: Sequence[str] = (),
) -> list[str]:
    """``lstm-stream run`` flags of these tests: small batches, one thread, the default
    processing guarantee (at-least-once) unless ``extra`` names one, and the default state
    topic name."""
    return [
        "--bootstrap-servers", bootstrap, "--input-topic", topics.source,
        "--output-topic", topics.out, "--dlq-topic", topics.dlq, "--group-id", group,
        "--model", model, "--max-batch", "64",
        "--cache-capacity", "1024", "--queue-max-records", "512",
        "--commit-interval-ms", str(commit_interval_ms), "--threads", "1",
        "--log-level", "INFO",
        # The broker's minimum: a SIGKILLed member leaves the group sooner (restarts wait
        # for it), without changing anything else.
        "--kafka-option", "consumer.session_timeout_ms=6000", *extra,
    ]  # fmt: skip


# ---- killing and restarting -----------------------------------------------------------------


class Lives:
    """The successive lives of one processor: ``lstm-stream run args``, one after the other,
    each logging to ``log_dir/run<i>.log``. :meth:`start` starts the next life and waits until
    it is ready (``startups`` records how long that took); :meth:`kill_all` belongs in the
    test's ``finally``."""

    def __init__(self, args: list[str], log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        self.procs: list[RunProcess] = []
        self.startups: list[float] = []

    @property
    def current(self) -> RunProcess:
        """The newest life (the one running, unless the test just killed it)."""
        return self.procs[-1]

    async def start(self) -> RunProcess:
        proc = RunProcess(self.args, self.log_dir / f"run{len(self.procs)}.log")
        self.procs.append(proc)
        t0 = time.monotonic()
        await proc.wait_ready()
        self.startups.append(time.monotonic() - t0)
        return proc

    def kill_all(self) -> None:
        """SIGKILL every life still running."""
        for proc in self.procs:
            proc.kill()


def kill_thresholds(seed: int, kills: int, low: int, high: int) -> list[int]:
    """Output counts at which to kill ``kills`` successive lives, in a seeded random order:
    one 0 (killed as soon as it is ready: mid-restore or first fetch) and ``kills - 1``
    counts from ``low`` to ``high`` (not aligned with any commit interval)."""
    rng = random.Random(seed)
    thresholds = [0, *(rng.randint(low, high) for _ in range(kills - 1))]
    rng.shuffle(thresholds)
    return thresholds


async def kill_and_restart(
    lives: Lives,
    producer: PacedProducer,
    thresholds: Sequence[int],
    after_kill: Callable[[], Awaitable[None]] | None = None,
) -> list[int]:
    """The kill loop of the fault tests, started with one ready life and a ``producer``
    whose budget is its first share of the records (``len(records) // (kills + 1)``): for
    each threshold, until the current life has given that many outputs, then SIGKILL (it
    must die of it), ``after_kill`` (what the test observes with no processor running), a
    new life, and the producer's budget raised by one more share, so input arrives during
    every life. Returns the records acknowledged at each kill. The last life is left
    running (``lives.current``) with the producer's budget at the end of the records."""
    n = len(producer.records)
    sent_at_kills: list[int] = []
    for k, threshold in enumerate(thresholds):
        proc = lives.current
        await wait_metric(proc, OUT, partial(operator.le, threshold), 120, f"{threshold} outputs")
        proc.signal(signal.SIGKILL)
        sent_at_kills.append(producer.sent)
        assert await proc.wait() == -signal.SIGKILL
        if after_kill is not None:
            await after_kill()
        await lives.start()
        producer.allow(n * (k + 2) // (len(thresholds) + 1))
    return sent_at_kills


async def delete_topics_quietly(admin: AIOKafkaAdminClient, names: Sequence[str]) -> None:
    """Best-effort cleanup of topics a processor created (a missing one is fine)."""
    for name in names:
        try:
            await admin.delete_topics([name])
        except Exception as exc:  # cleanup must not fail a test
            print(f"deleting {name} failed: {exc!r}")


# ---- a private broker ---------------------------------------------------------------------


class PrivateBroker:
    """A single-node broker of its own (``deploy/kafka-local/kafka.sh``) in ``run_dir`` on
    free ports, for tests that kill it: :meth:`start` (again after :meth:`kill`: same data
    directory, same ports), :meth:`kill` (SIGKILL, no clean shutdown), :meth:`stop`. It
    stops itself if this test process dies (``KAFKA_LOCAL_OWNER_PID``)."""

    def __init__(self, run_dir: Path, sasl: dict[str, str] | None = None) -> None:
        self.run_dir = run_dir
        self.env = dict(os.environ)
        self.env["KAFKA_LOCAL_DIR"] = str(run_dir)
        self.env["KAFKA_LOCAL_OWNER_PID"] = str(os.getpid())
        self.env.setdefault("KAFKA_LOCAL_TIMEOUT", "120")
        # With ``sasl`` (kafka.sh's KAFKA_LOCAL_SASL_* settings, e.g. USER and PASSWORD):
        # started with ``--sasl``, a SASL_SSL listener on a third free port.
        self.sasl = sasl
        self.env.update({f"KAFKA_LOCAL_SASL_{k}": v for k, v in (sasl or {}).items()})
        self.bootstrap = ""
        self.started = False
        self.last_start: subprocess.CompletedProcess[str] | None = None

    def _sh(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        args = [command, "--sasl"] if command == "start" and self.sasl is not None else [command]
        return subprocess.run(
            ["bash", str(KAFKA_SH), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def start(self) -> str:
        """Start (the first time on a free port pair; later on the same ports) and wait
        until it answers; returns the bootstrap address."""
        result = None
        for _attempt in range(3 if not self.started else 1):
            if not self.started:
                ports = _free_ports(3)
                self.env["KAFKA_LOCAL_PORT"] = str(ports[0])
                self.env["KAFKA_LOCAL_CONTROLLER_PORT"] = str(ports[1])
                if self.sasl is not None:
                    self.env["KAFKA_LOCAL_SASL_PORT"] = str(ports[2])
            result = self._sh("start", timeout=600)
            if result.returncode == 0 or "already in use" not in result.stderr:
                break
        assert result is not None
        if result.returncode != 0:
            pytest.fail(f"kafka.sh start failed ({result.returncode}):\n{result.stderr[-3000:]}")
        self.started = True
        self.last_start = result
        self.bootstrap = result.stdout.strip().splitlines()[-1]
        return self.bootstrap

    @property
    def pid(self) -> int:
        return int((self.run_dir / "kafka.pid").read_text().strip())

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the broker and wait until it is gone and its client port refuses
        connections (a killed JVM's leader thread turns zombie before its other threads
        have exited and closed the sockets)."""
        pid = self.pid
        port = int(self.env["KAFKA_LOCAL_PORT"])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pid) or _listening(port):
            assert time.monotonic() < deadline, f"broker {pid} still alive after SIGKILL"
            time.sleep(0.05)  # a synchronous wait on the condition, with a deadline

    def stop(self) -> None:
        result = self._sh("stop", timeout=120)
        if result.returncode != 0:
            print(f"kafka.sh stop failed: {result.stderr}")


def _alive(pid: int) -> bool:
    """Running: ``/proc/<pid>`` has a thread that is not a zombie."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


def _listening(port: int) -> bool:
    """Something accepts connections on the loopback ``port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago, below the kernel's
    ephemeral range: while the broker is down, clients reconnecting to its port must not
    be handed that very port as their own source port (a TCP self-connect would hold it,
    and the broker could not bind it again)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = np.random.default_rng()
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", int(rng.integers(max(1024, low - 12000), low))))
            except OSError:
                s.close()
                continue
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
