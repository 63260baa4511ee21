"""restore_partitions' end rule against a scripted consumer, and restore_consumer_kwargs.

The scripted consumer keeps one log per partition and a fake clock: a poll that finds no
record advances the clock by its whole timeout (as a real poll waits), a poll that returns
records advances it by a millisecond. The real broker's behaviour (transaction markers,
aborted transactions, tombstones) is covered by tests/integration/test_state_topic.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from processor.kafka.durable.reader import (
    RESTORE_FETCH_MAX_WAIT_MS,
    RestoreError,
    RestoreStats,
    restore_consumer_kwargs,
    restore_partitions,
)
from processor.kafka.io.clients import client_kwargs

TOPIC = "g-in-state"
TP0 = TopicPartition(TOPIC, 0)
TP1 = TopicPartition(TOPIC, 1)
TP2 = TopicPartition(TOPIC, 2)


def record(tp: TopicPartition, offset: int, value: bytes | None = b"v") -> ConsumerRecord[Any, Any]:
    key = f"s{offset}".encode()
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=-1 if value is None else len(value),
        headers=[],
    )


@dataclass
class Log:
    """One partition: its readable records (offset order, gaps allowed), the offset
    end_offsets() reports, where the position lands once every record is consumed (the end,
    or end - 1 below a trailing transaction marker), its beginning, and from which poll on
    each record can be fetched (default: the first)."""

    records: list[ConsumerRecord[Any, Any]]
    end: int
    tail: int
    begin: int = 0
    ready_at_poll: dict[int, int] = field(default_factory=dict)


class ScriptedConsumer:
    """The part of AIOKafkaConsumer that restore_partitions uses."""

    def __init__(self, logs: dict[TopicPartition, Log]) -> None:
        self.logs = logs
        self.now = 1000.0
        self.polls = 0
        self.assigned: list[TopicPartition] = []
        self.paused: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.end_offset_calls = 0

    def clock(self) -> float:
        return self.now

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.assigned = list(partitions)
        self.paused.clear()
        self.positions.clear()

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            assert tp in self.assigned
            self.positions[tp] = self.logs[tp].begin

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        self.end_offset_calls += 1
        return {tp: self.logs[tp].end for tp in partitions}

    async def position(self, tp: TopicPartition) -> int:
        assert tp in self.assigned, f"{tp} is not assigned"
        return self.positions[tp]

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def unsubscribe(self) -> None:
        raise AssertionError("stop() hangs after unsubscribe() on a group-less consumer")

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        self.polls += 1
        budget = max_records or 10**9
        out: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for tp in partitions or self.assigned:
            if tp in self.paused or budget == 0:
                continue
            log = self.logs[tp]
            position = self.positions[tp]
            taken: list[ConsumerRecord[Any, Any]] = []
            for r in log.records:
                if r.offset < position:
                    continue
                if log.ready_at_poll.get(r.offset, 0) > self.polls or len(taken) == budget:
                    break
                taken.append(r)
            if taken:
                budget -= len(taken)
                out[tp] = taken
                self.positions[tp] = taken[-1].offset + 1
            if all(r.offset < self.positions[tp] for r in log.records):
                # Everything consumed: the position moves over trailing markers or
                # compacted-away offsets, up to the log's tail.
                self.positions[tp] = max(self.positions[tp], log.tail)
        self.now += 0.001 if out else timeout_ms / 1000
        return out


class Applied:
    """The apply callback: records what it was given, optionally sets ``stop``."""

    def __init__(self, stop_after: int | None = None, stop: asyncio.Event | None = None) -> None:
        self.calls: list[tuple[TopicPartition, list[int]]] = []
        self.stop_after = stop_after
        self.stop = stop

    async def __call__(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        self.calls.append((tp, [r.offset for r in records]))
        stop, after = self.stop, self.stop_after
        if stop is not None and after is not None and len(self.calls) >= after:
            stop.set()

    def offsets(self, tp: TopicPartition) -> list[int]:
        return [o for t, offsets in self.calls if t == tp for o in offsets]


async def restore(
    consumer: ScriptedConsumer, partitions: Sequence[TopicPartition], apply: Applied, **kw: Any
) -> dict[TopicPartition, RestoreStats]:
    return await restore_partitions(
        cast(Any, consumer), partitions, apply, clock=consumer.clock, **kw
    )


def full_log(tp: TopicPartition, n: int, **kw: Any) -> Log:
    return Log([record(tp, o) for o in range(n)], end=n, tail=n, **kw)


async def test_an_empty_partition_is_done_without_polling() -> None:
    consumer = ScriptedConsumer({TP0: Log([], end=7, tail=7, begin=7)})
    apply = Applied()
    stats = await restore(consumer, [TP0], apply)
    assert stats[TP0] == RestoreStats(0, 0, 0, 7, 0.0, complete=True)
    assert consumer.polls == 0
    assert apply.calls == []
    assert consumer.paused == set(consumer.assigned)


async def test_a_partition_is_read_to_its_end_in_offset_order_in_chunks() -> None:
    consumer = ScriptedConsumer({TP0: full_log(TP0, 25)})
    apply = Applied()
    stats = await restore(consumer, [TP0], apply, max_records=10)
    assert [offsets for _, offsets in apply.calls] == [
        list(range(10)),
        list(range(10, 20)),
        list(range(20, 25)),
    ]
    assert stats[TP0].records == 25
    assert stats[TP0].tombstones == 0
    assert stats[TP0].bytes == sum(len(f"s{o}") + 1 for o in range(25))
    assert stats[TP0].end_offset == 25
    assert stats[TP0].complete
    assert consumer.end_offset_calls == 1
    assert consumer.paused == set(consumer.assigned)


async def test_tombstones_are_applied_and_counted() -> None:
    records = [record(TP0, 0), record(TP0, 1, None), record(TP0, 2, b"xy")]
    consumer = ScriptedConsumer({TP0: Log(records, end=3, tail=3)})
    apply = Applied()
    stats = await restore(consumer, [TP0], apply)
    assert apply.offsets(TP0) == [0, 1, 2]
    assert (stats[TP0].records, stats[TP0].tombstones) == (3, 1)
    assert stats[TP0].bytes == 3 * 2 + 1 + 2


async def test_a_trailing_transaction_marker_ends_the_restore_after_an_empty_poll() -> None:
    # Records 0..8, commit marker at 9: the position stays at 9 = end - 1.
    consumer = ScriptedConsumer({TP0: Log([record(TP0, o) for o in range(9)], end=10, tail=9)})
    apply = Applied()
    stats = await restore(consumer, [TP0], apply, poll_timeout_ms=500)
    assert apply.offsets(TP0) == list(range(9))
    assert stats[TP0].complete
    assert consumer.polls == 2  # the records, then one empty poll at end - 1


async def test_a_partition_holding_only_a_marker_is_done_after_one_empty_poll() -> None:
    consumer = ScriptedConsumer({TP0: Log([], end=1, tail=0)})
    apply = Applied()
    stats = await restore(consumer, [TP0], apply)
    assert stats[TP0].complete and stats[TP0].records == 0
    assert consumer.polls == 1


async def test_the_last_record_still_arrives_when_other_partitions_keep_polls_short() -> None:
    # TP0's record 9 (= end - 1) is fetchable only from the 8th poll; meanwhile TP1's records
    # make every poll return early, so TP0 must not be taken for done at position 9.
    tp0 = full_log(TP0, 10, ready_at_poll={9: 8})
    consumer = ScriptedConsumer({TP0: tp0, TP1: full_log(TP1, 8)})
    apply = Applied()
    stats = await restore(consumer, [TP0, TP1], apply, max_records=2)
    assert apply.offsets(TP0) == list(range(10))
    assert apply.offsets(TP1) == list(range(8))
    assert stats[TP0].complete and stats[TP1].complete


async def test_compaction_gaps_do_not_stop_the_restore() -> None:
    offsets = [0, 3, 4, 9, 15, 16]
    consumer = ScriptedConsumer({TP0: Log([record(TP0, o) for o in offsets], end=20, tail=20)})
    apply = Applied()
    stats = await restore(consumer, [TP0], apply, max_records=2)
    assert apply.offsets(TP0) == offsets
    assert stats[TP0].records == len(offsets) and stats[TP0].complete


async def test_records_at_or_beyond_the_initial_end_are_not_applied() -> None:
    # Written after the restore took its end offsets: 5, 6, 7 are in the log but past the end.
    consumer = ScriptedConsumer({TP0: Log([record(TP0, o) for o in range(8)], end=5, tail=8)})
    apply = Applied()
    stats = await restore(consumer, [TP0], apply)
    assert apply.offsets(TP0) == [0, 1, 2, 3, 4]
    assert stats[TP0].records == 5 and stats[TP0].end_offset == 5


async def test_a_partition_that_stops_moving_raises_naming_it() -> None:
    # Record 3 never becomes fetchable: the position stays at 3 with end 10.
    log = full_log(TP1, 10, ready_at_poll={3: 10**9})
    consumer = ScriptedConsumer({TP1: log})
    apply = Applied()
    with pytest.raises(RestoreError) as info:
        await restore(consumer, [TP1], apply, stall_timeout_s=30, poll_timeout_ms=1000)
    message = str(info.value)
    assert f"{TOPIC}[1]" in message and "position 3" in message and "end offset 10" in message
    assert "\n" not in message
    assert apply.offsets(TP1) == [0, 1, 2]
    assert 30 <= consumer.polls <= 32
    assert consumer.paused == set(consumer.assigned)


async def test_several_partitions_at_once() -> None:
    logs = {
        TP0: full_log(TP0, 30),
        TP1: Log([], end=4, tail=4, begin=4),
        TP2: Log([record(TP2, o) for o in (1, 5, 6)], end=8, tail=7),
    }
    consumer = ScriptedConsumer(logs)
    apply = Applied()
    stats = await restore(consumer, [TP0, TP1, TP2], apply, max_records=7)
    assert apply.offsets(TP0) == list(range(30))
    assert apply.offsets(TP1) == []
    assert apply.offsets(TP2) == [1, 5, 6]
    assert all(s.complete for s in stats.values())
    assert [stats[tp].records for tp in (TP0, TP1, TP2)] == [30, 0, 3]
    # Each partition is paused when done, so nothing beyond its end is fetched.
    assert consumer.paused == set(consumer.assigned)


async def test_stop_returns_early_with_incomplete_stats() -> None:
    stop = asyncio.Event()
    consumer = ScriptedConsumer({TP0: full_log(TP0, 50)})
    apply = Applied(stop_after=2, stop=stop)
    stats = await restore(consumer, [TP0], apply, max_records=10, stop=stop)
    assert apply.offsets(TP0) == list(range(20))
    assert stats[TP0].records == 20
    assert not stats[TP0].complete
    assert consumer.paused == set(consumer.assigned)


async def test_an_apply_failure_propagates_and_unassigns() -> None:
    consumer = ScriptedConsumer({TP0: full_log(TP0, 5)})

    async def failing(tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        raise RuntimeError("cache full")

    with pytest.raises(RuntimeError, match="cache full"):
        await restore_partitions(cast(Any, consumer), [TP0], failing, clock=consumer.clock)
    assert consumer.paused == set(consumer.assigned)


async def test_no_partitions_touches_nothing() -> None:
    consumer = ScriptedConsumer({})
    assert await restore(consumer, [], Applied()) == {}
    assert consumer.end_offset_calls == 0 and not consumer.assigned


def test_restore_consumer_kwargs_drop_group_options_and_keep_the_rest() -> None:
    consumer_kw, _ = client_kwargs(
        "broker:9092",
        "my-group",
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "u",
            "sasl_plain_password": "p",
            "client_id": "lstm",
            "consumer.group_instance_id": "member-1",
            "consumer.fetch_max_wait_ms": "2000",
            "consumer.max_poll_interval_ms": "60000",
            "consumer.auto_commit_interval_ms": "1000",
        },
        drain_timeout=10.0,
    )
    assert consumer_kw["rebalance_timeout_ms"]  # set for the group consumer
    before = dict(consumer_kw)
    kw = restore_consumer_kwargs(consumer_kw)
    assert consumer_kw == before  # not modified
    assert kw["group_id"] is None
    assert kw["enable_auto_commit"] is False
    assert kw["isolation_level"] == "read_committed"
    assert kw["auto_offset_reset"] == "earliest"
    assert kw["fetch_max_wait_ms"] == RESTORE_FETCH_MAX_WAIT_MS
    for key in (
        "group_instance_id",
        "rebalance_timeout_ms",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_poll_interval_ms",
        "auto_commit_interval_ms",
        "partition_assignment_strategy",
    ):
        assert key not in kw, key
    for key in (
        "bootstrap_servers",
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "client_id",
        "max_partition_fetch_bytes",
        "metadata_max_age_ms",
    ):
        assert kw[key] == consumer_kw[key], key


async def test_restore_consumer_kwargs_are_accepted_by_aiokafka() -> None:
    consumer_kw, _ = client_kwargs("127.0.0.1:1", "g", {}, drain_timeout=5.0)
    kwargs = restore_consumer_kwargs(consumer_kw)
    assert "group_id" not in kwargs or kwargs["group_id"] is None
    consumer = AIOKafkaConsumer(**kwargs)  # every keyword is one aiokafka knows
    await consumer.stop()
