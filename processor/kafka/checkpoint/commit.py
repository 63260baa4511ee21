"""At-least-once commit loop: every commit interval, a checkpoint.

Without a state topic a checkpoint commits what the ledger says is acknowledged: offsets
reach the ledger only after the outputs and dead letters of every record before them were
acknowledged by the broker, so a commit never covers an unproduced output. A crash between
produce and commit re-delivers records (duplicates downstream; the engine skips those it
already applied while their stream is still cached).

With a state topic the loop runs the :class:`~processor.kafka.checkpoint.cycle.Checkpoint` cycle
instead (states first, then exactly the offsets those states cover), which commits through
:meth:`CommitLoop.commit_offsets`. With exactly-once, :meth:`CommitLoop.commit_now` asks the
dispatcher for a barrier instead, and the
:class:`~processor.kafka.checkpoint.cycle.TransactionalCheckpoint` commits the offsets inside each
partition's transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.obs.metrics import Metrics

__all__ = ["CommitLoop"]

log = logging.getLogger(__name__)


class CommitLoop:
    """Commits acknowledged offsets every ``interval_s`` and on demand.

    Args:
        consumer: the group consumer (commits go through its coordinator).
        ledger: the source of acknowledged offsets.
        owned: returns the partitions whose offsets may be committed now.
        interval_s: seconds between periodic commits.
        metrics: commit counters.
        on_tick: called after every periodic commit attempt (the runtime refreshes lag
            gauges there).

    ``checkpoint`` (set by the stages when there is a state topic): the cycle that
    :meth:`commit_now` runs instead of committing acknowledged offsets.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        ledger: OffsetLedger,
        owned: Callable[[], Collection[Hashable]],
        interval_s: float,
        metrics: Metrics,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        self._consumer = consumer
        self._ledger = ledger
        self._owned = owned
        self._interval_s = interval_s
        self._metrics = metrics
        self._on_tick = on_tick
        self.checkpoint: Callable[[Collection[Hashable] | None], Awaitable[bool]] | None = None

    async def commit_now(self, partitions: Collection[Hashable] | None = None) -> bool:
        """Checkpoint now: with a state topic, the :attr:`checkpoint` cycle; otherwise commit
        the acknowledged offsets of ``partitions`` (default: all owned ones) that are still
        assigned to the consumer. Returns True when nothing was left uncommitted.

        A ``CommitFailedError`` (the group moved on: another member may own the partitions
        now) returns False; a retriable error that reaches this code is logged and returns
        False (the next attempt retries; aiokafka itself retries most of them, such as a
        coordinator that moved, until they succeed); non-retriable errors (authorisation...)
        raise.
        """
        if self.checkpoint is not None:
            return await self.checkpoint(partitions)
        scope = set(self._owned() if partitions is None else partitions)
        assigned = self._consumer.assignment()
        offsets = self._ledger.committable([tp for tp in scope if tp in assigned])
        return await self.commit_offsets(offsets)

    def assigned(self) -> set[Any]:
        """The consumer's current assignment (what a commit may still cover)."""
        return set(self._consumer.assignment())

    async def commit_offsets(self, offsets: dict[Hashable, int]) -> bool:
        """Commit exactly ``offsets`` (errors as :meth:`commit_now`); True when there was
        nothing to commit or the commit succeeded."""
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

    async def run(self) -> None:
        """Commit periodically until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.commit_now()
            if self._on_tick is not None:
                result = self._on_tick()
                if asyncio.iscoroutine(result):
                    await result
