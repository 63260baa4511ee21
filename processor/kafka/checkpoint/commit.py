"""Offset commits: the consumer's commit of acknowledged offsets, and the loop that runs a
checkpoint every commit interval.

:class:`OffsetCommitter` commits through the consumer's group coordinator. Without a state
topic a checkpoint is :meth:`OffsetCommitter.commit_acked`: offsets reach the ledger only
after the outputs and dead letters of every record before them were acknowledged by the
broker, so a commit never covers an unproduced output. A crash between produce and commit
re-delivers records (duplicates downstream; the engine skips those it already applied while
their stream is still cached).

With a state topic the checkpoint is the :class:`~processor.kafka.checkpoint.cycle.Checkpoint`
cycle instead (states first, then exactly the offsets those states cover, through
:meth:`OffsetCommitter.commit_offsets`); with exactly-once it is the dispatcher's barrier
(:meth:`~processor.kafka.stages.dispatch.Dispatcher.checkpoint`), and the
:class:`~processor.kafka.checkpoint.cycle.TransactionalCheckpoint` commits the offsets inside
each partition's transaction. :class:`CommitLoop` runs whichever it was built with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Any, Protocol

from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.obs.metrics import Metrics

__all__ = ["CommitLoop", "OffsetCommitter", "RunCheckpoint"]

log = logging.getLogger(__name__)

#: One checkpoint: ``partitions`` are being revoked (committed too; None: the owned ones
#: only). True when nothing was left uncommitted.
RunCheckpoint = Callable[[Collection[Hashable] | None], Awaitable[bool]]


class CommittingConsumer(Protocol):
    """What the commits need of ``AIOKafkaConsumer``."""

    def assignment(self) -> set[Any]: ...

    async def commit(self, offsets: dict[Any, int]) -> None: ...


class OffsetCommitter:
    """Commits offsets through the group consumer and records them in the ledger.

    Args:
        consumer: the group consumer (commits go through its coordinator).
        ledger: the source of acknowledged offsets.
        owned: returns the partitions whose offsets may be committed now.
        metrics: commit counters.
    """

    def __init__(
        self,
        consumer: CommittingConsumer,
        ledger: OffsetLedger,
        owned: Callable[[], Collection[Hashable]],
        metrics: Metrics,
    ) -> None:
        self._consumer = consumer
        self._ledger = ledger
        self._owned = owned
        self._metrics = metrics

    def assigned(self) -> set[Any]:
        """The consumer's current assignment (what a commit may still cover)."""
        return set(self._consumer.assignment())

    async def commit_acked(self, partitions: Collection[Hashable] | None = None) -> bool:
        """The checkpoint without a state topic: commit the acknowledged offsets of
        ``partitions`` (default: all owned ones) that are still assigned to the consumer.
        Errors as :meth:`commit_offsets`."""
        scope = set(self._owned() if partitions is None else partitions)
        assigned = self._consumer.assignment()
        offsets = self._ledger.committable([tp for tp in scope if tp in assigned])
        return await self.commit_offsets(offsets)

    async def commit_offsets(self, offsets: dict[Hashable, int]) -> bool:
        """Commit exactly ``offsets``; True when there was nothing to commit or the commit
        succeeded.

        A ``CommitFailedError`` (the group moved on: another member may own the partitions
        now) returns False; a retriable error that reaches this code is logged and returns
        False (the next attempt retries; aiokafka itself retries most of them, such as a
        coordinator that moved, until they succeed); non-retriable errors (authorisation...)
        raise.
        """
        if not offsets:
            return True
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            self._metrics.commit_failures.inc()
            log.warning("offset commit failed (group rebalanced): %s", exc)
            return False
        except KafkaError as exc:
            self._metrics.commit_failures.inc()
            if not exc.retriable:
                raise
            log.warning("offset commit failed, will retry: %r", exc)
            return False
        self._ledger.mark_committed(offsets)
        self._metrics.commits.inc()
        log.debug("committed %s", {str(tp): off for tp, off in offsets.items()})
        return True


class CommitLoop:
    """Runs ``checkpoint`` every ``interval_s`` and on demand (:meth:`commit_now`).

    Args:
        checkpoint: the checkpoint of the run's processing guarantee (module docstring).
        interval_s: seconds between periodic checkpoints.
        on_tick: awaited after every periodic attempt (the lag gauges are refreshed there).
    """

    def __init__(
        self,
        checkpoint: RunCheckpoint,
        interval_s: float,
        on_tick: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._checkpoint = checkpoint
        self._interval_s = interval_s
        self._on_tick = on_tick

    @property
    def interval_s(self) -> float:
        """Seconds between periodic checkpoints."""
        return self._interval_s

    async def commit_now(self, partitions: Collection[Hashable] | None = None) -> bool:
        """Checkpoint now; ``partitions`` are being revoked. True when nothing was left
        uncommitted."""
        return await self._checkpoint(partitions)

    async def run(self) -> None:
        """Checkpoint periodically until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self._checkpoint(None)
            if self._on_tick is not None:
                await self._on_tick()
