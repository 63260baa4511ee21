"""State topics against a real broker: prepare_state_topics creates and checks them, and
restore_partitions reads them to their end after transactional writes, aborted transactions
and tombstones.

Topics that a test expects prepare_state_topics to create get fresh names (``fresh_name``)
and are deleted afterwards; topics that must exist beforehand come from ``topic_factory``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import ConsumerRecord

from processor.kafka.durable.reader import RestoreStats, restore_consumer_kwargs, restore_partitions
from processor.kafka.durable.topic import StateTopicError, default_state_topic, prepare_state_topics
from processor.kafka.io.clients import admin_kwargs

FreshName = Callable[[str], str]  # the conftest fixture ``fresh_name``

RESTORE_LIMIT_S = 60.0  # a restore that has not finished by then hangs


@pytest.fixture
def admin_kw(kafka_bootstrap: str) -> dict[str, Any]:
    """Admin kwargs as the runtime derives them from its consumer's."""
    return admin_kwargs(
        {"bootstrap_servers": kafka_bootstrap, "group_id": "unused", "request_timeout_ms": 30_000}
    )


async def topic_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    [response] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, None)]
    )
    [resource] = response.to_object()["resources"]
    assert resource["error_code"] == 0, resource
    return {e["config_names"]: e["config_value"] for e in resource["config_entries"]}


async def partition_count(admin: AIOKafkaAdminClient, topic: str) -> int:
    [entry] = await admin.describe_topics([topic])  # the topic exists: no auto-creation
    assert entry["error_code"] == 0, entry
    return len(entry["partitions"])


# ---- prepare_state_topics -----------------------------------------------------------------


def test_default_state_topic_name() -> None:
    assert default_state_topic("scorers", "events") == "scorers-events-state"


async def test_missing_state_topics_are_created_compacted_with_the_inputs_partitions(
    admin_kw: dict[str, Any],
    admin_client: AIOKafkaAdminClient,
    topic_factory: Any,
    fresh_name: FreshName,
) -> None:
    first, second = await topic_factory(partitions=3), await topic_factory(partitions=1)
    states = {first: fresh_name("state-a"), second: fresh_name("state-b")}

    await prepare_state_topics(admin_kw, states, {first: 3, second: 1})

    for input_topic, count in ((first, 3), (second, 1)):
        state = states[input_topic]
        assert await partition_count(admin_client, state) == count
        configs = await topic_configs(admin_client, state)
        assert configs["cleanup.policy"] == "compact"
        assert configs["segment.ms"] == "3600000"

    # Idempotent: existing, matching state topics are accepted as they are.
    await prepare_state_topics(admin_kw, states, {first: 3, second: 1})
    assert await partition_count(admin_client, states[first]) == 3


async def test_a_state_topic_with_other_partitions_is_refused_in_one_line(
    admin_kw: dict[str, Any], topic_factory: Any
) -> None:
    source = await topic_factory(partitions=2)
    state = await topic_factory(partitions=3, configs={"cleanup.policy": "compact"})

    with pytest.raises(StateTopicError) as info:
        await prepare_state_topics(admin_kw, {source: state}, {source: 2})

    message = str(info.value)
    assert "\n" not in message
    assert f"state topic {state!r} has 3 partition(s), its input topic has 2" in message


@pytest.mark.parametrize("policy", ["delete", "compact,delete"])
async def test_a_state_topic_that_is_not_only_compacted_is_refused_in_one_line(
    admin_kw: dict[str, Any], topic_factory: Any, policy: str
) -> None:
    source = await topic_factory(partitions=1)
    state = await topic_factory(partitions=1, configs={"cleanup.policy": policy})

    with pytest.raises(StateTopicError) as info:
        await prepare_state_topics(admin_kw, {source: state}, {source: 1})

    message = str(info.value)
    assert "\n" not in message
    assert f"state topic {state!r} has cleanup.policy={policy}" in message
    assert "needs exactly cleanup.policy=compact" in message


async def test_members_preparing_the_same_state_topic_at_once_both_succeed(
    admin_kw: dict[str, Any],
    admin_client: AIOKafkaAdminClient,
    topic_factory: Any,
    fresh_name: FreshName,
) -> None:
    source = await topic_factory(partitions=2)
    state = fresh_name("state")

    await asyncio.gather(
        *(prepare_state_topics(admin_kw, {source: state}, {source: 2}) for _ in range(3))
    )

    assert await partition_count(admin_client, state) == 2
    assert (await topic_configs(admin_client, state))["cleanup.policy"] == "compact"


async def test_two_inputs_sharing_a_state_topic_are_refused_before_any_creation(
    admin_kw: dict[str, Any], admin_client: AIOKafkaAdminClient, fresh_name: FreshName
) -> None:
    shared = fresh_name("shared")
    with pytest.raises(StateTopicError, match="both use state topic"):
        await prepare_state_topics(
            admin_kw, {"in-a": shared, "in-b": shared}, {"in-a": 1, "in-b": 1}
        )
    assert shared not in set(await admin_client.list_topics())


# ---- restore_partitions -------------------------------------------------------------------


class Collected:
    """apply(): keeps every applied record per partition, in call order."""

    def __init__(self) -> None:
        self.records: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}

    async def __call__(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        self.records.setdefault(tp, []).extend(records)

    def last_values(self, tp: TopicPartition) -> dict[bytes, bytes | None]:
        offsets = [r.offset for r in self.records.get(tp, [])]
        assert offsets == sorted(offsets), offsets
        return {r.key: r.value for r in self.records.get(tp, [])}


async def restore(
    bootstrap: str, topic: str, partitions: int
) -> tuple[Collected, dict[TopicPartition, RestoreStats]]:
    consumer = AIOKafkaConsumer(**restore_consumer_kwargs({"bootstrap_servers": bootstrap}))
    await consumer.start()
    try:
        collected = Collected()
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        stats = await asyncio.wait_for(
            restore_partitions(consumer, tps, collected), RESTORE_LIMIT_S
        )
        assert consumer.paused() == set(tps)  # nothing more is fetched
        return collected, stats
    finally:
        await consumer.stop()


Write = tuple[int, bytes, bytes | None]  # (partition, key, value)


async def transaction(producer: AIOKafkaProducer, topic: str, writes: Iterable[Write]) -> None:
    """Send ``writes`` in one transaction, left open (the caller commits or aborts)."""
    await producer.begin_transaction()
    futures = [
        await producer.send(topic, key=key, value=value, partition=partition)
        for partition, key, value in writes
    ]
    await asyncio.gather(*futures)


@pytest.fixture
async def txn_producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"state-test-{uuid.uuid4().hex[:10]}"
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_restore_after_committed_transactions_yields_the_last_value_per_key(
    kafka_bootstrap: str, topic_factory: Any, txn_producer: AIOKafkaProducer
) -> None:
    topic = await topic_factory(partitions=2, configs={"cleanup.policy": "compact"})
    await transaction(txn_producer, topic, [(0, b"a", b"a1"), (0, b"b", b"b1"), (1, b"c", b"c1")])
    await txn_producer.commit_transaction()
    await transaction(txn_producer, topic, [(0, b"a", b"a2"), (1, b"c", b"c2")])
    await txn_producer.commit_transaction()  # both partitions end with a commit marker

    collected, stats = await restore(kafka_bootstrap, topic, 2)

    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    assert collected.last_values(tp0) == {b"a": b"a2", b"b": b"b1"}
    assert collected.last_values(tp1) == {b"c": b"c2"}
    # Three data records and two markers in partition 0, two and two in partition 1.
    assert (stats[tp0].records, stats[tp0].end_offset) == (3, 5)
    assert (stats[tp1].records, stats[tp1].end_offset) == (2, 4)
    assert stats[tp0].complete and stats[tp1].complete


async def test_restore_skips_aborted_transactions(
    kafka_bootstrap: str, topic_factory: Any, txn_producer: AIOKafkaProducer
) -> None:
    topic = await topic_factory(partitions=1, configs={"cleanup.policy": "compact"})
    await transaction(txn_producer, topic, [(0, b"a", b"a1"), (0, b"b", b"b1")])
    await txn_producer.commit_transaction()
    await transaction(txn_producer, topic, [(0, b"a", b"aborted"), (0, b"z", b"aborted")])
    await txn_producer.abort_transaction()  # the partition ends with an abort marker

    collected, stats = await restore(kafka_bootstrap, topic, 1)

    tp = TopicPartition(topic, 0)
    assert collected.last_values(tp) == {b"a": b"a1", b"b": b"b1"}
    assert stats[tp].records == 2 and stats[tp].complete
    assert stats[tp].end_offset == 6  # 2 records + commit, 2 aborted records + abort


async def test_restore_stops_below_an_open_transaction(
    kafka_bootstrap: str, topic_factory: Any, txn_producer: AIOKafkaProducer
) -> None:
    topic = await topic_factory(partitions=1, configs={"cleanup.policy": "compact"})
    await transaction(txn_producer, topic, [(0, b"a", b"a1")])
    await txn_producer.commit_transaction()
    await transaction(txn_producer, topic, [(0, b"a", b"pending"), (0, b"b", b"pending")])
    # Left open: the last stable offset stays at its first record.

    collected, stats = await restore(kafka_bootstrap, topic, 1)
    await txn_producer.abort_transaction()

    tp = TopicPartition(topic, 0)
    assert collected.last_values(tp) == {b"a": b"a1"}
    assert stats[tp].end_offset == 2 and stats[tp].complete


async def test_restore_yields_tombstones_so_the_caller_can_delete(
    kafka_bootstrap: str, topic_factory: Any, txn_producer: AIOKafkaProducer
) -> None:
    topic = await topic_factory(partitions=1, configs={"cleanup.policy": "compact"})
    await transaction(txn_producer, topic, [(0, b"a", b"a1"), (0, b"b", b"b1"), (0, b"a", None)])
    await txn_producer.commit_transaction()

    collected, stats = await restore(kafka_bootstrap, topic, 1)

    tp = TopicPartition(topic, 0)
    assert collected.last_values(tp) == {b"a": None, b"b": b"b1"}
    assert (stats[tp].records, stats[tp].tombstones) == (3, 1)


async def test_restore_of_an_empty_state_topic_finishes_at_once(
    kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = await topic_factory(partitions=3, configs={"cleanup.policy": "compact"})

    collected, stats = await restore(kafka_bootstrap, topic, 3)

    assert collected.records == {}
    assert all(s.complete and s.end_offset == 0 and s.records == 0 for s in stats.values())
