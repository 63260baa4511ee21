"""Emit stage: a computed batch's outputs (encoded) and its bad records to the producer.

Takes a :class:`~processor.kafka.items.Batch` and what the engine did with its good records,
hands every output and dead letter to the producer (:mod:`processor.kafka.output`), and
returns an :class:`~processor.kafka.items.Emitted`: the send futures the ack stage awaits
before the batch's offsets may be committed. Nothing here waits for the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from processor.kafka.items import Batch, Emitted
from processor.kafka.output import DeadLetterWriter, OutputWriter
from processor.metrics import Metrics
from processor.pipeline import Stepped
from processor.records import Output

__all__ = ["Emitter"]


class Emitter:
    """See the module docstring. ``encode`` is the pipeline's batch encoder."""

    def __init__(
        self,
        outputs: OutputWriter,
        dead_letters: DeadLetterWriter,
        encode: Callable[[Sequence[Output]], list[bytes]],
        metrics: Metrics,
    ) -> None:
        self._outputs = outputs
        self._dead_letters = dead_letters
        self._encode = encode
        self._metrics = metrics

    async def emit(self, batch: Batch, stepped: Stepped | None) -> Emitted:
        """Send the batch's outputs, then its dead letters (in offset order); count what
        is known now (engine time, cache, skipped records); return the futures to await."""
        futures: list[asyncio.Future[Any]] = []
        event_ms: list[int] = []
        outputs = 0
        if stepped is not None:
            outs = stepped.outputs
            outputs = len(outs)
            encoded = self._encode(outs)
            futures += await self._outputs.write(
                list(zip([o.stream for o in outs], encoded, strict=True))
            )
            skipped = {id(r) for r in stepped.skipped}
            event_ms = [
                it.event_ms
                for it in batch.good
                if it.event_ms is not None and id(it.record) not in skipped
            ]
            self._metrics.observe_step(stepped)
        reasons: list[str] = []
        for it in batch.items:
            bad = it.bad
            if bad is None:
                continue
            futures.append(
                await self._dead_letters.write(
                    key=bad.key,
                    value=bad.value,
                    headers=bad.headers,
                    reason=bad.reason,
                    detail=bad.detail,
                    topic=it.tp.topic,
                    partition=it.tp.partition,
                    offset=it.offset,
                    timestamp_ms=bad.timestamp_ms,
                )
            )
            reasons.append(bad.reason)
        self._metrics.batch_size.observe(len(batch.items))
        return Emitted(batch.ticket, futures, outputs, reasons, event_ms)
