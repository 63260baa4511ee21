"""Dispatch stage: cut batches from the batcher, run them through the engine, emit them.

Each batch gets its ledger ticket *before* it is computed (dispatch order is commit order).
Up to ``pipeline_depth`` batches are queued on the engine thread ahead of their emission, so
the engine never waits for the event loop to hand over the next batch while the loop is busy
decoding a fetch or producing the previous outputs. Results are emitted in dispatch order
and handed to the ack stage.

With a ``checkpoint`` (exactly-once), the dispatcher also places checkpoint barriers:
:meth:`Dispatcher.checkpoint` asks for one; it is armed right after the next batch ``k`` is
submitted (its state snapshot queued on the engine thread behind ``k``, before ``k + 1``), or
at once when nothing is in flight, and finished right after ``k`` is emitted, before any
later batch is: no output of a batch after the barrier can enter a transaction that commits
the barrier's offsets. The engine keeps computing the batches already submitted meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable

from aiokafka import TopicPartition

from processor.engine.pipeline import Pipeline, Stepped
from processor.kafka.checkpoint.barrier import Armed, Request
from processor.kafka.checkpoint.cycle import CheckpointCycle
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.stages.batcher import Batcher
from processor.kafka.stages.items import Batch, Emitted, Item

__all__ = ["Dispatcher"]


class Dispatcher:
    """See the module docstring.

    Args:
        pipeline: the engine (its thread) and stale-record policy; each step notes its
            records' partitions in the pipeline's source index.
        batcher: where the fetch stage puts decoded items.
        ledger: opens a ticket per batch.
        emit: the emit stage (batch, engine result) -> Emitted.
        ack: the ack stage's queue.
        wakeup: set by the fetch stage when it added items (also set here by a flush or a
            checkpoint request).
        pipeline_depth: batches submitted to the engine thread ahead of their emission.
        on_taken: called whenever a batch is cut (lets the fetch stage go on).
        checkpoint: the barrier-placed checkpoint (see the module docstring), or None.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        batcher: Batcher[Item],
        ledger: OffsetLedger,
        emit: Callable[[Batch, Stepped | None], Awaitable[Emitted]],
        ack: Callable[[Emitted], None],
        wakeup: asyncio.Event,
        *,
        pipeline_depth: int,
        on_taken: Callable[[], None] = lambda: None,
        checkpoint: CheckpointCycle | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._batcher = batcher
        self._ledger = ledger
        self._emit = emit
        self._ack = ack
        self._depth = pipeline_depth
        self._on_taken = on_taken
        self._wakeup = wakeup  # new items, a flush or a checkpoint request
        self._flushing = False
        self._checkpoint = checkpoint
        # Checkpoint requests not yet armed.
        self._requests: list[Request] = []
        self._armed: Armed | None = None  # the barrier riding on a submitted batch
        self._running = False
        self._serving = asyncio.Lock()

    def flush(self) -> None:
        """Process everything queued without waiting for deadlines, then let :meth:`run`
        return (the fetch stage has stopped)."""
        self._flushing = True
        self._wakeup.set()

    async def checkpoint(self, partitions: Collection[Hashable] | None = None) -> bool:
        """Checkpoint at the next barrier (see the module docstring) and return its result;
        ``partitions`` are being revoked. While :meth:`run` is not running (before it, after
        the drain) the barrier is taken at once. Requests that arrive together share one
        barrier."""
        assert self._checkpoint is not None
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._requests.append(Request(tuple(partitions or ()), fut))
        if self._running:
            self._wakeup.set()
        else:
            await self._serve(None)
        return await fut

    async def run(self) -> None:
        """Dispatch until flushed and empty."""
        self._running = True
        try:
            await self._run()
        except BaseException:
            self._fail_requests()
            raise
        finally:
            self._running = False
        if self._requests:  # asked for while the last batches were emitted
            await self._serve(None)

    async def _run(self) -> None:
        pending: deque[Batch] = deque()
        while True:
            self._fill(pending)
            if not pending:
                if self._requests:  # nothing in flight: the barrier is here
                    await self._serve(None)
                    continue
                items = await self._next_batch()
                if items is None:
                    return  # flushed
                if items:
                    pending.append(self._submit(items))
                continue
            current = pending.popleft()
            stepped = await current.future if current.future is not None else None
            self._fill(pending)  # before producing this batch's outputs
            self._ack(await self._emit(current, stepped))
            if current.barrier is not None:
                await self._serve(current.barrier)

    def _arm(self) -> Armed:
        assert self._checkpoint is not None
        requests, self._requests = self._requests, []
        armed = Armed(self._checkpoint.arm(), requests)
        self._armed = armed
        return armed

    async def _serve(self, armed: Armed | None) -> None:
        """Finish an armed barrier (None: arm one now, nothing being in flight) and answer
        its requests (their partitions together)."""
        assert self._checkpoint is not None
        async with self._serving:
            if armed is None:
                if not self._requests:
                    return  # answered by a barrier that finished while this one waited
                armed = self._arm()
            requests = armed.requests
            scope = {tp for request in requests for tp in request.partitions}
            try:
                ok = await self._checkpoint.finish(armed.barrier, scope)
            except BaseException as exc:
                for request in requests:
                    if not request.answer.done():
                        request.answer.set_exception(exc)
                raise
            finally:
                self._armed = None
        for request in requests:
            if not request.answer.done():
                request.answer.set_result(ok)

    def _fail_requests(self) -> None:
        """The dispatcher failed: answer every request, armed or not, with False."""
        requests, self._requests = self._requests, []
        if self._armed is not None:
            requests += self._armed.requests
            self._armed = None
        for request in requests:
            if not request.answer.done():
                request.answer.set_result(False)

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
            if self._requests:
                return []  # a checkpoint request: served between batches
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._batcher.time_until_due(now))

    def _take(self) -> list[Item]:
        items = self._batcher.take()
        self._on_taken()
        return items

    def _submit(self, items: list[Item]) -> Batch:
        ticket = self._ledger.open(items)
        # A re-delivered record was applied before the checkpoint its stream's state was
        # recovered from: its output exists and its effect is in the state; only its offset
        # goes on.
        good = [it for it in items if it.record is not None and not it.redelivered]
        future: asyncio.Future[Stepped] | None = None
        if good:
            records = [it.record for it in good if it.record is not None]
            partitions: list[TopicPartition] = [it.tp for it in good]
            future = asyncio.wrap_future(self._pipeline.step(records, partitions))
        batch = Batch(items, good, ticket, future)
        if self._requests and self._armed is None:
            batch.barrier = self._arm()  # right behind this batch on the engine thread
        return batch
