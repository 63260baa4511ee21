"""The at-least-once checkpoint: stream states to the state topic, then the offsets they cover.

One cycle (run every commit interval by the
:class:`~processor.kafka.checkpoint.commit.CommitLoop`, on revocation and at the end of a drain):

1. **Barrier**, in one synchronous step of the event loop: the ledger's last ticket ``k``
   and its dispatched offsets, and the changed streams' states taken on the engine thread
   (:meth:`~processor.engine.pipeline.Pipeline.take_changes`). The engine thread runs its
   operations in submission order and batch ``k`` was submitted before, ``k + 1`` after, so
   the states are exactly those after batch ``k`` although two batches may be queued ahead.
2. Wait until every ticket up to ``k`` is acknowledged: a state must never be written before
   the outputs of the records it covers, or a crash could leave a recovered state that
   skips records whose outputs were lost.
3. Produce the state records (key = stream id, partition = the input partition, a tombstone
   for an ended stream) and await every acknowledgement.
4. Commit exactly the barrier's offsets (never an offset acknowledged after the barrier: its
   records' states are not in this checkpoint).

A crash at any point leaves either the previous checkpoint's offsets with states at or ahead
of them -- each recovered state carries the input offset of its checkpoint, and the
re-delivered records of its stream below it are skipped, their outputs already exist -- or
this one's. Exactly-once
(:class:`TransactionalCheckpoint`) runs steps 3 and 4 in one transaction per input partition,
with the interval's outputs and dead letters, at a barrier the dispatcher places between two
emissions.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from processor.engine.pipeline import Pipeline
from processor.engine.sources import Changes
from processor.errors import LstmStreamError
from processor.kafka.checkpoint.barrier import Barrier
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.states import StateWriter, count_states, state_batch
from processor.kafka.checkpoint.transactions import PartitionProducers, TxnResult
from processor.obs.metrics import Metrics
from processor.state.cache import StreamState

__all__ = [
    "Checkpoint",
    "CheckpointCycle",
    "CheckpointParts",
    "StateProduceError",
    "TransactionalCheckpoint",
]

log = logging.getLogger(__name__)


class StateProduceError(LstmStreamError):
    """Producing a checkpoint's state records failed after the client's retries."""


class AckProgress(Protocol):
    """What a checkpoint needs of the ack stage
    (:class:`~processor.kafka.stages.ack.Acker`)."""

    async def wait_completed(self, seq: int, timeout: float) -> bool: ...


class StateEncoding(Protocol):
    """What a checkpoint needs of the state record codec
    (:class:`~processor.kafka.durable.record.StateRecordCodec`)."""

    def encode(self, state: StreamState, source: tuple[str, int, int]) -> bytes: ...


@dataclass(frozen=True)
class CheckpointParts:
    """What every checkpoint cycle works with.

    Args:
        pipeline: the engine thread (the barrier's state snapshot runs there).
        ledger: tickets and dispatched offsets.
        acker: waits for the acknowledgement of the tickets up to the barrier.
        codec: encodes a stream's state.
        owned: the partitions this member owns now.
        metrics: state records, bytes, tombstones, checkpoint duration.
        barrier_timeout_s: longest wait for the barrier's acknowledgements.
    """

    pipeline: Pipeline
    ledger: OffsetLedger
    acker: AckProgress
    codec: StateEncoding
    owned: Callable[[], Collection[Hashable]]
    metrics: Metrics
    barrier_timeout_s: float


class CheckpointCycle(abc.ABC):
    """The cycle of the module docstring; call it as ``await checkpoint(partitions)``, or
    :meth:`arm` a barrier at a point of the dispatch order and :meth:`finish` it later.
    Subclasses settle a finished barrier (:meth:`_settle`): write and commit."""

    def __init__(self, parts: CheckpointParts) -> None:
        self._parts = parts
        self._pipeline = parts.pipeline
        self._ledger = parts.ledger
        self._metrics = parts.metrics
        # One cycle at a time: the periodic one and a revocation's must not interleave
        # (each takes the changed streams; offsets must be committed in barrier order).
        self._lock = asyncio.Lock()

    async def __call__(self, partitions: Collection[Hashable] | None = None) -> bool:
        """Run one cycle at a barrier taken now; commit the offsets of the owned partitions
        and of ``partitions`` (being revoked). True when everything up to the barrier is
        checkpointed and committed. False when the barrier's batches were not acknowledged
        in time (nothing written; the taken streams are marked changed again, so the next
        cycle writes them) or the commit failed (the states are written; the next cycle
        commits newer offsets). Raises :class:`StateProduceError` when state records
        cannot be produced."""
        async with self._lock:
            return await self.finish(self.arm(), partitions)

    def arm(self) -> Barrier:
        """Take a barrier now (synchronous: nothing is dispatched in between): the ledger's
        last ticket, its dispatched offsets, and the state snapshot queued on the engine
        thread right behind the batches submitted so far."""
        ledger = self._ledger
        offsets = ledger.dispatched()
        codec = self._parts.codec

        def encode(state: StreamState, tp: Hashable) -> bytes:
            assert isinstance(tp, TopicPartition)
            return codec.encode(state, (tp.topic, tp.partition, offsets.get(tp, -1)))

        changes = asyncio.wrap_future(self._pipeline.take_changes(encode))
        return Barrier(ledger.last_seq, offsets, changes)

    async def finish(
        self, barrier: Barrier, partitions: Collection[Hashable] | None = None
    ) -> bool:
        """Wait for the barrier's batches to be acknowledged, then write and commit what it
        covers (see :meth:`__call__`); callers serialise their calls."""
        parts = self._parts
        t0 = time.perf_counter()
        try:
            acked = await parts.acker.wait_completed(barrier.seq, parts.barrier_timeout_s)
            changes = await barrier.changes
            if not acked:
                log.warning(
                    "checkpoint skipped: the batches before it were not acknowledged within "
                    "%.0f s (their streams are written at the next checkpoint)",
                    parts.barrier_timeout_s,
                )
                await self._retake(changes)
                return False
            scope = set(parts.owned()) | set(partitions or ())
            return await self._settle(barrier, changes, scope)
        finally:
            self._metrics.checkpoint_seconds.observe(time.perf_counter() - t0)

    @abc.abstractmethod
    async def _settle(self, barrier: Barrier, changes: Changes, scope: set[Hashable]) -> bool:
        """Write ``changes`` and commit the barrier's offsets of ``scope``."""

    async def _retake(self, changes: Changes) -> None:
        owned = set(self._parts.owned())
        await asyncio.wrap_future(self._pipeline.mark_changed(changes, owned))


class Checkpoint(CheckpointCycle):
    """The at-least-once cycle: the state records, acknowledged, then the offsets.

    Args:
        parts: see :class:`CheckpointParts`.
        writer: produces the state records.
        commit: commits exactly the given offsets
            (:meth:`~processor.kafka.checkpoint.commit.OffsetCommitter.commit_offsets`).
        assigned: the consumer's current assignment.
    """

    def __init__(
        self,
        parts: CheckpointParts,
        *,
        writer: StateWriter,
        commit: Callable[[dict[Hashable, int]], Awaitable[bool]],
        assigned: Callable[[], Collection[Hashable]],
    ) -> None:
        super().__init__(parts)
        self._writer = writer
        self._commit = commit
        self._assigned = assigned

    @property
    def writer(self) -> StateWriter:
        """What produces the state records."""
        return self._writer

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
        if changes.count:
            await self._write(changes, barrier.offsets)
        return await self._commit(self._committable(barrier, scope))

    async def _write(self, changes: Changes, offsets: dict[Hashable, int]) -> None:
        futures, size = await self._writer.write(changes.records, offsets)
        try:
            await asyncio.gather(*futures)
        except KafkaError as exc:
            await self._retake(changes)
            raise StateProduceError(f"producing stream states failed: {exc!r}") from exc
        count_states(self._metrics, changes.records.values(), size)
        log.debug("checkpoint: %d states, %d bytes", changes.count, size)


class TransactionalCheckpoint(CheckpointCycle):
    """The exactly-once cycle: at a barrier armed by the dispatcher right after batch ``k``
    was submitted and finished right after it was emitted (so no output of a later batch is
    in any open transaction), every partition's transaction gets its state records and the
    barrier's offset, and commits (:meth:`PartitionProducers.end`), all partitions
    concurrently.

    Every live transaction is ended, whatever the scope: a partition being revoked has its
    outputs in its open transaction, which must commit with its offsets or not at all.
    Partitions whose transaction did not commit are handed to ``on_lost`` (partition ->
    result: ABORTED, TIMEOUT or FENCED), which drops their uncommitted work.
    """

    def __init__(
        self,
        parts: CheckpointParts,
        *,
        producers: PartitionProducers,
        on_lost: Callable[[dict[TopicPartition, TxnResult]], Awaitable[None]],
    ) -> None:
        super().__init__(parts)
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
        batches = {
            tp: state_batch(changes.records.get(tp, []), barrier.offsets.get(tp, -1)) for tp in live
        }
        results = await asyncio.gather(
            *(self._producers.end(tp, batches[tp][0], offsets.get(tp)) for tp in live)
        )
        committed: dict[Hashable, int] = {}
        lost: dict[TopicPartition, TxnResult] = {}
        for tp, result in zip(live, results, strict=True):
            if result.kept:
                if result is TxnResult.COMMITTED:
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
