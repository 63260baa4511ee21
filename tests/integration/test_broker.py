"""The local broker is real and usable by aiokafka: groups, transactions, read_committed."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ProducerFenced
from aiokafka.structs import ConsumerRecord
from kafka_helpers import group_member, topic_reader, transactional_producer

TopicFactory = Callable[..., Awaitable[str]]


async def _consume(
    consumer: AIOKafkaConsumer, count: int, timeout: float = 30.0
) -> list[ConsumerRecord]:
    """Exactly ``count`` records (fails on timeout), then a short look for unexpected extras."""
    out: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"got {len(out)}/{count} records: {out}"
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            out.extend(records)
    extra = await consumer.getmany(timeout_ms=500)
    out.extend(r for records in extra.values() for r in records)
    return out


async def test_cluster_metadata(kafka_bootstrap: str, admin_client: AIOKafkaAdminClient) -> None:
    cluster = await admin_client.describe_cluster()
    assert len(cluster["brokers"]) == 1
    host, port = kafka_bootstrap.rsplit(":", 1)
    broker = cluster["brokers"][0]
    assert (broker["host"], broker["port"]) == (host, int(port))


async def test_topic_factory_creates_partitions(
    topic_factory: TopicFactory, admin_client: AIOKafkaAdminClient
) -> None:
    topic = await topic_factory(partitions=4)
    assert topic in await admin_client.list_topics()
    [described] = await admin_client.describe_topics([topic])
    assert sorted(p["partition"] for p in described["partitions"]) == [0, 1, 2, 3]


async def test_produce_consume_with_group(
    kafka_bootstrap: str, topic_factory: TopicFactory, unique_group: str
) -> None:
    topic = await topic_factory(partitions=3)
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(30)}

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in sent.items():
            await producer.send(topic, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = group_member(kafka_bootstrap, unique_group, topic)
    await consumer.start()
    try:
        records = await _consume(consumer, len(sent))
        assert {r.key: r.value for r in records} == sent
        assert len(records) == len(sent)
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(3)}
        # Same key -> same partition, and per-partition offsets are dense from 0.
        by_partition: dict[int, list[int]] = {}
        for r in records:
            by_partition.setdefault(r.partition, []).append(r.offset)
        for offsets in by_partition.values():
            assert offsets == list(range(len(offsets)))
        await consumer.commit()
        ends = await consumer.end_offsets(list(consumer.assignment()))
    finally:
        await consumer.stop()

    # The group remembers its position: a new member of the same group gets nothing old.
    for tp, end in ends.items():
        assert end == len(by_partition.get(tp.partition, []))
    consumer2 = group_member(kafka_bootstrap, unique_group, topic)
    await consumer2.start()
    try:
        await consumer2.getmany(timeout_ms=1000)  # joins the group
        for tp, end in ends.items():
            assert await consumer2.committed(tp) == end
            assert await consumer2.position(tp) == end
    finally:
        await consumer2.stop()


async def test_group_splits_partitions_between_members(
    kafka_bootstrap: str, topic_factory: TopicFactory, unique_group: str
) -> None:
    topic = await topic_factory(partitions=4)

    a, b = (group_member(kafka_bootstrap, unique_group, topic) for _ in range(2))
    await a.start()
    await b.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            await asyncio.gather(a.getmany(timeout_ms=200), b.getmany(timeout_ms=200))
            got_a, got_b = a.assignment(), b.assignment()
            if len(got_a) == 2 and len(got_b) == 2:
                break
            assert time.monotonic() < deadline, f"no balanced assignment: {got_a} / {got_b}"
        assert got_a.isdisjoint(got_b)
        assert got_a | got_b == {TopicPartition(topic, p) for p in range(4)}
    finally:
        await a.stop()
        await b.stop()


async def test_transaction_commits_outputs_and_offsets_atomically(
    kafka_bootstrap: str, topic_factory: TopicFactory, unique_group: str
) -> None:
    """Consume-transform-produce: outputs + input offsets in one transaction; an aborted
    transaction leaves neither outputs (for read_committed) nor offsets behind."""
    source = await topic_factory(partitions=1, prefix="src")
    sink = await topic_factory(partitions=1, prefix="out")
    tp_in = TopicPartition(source, 0)

    plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await plain.start()
    try:
        for i in range(6):
            await plain.send_and_wait(source, f"in-{i}".encode())
    finally:
        await plain.stop()

    txn_producer = transactional_producer(kafka_bootstrap, f"txn-{uuid.uuid4().hex}")
    await asyncio.wait_for(txn_producer.start(), 60)
    consumer = group_member(kafka_bootstrap, unique_group, isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([tp_in])
        inputs = await _consume(consumer, 6)
        assert [r.value for r in inputs] == [f"in-{i}".encode() for i in range(6)]

        # Transaction 1 (committed): outputs for in-0..in-2, offset 3.
        async with txn_producer.transaction():
            for r in inputs[:3]:
                await txn_producer.send(sink, b"out-" + r.value)
            await txn_producer.send_offsets_to_transaction(
                {tp_in: inputs[2].offset + 1}, unique_group
            )

        # Transaction 2 (aborted): outputs for in-3..in-5, offset 6.
        await txn_producer.begin_transaction()
        for r in inputs[3:]:
            await txn_producer.send(sink, b"out-" + r.value)
        await txn_producer.send_offsets_to_transaction({tp_in: inputs[5].offset + 1}, unique_group)
        await txn_producer.flush()  # the aborted records really reach the log
        await txn_producer.abort_transaction()

        # Transaction 3 (committed), after the abort.
        async with txn_producer.transaction():
            await txn_producer.send(sink, b"after-abort")
    finally:
        await consumer.stop()
        await txn_producer.stop()

    # Offsets: only the committed transaction's offset is the group's.
    checker = group_member(kafka_bootstrap, unique_group)
    await checker.start()
    try:
        assert await checker.committed(tp_in) == 3
    finally:
        await checker.stop()

    tp_out = TopicPartition(sink, 0)
    committed_reader = topic_reader(kafka_bootstrap)
    uncommitted_reader = topic_reader(kafka_bootstrap, "read_uncommitted")
    await committed_reader.start()
    await uncommitted_reader.start()
    try:
        committed_reader.assign([tp_out])
        uncommitted_reader.assign([tp_out])
        seen = [r.value for r in await _consume(committed_reader, 4)]
        assert seen == [b"out-in-0", b"out-in-1", b"out-in-2", b"after-abort"]
        # The aborted records are in the log: read_uncommitted sees them.
        raw = [r.value for r in await _consume(uncommitted_reader, 7)]
        assert raw == [
            b"out-in-0",
            b"out-in-1",
            b"out-in-2",
            b"out-in-3",
            b"out-in-4",
            b"out-in-5",
            b"after-abort",
        ]
        # 7 data records + 3 transaction markers.
        assert (await committed_reader.end_offsets([tp_out]))[tp_out] == 10
        assert committed_reader.last_stable_offset(tp_out) == 10
    finally:
        await committed_reader.stop()
        await uncommitted_reader.stop()


async def test_open_transaction_hides_records_until_commit(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """read_committed stops at the last stable offset while a transaction is open."""
    topic = await topic_factory(partitions=1)
    tp = TopicPartition(topic, 0)
    producer = transactional_producer(kafka_bootstrap, f"txn-{uuid.uuid4().hex}")
    await asyncio.wait_for(producer.start(), 60)
    reader = topic_reader(kafka_bootstrap)
    await reader.start()
    try:
        reader.assign([tp])
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"pending")
        assert (await reader.getmany(tp, timeout_ms=1500)) == {}
        await producer.commit_transaction()
        assert [r.value for r in await _consume(reader, 1)] == [b"pending"]
    finally:
        await reader.stop()
        await producer.stop()


async def test_new_transactional_producer_fences_the_old_one(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """Starting a producer with the same transactional_id aborts the old one's open
    transaction and fences it (the zombie-fencing the processor's EOS design relies on)."""
    topic = await topic_factory(partitions=1)
    tp = TopicPartition(topic, 0)
    txn_id = f"txn-{uuid.uuid4().hex}"

    old = transactional_producer(kafka_bootstrap, txn_id)
    await asyncio.wait_for(old.start(), 60)
    new = transactional_producer(kafka_bootstrap, txn_id)
    try:
        await old.begin_transaction()
        await old.send_and_wait(topic, b"zombie")

        await asyncio.wait_for(new.start(), 60)  # fences `old`, aborts its transaction
        async with new.transaction():
            await new.send_and_wait(topic, b"owner")

        fenced = False
        try:
            await old.commit_transaction()
        except ProducerFenced:
            fenced = True
        assert fenced, "the old producer could still commit after being fenced"
    finally:
        await new.stop()
        with contextlib.suppress(ProducerFenced):
            await old.stop()

    reader = topic_reader(kafka_bootstrap)
    await reader.start()
    try:
        reader.assign([tp])
        assert [r.value for r in await _consume(reader, 1)] == [b"owner"]
    finally:
        await reader.stop()
