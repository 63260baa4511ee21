"""Fetch stage: owned partitions' records from the consumer, decoded, into the batcher.

The ownership check happens here, where fetched records are handed out (as aiokafka's own
``Fetcher`` drops records fetched before a rebalance): a record of a partition this member
no longer owns never enters the pipeline. Flow control lives here too: at the high-water
mark of records in flight every owned partition is paused, at the low-water mark fetching
resumes (the ack stage and a dropped partition release records through
:meth:`Fetcher.release`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from processor.codec.reasons import MISSING_KEY, UNDECODABLE
from processor.errors import BadRecord
from processor.kafka.stages.batcher import Batcher, FlowChange, FlowControl
from processor.kafka.stages.items import BadInput, Item
from processor.obs.metrics import Metrics
from processor.records import Record

__all__ = ["FETCH_TIMEOUT_MS", "Consumer", "Fetcher", "Owner"]

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 100  # how long one getmany waits: bounds the reaction to stop/resume
# The fetch loop polls at least this often even when enough records wait for the engine (the
# group coordinator expects regular polls: max_poll_interval_ms); the in-flight bound and the
# pause at the high-water mark still hold.
_MAX_FETCH_GAP_S = 1.0
# A null key lets the producer's partitioner spread one stream over partitions, so its seqs
# would arrive out of order and later ones be skipped: silent loss. Hence a dead letter.
_MISSING_KEY_DETAIL = (
    "the record has no message key: in Kafka the message key must be the stream id"
)

Records = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class Consumer(Protocol):
    """What the fetch stage needs of ``AIOKafkaConsumer`` (tests pass a fake)."""

    def assignment(self) -> set[TopicPartition]: ...

    def paused(self) -> set[TopicPartition]: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Records: ...


class Owner(Protocol):
    """Which partitions' records may enter the pipeline now
    (:class:`~processor.kafka.group.ownership.Ownership`)."""

    def owns(self, tp: TopicPartition) -> bool: ...


class Fetcher:
    """The fetch loop (:meth:`run`) and flow control.

    Args:
        consumer: the group consumer.
        decode: the pipeline's batch decoder (values, keys) -> records or BadRecords.
        batcher: where decoded items wait for the engine.
        flow: the in-flight bound (acquired here, released by the ack stage).
        ownership: which partitions this member owns now.
        metrics: records_in, in_flight, paused_partitions.
        fetched: set after items were added to the batcher (the dispatcher waits on it).
        max_batch: the engine's batch size (and the most records asked for at once).
        pipeline_depth: batches the dispatcher keeps queued on the engine thread.
    """

    def __init__(
        self,
        consumer: Consumer,
        decode: Callable[[list[bytes], list[bytes | None]], list[Record | BadRecord]],
        batcher: Batcher[Item],
        flow: FlowControl,
        ownership: Owner,
        metrics: Metrics,
        fetched: asyncio.Event,
        *,
        max_batch: int,
        pipeline_depth: int,
    ) -> None:
        self._consumer = consumer
        self._decode = decode
        self._batcher = batcher
        self._flow = flow
        self._ownership = ownership
        self._metrics = metrics
        self._max_batch = max_batch
        # Decoded records kept ready for the dispatcher: enough for the batches it keeps
        # queued on the engine thread plus the one it cuts next.
        self._ready_target = (pipeline_depth + 1) * max_batch
        self._fetched = fetched
        self._taken = asyncio.Event()  # the dispatcher took a batch: fetching may go on
        self._turn = 0  # rotates the partition order of fetch()
        self._first_offset: dict[TopicPartition, int] = {}
        self._fetched_to: dict[TopicPartition, int] = {}
        # partition -> (highest offset of the map, stream -> offset below which its records
        # were applied before the checkpoint its state was recovered from)
        self._replay: dict[TopicPartition, tuple[int, dict[str, int]]] = {}
        self._stopping = False

    def stop(self) -> None:
        """Ask :meth:`run` to return after its current fetch (its records are dropped:
        not processed, not committed, re-read later)."""
        self._stopping = True
        self._taken.set()

    def on_taken(self) -> None:
        """The dispatcher took a batch from the batcher."""
        self._taken.set()

    def first_offset(self, tp: TopicPartition) -> int | None:
        """Offset of the first record fetched from ``tp`` since it was assigned (the lag's
        reference before any of its records is acknowledged)."""
        return self._first_offset.get(tp)

    def fetched_to(self, tp: TopicPartition) -> int | None:
        """The offset after the last record admitted from ``tp`` since it was assigned."""
        return self._fetched_to.get(tp)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop per-partition bookkeeping of revoked partitions."""
        for tp in partitions:
            self._first_offset.pop(tp, None)
            self._fetched_to.pop(tp, None)
            self._replay.pop(tp, None)

    def replay_until(self, tp: TopicPartition, applied: dict[str, int]) -> None:
        """``tp`` was recovered: a record of stream ``s`` at an offset below ``applied[s]``
        was applied before the checkpoint its state comes from, so it is marked
        re-delivered (not stepped again; counted as a duplicate). Kept until the partition's
        records pass the highest of those offsets."""
        highest = max(applied.values(), default=-1)
        if highest > 0:
            self._replay[tp] = (highest, applied)
        else:
            self._replay.pop(tp, None)

    async def run(self) -> None:
        """Fetch until :meth:`stop`; see the module docstring."""
        last_fetch = time.monotonic()
        while not self._stopping:
            if (
                len(self._batcher) >= self._ready_target
                and time.monotonic() - last_fetch < _MAX_FETCH_GAP_S
            ):
                # Enough decoded records wait for the engine: leave the rest in the client's
                # buffer (raw bytes) until a batch is taken. Decoding far ahead in one burst
                # would hold the event loop for a long time (the engine thread then runs out
                # of submitted batches) and fill the queue to the high-water mark, whose
                # pause makes aiokafka discard its prefetched data.
                self._taken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._taken.wait(), FETCH_TIMEOUT_MS / 1000)
                continue
            last_fetch = time.monotonic()
            # Never ask for more than fits below the high-water mark: the bound is exact.
            batches = await self.fetch(max(1, min(self._flow.headroom, self._max_batch)))
            if self._stopping:
                return
            if self.admit(batches):
                # getmany returns without awaiting anything while records are buffered: let
                # the dispatcher submit and emit between two fetches.
                await asyncio.sleep(0)

    def admit(self, batches: Records) -> int:
        """Hand fetched records to the pipeline: those of partitions this member still owns
        are decoded into the batcher and counted against the in-flight bound; those of a
        partition revoked since they were fetched are dropped here (the new owner reads
        them). Returns how many items were added."""
        added = 0
        now = time.monotonic()
        for tp, records in batches.items():
            if not records or not self._ownership.owns(tp):
                continue  # fetched just before a revocation: the new owner reads them
            items = self.to_items(tp, records, now)
            self._first_offset.setdefault(tp, records[0].offset)
            self._fetched_to[tp] = records[-1].offset + 1
            self._batcher.add(items)
            self._metrics.records_in.labels(tp.topic).inc(len(items))
            added += len(items)
        if added:
            self._flow.acquire(added)
            self.apply_flow()
            self._fetched.set()
        return added

    async def fetch(self, limit: int) -> Records:
        """Up to ``limit`` buffered records, shared evenly across the fetchable partitions;
        waits up to ``FETCH_TIMEOUT_MS`` for any record when none is buffered.

        Why per partition: ``getmany`` drains one partition's buffered fetch before the
        next, so a backlog would arrive a partition at a time, and a batch of one
        partition's backlog holds several consecutive records of each of its streams (the
        engine then runs several narrow steps instead of one wide one). With a share from
        every partition the batcher can cut batches of mostly distinct streams."""
        consumer = self._consumer
        paused = consumer.paused()
        parts = [tp for tp in consumer.assignment() if tp not in paused]
        batches: Records = {}
        if len(parts) > 1:
            # Start at another partition each time: when `limit` is below the number of
            # partitions (near the high-water mark), the last ones are not always left out.
            turn = self._turn = (self._turn + 1) % len(parts)
            parts = parts[turn:] + parts[:turn]
            share = max(1, limit // len(parts))
            left = limit  # never more than `limit` in all (the flow control bound is exact)
            for tp in parts:
                got = await consumer.getmany(tp, timeout_ms=0, max_records=min(share, left))
                for tp_got, records in got.items():
                    batches[tp_got] = records
                    left -= len(records)
                if left <= 0:
                    break
        if not batches:
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=limit)
        return batches

    def to_items(
        self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]], now: float
    ) -> list[Item]:
        """Decode one partition's chunk (one batch decode call) into items."""
        decoded = self._decode(
            [r.value if r.value is not None else b"" for r in records], [r.key for r in records]
        )
        items: list[Item] = []
        append = items.append
        for r, record in zip(records, decoded, strict=True):
            if type(record) is Record and r.key is not None:
                ts = record.ts
                append(Item(tp, r.offset, now, r.timestamp if ts is None else ts, record))
                continue
            if r.key is None:  # first: whatever else is wrong, the producer must set keys
                record = BadRecord(MISSING_KEY, _MISSING_KEY_DETAIL)
            elif r.value is None:
                record = BadRecord(UNDECODABLE, "the record has no value (a tombstone)")
            assert isinstance(record, BadRecord)
            bad = BadInput(
                record.reason, record.detail, r.key, r.value, tuple(r.headers), r.timestamp
            )
            append(Item(tp, r.offset, now, r.timestamp, None, bad))
        replay = self._replay.get(tp)
        if replay is not None:
            self._mark_redelivered(tp, items, *replay)
        return items

    def _mark_redelivered(
        self, tp: TopicPartition, items: list[Item], highest: int, applied: dict[str, int]
    ) -> None:
        again = 0
        for item in items:
            record = item.record
            if record is not None and item.offset < applied.get(record.stream, -1):
                item.redelivered = True
                again += 1
        if again:
            self._metrics.duplicates.inc(again)
        if items and items[-1].offset + 1 >= highest:
            del self._replay[tp]

    def release(self, n: int) -> None:
        """``n`` records left the pipeline (acknowledged, or dropped with their partition):
        release them from the in-flight bound and resume fetching at the low-water mark."""
        self._flow.release(n)
        self.apply_flow()

    def apply_flow(self) -> None:
        """Pause every owned partition at the high-water mark, resume at the low one."""
        consumer = self._consumer
        decision = self._flow.decide()
        if decision is FlowChange.PAUSE:
            owned = [tp for tp in consumer.assignment() if self._ownership.owns(tp)]
            consumer.pause(*owned)
            self._metrics.backpressure_pauses.inc()
            log.debug(
                "backpressure: paused %d partitions (%d in flight)",
                len(owned),
                self._flow.in_flight,
            )
        elif decision is FlowChange.RESUME:
            # Only owned ones: a partition held back stays paused until it is released.
            consumer.resume(*[tp for tp in consumer.paused() if self._ownership.owns(tp)])
            log.debug("backpressure: resumed (%d in flight)", self._flow.in_flight)
        self._metrics.in_flight.set(self._flow.in_flight)
        self._metrics.paused_partitions.set(len(consumer.paused()))
