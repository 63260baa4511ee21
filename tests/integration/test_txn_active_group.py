"""Transactional offset commits for a consumer group that has live members, and fencing.

The exactly-once design commits input offsets with
``AIOKafkaProducer.send_offsets_to_transaction(offsets, group_id)``. aiokafka sends that as
TxnOffsetCommit v0, which carries no group generation and no member id, so the group cannot
fence a zombie: fencing rests on one transactional producer per input partition, with the
transactional id ``<group>-<topic>-<partition>``. These tests establish, against the broker
the project ships, that

* the broker accepts such a commit while the group has one or two subscribed members with a
  generation, and the members stay in that generation (the commit does not disturb the group);
* the offsets become the group's only when the transaction commits;
* a producer fenced by a newer one with the same transactional id commits neither offsets nor
  outputs, and which aiokafka exception reports the fencing at each step of a transaction;
* a committed transaction's offsets can be read a moment after commit_transaction() returns,
  and always once the next producer with the same transactional id has started;
* how long InitProducerId and one transaction cycle take (printed, not asserted).

aiokafka's transaction manager state is private; the tests read it (``_txn_manager``) and a
member's generation (``_coordinator``) because those are exactly the facts the runtime's
failure handling depends on, and a change in aiokafka must fail here first.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import IllegalOperation, ProducerFenced
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import ConsumerRecord
from kafka_helpers import (
    Sent,
    group_member,
    send_raw,
    topic_reader,
    transactional_producer,
)

TopicFactory = Callable[..., Awaitable[str]]

#: Bounds on waits for the broker (the shared dev broker runs on a busy 2-core machine).
GROUP_TIMEOUT_S = 60.0
READ_TIMEOUT_S = 30.0


# ---- group members ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _members(
    bootstrap: str, group: str, topic: str, count: int
) -> AsyncIterator[list[AIOKafkaConsumer]]:
    """``count`` started members of ``group`` subscribed to ``topic`` (with ``subscribe()``,
    so that each gets a generation and an assignment), reading committed data only; stopped
    on exit."""
    members = [
        group_member(bootstrap, group, isolation_level="read_committed") for _ in range(count)
    ]
    try:
        for m in members:
            await m.start()
            m.subscribe([topic])
        yield members
    finally:
        for m in members:
            await m.stop()


async def _poll_until_settled(
    members: Sequence[AIOKafkaConsumer], ends: dict[TopicPartition, int]
) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """Poll every member (members only rebalance while they poll) until each owns a share of
    the partitions of ``ends``, the shares are disjoint and cover them, and every member's
    position in each partition it owns is at that partition's end (a member that was given a
    partition again by a later rebalance reads it again from the start, as nothing is
    committed yet); returns the records by partition in offset order, each once. Fails the
    test after ``GROUP_TIMEOUT_S``."""
    tps = set(ends)
    got: dict[TopicPartition, dict[int, ConsumerRecord[bytes, bytes]]] = {}
    deadline = time.monotonic() + GROUP_TIMEOUT_S
    while True:
        batches = await asyncio.gather(*(m.getmany(timeout_ms=200) for m in members))
        for batch in batches:
            for tp, records in batch.items():
                got.setdefault(tp, {}).update((r.offset, r) for r in records)
        shares = [m.assignment() for m in members]
        balanced = all(shares) and set().union(*shares) == tps
        disjoint = sum(len(s) for s in shares) == len(tps)
        if balanced and disjoint:
            positions = [await m.position(tp) >= ends[tp] for m in members for tp in m.assignment()]
            if all(positions):
                assert {tp: len(got.get(tp, {})) for tp in tps} == ends, "records missing"
                return {tp: [rs[o] for o in sorted(rs)] for tp, rs in got.items()}
        if time.monotonic() > deadline:
            pytest.fail(f"group not settled: shares {shares}, {len(got)} partitions read")


async def _group_state(admin: AIOKafkaAdminClient, group: str) -> tuple[str, list[str]]:
    """(state, sorted member ids) of ``group`` as its coordinator describes it."""
    [response] = await admin.describe_consumer_groups([group])
    [described] = response.groups
    error_code, _name, state, _ptype, _protocol, members, *_ = described
    assert error_code == 0, described
    return state, sorted(m[0] for m in members)


def _generations(members: Sequence[AIOKafkaConsumer]) -> list[tuple[str, int]]:
    """Each member's (member id, generation) as its group coordinator client holds it."""
    return [(m._coordinator.member_id, m._coordinator.generation) for m in members]


# ---- producers and readers ------------------------------------------------------------------


def _txn_id(group: str, tp: TopicPartition) -> str:
    """The design's transactional id: one producer per input partition."""
    return f"{group}-{tp.topic}-{tp.partition}"


async def _process(
    producer: AIOKafkaProducer,
    sink: str,
    group: str,
    tp: TopicPartition,
    records: Sequence[ConsumerRecord[bytes, bytes]],
) -> None:
    """One consume-transform-produce transaction: an output per input record, then the
    offset after the last record for ``group``, then commit (raises what aiokafka raises)."""
    await producer.begin_transaction()
    futures = [await producer.send(sink, b"out-" + (r.value or b"")) for r in records]
    await asyncio.gather(*futures)
    await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)
    await producer.commit_transaction()


async def _read_committed(bootstrap: str, tp: TopicPartition) -> list[bytes]:
    """Every value a read_committed reader sees in ``tp``, read until the partition is stable
    (no open transaction: last stable offset == high watermark) and the reader is at its end.
    Waiting for stability rather than for a count means an unwanted extra record fails the
    caller's equality check instead of going unseen."""
    reader = topic_reader(bootstrap)
    await reader.start()
    out: list[bytes] = []
    try:
        reader.assign([tp])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            batch = await reader.getmany(tp, timeout_ms=200)
            out.extend(r.value or b"" for r in batch.get(tp, []))
            high = reader.highwater(tp)
            stable = high is not None and reader.last_stable_offset(tp) == high
            if stable and await reader.position(tp) >= high:
                return out
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{tp} not stable after {READ_TIMEOUT_S}s: high {high}, "
                    f"lso {reader.last_stable_offset(tp)}, read {out}"
                )
    finally:
        await reader.stop()


async def _committed(
    member: AIOKafkaConsumer, admin: AIOKafkaAdminClient, group: str, tps: set[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets as the member sees them (None: no committed offset);
    checks that the admin API reports the same ones. Use it where the offsets are stable
    (see :func:`_wait_committed`)."""
    seen, by_admin = await _offset_views(member, admin, group, tps)
    assert by_admin == seen, (seen, by_admin)
    return seen


async def _offset_views(
    member: AIOKafkaConsumer, admin: AIOKafkaAdminClient, group: str, tps: set[TopicPartition]
) -> tuple[dict[TopicPartition, int | None], dict[TopicPartition, int | None]]:
    """(member's ``committed()``, admin ``list_consumer_group_offsets``) for ``tps``."""
    seen = {tp: await member.committed(tp) for tp in tps}
    listed = await admin.list_consumer_group_offsets(group, partitions=sorted(tps))
    by_admin = {tp: (listed[tp].offset if tp in listed else -1) for tp in tps}
    return seen, {tp: None if o == -1 else o for tp, o in by_admin.items()}


async def _wait_committed(
    member: AIOKafkaConsumer,
    admin: AIOKafkaAdminClient,
    group: str,
    want: dict[TopicPartition, int],
) -> float:
    """Until both the member and the admin API read ``want`` as the group's offsets; returns
    the seconds that took. Waiting is needed: commit_transaction() returns once the
    transaction coordinator has logged the commit, and the group coordinator applies the
    offsets only when the commit marker reaches it, a moment later (until then OffsetFetch,
    which aiokafka sends without require_stable, returns the previous offsets)."""
    t0 = time.monotonic()
    while True:
        seen, by_admin = await _offset_views(member, admin, group, set(want))
        if seen == want and by_admin == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > READ_TIMEOUT_S:
            pytest.fail(f"group {group}: offsets {seen} / {by_admin}, want {want}")


def _ends(topic: str, sent: Sequence[Sent]) -> dict[TopicPartition, int]:
    """The end offset of each partition of ``topic`` that ``sent`` wrote to (a fresh topic:
    nothing else is in it)."""
    ends: dict[TopicPartition, int] = {}
    for s in sent:
        tp = TopicPartition(topic, s.partition)
        ends[tp] = max(ends.get(tp, 0), s.offset + 1)
    return ends


def _by_partition(sent: Sequence[Sent]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for s in sorted(sent, key=lambda s: (s.partition, s.offset)):
        out.setdefault(s.partition, []).append(s.value or b"")
    return out


# ---- an active group accepts transactional offsets --------------------------------------------


@pytest.mark.parametrize("member_count", [1, 2])
async def test_txn_offset_commit_accepted_for_group_with_active_members(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    admin_client: AIOKafkaAdminClient,
    unique_group: str,
    member_count: int,
) -> None:
    """While ``member_count`` subscribed members hold generation G, each input partition's
    transactional producer commits its outputs and the partition's offset for the group:
    the broker accepts every commit, the offsets are the group's only after the commit, the
    outputs are visible to read_committed, and the members are still in generation G."""
    source = await topic_factory(partitions=2, prefix="src")
    sink = await topic_factory(partitions=1, prefix="out")
    tps = {TopicPartition(source, p) for p in range(2)}
    sent = await send_raw(
        kafka_bootstrap, source, [(f"k{i}".encode(), f"in-{i}".encode()) for i in range(12)]
    )
    expected = _by_partition(sent)
    assert set(expected) == {0, 1}, "both input partitions need records"

    async with _members(kafka_bootstrap, unique_group, source, member_count) as members:
        read = await _poll_until_settled(members, _ends(source, sent))
        assert {tp.partition: [r.value for r in rs] for tp, rs in read.items()} == expected
        before = _generations(members)
        assert all(gen > 0 and member_id for member_id, gen in before), before
        state, member_ids = await _group_state(admin_client, unique_group)
        assert state == "Stable"
        assert member_ids == sorted(member_id for member_id, _ in before)
        assert set((await _committed(members[0], admin_client, unique_group, tps)).values()) == {
            None
        }

        for tp in sorted(tps):
            producer = transactional_producer(kafka_bootstrap, _txn_id(unique_group, tp))
            await asyncio.wait_for(producer.start(), 60)
            try:
                await producer.begin_transaction()
                for r in read[tp]:
                    await producer.send(sink, b"out-" + (r.value or b""))
                await producer.send_offsets_to_transaction(
                    {tp: read[tp][-1].offset + 1}, unique_group
                )
                await producer.flush()
                # Offsets of an open transaction are not yet the group's.
                assert await members[0].committed(tp) is None
                await producer.commit_transaction()
            finally:
                await producer.stop()

        want = {tp: read[tp][-1].offset + 1 for tp in tps}
        for member in members:
            await _wait_committed(member, admin_client, unique_group, want)
        # The commits neither rebalanced the group nor removed a member.
        assert _generations(members) == before
        assert await _group_state(admin_client, unique_group) == (state, member_ids)
        # A member that polls on is still a member of generation G and reads nothing new.
        after_poll = await asyncio.gather(*(m.getmany(timeout_ms=500) for m in members))
        assert all(not batch for batch in after_poll), after_poll
        assert _generations(members) == before

    outputs = await _read_committed(kafka_bootstrap, TopicPartition(sink, 0))
    assert outputs == [b"out-" + v for p in sorted(expected) for v in expected[p]]


# ---- a fenced producer commits nothing ----------------------------------------------------------


async def test_fenced_producer_commits_neither_offsets_nor_outputs(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    admin_client: AIOKafkaAdminClient,
    unique_group: str,
) -> None:
    """A subscribed member is active. The partition's producer sends outputs and offsets,
    then a new producer with the same transactional id starts: the old one's commit raises
    ProducerFenced, the group has no offset and read_committed sees no output of it; the new
    producer then commits its own outputs and offset for the same active group."""
    source = await topic_factory(partitions=1, prefix="src")
    sink = await topic_factory(partitions=1, prefix="out")
    tp = TopicPartition(source, 0)
    sent = await send_raw(kafka_bootstrap, source, [(None, f"in-{i}".encode()) for i in range(6)])

    async with _members(kafka_bootstrap, unique_group, source, 1) as members:
        [member] = members
        read = (await _poll_until_settled(members, _ends(source, sent)))[tp]
        before = _generations(members)
        txn_id = _txn_id(unique_group, tp)

        zombie = transactional_producer(kafka_bootstrap, txn_id)
        await asyncio.wait_for(zombie.start(), 60)
        owner = transactional_producer(kafka_bootstrap, txn_id)
        try:
            await zombie.begin_transaction()
            for r in read:
                await zombie.send(sink, b"zombie-" + (r.value or b""))
            await zombie.send_offsets_to_transaction({tp: read[-1].offset + 1}, unique_group)
            await zombie.flush()  # its records are in the log, inside its open transaction

            await asyncio.wait_for(owner.start(), 60)  # fences `zombie`, aborts its transaction

            with pytest.raises(ProducerFenced):
                await zombie.commit_transaction()
            assert zombie._txn_manager.state is TransactionState.FATAL_ERROR
            # Nothing of the fenced transaction is the group's, nor visible.
            assert await _committed(member, admin_client, unique_group, {tp}) == {tp: None}
            assert await _read_committed(kafka_bootstrap, TopicPartition(sink, 0)) == []

            # The owner processes the same records for the same, still active, group.
            await _process(owner, sink, unique_group, tp, read[:4])
        finally:
            await owner.stop()
            await zombie.stop()  # a fenced producer stops without raising

        await _wait_committed(member, admin_client, unique_group, {tp: read[3].offset + 1})
        assert _generations(members) == before

    outputs = await _read_committed(kafka_bootstrap, TopicPartition(sink, 0))
    assert outputs == [b"out-" + (r.value or b"") for r in read[:4]]


# ---- which exception reports the fencing, step by step ------------------------------------------


async def _fenced_pair(bootstrap: str) -> tuple[AIOKafkaProducer, AIOKafkaProducer]:
    """(old, new): ``old`` started first; ``new`` is created but not started."""
    txn_id = f"fence-{uuid.uuid4().hex}"
    old = transactional_producer(bootstrap, txn_id)
    await asyncio.wait_for(old.start(), 60)
    return old, transactional_producer(bootstrap, txn_id)


async def _assert_dead(producer: AIOKafkaProducer, topic: str, tp: TopicPartition) -> None:
    """What every call on a producer in FATAL_ERROR does: send and send_offsets raise
    IllegalOperation (the transaction manager is no longer 'in transaction'); commit and
    abort trip aiokafka's state-transition assertion (FATAL_ERROR -> COMMITTING/ABORTING is
    invalid), an AssertionError, not a KafkaError; stop() returns normally."""
    assert producer._txn_manager.state is TransactionState.FATAL_ERROR
    assert producer._sender.sender_task.done()  # the background sender died with the error
    with pytest.raises(IllegalOperation, match="not in transaction"):
        await producer.send(topic, b"late")
    with pytest.raises(IllegalOperation, match="Not in the middle of a transaction"):
        await producer.send_offsets_to_transaction({tp: 1}, "g-unused")
    with pytest.raises(AssertionError, match=r"FATAL_ERROR -> TransactionState\.COMMITTING"):
        await producer.commit_transaction()
    with pytest.raises(AssertionError, match=r"FATAL_ERROR -> TransactionState\.ABORTING"):
        await producer.abort_transaction()
    await producer.stop()


@pytest.mark.parametrize(
    "first_call",
    ["send-partition-in-txn", "send-new-partition", "offsets", "commit", "abort"],
)
async def test_fencing_is_reported_as_producer_fenced(
    kafka_bootstrap: str, topic_factory: TopicFactory, unique_group: str, first_call: str
) -> None:
    """The first call a fenced producer makes after the fencing raises exactly
    ``ProducerFenced`` and leaves the producer in FATAL_ERROR, except a send to a partition
    that is already in the transaction: that record's future raises ProducerFenced (the
    partition leader rejects the old epoch) while the producer stays IN_TRANSACTION until
    its next transactional request (here: abort), which raises ProducerFenced too."""
    topic = await topic_factory(partitions=2)
    tp_in = TopicPartition(topic, 1)  # any partition serves as the "input" of the offsets
    old, new = await _fenced_pair(kafka_bootstrap)
    try:
        await old.begin_transaction()
        if first_call != "send-new-partition":
            await (await old.send(topic, b"before", partition=0))
        if first_call in ("commit", "abort"):
            await old.send_offsets_to_transaction({tp_in: 1}, unique_group)
        await asyncio.wait_for(new.start(), 60)

        with pytest.raises(ProducerFenced) as fenced:
            if first_call in ("send-partition-in-txn", "send-new-partition"):
                # send() itself only queues the record; its future reports the fencing.
                future = await old.send(topic, b"after", partition=0)
                await future
            elif first_call == "offsets":
                await old.send_offsets_to_transaction({tp_in: 1}, unique_group)
            elif first_call == "commit":
                await old.commit_transaction()
            else:
                await old.abort_transaction()
        assert type(fenced.value) is ProducerFenced  # the class itself, not a subclass

        if first_call == "send-partition-in-txn":
            assert old._txn_manager.state is TransactionState.IN_TRANSACTION
            with pytest.raises(ProducerFenced):
                await old.abort_transaction()
        await _assert_dead(old, topic, tp_in)
    finally:
        await new.stop()
        await old.stop()


# ---- when a committed transaction's offsets can be read -------------------------------------


async def test_next_owner_init_makes_committed_offsets_readable(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    admin_client: AIOKafkaAdminClient,
    unique_group: str,
) -> None:
    """Right after commit_transaction() returns, OffsetFetch may still return the previous
    offset (the commit marker is written asynchronously; aiokafka cannot ask for stable
    offsets). Once a producer with the same transactional id has started (InitProducerId
    waits for the previous transaction to complete), the committed offset is always the one
    of that transaction: a new owner of a partition must start its producer before it reads
    the partition's committed offset. The stale rate right after commit is printed."""
    rounds = 10
    source = await topic_factory(partitions=1, prefix="src")
    sink = await topic_factory(partitions=1, prefix="out")
    tp = TopicPartition(source, 0)
    sent = await send_raw(kafka_bootstrap, source, [(None, b"in-%d" % i) for i in range(rounds)])

    stale_right_after_commit = 0
    async with _members(kafka_bootstrap, unique_group, source, 1) as members:
        [member] = members
        read = (await _poll_until_settled(members, _ends(source, sent)))[tp]
        txn_id = _txn_id(unique_group, tp)
        owner = transactional_producer(kafka_bootstrap, txn_id)
        await asyncio.wait_for(owner.start(), 60)
        try:
            for i in range(rounds):
                await _process(owner, sink, unique_group, tp, read[i : i + 1])
                if await member.committed(tp) != i + 1:
                    stale_right_after_commit += 1
                # The partition changes hands: the next owner starts its producer first.
                next_owner = transactional_producer(kafka_bootstrap, txn_id)
                await asyncio.wait_for(next_owner.start(), 60)
                await owner.stop()  # fenced by now; stops without raising
                owner = next_owner
                assert await _committed(member, admin_client, unique_group, {tp}) == {tp: i + 1}
        finally:
            await owner.stop()

    outputs = await _read_committed(kafka_bootstrap, TopicPartition(sink, 0))
    assert outputs == [b"out-" + (r.value or b"") for r in read]
    print(
        f"\ncommitted() stale right after commit_transaction(): {stale_right_after_commit}/{rounds}"
    )


# ---- cost of InitProducerId and of one transaction (reported, not asserted) -------------------


def _summary(label: str, seconds: Sequence[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (
        f"{label}: n={len(ms)} median {statistics.median(ms):.1f} ms, "
        f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms"
    )


async def test_transaction_costs_on_this_broker(
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    admin_client: AIOKafkaAdminClient,
    unique_group: str,
) -> None:
    """Times ``start()`` (InitProducerId) for fresh transactional ids and a
    begin/send/send_offsets/commit cycle of a few records for an active group, and prints
    the medians. It asserts what the cycles did: every output visible, the last offset
    committed."""
    cycles, per_cycle = 20, 4
    source = await topic_factory(partitions=1, prefix="src")
    sink = await topic_factory(partitions=1, prefix="out")
    tp = TopicPartition(source, 0)
    sent = await send_raw(
        kafka_bootstrap, source, [(None, f"in-{i}".encode()) for i in range(cycles * per_cycle)]
    )

    starts: list[float] = []
    for _ in range(cycles):
        producer = transactional_producer(kafka_bootstrap, f"init-{uuid.uuid4().hex}")
        t0 = time.perf_counter()
        await asyncio.wait_for(producer.start(), 60)
        starts.append(time.perf_counter() - t0)
        await producer.stop()

    async with _members(kafka_bootstrap, unique_group, source, 1) as members:
        read = (await _poll_until_settled(members, _ends(source, sent)))[tp]
        producer = transactional_producer(kafka_bootstrap, _txn_id(unique_group, tp))
        await asyncio.wait_for(producer.start(), 60)
        durations: list[float] = []
        try:
            for c in range(cycles):
                chunk = read[c * per_cycle : (c + 1) * per_cycle]
                t0 = time.perf_counter()
                await _process(producer, sink, unique_group, tp, chunk)
                durations.append(time.perf_counter() - t0)
        finally:
            await producer.stop()
        await _wait_committed(members[0], admin_client, unique_group, {tp: read[-1].offset + 1})

    outputs = await _read_committed(kafka_bootstrap, TopicPartition(sink, 0))
    assert outputs == [b"out-" + (r.value or b"") for r in read]
    print()
    print(_summary("start() of a fresh transactional producer (InitProducerId)", starts))
    print(_summary(f"transaction of {per_cycle} records + offsets (begin..commit)", durations))
