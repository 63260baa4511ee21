"""Emit stage: a computed batch's outputs (encoded) and its bad records to the producer.

Takes a :class:`~processor.kafka.stages.items.Batch` and what the engine did with its good records,
hands every output and dead letter to the producer (:mod:`processor.kafka.io.output`), and
returns an :class:`~processor.kafka.stages.items.Emitted`: the send futures the ack stage awaits
before the batch's offsets may be committed. Nothing here waits for the broker.

Exactly-once: each record's outputs and dead letter go through the transactional producer of
its input partition (:class:`~processor.kafka.checkpoint.transactions.PartitionProducers`),
inside that partition's open transaction. A partition without a live producer, or whose transaction
already failed, is being recovered: its records' outputs are dropped here (its transaction is
aborted and its input processed again), and a failed send is recorded on the partition's
transaction instead of failing the processor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import TopicPartition

from processor.engine.pipeline import Stepped
from processor.kafka.checkpoint.transactions import PartitionProducer, PartitionProducers
from processor.kafka.io.output import DeadLetterWriter, OutputWriter
from processor.kafka.stages.items import Batch, Emitted
from processor.obs.metrics import Metrics
from processor.records import Output

__all__ = ["Emitter"]


class Emitter:
    """See the module docstring. ``encode`` is the pipeline's batch encoder; ``producers``
    (exactly-once) route each record's sends through its input partition's transaction,
    ``outputs`` and ``dead_letters`` are used otherwise. ``stale(tp, seq)``: partition ``tp``
    was forgotten after ticket ``seq`` was opened (exactly-once drops such records' sends:
    the partition is consumed again from its committed offset)."""

    def __init__(
        self,
        outputs: OutputWriter,
        dead_letters: DeadLetterWriter,
        encode: Callable[[Sequence[Output]], list[bytes]],
        metrics: Metrics,
        producers: PartitionProducers | None = None,
        stale: Callable[[TopicPartition, int], bool] = lambda tp, seq: False,
    ) -> None:
        self._outputs = outputs
        self._dead_letters = dead_letters
        self._encode = encode
        self._metrics = metrics
        self._producers = producers
        self._stale = stale

    async def emit(self, batch: Batch, stepped: Stepped | None) -> Emitted:
        """Send the batch's outputs, then its dead letters (in offset order); count what
        is known now (engine time, cache, skipped records); return the futures to await."""
        futures: list[asyncio.Future[Any]] = []
        event_ms: list[int] = []
        outputs = 0
        if stepped is not None:
            outs = stepped.outputs
            encoded = self._encode(outs)
            pairs = list(zip([o.stream for o in outs], encoded, strict=True))
            if self._producers is None:
                futures += await self._outputs.write(pairs)
                outputs = len(pairs)
            else:
                outputs = await self._emit_per_partition(batch, outs, pairs, futures)
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
            writer = self._dead_letters
            sink: PartitionProducer | None = None
            if self._producers is not None:
                if self._stale(it.tp, batch.ticket.seq):
                    continue
                sink = await self._producers.sink(it.tp)
                if sink is None:
                    continue  # its partition is being recovered: dead-lettered again later
                writer = sink.dead_letters
            try:
                fut = await writer.write(
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
            except Exception as exc:
                if sink is None:
                    raise
                sink.failure = sink.failure or exc
                continue
            futures += [fut] if sink is None else sink.track([fut])
            reasons.append(bad.reason)
        self._metrics.batch_size.observe(len(batch.items))
        return Emitted(batch.ticket, futures, outputs, reasons, event_ms)

    async def _emit_per_partition(
        self,
        batch: Batch,
        outs: Sequence[Output],
        pairs: list[tuple[str, bytes]],
        futures: list[asyncio.Future[Any]],
    ) -> int:
        """Send each output through its input partition's transaction; returns how many
        were sent (the rest belong to partitions being recovered)."""
        assert self._producers is not None
        # By (stream, seq): a stream whose records come from two partitions (input
        # partitions were added) has each output in the transaction of its own record.
        tp_of = {
            (it.record.stream, it.record.seq): it.tp for it in batch.good if it.record is not None
        }
        groups: dict[TopicPartition, list[tuple[str, bytes]]] = {}
        for out, pair in zip(outs, pairs, strict=True):
            groups.setdefault(tp_of[(out.stream, out.seq)], []).append(pair)
        sent = 0
        for tp, group in groups.items():
            if self._stale(tp, batch.ticket.seq):
                continue
            sink = await self._producers.sink(tp)
            if sink is None:
                continue
            try:
                futures += sink.track(await sink.outputs.write(group))
            except Exception as exc:  # refused before sending: the transaction must abort
                sink.failure = sink.failure or exc
                continue
            sent += len(group)
        return sent
