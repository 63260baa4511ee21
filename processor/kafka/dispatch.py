"""Dispatch stage: cut batches from the batcher, run them through the engine, emit them.

Each batch gets its ledger ticket *before* it is computed (dispatch order is commit order).
Up to ``pipeline_depth`` batches are queued on the engine thread ahead of their emission, so
the engine never waits for the event loop to hand over the next batch while the loop is busy
decoding a fetch or producing the previous outputs. Results are emitted in dispatch order
and handed to the ack stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import TopicPartition

from processor.engine import Engine
from processor.kafka.batcher import Batcher
from processor.kafka.items import Batch, Emitted, Item
from processor.kafka.ledger import OffsetLedger
from processor.kafka.streams import PartitionIndex
from processor.pipeline import Pipeline, Stepped
from processor.records import Record

__all__ = ["Dispatcher"]


class Dispatcher:
    """See the module docstring.

    Args:
        pipeline: the engine (its thread) and stale-record policy.
        batcher: where the fetch stage puts decoded items.
        ledger: opens a ticket per batch.
        index: stream -> partition, updated on the engine thread after each step.
        emit: the emit stage (batch, engine result) -> Emitted.
        ack: the ack stage's queue.
        pipeline_depth: batches submitted to the engine thread ahead of their emission.
        on_taken: called whenever a batch is cut (lets the fetch stage go on).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        batcher: Batcher[Item],
        ledger: OffsetLedger,
        index: PartitionIndex,
        emit: Callable[[Batch, Stepped | None], Awaitable[Emitted]],
        ack: Callable[[Emitted], None],
        *,
        pipeline_depth: int,
        on_taken: Callable[[], None] = lambda: None,
    ) -> None:
        self._pipeline = pipeline
        self._batcher = batcher
        self._ledger = ledger
        self._index = index
        self._emit = emit
        self._ack = ack
        self._depth = pipeline_depth
        self._on_taken = on_taken
        self._wakeup = asyncio.Event()  # new items, or a flush request
        self._flushing = False

    def notify(self) -> None:
        """New items are in the batcher."""
        self._wakeup.set()

    def flush(self) -> None:
        """Process everything queued without waiting for deadlines, then let :meth:`run`
        return (the fetch stage has stopped)."""
        self._flushing = True
        self._wakeup.set()

    async def run(self) -> None:
        """Dispatch until flushed and empty."""
        pending: deque[Batch] = deque()
        while True:
            self._fill(pending)
            if not pending:
                items = await self._next_batch()
                if items is None:
                    return  # flushed
                pending.append(self._submit(items))
                continue
            current = pending.popleft()
            stepped = await current.future if current.future is not None else None
            self._fill(pending)  # before producing this batch's outputs
            self._ack(await self._emit(current, stepped))

    def _ready(self, now: float) -> bool:
        return self._batcher.due(now) or (self._flushing and len(self._batcher) > 0)

    def _fill(self, pending: deque[Batch]) -> None:
        while len(pending) < self._depth and self._ready(time.monotonic()):
            pending.append(self._submit(self._take()))

    async def _next_batch(self) -> list[Item] | None:
        while True:
            now = time.monotonic()
            if self._ready(now):
                return self._take()
            if self._flushing:
                return None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._batcher.time_until_due(now))

    def _take(self) -> list[Item]:
        items = self._batcher.take()
        self._on_taken()
        return items

    def _submit(self, items: list[Item]) -> Batch:
        ticket = self._ledger.open(items)
        # A re-delivered record was applied before its stream's restored checkpoint: its
        # output exists and its effect is in the state; only its offset goes on.
        good = [it for it in items if it.record is not None and not it.redelivered]
        future: asyncio.Future[Stepped] | None = None
        if good:
            records = [it.record for it in good if it.record is not None]
            partitions: list[TopicPartition] = [it.tp for it in good]
            index = self._index

            def note(engine: Engine, recs: Sequence[Record]) -> None:
                index.note(engine, recs, partitions)

            future = asyncio.wrap_future(self._pipeline.step(records, note))
        return Batch(items, good, ticket, future)
