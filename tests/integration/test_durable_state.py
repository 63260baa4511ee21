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
session timeout (a SIGKILLed member leaves the group after 6 s instead of 10 s); the
rebalance test runs once more in exactly-once mode, where a read_committed reader must see
every output and dead letter exactly once (the verifier's ``exact``) and each member must run
one transactional producer per partition it owns.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from durable_helpers import (
    ASSIGNED,
    COMMITTED,
    OUT,
    PRODUCERS,
    Lives,
    PacedProducer,
    Workload,
    kill_and_restart,
    kill_thresholds,
    make_topics,
    make_workload,
    metric,
    peak_rss_mib,
    run_args,
    verify_finished_run,
    wait_committed_to_end,
    wait_metric,
)
from kafka_helpers import (
    FEATURES,
    RunProcess,
    no_leftover_tasks,
    tiny_model,
)

from processor.codec import encode_input

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = [
    pytest.mark.usefixtures("no_leftover_tasks"),
    pytest.mark.integration,
    pytest.mark.slow,
]


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
    topics = await make_topics(topic_factory)
    args = run_args(kafka_bootstrap, tiny_model, topics=topics, group=unique_group)
    proc = RunProcess(args, tmp_path / "run.log")
    producer: PacedProducer | None = None
    try:
        await proc.wait_ready()
        producer = PacedProducer(kafka_bootstrap, topics.source, workload.records, rate=1000)
        await producer.finish()
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=120, alive=[proc]
        )
        assert await proc.terminate() == 0, proc.text()
    finally:
        if producer is not None:
            await producer.close()
        proc.kill()
    await verify_finished_run(kafka_bootstrap, admin_client, workload=workload, model=tiny_model,
                              group=unique_group, topics=topics, producer=producer)  # fmt: skip


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
    kills = 5
    workload = make_workload(9, streams=240, records=21_000)
    assert len(workload.valid) >= 20_000 and workload.resets and workload.ends
    assert workload.reborn and len(workload.bad) >= 200
    topics = await make_topics(topic_factory)
    lives = Lives(run_args(kafka_bootstrap, tiny_model, topics=topics, group=unique_group),
                  tmp_path)  # fmt: skip
    # Outputs of a life before its kill: 0, small (within the first checkpoint), larger
    # (several checkpoints).
    thresholds = kill_thresholds(9, kills, 1, 1500)
    n = len(workload.records)
    producer: PacedProducer | None = None
    t_start = time.monotonic()
    try:
        await lives.start()
        producer = PacedProducer(kafka_bootstrap, topics.source, workload.records, rate=600,
                                 budget=n // (kills + 1))  # fmt: skip
        sent_at_kills = await kill_and_restart(lives, producer, thresholds)
        await producer.finish()
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=180,
            alive=[lives.current],
        )  # fmt: skip
        assert await lives.current.terminate() == 0, lives.current.text()
    finally:
        if producer is not None:
            await producer.close()
        lives.kill_all()
    elapsed = time.monotonic() - t_start
    print(
        f"\nkill loop: {len(lives.procs)} lives, start-up "
        f"{[round(s, 1) for s in lives.startups]} s, records produced at the kills "
        f"{sent_at_kills} of {n}, outputs of each life before its kill >= {thresholds}, "
        f"{elapsed:.0f} s"
    )
    # Input arrived during every life (each kill saw more of it than the previous one).
    assert all(a < b for a, b in itertools.pairwise([0, *sent_at_kills, n])), sent_at_kills
    await verify_finished_run(kafka_bootstrap, admin_client, workload=workload, model=tiny_model,
                              group=unique_group, topics=topics, producer=producer)  # fmt: skip


@pytest.mark.parametrize(
    ("guarantee", "seed", "records", "interval_ms"),
    [
        # Exactly-once: a smaller input (transactions cost time) and a longer interval, so
        # that the SIGKILL most likely lands inside open transactions.
        pytest.param("at-least-once", 31, 9_000, 1000, id="at-least-once"),
        pytest.param("exactly-once", 37, 5_000, 1500, id="exactly-once"),
    ],
)
async def test_rebalance_1_3_1_keeps_every_stream_state(
    guarantee: str,
    seed: int,
    records: int,
    interval_ms: int,
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """One member, then three (two join while input flows), then one again (one leaves with
    SIGTERM, one is SIGKILLed): every stream that moved resumed from its state, so every
    output equals the uninterrupted reference. Exactly-once, in addition: each member runs
    one transactional producer per partition it owns and commits transactions (the SIGKILLed
    one dies with its transactions open), and a read_committed reader sees every output and
    dead letter exactly once."""
    exact = guarantee == "exactly-once"
    workload = make_workload(seed, streams=150, records=records, prefix="e" if exact else "r")
    n = len(workload.records)
    topics = await make_topics(topic_factory, inputs=6)
    args = run_args(kafka_bootstrap, tiny_model, topics=topics, group=unique_group,
                    commit_interval_ms=interval_ms,
                    extra=["--processing-guarantee", guarantee])  # fmt: skip
    members: dict[str, RunProcess] = {}
    producer: PacedProducer | None = None
    t_start = time.monotonic()

    async def join(*names: str) -> list[RunProcess]:
        new = [RunProcess(args, tmp_path / f"{name}.log") for name in names]
        members.update(zip(names, new, strict=True))
        for p in new:
            await p.wait_ready()
        return new

    async def owns(p: RunProcess, count: int, what: str) -> None:
        """Until ``p`` owns ``count`` partitions (exactly-once: each with its transactional
        producer)."""
        await wait_metric(p, ASSIGNED, lambda v: v == count, 90, what)
        if exact:
            await wait_metric(p, PRODUCERS, lambda v: v == count, 30, f"{what}: producers")

    async def under_way(p: RunProcess, outputs: int, what: str) -> None:
        """Until ``p`` has given at least ``outputs`` outputs (exactly-once: and committed
        a transaction)."""
        await wait_metric(p, OUT, lambda v: v >= outputs, 120, what)
        if exact:
            await wait_metric(p, COMMITTED, lambda v: v > 0, 60, f"{what}: transactions")

    try:
        (a,) = await join("a")
        producer = PacedProducer(kafka_bootstrap, topics.source, workload.records, rate=200,
                                 budget=n // 4)  # fmt: skip
        await under_way(a, n // 8, "A under way")
        await owns(a, 6, "A alone")
        # B and C join while input flows: a trickle while they start (however long that
        # takes, A must not have consumed everything before they are in), more after.
        producer.set_rate(20)
        producer.allow(2 * n // 3)
        sent_before_join = producer.sent
        b, c = await join("b", "c")
        producer.set_rate(300)
        for p, name in ((a, "A"), (b, "B"), (c, "C")):
            await owns(p, 2, f"{name} owning its share")
        for p in (b, c):
            await under_way(p, 1, "a new member under way")
        assert sent_before_join < producer.sent < n, "no input arrived while B and C joined"
        assert await b.terminate() == 0, b.text()  # leaves gracefully
        producer.allow(5 * n // 6)
        c_before = await metric(c, OUT)
        await wait_metric(c, OUT, lambda v: v > c_before, 60, "C goes on")
        c.signal(signal.SIGKILL)  # crashes: its partitions move after the session timeout
        assert await c.wait() == -signal.SIGKILL
        await producer.finish()
        await owns(a, 6, "A alone again")
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=120, alive=[a]
        )
        assert await a.terminate() == 0, a.text()
    finally:
        if producer is not None:
            await producer.close()
        for p in members.values():
            p.kill()
    print(f"\n{guarantee} rebalance 1 -> 3 -> 1: {time.monotonic() - t_start:.0f} s")
    await verify_finished_run(kafka_bootstrap, admin_client, workload=workload, model=tiny_model,
                              group=unique_group, topics=topics, producer=producer,
                              exact=exact)  # fmt: skip
    print(f"{guarantee} rebalance with verification: {time.monotonic() - t_start:.0f} s")


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
    topics = await make_topics(topic_factory)
    args = run_args(
        kafka_bootstrap, tiny_model, topics=topics, group=unique_group,
        extra=["--cache-capacity", "256", "--spill-capacity", "1024", "--max-batch", "128"],
    )  # fmt: skip
    producer = PacedProducer(kafka_bootstrap, topics.source, w.records, rate=1e9, chunk=2000,
                             budget=n_streams)  # fmt: skip
    proc = RunProcess(args, tmp_path / "flood.log")
    t_start = time.monotonic()
    try:
        await proc.wait_ready()
        await producer.wait_sent(n_streams)
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=180, alive=[proc]
        )
        t_flood = time.monotonic() - t_start
        lost = await metric(proc, "lstm_stream_state_lost_total")
        on_disk = await metric(proc, "lstm_stream_disk_streams")
        await producer.finish()
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=60, alive=[proc]
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
    await verify_finished_run(kafka_bootstrap, admin_client, workload=w, model=tiny_model,
                              group=unique_group, topics=topics, producer=producer)  # fmt: skip
