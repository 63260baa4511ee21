"""The consumer-group handler: what this member does when partitions are revoked from it and
assigned to it (aiokafka's eager protocol: every rebalance revokes all partitions, then
assigns the full new set, often mostly the same).

On revocation the partitions are detached at once (:class:`~.drop.PartitionDrop`), in-flight
batches finish, a checkpoint is taken and committed; a partition committed cleanly keeps its
cached streams for the next assignment (:class:`~.ownership.Ownership`), the others' are
forgotten. On assignment, with durable state, every new partition is *held back* (paused,
not owned) until it is settled: its cached streams kept when provably unchanged, otherwise
forgotten and *recovered* from its state topic (:class:`~processor.kafka.durable.recovery.
Recovery`), then sought to its committed offset and *released*.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.engine.pipeline import Pipeline
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.transactions import PartitionProducers
from processor.kafka.durable.recovery import Recovery
from processor.kafka.group.drop import PartitionDrop
from processor.kafka.group.ownership import Ownership
from processor.kafka.phase import Lifecycle
from processor.kafka.stages.ack import Acker
from processor.kafka.stages.batcher import FlowControl
from processor.kafka.stages.fetch import Fetcher
from processor.obs.metrics import Metrics

__all__ = ["GroupHandler"]

log = logging.getLogger(__name__)


class GroupHandler:
    """See the module docstring; :class:`~.rebalance.RebalanceListener` calls it.

    Args:
        consumer: the group consumer.
        ownership, ledger, flow, fetcher, acker, metrics: the run's.
        drop: detaches and forgets partitions.
        checkpoint: the run's checkpoint (the commit loop's ``commit_now``).
        pipeline: forgets streams of partitions not kept.
        lifecycle: marks the rebalance.
        durable: stream states are checkpointed to state topics.
        offset_reset: the consumer's ``auto_offset_reset`` (a partition without a committed
            offset starts at its end for ``"latest"``, else at its beginning).
        drain_timeout_s: longest wait for in-flight work on revocation.
        producers: exactly-once: the partitions' transactional producers.
        recovery: recovers partitions' streams from their state topics (durable state; a
            run on in-process fakes may have none).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        ownership: Ownership[TopicPartition],
        ledger: OffsetLedger,
        flow: FlowControl,
        fetcher: Fetcher,
        acker: Acker,
        metrics: Metrics,
        drop: PartitionDrop,
        checkpoint: Callable[[Collection[Hashable] | None], Awaitable[bool]],
        pipeline: Pipeline,
        lifecycle: Lifecycle,
        durable: bool,
        offset_reset: str,
        drain_timeout_s: float,
        producers: PartitionProducers | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        self._consumer = consumer
        self._ownership = ownership
        self._ledger = ledger
        self._flow = flow
        self._fetcher = fetcher
        self._acker = acker
        self._metrics = metrics
        self._drop = drop
        self._checkpoint = checkpoint
        self._pipeline = pipeline
        self._lifecycle = lifecycle
        self._durable = durable
        self._offset_reset = offset_reset
        self._timeout = drain_timeout_s
        self._producers = producers
        self._recovery = recovery

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Drop queued records of ``partitions``, let in-flight batches finish, commit.
        Does nothing once the processor is closing (aiokafka may still run a rebalance while
        its consumer stops)."""
        self._lifecycle.rebalancing()
        if not partitions or self._lifecycle.closed:
            return
        dropped = self._drop.detach(partitions)
        if dropped:
            self._metrics.revoked_dropped.inc(dropped)
        ledger = self._ledger
        finished = await self._acker.wait_completed(ledger.last_seq, self._timeout)
        committed = finished and await self._checkpoint(partitions)
        if committed:
            self._ownership.mark_clean({tp: ledger.committed(tp) for tp in partitions})
        else:
            log.warning(
                "revoked partitions %s without a final checkpoint (in-flight work %s): "
                "their streams are %s if they come back",
                sorted(map(str, partitions)),
                "finished" if finished else "did not finish in time",
                "recovered from the last checkpoint"
                if self._durable
                else "restarted from the initial state",
            )
        if self._producers is not None:
            # Committed (nothing open) or not (the next owner's start aborts what is open).
            producers = self._producers
            await asyncio.gather(*(producers.discard(tp) for tp in partitions))
        await self._drop.forget(partitions, streams=not committed)
        log.info(
            "revoked %d partitions (%d queued records dropped, committed=%s)",
            len(partitions),
            dropped,
            committed,
        )

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Own the new assignment. Cached streams of a partition are kept only when it was
        revoked cleanly from this member and (with durable state) its committed offset is
        still the one committed then; every other partition's streams are forgotten and,
        with durable state, recovered from the state topic before it is consumed. Does
        nothing once the processor is closing: no producer is started, nothing recovered."""
        if self._lifecycle.closed:
            return
        candidates = self._ownership.assign(partitions)
        consumer = self._consumer
        if self._durable:
            # Before any await: nothing of the new assignment is fetched or enters the
            # pipeline until each partition is kept or recovered and sought to its committed
            # offset (aiokafka fetches a new assignment while this callback runs).
            self._ownership.hold_back(partitions)
            consumer.pause(*partitions)
            if self._producers is not None:
                # Fence the previous owners first: from here on nobody else commits a
                # transaction of these partitions, so their committed offsets are final.
                await self._producers.start(partitions)
            keep = await self._provably_unchanged(candidates)
        else:
            keep = set(candidates)
        recover = set(partitions) - keep
        forgotten = await asyncio.wrap_future(
            self._pipeline.forget_streams(lambda tp: tp not in keep)
        )
        self._ledger.forget(recover)
        if self._durable:
            applied: dict[TopicPartition, dict[str, int]] = {}
            if self._recovery is not None and recover:
                applied = await self._recovery.recover(recover)
            known = {tp: candidates[tp] for tp in keep}
            await self._consume_from_committed(partitions, known, applied)
        if self._flow.paused and partitions:
            consumer.pause(*partitions)
        self._metrics.rebalances.inc()
        self._metrics.assigned_partitions.set(len(partitions))
        self._lifecycle.assigned()
        log.info(
            "assigned %d partitions (%d kept their cached streams, %d recovered; %d streams "
            "forgotten)",
            len(partitions),
            len(keep),
            len(recover) if self._recovery is not None else 0,
            forgotten,
        )

    async def _provably_unchanged(
        self, candidates: dict[TopicPartition, int | None]
    ) -> set[TopicPartition]:
        """The cleanly revoked partitions whose group offset is still the one this member
        committed at their revocation: nobody processed them in between (an offset commit
        can succeed after this member was evicted, so cleanliness alone proves nothing)."""
        keep: set[TopicPartition] = set()
        for tp, mine in candidates.items():
            if await self._consumer.committed(tp) == mine:
                keep.add(tp)
        return keep

    async def _consume_from_committed(
        self,
        partitions: set[TopicPartition],
        known: dict[TopicPartition, int | None],
        applied: dict[TopicPartition, dict[str, int]],
    ) -> None:
        """Release held-back ``partitions`` at their committed offsets (``known`` ones:
        already read; none committed: the reset policy's end). Records fetched for them
        meanwhile were dropped at admission, so every position is set explicitly; the seeks,
        the re-delivery marks of recovered streams (``applied``) and the release happen in
        one step of the event loop, so no fetch sees a partition half-started."""
        consumer = self._consumer
        targets: dict[TopicPartition, int] = {}
        for tp in sorted(partitions):
            committed = known[tp] if tp in known else await consumer.committed(tp)
            if committed is None:
                if self._offset_reset == "latest":
                    committed = (await consumer.end_offsets([tp]))[tp]
                else:
                    committed = (await consumer.beginning_offsets([tp]))[tp]
            targets[tp] = committed
        for tp, offset in targets.items():
            consumer.seek(tp, offset)
            self._fetcher.replay_until(tp, applied.get(tp, {}))
        self._ownership.release(partitions)
        if not self._flow.paused:
            consumer.resume(*partitions)
