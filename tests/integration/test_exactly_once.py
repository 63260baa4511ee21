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
import operator
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from durable_helpers import (  # type: ignore[import-not-found]
    PacedProducer,
    Verified,
    Workload,
    delete_topics_quietly,
    make_workload,
    metric,
    open_transactions,
    read_to_end,
    run_args,
    state_topic,
    verify_run,
    wait_committed_to_end,
    wait_metric,
)
from kafka_helpers import (  # type: ignore[import-not-found]
    RunProcess,
    http_get,
    metric_total,
    no_leftover_tasks,
    reference_outputs,
    tiny_model,
)

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = [
    pytest.mark.usefixtures("no_leftover_tasks"),
    pytest.mark.integration,
    pytest.mark.slow,
]

OUT = "lstm_stream_records_out_total"
ASSIGNED = "lstm_stream_assigned_partitions"
PRODUCERS = "lstm_stream_producers_active"
COMMITTED = 'lstm_stream_transactions_total{result="committed"}'
FENCED = 'lstm_stream_transactions_total{result="fenced"}'
TXN_COUNT = "lstm_stream_transaction_seconds_count"


def eos_args(
    bootstrap: str, model: str, *, source: str, out: str, dlq: str, group: str, interval_ms: int
) -> list[str]:
    """:func:`durable_helpers.run_args` in exactly-once mode with a commit interval of
    ``interval_ms`` (the default transaction timeout, 30 s, stays above twice it)."""
    return run_args(
        bootstrap, model, source=source, output=out, dlq=dlq, group=group,
        commit_interval_ms=interval_ms, extra=["--processing-guarantee", "exactly-once"],
    )  # fmt: skip


@dataclass
class Topics:
    """The three topics of one test."""

    source: str
    out: str
    dlq: str


async def make_topics(factory: Callable[..., Awaitable[str]], inputs: int) -> Topics:
    return Topics(
        source=await factory(partitions=inputs, prefix="in"),
        out=await factory(partitions=3, prefix="out"),
        dlq=await factory(partitions=1, prefix="dlq"),
    )


async def verify_exactly_once(
    bootstrap: str,
    admin: AIOKafkaAdminClient,
    workload: Workload,
    model: str,
    group: str,
    topics: Topics,
    producer: PacedProducer | None,
) -> tuple[Verified, int]:
    """The reference (computed after the processors: they need the two cores), the verifier
    with ``exact=True``, and the number of output records only a read_uncommitted reader
    sees (records of aborted transactions); cleans up the state topic the run created."""
    try:
        assert producer is not None
        reference = await asyncio.to_thread(reference_outputs, model, workload.valid)
        verified = await verify_run(
            bootstrap, admin, workload=workload, reference=reference, group=group,
            input_topic=topics.source, output_topic=topics.out, dlq_topic=topics.dlq,
            partition_of=producer.partition_of, exact=True,
        )  # fmt: skip
        uncommitted = await read_to_end(bootstrap, topics.out, isolation_level="read_uncommitted")
        aborted = len(uncommitted) - verified.outputs
        print(
            f"verified exactly once: {verified.outputs} outputs, {verified.dead_letters} dead "
            f"letters read_committed; {aborted} more output records read_uncommitted (aborted)"
        )
        return verified, aborted
    finally:
        await delete_topics_quietly(admin, [state_topic(group, topics.source)])


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
    seed = 19
    kills = 3
    workload = make_workload(seed, streams=160, records=7_000, prefix="k")
    assert workload.resets and workload.ends and workload.reborn and len(workload.bad) >= 100
    topics = await make_topics(topic_factory, inputs=3)
    args = eos_args(kafka_bootstrap, tiny_model, source=topics.source, out=topics.out,
                    dlq=topics.dlq, group=unique_group, interval_ms=2500)  # fmt: skip
    rng = random.Random(seed)
    # Outputs of a life before its kill: 0 (killed as soon as it is ready) and counts that
    # fall inside the first transactions and later ones (~1,000 records per interval).
    thresholds = [0, *(rng.randint(50, 1500) for _ in range(kills - 1))]
    rng.shuffle(thresholds)
    n = len(workload.records)
    lives: list[RunProcess] = []
    open_at_kill: list[dict[int, int]] = []
    sent_at_kills: list[int] = []
    producer: PacedProducer | None = None
    t_start = time.monotonic()

    async def start() -> RunProcess:
        proc = RunProcess(args, tmp_path / f"run{len(lives)}.log")
        lives.append(proc)
        await proc.wait_ready()
        return proc

    try:
        proc = await start()
        producer = PacedProducer(kafka_bootstrap, topics.source, workload.records, rate=400,
                                 budget=n // (kills + 1))  # fmt: skip
        for k, threshold in enumerate(thresholds):
            await wait_metric(
                proc, OUT, partial(operator.le, threshold), 120, f"{threshold} outputs"
            )
            proc.signal(signal.SIGKILL)
            sent_at_kills.append(producer.sent)
            assert await proc.wait() == -signal.SIGKILL
            # Nobody writes the output topic now: what read_committed cannot see yet is
            # the killed member's open transaction.
            open_at_kill.append(await open_transactions(kafka_bootstrap, topics.out))
            proc = await start()
            producer.allow(n * (k + 2) // (kills + 1))
        await producer.finish()
        await wait_committed_to_end(
            admin_client, kafka_bootstrap, unique_group, topics.source, timeout=180, alive=[proc]
        )
        last = await metrics_of(proc, COMMITTED, PRODUCERS, ASSIGNED, TXN_COUNT)
        assert await proc.terminate() == 0, proc.text()
    finally:
        if producer is not None:
            await producer.close()
        for p in lives:
            p.kill()
    print(
        f"\nexactly-once kill loop: {len(lives)} lives, outputs before each kill >= "
        f"{thresholds}, records produced at the kills {sent_at_kills} of {n}, open "
        f"transactions in the output topic right after each kill (partition: records) "
        f"{open_at_kill}; last life's metrics {last}; {time.monotonic() - t_start:.0f} s"
    )
    assert all(a < b for a, b in itertools.pairwise([0, *sent_at_kills, n])), sent_at_kills
    _, aborted = await verify_exactly_once(kafka_bootstrap, admin_client, workload, tiny_model,
                                           unique_group, topics, producer)  # fmt: skip
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
    args = eos_args(kafka_bootstrap, tiny_model, source=topics.source, out=topics.out,
                    dlq=topics.dlq, group=unique_group, interval_ms=4000)  # fmt: skip
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
    _, aborted = await verify_exactly_once(kafka_bootstrap, admin_client, workload, tiny_model,
                                           unique_group, topics, producer)  # fmt: skip
    # Every fenced line names the partition it lost (its topic, in whatever form).
    assert all(topics.source in line for line in lines), lines
    assert aborted > 0, "A's open transaction left no aborted output records"
    print(f"zombie with verification: {time.monotonic() - t_start:.0f} s")


async def test_rebalance_1_3_1_with_transactions_loses_and_repeats_nothing(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """One member, then three (two join while input flows), then one again (one leaves with
    SIGTERM, one is SIGKILLed with its transactions open): each member runs one
    transactional producer per partition it owns, and a read_committed reader sees every
    output and dead letter exactly once."""
    workload = make_workload(37, streams=150, records=5_000, prefix="e")
    n = len(workload.records)
    topics = await make_topics(topic_factory, inputs=6)
    args = eos_args(kafka_bootstrap, tiny_model, source=topics.source, out=topics.out,
                    dlq=topics.dlq, group=unique_group, interval_ms=1500)  # fmt: skip
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
        """Until ``p`` owns ``count`` partitions, each with its transactional producer."""
        await wait_metric(p, ASSIGNED, lambda v: v == count, 90, what)
        await wait_metric(p, PRODUCERS, lambda v: v == count, 30, f"{what}: producers")

    try:
        (a,) = await join("a")
        producer = PacedProducer(kafka_bootstrap, topics.source, workload.records, rate=200,
                                 budget=n // 4)  # fmt: skip
        await wait_metric(a, COMMITTED, lambda v: v > 0, 60, "A's first transactions")
        await owns(a, 6, "A alone")
        # A trickle while B and C start (however long that takes, input is still coming
        # when they are in), more once they are.
        producer.set_rate(20)
        producer.allow(2 * n // 3)
        joined_at = producer.sent
        b, c = await join("b", "c")
        producer.set_rate(300)
        for p, name in ((a, "A"), (b, "B"), (c, "C")):
            await owns(p, 2, f"{name} owning its share")
        for p in (b, c):
            await wait_metric(p, COMMITTED, lambda v: v > 0, 60, "a new member's transactions")
        assert joined_at < producer.sent < n, "no input arrived while B and C joined"
        assert await b.terminate() == 0, b.text()
        producer.allow(5 * n // 6)
        c_out = await metric(c, OUT)
        await wait_metric(c, OUT, lambda v: v > c_out, 60, "C goes on")
        c.signal(signal.SIGKILL)
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
    print(f"\nexactly-once rebalance 1 -> 3 -> 1: {time.monotonic() - t_start:.0f} s")
    await verify_exactly_once(kafka_bootstrap, admin_client, workload, tiny_model, unique_group,
                              topics, producer)  # fmt: skip
    print(f"exactly-once rebalance with verification: {time.monotonic() - t_start:.0f} s")
