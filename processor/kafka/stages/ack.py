"""Ack stage: await each emitted batch's sends, in dispatch order, then complete its ticket.

Only here does a batch become *acknowledged*: its ledger ticket completes (so the commit
loop may commit its offsets), its records leave the in-flight bound, and its outputs and
dead letters are counted. A failed send (after the producer's own retries) fails the
processor: the offsets of that batch and of every later one stay uncommitted, so a restart
processes them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import numpy as np
from aiokafka.errors import KafkaError

from processor.errors import LstmStreamError
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.stages.items import Emitted
from processor.obs.metrics import Metrics

__all__ = ["Acker", "ProduceError"]


class ProduceError(LstmStreamError):
    """Producing outputs or dead letters failed after the client's retries."""


class Acker:
    """See the module docstring.

    Args:
        ledger: completes tickets, in order.
        release: called with the number of records of each acknowledged batch (the flow
            control's release).
        metrics: records_out, dead_letters, end-to-end latency.
        output_topic: label of records_out.
    """

    def __init__(
        self,
        ledger: OffsetLedger,
        release: Callable[[int], None],
        metrics: Metrics,
        output_topic: str,
    ) -> None:
        self._ledger = ledger
        self._release = release
        self._metrics = metrics
        self._records_out = metrics.records_out.labels(output_topic)
        self._queue: asyncio.Queue[Emitted | None] = asyncio.Queue()
        self._progress = asyncio.Event()  # replaced on every completed ticket
        self._abandoned = False

    def put(self, emitted: Emitted) -> None:
        """Queue an emitted batch (dispatch order)."""
        self._queue.put_nowait(emitted)

    def finish(self) -> None:
        """No more batches: :meth:`run` returns after the queued ones."""
        self._queue.put_nowait(None)

    def abandon(self) -> None:
        """The processor failed: wake every :meth:`wait_completed` (it returns False)."""
        self._abandoned = True
        self._notify()

    async def run(self) -> None:
        """Acknowledge batches until :meth:`finish`. Raises :class:`ProduceError`."""
        while True:
            emitted = await self._queue.get()
            if emitted is None:
                return
            if emitted.futures:
                try:
                    await asyncio.gather(*emitted.futures)
                except KafkaError as exc:
                    raise ProduceError(f"producing outputs/dead letters failed: {exc!r}") from exc
            ticket = emitted.ticket
            self._ledger.complete(ticket)
            self._release(ticket.count)
            self._count(emitted)
            self._notify()

    def _count(self, emitted: Emitted) -> None:
        if emitted.outputs:
            self._records_out.inc(emitted.outputs)
        for reason in emitted.reasons:
            self._metrics.dead_letters.labels(reason).inc()
        if emitted.event_ms:
            now_ms = time.time() * 1000.0
            ages = (now_ms - np.asarray(emitted.event_ms, dtype=np.float64)) / 1000.0
            self._metrics.latency_seconds.observe_many(np.maximum(ages, 0.0))

    def _notify(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def wait_completed(self, seq: int, timeout: float) -> bool:
        """Wait until every ticket up to ``seq`` is acknowledged; False on timeout or when
        the processor failed meanwhile."""
        deadline = time.monotonic() + timeout
        while self._ledger.completed_seq < seq:
            if self._abandoned:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True
