"""The at-least-once checkpoint: stream states to the state topic, then the offsets they cover.

One cycle (run every commit interval by the
:class:`~processor.kafka.checkpoint.commit.CommitLoop`, on revocation and at the end of a drain):

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
their outputs already exist -- or this one's. Exactly-once
(:class:`TransactionalCheckpoint`) runs steps 3 and 4 in one transaction per input partition,
with the interval's outputs and dead letters, at a barrier the dispatcher places between two
emissions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from processor.engine.engine import Engine
from processor.engine.pipeline import Pipeline
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.transactions import PartitionProducers
from processor.kafka.durable.record import StateRecordCodec
from processor.kafka.group.streams import Changes, PartitionIndex
from processor.kafka.io.output import NO_HEADERS, Headers, OutputWriter
from processor.kafka.stages.ack import Acker, ProduceError
from processor.obs.metrics import Metrics
from processor.state.cache import StreamState

__all__ = [
    "Barrier",
    "Checkpoint",
    "StateWriter",
    "TransactionalCheckpoint",
    "count_states",
    "state_batch",
]

log = logging.getLogger(__name__)


#: Header of a tombstone: the next input offset of the checkpoint that wrote it (a state
#: record's value carries it in ``src``). Records of the ended stream below it were applied.
TOMBSTONE_OFFSET_HEADER: Final = "lstm-stream.state.next-offset"


def state_batch(
    pairs: list[tuple[str, bytes | None]], next_offset: int
) -> tuple[list[tuple[bytes, bytes | None, Headers]], int]:
    """One partition's ``(stream, value)`` state records as ``(key, value, headers)`` to
    produce, and their size in bytes (keys and values); a tombstone (value None) carries
    ``next_offset`` (its checkpoint's next input offset) in :data:`TOMBSTONE_OFFSET_HEADER`."""
    out: list[tuple[bytes, bytes | None, Headers]] = []
    size = 0
    ended: Headers = [(TOMBSTONE_OFFSET_HEADER, b"%d" % next_offset)]
    for stream, value in pairs:
        key = stream.encode("utf-8")
        if value is None:
            size += len(key)
            out.append((key, None, ended))
        else:
            size += len(key) + len(value)
            out.append((key, value, NO_HEADERS))
    return out, size


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
        """Queue the records of :class:`Changes` (input partition -> (stream, value)) as
        :func:`state_batch` makes them (``next_offsets[partition]`` for tombstones). Returns
        the send futures and the bytes queued."""
        futures: list[asyncio.Future[Any]] = []
        size = 0
        by_topic: dict[str, dict[int, list[tuple[bytes, bytes | None, Headers]]]] = {}
        for tp, pairs in records.items():
            assert isinstance(tp, TopicPartition)
            batch, n = state_batch(pairs, next_offsets.get(tp, -1))
            by_topic.setdefault(tp.topic, {}).setdefault(tp.partition, []).extend(batch)
            size += n
        for topic, by_partition in by_topic.items():
            futures += await self._writers[topic].write_partitioned(by_partition)
        return futures, size


def count_states(
    metrics: Metrics, records: Iterable[list[tuple[str, bytes | None]]], size: int
) -> None:
    """Count written state records, tombstones and bytes."""
    pairs = [v for batch in records for _, v in batch]
    tombstones = sum(v is None for v in pairs)
    metrics.state_records.inc(len(pairs) - tombstones)
    metrics.state_tombstones.inc(tombstones)
    metrics.state_bytes.inc(size)


@dataclass(eq=False)
class Barrier:
    """A checkpoint's barrier (see the module docstring): the last ticket ``seq`` opened
    before it, the dispatched offsets then, and the changed streams' states as they were
    after batch ``seq`` (taken on the engine thread, in submission order)."""

    seq: int
    offsets: dict[Hashable, int]
    changes: asyncio.Future[Changes]


class Checkpoint:
    """The cycle of the module docstring; call it as ``await checkpoint(partitions)``, or
    :meth:`arm` a barrier at a point of the dispatch order and :meth:`finish` it later.

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
        writer: StateWriter | None,
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
        """Run one cycle at a barrier taken now; commit the offsets of the owned partitions
        and of ``partitions`` (being revoked). True when everything up to the barrier is
        checkpointed and committed. False when the barrier's batches were not acknowledged
        in time (nothing written; the taken streams are marked changed again, so the next
        cycle writes them) or the commit failed (the states are written; the next cycle
        commits newer offsets). Raises :class:`ProduceError` when state records cannot be
        produced."""
        async with self._lock:
            return await self.finish(self.arm(), partitions)

    def arm(self) -> Barrier:
        """Take a barrier now (synchronous: nothing is dispatched in between): the ledger's
        last ticket, its dispatched offsets, and the state snapshot queued on the engine
        thread right behind the batches submitted so far."""
        ledger = self._ledger
        offsets = ledger.dispatched()
        codec = self._codec
        index = self._index

        def encode(state: StreamState, tp: Hashable) -> bytes:
            assert isinstance(tp, TopicPartition)
            return codec.encode(state, (tp.topic, tp.partition, offsets.get(tp, -1)))

        def take(engine: Engine) -> Changes:
            return index.take_changes(engine, encode)

        changes = asyncio.wrap_future(self._pipeline.call(take))
        return Barrier(ledger.last_seq, offsets, changes)

    async def finish(
        self, barrier: Barrier, partitions: Collection[Hashable] | None = None
    ) -> bool:
        """Wait for the barrier's batches to be acknowledged, then write and commit what it
        covers (see :meth:`__call__`); callers serialise their calls."""
        t0 = time.perf_counter()
        try:
            acked = await self._acker.wait_completed(barrier.seq, self._timeout)
            changes = await barrier.changes
            if not acked:
                log.warning(
                    "checkpoint skipped: the batches before it were not acknowledged within "
                    "%.0f s (their streams are written at the next checkpoint)",
                    self._timeout,
                )
                await self._retake(changes)
                return False
            scope = set(self._owned()) | set(partitions or ())
            return await self._settle(barrier, changes, scope)
        finally:
            self._metrics.checkpoint_seconds.observe(time.perf_counter() - t0)

    def _committable(self, barrier: Barrier, scope: set[Hashable]) -> dict[Hashable, int]:
        """The barrier's offsets that may be committed: partitions in ``scope``, still
        assigned, not forgotten since the barrier, not committed already."""
        ledger = self._ledger
        assigned = set(self._assigned())
        return {
            tp: off
            for tp, off in barrier.offsets.items()
            if tp in scope
            and tp in assigned
            and not ledger.fenced_since(tp, barrier.seq)
            and ledger.committed(tp) != off
        }

    async def _settle(self, barrier: Barrier, changes: Changes, scope: set[Hashable]) -> bool:
        """At-least-once: the state records, acknowledged, then the offsets."""
        if changes.count:
            await self._write(changes, barrier.offsets)
        return await self._commit(self._committable(barrier, scope))

    async def _write(self, changes: Changes, offsets: Mapping[Hashable, int]) -> None:
        assert self._writer is not None
        futures, size = await self._writer.write(changes.records, offsets)
        try:
            await asyncio.gather(*futures)
        except KafkaError as exc:
            await self._retake(changes)
            raise ProduceError(f"producing stream states failed: {exc!r}") from exc
        count_states(self._metrics, changes.records.values(), size)
        log.debug("checkpoint: %d states, %d bytes", changes.count, size)

    async def _retake(self, changes: Changes) -> None:
        index = self._index
        owned = set(self._owned())
        await asyncio.wrap_future(self._pipeline.call(lambda _: index.mark_changed(changes, owned)))


class TransactionalCheckpoint(Checkpoint):
    """The exactly-once cycle: at a barrier armed by the dispatcher right after batch ``k``
    was submitted and finished right after it was emitted (so no output of a later batch is
    in any open transaction), every partition's transaction gets its state records and the
    barrier's offset, and commits (:meth:`PartitionProducers.end`), all partitions
    concurrently.

    Every live transaction is ended, whatever the scope: a partition being revoked has its
    outputs in its open transaction, which must commit with its offsets or not at all.
    Partitions whose transaction did not commit are handed to ``on_lost`` (partition ->
    result: aborted, timeout or fenced), which forgets their uncommitted state.
    """

    def __init__(
        self,
        *,
        producers: PartitionProducers,
        on_lost: Callable[[dict[TopicPartition, str]], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(writer=None, commit=_no_commit, **kwargs)
        self._producers = producers
        self._on_lost = on_lost

    async def _settle(self, barrier: Barrier, changes: Changes, scope: set[Hashable]) -> bool:
        ledger = self._ledger
        live = [tp for tp in self._producers.live() if not ledger.fenced_since(tp, barrier.seq)]
        # Every live partition's offset, assigned or not: its outputs are in its transaction
        # (fencing comes from the transactional id, not from the assignment).
        offsets = {
            tp: off
            for tp, off in barrier.offsets.items()
            if tp in live and ledger.committed(tp) != off
        }
        batches: dict[TopicPartition, tuple[list[Any], int]] = {}
        for tp in live:
            pairs = changes.records.get(tp, [])
            batches[tp] = state_batch(pairs, barrier.offsets.get(tp, -1))
        results = await asyncio.gather(
            *(self._producers.end(tp, batches[tp][0], offsets.get(tp)) for tp in live)
        )
        committed: dict[Hashable, int] = {}
        lost: dict[TopicPartition, str] = {}
        for tp, result in zip(live, results, strict=True):
            if result in ("committed", "idle"):
                if result == "committed":
                    count_states(self._metrics, [changes.records.get(tp, [])], batches[tp][1])
                if tp in offsets:
                    committed[tp] = offsets[tp]
            else:
                lost[tp] = result
        if committed:
            ledger.mark_committed(committed)
            self._metrics.commits.inc()
        if lost:
            await self._on_lost(lost)
        return not lost


async def _no_commit(offsets: dict[Hashable, int]) -> bool:
    raise AssertionError("exactly-once commits offsets inside transactions")  # pragma: no cover
