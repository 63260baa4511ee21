"""The at-least-once checkpoint: stream states to the state topic, then the offsets they cover.

One cycle (run every commit interval by the :class:`~processor.kafka.commit.CommitLoop`, on
revocation and at the end of a drain):

1. **Barrier**, in one synchronous step of the event loop: the ledger's last ticket ``k``
   and its dispatched offsets, and a call queued on the engine thread that takes the changed
   streams' states (:meth:`PartitionIndex.take_changes`). The engine thread runs calls in
   submission order and batch ``k`` was submitted before, ``k + 1`` after, so the states are
   exactly those after batch ``k`` although two batches may be queued ahead.
2. Wait until every ticket up to ``k`` is acknowledged: a state must never be written before
   the outputs of the records it covers, or a crash could leave a restored ``seq`` that skips
   records whose outputs were lost.
3. Produce the state records (key = stream id, partition = the input partition, a tombstone
   for an ended stream) and await every acknowledgement.
4. Commit exactly the barrier's offsets (never an offset acknowledged after the barrier: its
   records' states are not in this checkpoint).

A crash at any point leaves either the previous checkpoint's offsets with states at or ahead
of them -- the re-delivered records whose ``seq`` is not above the restored one are skipped,
their outputs already exist -- or this one's. An exactly-once mode would run steps 3 and 4
in one transaction per partition, with the outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from processor.cache import StreamState
from processor.engine import Engine
from processor.kafka.ack import Acker, ProduceError
from processor.kafka.ledger import OffsetLedger
from processor.kafka.output import NO_HEADERS, Headers, OutputWriter
from processor.kafka.staterecord import StateRecordCodec
from processor.kafka.streams import Changes, PartitionIndex
from processor.metrics import Metrics
from processor.pipeline import Pipeline

__all__ = ["Checkpoint", "StateWriter"]

log = logging.getLogger(__name__)


#: Header of a tombstone: the next input offset of the checkpoint that wrote it (a state
#: record's value carries it in ``src``). Records of the ended stream below it were applied.
TOMBSTONE_OFFSET_HEADER: Final = "lstm-stream.state.next-offset"


class StateWriter:
    """Produces state records to the state topic of each input topic, to the partition of
    the input record (set explicitly: input producers may hash keys differently)."""

    def __init__(self, producer: AIOKafkaProducer, state_topics: Mapping[str, str]) -> None:
        self._writers = {t: OutputWriter(producer, s) for t, s in state_topics.items()}

    async def write(
        self,
        records: Mapping[Hashable, list[tuple[str, bytes | None]]],
        next_offsets: Mapping[Hashable, int],
    ) -> tuple[list[asyncio.Future[Any]], int]:
        """Queue the records of :class:`Changes` (input partition -> (stream, value)); a
        tombstone carries its checkpoint's next input offset (``next_offsets[partition]``) in
        the :data:`TOMBSTONE_OFFSET_HEADER` header. Returns the send futures and the bytes
        queued (keys and values)."""
        futures: list[asyncio.Future[Any]] = []
        size = 0
        by_topic: dict[str, dict[int, list[tuple[bytes, bytes | None, Headers]]]] = {}
        for tp, pairs in records.items():
            assert isinstance(tp, TopicPartition)
            out = by_topic.setdefault(tp.topic, {}).setdefault(tp.partition, [])
            ended: Headers = [(TOMBSTONE_OFFSET_HEADER, b"%d" % next_offsets.get(tp, -1))]
            for stream, value in pairs:
                key = stream.encode("utf-8")
                if value is None:
                    size += len(key)
                    out.append((key, None, ended))
                else:
                    size += len(key) + len(value)
                    out.append((key, value, NO_HEADERS))
        for topic, by_partition in by_topic.items():
            futures += await self._writers[topic].write_partitioned(by_partition)
        return futures, size


class Checkpoint:
    """The cycle of the module docstring; call it as ``await checkpoint(partitions)``.

    Args:
        pipeline: the engine thread (the barrier's state snapshot runs there).
        index: which streams changed, and their partitions.
        ledger: tickets and dispatched offsets.
        acker: waits for the acknowledgement of the tickets up to the barrier.
        writer: produces the state records.
        codec: encodes a stream's state.
        commit: commits exactly the given offsets (:meth:`CommitLoop.commit_offsets`).
        assigned: the consumer's current assignment.
        owned: the partitions this member owns now.
        metrics: state records, bytes, tombstones, checkpoint duration.
        barrier_timeout_s: longest wait for the barrier's acknowledgements.
    """

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        index: PartitionIndex,
        ledger: OffsetLedger,
        acker: Acker,
        writer: StateWriter,
        codec: StateRecordCodec,
        commit: Callable[[dict[Hashable, int]], Awaitable[bool]],
        assigned: Callable[[], Collection[Hashable]],
        owned: Callable[[], Collection[Hashable]],
        metrics: Metrics,
        barrier_timeout_s: float,
    ) -> None:
        self._pipeline = pipeline
        self._index = index
        self._ledger = ledger
        self._acker = acker
        self._writer = writer
        self._codec = codec
        self._commit = commit
        self._assigned = assigned
        self._owned = owned
        self._metrics = metrics
        self._timeout = barrier_timeout_s
        # One cycle at a time: the periodic one and a revocation's must not interleave
        # (each takes the changed streams; offsets must be committed in barrier order).
        self._lock = asyncio.Lock()

    async def __call__(self, partitions: Collection[Hashable] | None = None) -> bool:
        """Run one cycle; commit the offsets of the owned partitions and of ``partitions``
        (being revoked). True when everything up to the barrier is checkpointed and
        committed. False when the barrier's batches were not acknowledged in time (nothing
        written; the taken streams are marked changed again, so the next cycle writes them)
        or the commit failed (the states are written; the next cycle commits newer
        offsets). Raises :class:`ProduceError` when state records cannot be produced."""
        async with self._lock:
            t0 = time.perf_counter()
            ok = await self._cycle(set(self._owned()) | set(partitions or ()))
            self._metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
            return ok

    async def _cycle(self, scope: set[Hashable]) -> bool:
        ledger = self._ledger
        # -- the barrier: nothing below awaits before the engine call is queued.
        seq = ledger.last_seq
        offsets = ledger.dispatched()
        codec = self._codec
        index = self._index

        def encode(state: StreamState, tp: Hashable) -> bytes:
            assert isinstance(tp, TopicPartition)
            return codec.encode(state, (tp.topic, tp.partition, offsets.get(tp, -1)))

        def take(engine: Engine) -> Changes:
            return index.take_changes(engine, encode)

        changes_future = asyncio.wrap_future(self._pipeline.call(take))
        # -- the barrier's batches acknowledged, then the states, then the offsets.
        acked = await self._acker.wait_completed(seq, self._timeout)
        changes = await changes_future
        if not acked:
            log.warning(
                "checkpoint skipped: the batches before it were not acknowledged within "
                "%.0f s (their streams are written at the next checkpoint)",
                self._timeout,
            )
            await self._retake(changes)
            return False
        if changes.count:
            await self._write(changes, offsets)
        assigned = set(self._assigned())
        commit = {
            tp: off
            for tp, off in offsets.items()
            if tp in scope
            and tp in assigned
            and not ledger.fenced_since(tp, seq)
            and ledger.committed(tp) != off
        }
        return await self._commit(commit)

    async def _write(self, changes: Changes, offsets: Mapping[Hashable, int]) -> None:
        futures, size = await self._writer.write(changes.records, offsets)
        try:
            await asyncio.gather(*futures)
        except KafkaError as exc:
            await self._retake(changes)
            raise ProduceError(f"producing stream states failed: {exc!r}") from exc
        tombstones = sum(v is None for pairs in changes.records.values() for _, v in pairs)
        m = self._metrics
        m.state_records.inc(changes.count - tombstones)
        m.state_tombstones.inc(tombstones)
        m.state_bytes.inc(size)
        log.debug("checkpoint: %d states, %d tombstones, %d bytes", changes.count, tombstones, size)

    async def _retake(self, changes: Changes) -> None:
        index = self._index
        owned = set(self._owned())
        await asyncio.wrap_future(self._pipeline.call(lambda _: index.mark_changed(changes, owned)))
