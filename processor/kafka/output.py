"""Producing outputs and dead letters without one awaited send per record.

:class:`OutputWriter` packs a whole engine batch into one aiokafka ``BatchBuilder`` per
output partition and submits each with ``send_batch``: per record this costs one native
append instead of a coroutine, a future and an accumulator lookup. The partition of a key is
Kafka's default (murmur2 of the key bytes, as the Java client and aiokafka's
``DefaultPartitioner`` compute it), memoised per stream id because ids repeat every step.

:class:`DeadLetterWriter` sends each bad record with its original key and value and headers
naming the reason, detail and source topic/partition/offset (see :data:`DLQ_HEADERS`).

Both return the send futures; the caller gathers them before committing the offsets of the
records they cover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

__all__ = ["DLQ_HEADERS", "DeadLetterWriter", "OutputWriter", "default_partition"]

#: Header names on dead-letter records (values are UTF-8).
DLQ_HEADERS: Final = {
    "reason": "lstm-stream.reason",
    "detail": "lstm-stream.detail",
    "topic": "lstm-stream.source.topic",
    "partition": "lstm-stream.source.partition",
    "offset": "lstm-stream.source.offset",
    "timestamp": "lstm-stream.source.timestamp",
}
_MAX_DETAIL: Final = 1000  # headers are not for essays: the detail is clipped
_MAX_MEMO: Final = 1 << 20  # memoised stream -> partition entries before the memo is reset


def default_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a non-null key (murmur2, positive, modulo)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class OutputWriter:
    """Writes keyed records to one topic in per-partition batches (see module docstring)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._partitions = 0
        self._memo: dict[str, int] = {}

    async def _partition_count(self) -> int:
        parts = await self._producer.partitions_for(self._topic)
        n = len(parts)
        if n != self._partitions:  # first call, or the topic grew: recompute placements
            self._partitions = n
            self._memo.clear()
        return n

    async def write(self, records: Sequence[tuple[str, bytes]]) -> list[asyncio.Future[Any]]:
        """Queue ``(stream id, value)`` records (key = UTF-8 stream id) for sending; returns
        the futures of the submitted batches (each resolves when the broker acknowledged
        it, or raises). Records of one partition keep their order."""
        if not records:
            return []
        n = await self._partition_count()
        memo = self._memo
        if len(memo) > _MAX_MEMO:
            memo.clear()
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for stream, value in records:
            key = stream.encode("utf-8")
            p = memo.get(stream)
            if p is None:
                p = memo[stream] = default_partition(key, n)
            by_partition.setdefault(p, []).append((key, value))
        futures: list[asyncio.Future[Any]] = []
        for p, pairs in by_partition.items():
            batch = self._producer.create_batch()
            for key, value in pairs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    # Full (max_batch_size): submit it and start another one.
                    futures.append(await self._send(batch, p))
                    batch = self._producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(
                            f"an output record of {len(value)} bytes does not fit an empty "
                            "batch; raise the producer's max_batch_size"
                        )
            futures.append(await self._send(batch, p))
        return futures

    async def _send(self, batch: Any, partition: int) -> asyncio.Future[Any]:
        batch.close()
        fut: asyncio.Future[Any] = await self._producer.send_batch(
            batch, self._topic, partition=partition
        )
        return fut


class DeadLetterWriter:
    """Sends bad records to the dead-letter topic (rare: one ``send`` each)."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    @property
    def topic(self) -> str:
        return self._topic

    async def write(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        reason: str,
        detail: str,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int | None,
    ) -> asyncio.Future[Any]:
        """Queue one dead letter: the original key, value and headers plus ours."""
        ours = [
            (DLQ_HEADERS["reason"], reason.encode()),
            (DLQ_HEADERS["detail"], detail[:_MAX_DETAIL].encode("utf-8", "replace")),
            (DLQ_HEADERS["topic"], topic.encode()),
            (DLQ_HEADERS["partition"], str(partition).encode()),
            (DLQ_HEADERS["offset"], str(offset).encode()),
        ]
        if timestamp_ms is not None:
            ours.append((DLQ_HEADERS["timestamp"], str(timestamp_ms).encode()))
        # A tombstone (no value) with no key cannot be produced: keep an empty value.
        fut: asyncio.Future[Any] = await self._producer.send(
            self._topic,
            value=value if value is not None else b"",
            key=key,
            headers=[*headers, *ours],
        )
        return fut
