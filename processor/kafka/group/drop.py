"""Dropping partitions this member stops processing: the one place that does it, for a
revocation (:class:`~processor.kafka.group.handler.GroupHandler`) and for partitions whose
transaction did not commit (:meth:`PartitionDrop.lost`, exactly-once).

Dropping has two halves. :meth:`PartitionDrop.detach` runs at once, in one step of the event
loop: the partitions stop being owned (the fetch stage admits none of their records from
here on) and their queued records leave the batcher and the in-flight bound. A revocation
then lets in-flight batches finish and commits; :meth:`PartitionDrop.forget` then drops the
partitions' offset bookkeeping, fetch bookkeeping and lag gauges and, unless their streams'
states are exact at their committed offsets, their streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.engine.pipeline import Pipeline
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.transactions import TxnResult
from processor.kafka.group.ownership import Ownership
from processor.kafka.phase import Lifecycle
from processor.kafka.stages.batcher import Batcher
from processor.kafka.stages.fetch import Fetcher
from processor.kafka.stages.items import Item
from processor.kafka.stages.lag import LagGauge

__all__ = ["PartitionDrop", "request_rejoin"]

log = logging.getLogger(__name__)


class PartitionDrop:
    """See the module docstring.

    Args:
        consumer: the group consumer (a lost partition is paused; a rejoin is requested).
        ownership, batcher, ledger, fetcher, lag: the run's, forgotten per partition.
        pipeline: forgets the partitions' streams on the engine thread.
        lifecycle: a drain that lost a partition fails instead of rejoining.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        ownership: Ownership[TopicPartition],
        batcher: Batcher[Item],
        ledger: OffsetLedger,
        fetcher: Fetcher,
        lag: LagGauge,
        pipeline: Pipeline,
        lifecycle: Lifecycle,
    ) -> None:
        self._consumer = consumer
        self._ownership = ownership
        self._batcher = batcher
        self._ledger = ledger
        self._fetcher = fetcher
        self._lag = lag
        self._pipeline = pipeline
        self._lifecycle = lifecycle

    def detach(self, partitions: Collection[TopicPartition]) -> int:
        """Stop owning ``partitions`` and drop their queued records (released from the
        in-flight bound: the partitions' next owner reads them from the committed offset);
        returns how many were dropped."""
        self._ownership.revoke(partitions)
        dropped = self._batcher.drop(partitions)
        if dropped:
            self._fetcher.release(len(dropped))
        return len(dropped)

    async def forget(self, partitions: Collection[TopicPartition], *, streams: bool) -> int:
        """Drop the bookkeeping of detached ``partitions`` and, with ``streams``, their
        streams' cached states; returns how many streams were forgotten."""
        parts = set(partitions)
        self._ledger.forget(parts)
        self._fetcher.forget(parts)
        self._lag.remove(parts)
        if not streams:
            return 0
        return await asyncio.wrap_future(self._pipeline.forget_streams(lambda tp: tp in parts))

    async def lost(self, lost: dict[TopicPartition, TxnResult]) -> None:
        """Partitions whose transaction did not commit (partition -> result; their producers
        are discarded, an aborted transaction is aborted): stop owning them, drop what was
        queued or in flight for them, forget their streams (their uncommitted state), and
        ask the group for a new assignment.

        Their recovery goes through the group on purpose. A fenced partition may belong to
        another member now; restarting its producer here would fence that member in turn. An
        aborted one may be in the middle of moving. The rebalance settles who owns what, and
        the owner recovers each partition from its state topic under a freshly started
        producer (which fences any producer of the partition still around). Does nothing
        once the processor is closing."""
        if self._lifecycle.closed:
            return
        parts = set(lost)
        for tp, result in sorted(lost.items()):
            if result is TxnResult.FENCED:
                log.warning(
                    "fenced out of partition %s: its transactional producer was fenced "
                    "(another member started it, or the broker aborted a transaction open "
                    "longer than --transaction-timeout-ms); this member stops processing it "
                    "and rejoins the group",
                    tp,
                )
            else:
                log.warning(
                    "partition %s: its transaction %s; its uncommitted work is dropped and "
                    "the group is rejoined, the partition's owner recovers it from its last "
                    "commit",
                    tp,
                    "was aborted" if result is TxnResult.ABORTED else "timed out",
                )
        assigned = self._consumer.assignment()
        self._consumer.pause(*(tp for tp in parts if tp in assigned))
        dropped = self.detach(parts)
        forgotten = await self.forget(parts, streams=True)
        log.info(
            "partitions %s: %d queued records dropped, %d streams forgotten",
            sorted(map(str, parts)),
            dropped,
            forgotten,
        )
        if not self._lifecycle.stopping:  # a drain that lost a partition fails instead
            request_rejoin(self._consumer)


def request_rejoin(consumer: AIOKafkaConsumer) -> None:
    """Make the consumer rejoin its group (revoking and reassigning every partition) at
    its next poll. aiokafka offers no public call for this; its group coordinator does."""
    coordinator = getattr(consumer, "_coordinator", None)
    request = getattr(coordinator, "request_rejoin", None)
    if request is None:
        log.error(
            "cannot ask the consumer to rejoin its group (aiokafka changed): partitions that "
            "lost their transaction stay paused until the next rebalance"
        )
        return
    request()
