"""Durable stream state under faults, with ``lstm-stream run`` subprocesses on a real broker.

Each test runs processors while a paced producer feeds the input, injects faults (SIGKILL
and restart; members joining and leaving a group; a flood of streams beyond the host
memory tier), lets a last processor finish and stop with SIGTERM, then compares
everything in Kafka with an uninterrupted in-process reference
(:func:`durable_helpers.verify_run`): no valid record without an output, every output copy
equal to the reference, each stream's first outputs in seq order, every bad record
dead-lettered with its reason, offsets committed to the end, and the state topic holding
each stream's last seq (a tombstone for a stream that ended).

A stream that restarted from its initial state after a crash or a move gives outputs that
differ from the reference: that is what the exact comparison catches. The first test is the
baseline: the same kind of input through a processor that is never interrupted.

Every processor runs with the defaults of the durable state (at-least-once, the state topic
named after the group and the input topic), a 1 s commit interval and the broker's minimum
session timeout (a SIGKILLed member leaves the group after 6 s instead of 10 s).
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import random
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from durable_helpers import (  # type: ignore[import-not-found]
    PacedProducer,
    Workload,
    delete_topics_quietly,
    make_workload,
    metric,
    peak_rss_mib,
    run_args,
    state_topic,
    verify_run,
    wait_committed_to_end,
    wait_metric,
)
from kafka_helpers import (  # type: ignore[import-not-found]
    FEATURES,
    RunProcess,
    no_leftover_tasks,
    reference_outputs,
    tiny_model,
)

from processor.codec import encode_input

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = [
    pytest.mark.usefixtures("no_leftover_tasks"),
    pytest.mark.integration,
    pytest.mark.slow,
]

OUT = "lstm_stream_records_out_total"
ASSIGNED = "lstm_stream_assigned_partitions"


async def test_uninterrupted_run_matches_the_reference(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """The baseline of the fault tests: the same kind of input (resets, ends, rebirths, bad
    records) through one processor that is never interrupted meets every check of the
    verifier, so a failure of a fault test is the fault's doing."""
    workload = make_workload(3, streams=60, records=3_000, prefix="u")
    source = await topic_factory(partitions=3, prefix="in")
    out = await topic_factory(partitions=3, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    args = run_args(kafka_bootstrap, tiny_model, source=source, output=out, dlq=dlq,
                    group=unique_group)  # fmt: skip
    proc = RunProcess(args, tmp_path / "run.log")
    producer: PacedProducer | None = None
    try:
        await proc.wait_ready()
        producer = PacedProducer(kafka_bootstrap, source, workload.records, rate=1000)
        await producer.finish()
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, source, timeout=120, alive=[proc]
        )
        assert await proc.terminate() == 0, proc.text()
    finally:
        if producer is not None:
            await producer.close()
        proc.kill()
    await _verify(kafka_bootstrap, admin_client, workload, tiny_model, unique_group, source,
                  out, dlq, producer)  # fmt: skip


async def test_kill_9_loop_resumes_every_stream_from_its_durable_state(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """SIGKILL at seeded random output counts (not aligned with the 1 s checkpoints), a
    restart after each, input arriving all along; then one last run to the end and SIGTERM.
    """
    seed = 9
    kills = 5
    workload = make_workload(seed, streams=240, records=21_000)
    assert len(workload.valid) >= 20_000 and workload.resets and workload.ends
    assert workload.reborn and len(workload.bad) >= 200
    source = await topic_factory(partitions=3, prefix="in")
    out = await topic_factory(partitions=3, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    args = run_args(kafka_bootstrap, tiny_model, source=source, output=out, dlq=dlq,
                    group=unique_group)  # fmt: skip
    rng = random.Random(seed)
    # Outputs of a life before its kill: 0 (killed right after it is ready: mid-restore or
    # first fetch), small (within the first checkpoint), larger (several checkpoints).
    thresholds = [0, *(rng.randint(1, 1500) for _ in range(kills - 1))]
    rng.shuffle(thresholds)

    lives: list[RunProcess] = []
    startups: list[float] = []
    producer: PacedProducer | None = None

    async def start() -> RunProcess:
        proc = RunProcess(args, tmp_path / f"run{len(lives)}.log")
        lives.append(proc)
        t0 = time.monotonic()
        await proc.wait_ready()
        startups.append(time.monotonic() - t0)
        return proc

    n = len(workload.records)
    sent_at_kills: list[int] = []
    t_start = time.monotonic()
    try:
        proc = await start()
        # Each life gets its share of new input, arriving while it runs (and is killed).
        producer = PacedProducer(kafka_bootstrap, source, workload.records, rate=600,
                                 budget=n // (kills + 1))  # fmt: skip
        for k, threshold in enumerate(thresholds):
            await wait_metric(
                proc, OUT, partial(operator.le, threshold), 120, f"{threshold} outputs"
            )
            proc.signal(signal.SIGKILL)
            sent_at_kills.append(producer.sent)
            assert await proc.wait() == -signal.SIGKILL
            proc = await start()
            producer.allow(n * (k + 2) // (kills + 1))
        await producer.finish()
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, source, timeout=180, alive=[proc]
        )
        rc = await proc.terminate()
        assert rc == 0, proc.text()
    finally:
        if producer is not None:
            await producer.close()
        for p in lives:
            p.kill()
    elapsed = time.monotonic() - t_start
    print(
        f"\nkill loop: {len(lives)} lives, start-up {[round(s, 1) for s in startups]} s, "
        f"records produced at the kills {sent_at_kills} of {n}, outputs of each life before "
        f"its kill >= {thresholds}, {elapsed:.0f} s"
    )
    # Input arrived during every life (each kill saw more of it than the previous one).
    assert all(a < b for a, b in itertools.pairwise([0, *sent_at_kills, n])), sent_at_kills
    await _verify(kafka_bootstrap, admin_client, workload, tiny_model, unique_group, source,
                  out, dlq, producer)  # fmt: skip


async def test_rebalance_1_3_1_keeps_every_stream_state(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """One member, then three (two join while input flows), then one again (one leaves with
    SIGTERM, one is SIGKILLed): every stream that moved resumed from its state, so every
    output equals the uninterrupted reference."""
    workload = make_workload(31, streams=150, records=9_000, prefix="r")
    source = await topic_factory(partitions=6, prefix="in")
    out = await topic_factory(partitions=3, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    args = run_args(kafka_bootstrap, tiny_model, source=source, output=out, dlq=dlq,
                    group=unique_group)  # fmt: skip
    n = len(workload.records)
    procs: dict[str, RunProcess] = {}
    producer: PacedProducer | None = None
    t_start = time.monotonic()
    try:
        a = procs["a"] = RunProcess(args, tmp_path / "a.log")
        await a.wait_ready()
        producer = PacedProducer(kafka_bootstrap, source, workload.records, rate=200,
                                 budget=n // 4)  # fmt: skip
        await wait_metric(a, OUT, lambda v: v >= n // 8, 120, "A under way")
        # B and C join while input flows: a trickle while they start (however long that
        # takes, A must not have consumed everything before they are in), more after.
        producer.set_rate(20)
        producer.allow(2 * n // 3)
        sent_before_join = producer.sent
        b = procs["b"] = RunProcess(args, tmp_path / "b.log")
        c = procs["c"] = RunProcess(args, tmp_path / "c.log")
        for p in (b, c):
            await p.wait_ready()
        producer.set_rate(300)
        for p in (b, c):
            await wait_metric(p, OUT, lambda v: v > 0, 120, "outputs from a new member")
        await wait_metric(a, ASSIGNED, lambda v: v <= 2, 60, "A down to its share")
        assert sent_before_join < producer.sent < n, "no input arrived while B and C joined"
        assert await b.terminate() == 0, b.text()  # leaves gracefully
        producer.allow(5 * n // 6)
        c_before = await metric(c, OUT)
        await wait_metric(c, OUT, lambda v: v > c_before, 60, "C goes on")
        c.signal(signal.SIGKILL)  # crashes: its partitions move after the session timeout
        assert await c.wait() == -signal.SIGKILL
        await producer.finish()
        await wait_metric(a, ASSIGNED, lambda v: v == 6, 90, "A alone again")
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, source, timeout=120, alive=[a]
        )
        assert await a.terminate() == 0, a.text()
    finally:
        if producer is not None:
            await producer.close()
        for p in procs.values():
            p.kill()
    print(f"\nrebalance 1 -> 3 -> 1: {time.monotonic() - t_start:.0f} s")
    await _verify(kafka_bootstrap, admin_client, workload, tiny_model, unique_group, source,
                  out, dlq, producer)  # fmt: skip


async def test_flood_of_streams_beyond_memory_then_some_return(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """30,000 streams of one record each through a processor holding 256 states on the
    device and 1,024 in host memory, then 300 of the earliest streams return: their second
    outputs continue from their first step (the reference), not from the initial state."""
    n_streams, n_back = 30_000, 300
    rng = np.random.default_rng(44)
    xs = rng.standard_normal((n_streams + n_back, FEATURES)).astype(np.float32)
    w = Workload()
    for j in range(n_streams):
        stream = f"f{j}"
        w.records.append((stream.encode(), encode_input(stream, 0, xs[j])))
        w.expected.add((stream, 0))
        w.last[stream] = (0, False)
    # The earliest streams: long spilled (and beyond the host tier) when they return.
    back = sorted(rng.choice(n_streams // 4, size=n_back, replace=False).tolist())
    returning = []
    for i, j in enumerate(back):
        stream = f"f{j}"
        returning.append((stream.encode(), encode_input(stream, 1, xs[n_streams + i])))
        w.expected.add((stream, 1))
        w.last[stream] = (1, False)
    w.records.extend(returning)
    w.valid = [v for _, v in w.records]
    source = await topic_factory(partitions=3, prefix="in")
    out = await topic_factory(partitions=3, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    args = run_args(
        kafka_bootstrap, tiny_model, source=source, output=out, dlq=dlq, group=unique_group,
        extra=["--cache-capacity", "256", "--spill-capacity", "1024", "--max-batch", "128"],
    )  # fmt: skip
    producer = PacedProducer(kafka_bootstrap, source, w.records, rate=1e9, chunk=2000,
                             budget=n_streams)  # fmt: skip
    proc = RunProcess(args, tmp_path / "flood.log")
    t_start = time.monotonic()
    try:
        await proc.wait_ready()
        await producer.wait_sent(n_streams)
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, source, timeout=180, alive=[proc]
        )
        t_flood = time.monotonic() - t_start
        lost = await metric(proc, "lstm_stream_state_lost_total")
        on_disk = await metric(proc, "lstm_stream_disk_streams")
        await producer.finish()
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, source, timeout=60, alive=[proc]
        )
        rss = peak_rss_mib(proc.popen.pid)
        assert await proc.terminate() == 0, proc.text()
    finally:
        await producer.close()
        proc.kill()
    print(
        f"\nflood: {n_streams} streams in {t_flood:.0f} s, {n_back} returned; states on disk "
        f"after the flood: {on_disk:.0f}, lost: {lost:.0f}; peak RSS (VmHWM) {rss:.0f} MiB"
    )
    assert on_disk > 0  # the flood went beyond the device and host tables
    assert lost == 0
    await _verify(kafka_bootstrap, admin_client, w, tiny_model, unique_group, source, out,
                  dlq, producer)  # fmt: skip


async def _verify(
    bootstrap: str,
    admin: AIOKafkaAdminClient,
    workload: Workload,
    model: str,
    group: str,
    source: str,
    out: str,
    dlq: str,
    producer: PacedProducer | None,
) -> None:
    """The reference (computed now, after the processors: they need the two cores), the
    verifier, and the cleanup of the state topic the processor created."""
    try:
        t0 = time.monotonic()
        reference = await asyncio.to_thread(reference_outputs, model, workload.valid)
        t_ref = time.monotonic() - t0
        assert producer is not None
        verified = await verify_run(
            bootstrap, admin, workload=workload, reference=reference, group=group,
            input_topic=source, output_topic=out, dlq_topic=dlq,
            partition_of=producer.partition_of,
        )  # fmt: skip
        print(
            f"verified: {verified.outputs} outputs ({verified.redelivered} re-delivered "
            f"copies), {verified.dead_letters} dead letters; reference {t_ref:.0f} s"
        )
    finally:
        await delete_topics_quietly(admin, [state_topic(group, source)])
