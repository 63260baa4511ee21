"""Exactly-once processing (``--processing-guarantee exactly-once``) under faults, with
``lstm-stream run`` subprocesses on a real broker.

In this mode each input partition has one transactional producer (transactional id
``<group>-<topic>-<partition>``) that puts the partition's outputs, dead letters, state
records and consumed offsets into one transaction per commit interval. A reader with
``isolation_level=read_committed`` must therefore see every output and every dead letter
exactly once, whatever happens to the processors: SIGKILLs inside open transactions, members
joining and leaving, and a zombie (a member frozen past its session timeout while its
partitions moved) that wakes up, is fenced by the new owner's producer and writes nothing
a read_committed reader can see.

The 1 -> 3 -> 1 rebalance in this mode is a parameter of
``test_durable_state.test_rebalance_1_3_1_keeps_every_stream_state``.

Every test ends with :func:`durable_helpers.verify_run` with ``exact=True`` (read_committed:
no gap, no duplicate output, no duplicate dead letter, outputs equal to an uninterrupted
reference, per-stream order, offsets committed to the end, the state topic's last values),
and proves that the fault really hit an open transaction: the output topic holds records of
aborted transactions (read_uncommitted sees more records than read_committed), and where
it can be observed directly, the output topic's last stable offset lagged its high
watermark right after the fault.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from durable_helpers import (
    ASSIGNED,
    COMMITTED,
    FENCED,
    OUT,
    PRODUCERS,
    TXN_COUNT,
    Lives,
    PacedProducer,
    Topics,
    kill_and_restart,
    kill_thresholds,
    make_topics,
    make_workload,
    open_transactions,
    run_args,
    verify_finished_run,
    wait_committed_to_end,
    wait_metric,
)
from kafka_helpers import (
    RunProcess,
    http_get,
    metric_total,
    no_leftover_tasks,
    tiny_model,
)

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = [
    pytest.mark.usefixtures("no_leftover_tasks"),
    pytest.mark.integration,
    pytest.mark.slow,
]


def eos_args(
    bootstrap: str, model: str, *, topics: Topics, group: str, interval_ms: int
) -> list[str]:
    """:func:`durable_helpers.run_args` in exactly-once mode with a commit interval of
    ``interval_ms`` (the default transaction timeout, 30 s, stays above twice it)."""
    return run_args(
        bootstrap, model, topics=topics, group=group, commit_interval_ms=interval_ms,
        extra=["--processing-guarantee", "exactly-once"],
    )  # fmt: skip


async def metrics_of(proc: RunProcess, *names: str) -> dict[str, float] | None:
    """The values of ``names`` from one scrape of ``proc``'s /metrics (None if it does not
    answer), so that related values are read at the same moment."""
    status, body = await asyncio.to_thread(http_get, proc.url("/metrics"))
    if status != 200:
        return None
    return {name: metric_total(body, name) for name in names}


def fenced_lines(proc: RunProcess) -> list[str]:
    """The processor's own WARNING lines in ``proc``'s log that mention fencing."""
    lines = proc.log.read_text().splitlines()
    return [s for s in lines if " WARNING processor." in s and "fenced" in s.lower()]


async def test_kill_9_inside_open_transactions_loses_and_repeats_nothing(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """SIGKILL at seeded output counts while a 2.5 s transaction is open, a restart after
    each, input arriving all along; then one last run to the end and SIGTERM. Right after
    each kill the output topic's last stable offset is compared with its high watermark: a
    gap is the killed member's open transaction, which its successor must abort."""
    kills = 3
    workload = make_workload(19, streams=160, records=7_000, prefix="k")
    assert workload.resets and workload.ends and workload.reborn and len(workload.bad) >= 100
    topics = await make_topics(topic_factory)
    lives = Lives(eos_args(kafka_bootstrap, tiny_model, topics=topics, group=unique_group,
                           interval_ms=2500), tmp_path)  # fmt: skip
    # Outputs of a life before its kill: 0 and counts that fall inside the first
    # transactions and later ones (~1,000 records per interval).
    thresholds = kill_thresholds(19, kills, 50, 1500)
    n = len(workload.records)
    open_at_kill: list[dict[int, int]] = []
    producer: PacedProducer | None = None
    t_start = time.monotonic()

    async def observe_open_transactions() -> None:
        # Nobody writes the output topic now: what read_committed cannot see yet is the
        # killed member's open transaction.
        open_at_kill.append(await open_transactions(kafka_bootstrap, topics.out))

    try:
        await lives.start()
        producer = PacedProducer(kafka_bootstrap, topics.source, workload.records, rate=400,
                                 budget=n // (kills + 1))  # fmt: skip
        sent_at_kills = await kill_and_restart(lives, producer, thresholds,
                                               observe_open_transactions)  # fmt: skip
        await producer.finish()
        proc = lives.current
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=180, alive=[proc]
        )
        last = await metrics_of(proc, COMMITTED, PRODUCERS, ASSIGNED, TXN_COUNT)
        assert await proc.terminate() == 0, proc.text()
    finally:
        if producer is not None:
            await producer.close()
        lives.kill_all()
    print(
        f"\nexactly-once kill loop: {len(lives.procs)} lives, outputs before each kill >= "
        f"{thresholds}, records produced at the kills {sent_at_kills} of {n}, open "
        f"transactions in the output topic right after each kill (partition: records) "
        f"{open_at_kill}; last life's metrics {last}; {time.monotonic() - t_start:.0f} s"
    )
    assert all(a < b for a, b in itertools.pairwise([0, *sent_at_kills, n])), sent_at_kills
    _, aborted = await verify_finished_run(
        kafka_bootstrap, admin_client, workload=workload, model=tiny_model, group=unique_group,
        topics=topics, producer=producer, exact=True,
    )  # fmt: skip
    assert any(open_at_kill), "no kill landed inside an open transaction with outputs"
    assert aborted > 0, "no output record of an aborted transaction in the output topic"
    assert last is not None and last[COMMITTED] > 0 and last[TXN_COUNT] > 0, last
    assert last[PRODUCERS] == last[ASSIGNED] == 3, last
    print(f"exactly-once kill loop with verification: {time.monotonic() - t_start:.0f} s")


async def test_zombie_member_is_fenced_and_writes_nothing_visible(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """Members A and B share four input partitions. A is frozen (SIGSTOP) with a
    transaction open and outputs in it, past its session timeout: B takes A's partitions
    (its producers take over A's transactional ids, which aborts A's transaction) and
    processes them. Then A wakes up (SIGCONT) believing it still owns them: it is fenced,
    says so in one WARNING line per fenced partition and in its metrics, stops owning them
    and rejoins; nothing it wrote reaches a read_committed reader twice."""
    workload = make_workload(23, streams=120, records=4_500, prefix="z")
    n = len(workload.records)
    topics = await make_topics(topic_factory, inputs=4)
    # A long interval: A is frozen well inside a transaction.
    args = eos_args(kafka_bootstrap, tiny_model, topics=topics, group=unique_group,
                    interval_ms=4000)  # fmt: skip
    procs: list[RunProcess] = []
    producer: PacedProducer | None = None
    t_start = time.monotonic()
    try:
        a = RunProcess(args, tmp_path / "a.log")
        procs.append(a)
        await a.wait_ready()
        producer = PacedProducer(kafka_bootstrap, topics.source, workload.records, rate=150,
                                 budget=n // 2)  # fmt: skip
        await wait_metric(a, OUT, lambda v: v >= 200, 120, "A under way")
        # A trickle while B starts (input must still be coming once it is in), more after.
        producer.set_rate(15)
        b = RunProcess(args, tmp_path / "b.log")
        procs.append(b)
        await b.wait_ready()
        for p in (a, b):
            await wait_metric(p, ASSIGNED, lambda v: v == 2, 90, "two partitions each")
        producer.set_rate(80)
        await wait_metric(b, OUT, lambda v: v > 0, 60, "outputs from B")

        # Freeze A just after one of its commits, once more outputs went into the next
        # transaction (one scrape gives both numbers; the stop follows within
        # milliseconds, far inside the 4 s interval).
        before = await metrics_of(a, COMMITTED, OUT)
        assert before is not None
        mark = before
        deadline = time.monotonic() + 60
        while True:
            now = await metrics_of(a, COMMITTED, OUT)
            assert now is not None, a.text()
            if now[COMMITTED] != mark[COMMITTED]:
                mark = now  # a commit since the last look: count outputs from here
            elif mark is not before and now[OUT] >= mark[OUT] + 20:
                break
            assert time.monotonic() < deadline, f"A committed no transaction: {now}"
            await asyncio.sleep(0.1)
        a.signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        producer.allow()  # input goes on flowing while A is frozen and after
        await wait_metric(b, ASSIGNED, lambda v: v == 4, 90, "B owning A's partitions")
        b_taken = await metrics_of(b, COMMITTED, OUT)
        assert b_taken is not None
        await wait_metric(
            b, COMMITTED, lambda v: v >= b_taken[COMMITTED] + 8, 60, "B committing all four"
        )
        frozen = time.monotonic() - t_stop
        a.signal(signal.SIGCONT)
        await a.wait_until(lambda: bool(fenced_lines(a)), 60, "a WARNING line about fencing")
        fenced = await wait_metric(a, FENCED, lambda v: v > 0, 30, "fenced transactions")
        producer.set_rate(400)
        await producer.finish()
        for p in (a, b):
            await wait_metric(p, ASSIGNED, lambda v: v == 2, 90, "two partitions each again")
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=120,
            alive=[a, b],
        )  # fmt: skip
        for p in (a, b):
            assert await p.terminate() == 0, p.text()
    finally:
        if producer is not None:
            await producer.close()
        for p in procs:
            p.kill()  # SIGKILL ends a stopped process too
    lines = fenced_lines(a)
    print(
        f"\nzombie: A frozen {frozen:.1f} s after {before[OUT]:.0f} outputs, "
        f"{mark[OUT]:.0f} at the last commit it saw, {now[OUT]:.0f} at the stop; fenced "
        f"transactions {fenced:.0f}; its WARNING lines:\n  " + "\n  ".join(lines)
        + f"\n{time.monotonic() - t_start:.0f} s"
    )  # fmt: skip
    _, aborted = await verify_finished_run(
        kafka_bootstrap, admin_client, workload=workload, model=tiny_model, group=unique_group,
        topics=topics, producer=producer, exact=True,
    )  # fmt: skip
    # Every fenced line names the partition it lost (its topic, in whatever form).
    assert all(topics.source in line for line in lines), lines
    assert aborted > 0, "A's open transaction left no aborted output records"
    print(f"zombie with verification: {time.monotonic() - t_start:.0f} s")
