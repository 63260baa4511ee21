"""Producing outputs and dead letters without one awaited send per record.

:class:`OutputWriter` packs a whole engine batch into one aiokafka ``BatchBuilder`` per
output partition and submits each with ``send_batch``: per record this costs one native
append instead of a coroutine, a future and an accumulator lookup. The partition of a key is
Kafka's default (murmur2 of the key bytes, as the Java client and aiokafka's
``DefaultPartitioner`` compute it), memoised per stream id because ids repeat every step.

:class:`DeadLetterWriter` sends each bad record with its original key and value and headers
naming the reason, detail and source topic/partition/offset (see :data:`DLQ_HEADERS`). A dead
letter must never stop the processor, so its value is bounded: an ``oversize`` record's value
is omitted, a value above ``max_value_bytes`` is cut to that many bytes, and a dead letter the
producer or the broker still refuses as too large is sent once more without its value and
original headers (each time with ``lstm-stream.value-truncated`` = the original size).

Both return the send futures; the caller gathers them before committing the offsets of the
records they cover.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from aiokafka.partitioner import murmur2

from processor.codec.reasons import OVERSIZE

__all__ = ["DLQ_HEADERS", "DeadLetterWriter", "OutputWriter", "default_partition"]

log = logging.getLogger(__name__)

#: Header names on dead-letter records (values are UTF-8).
DLQ_HEADERS: Final = {
    "reason": "lstm-stream.reason",
    "detail": "lstm-stream.detail",
    "topic": "lstm-stream.source.topic",
    "partition": "lstm-stream.source.partition",
    "offset": "lstm-stream.source.offset",
    "timestamp": "lstm-stream.source.timestamp",
    # Present when the value was cut or omitted: the original value's size in bytes.
    "value_truncated": "lstm-stream.value-truncated",
}
#: Errors meaning "this record is too large" (client-side check against max_request_size,
#: or the broker refusing it: topic max.message.bytes). Not transient: retrying the same
#: record cannot succeed.
_TOO_LARGE: Final = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
_MAX_DETAIL: Final = 1000  # headers are not for essays: the detail is clipped
_MAX_MEMO: Final = 1 << 20  # memoised stream -> partition entries before the memo is reset

#: Record headers as aiokafka's batch builder takes them: a *list* of (name, value) pairs
#: (its C implementation refuses a tuple).
Headers = list[tuple[str, bytes]]
#: No headers (shared: the builder only reads it).
NO_HEADERS: Final[Headers] = []


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

    @property
    def topic(self) -> str:
        """The topic written to."""
        return self._topic

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
        by_partition: dict[int, list[tuple[bytes, bytes | None, Headers]]] = {}
        for stream, value in records:
            key = stream.encode("utf-8")
            p = memo.get(stream)
            if p is None:
                p = memo[stream] = default_partition(key, n)
            by_partition.setdefault(p, []).append((key, value, NO_HEADERS))
        return await self.write_partitioned(by_partition)

    async def write_partitioned(
        self, by_partition: Mapping[int, Sequence[tuple[bytes, bytes | None, Headers]]]
    ) -> list[asyncio.Future[Any]]:
        """Queue ``(key, value, headers)`` records to the given partitions (a None value is
        a tombstone); returns the futures of the submitted batches, as :meth:`write`."""
        futures: list[asyncio.Future[Any]] = []
        for p, records in by_partition.items():
            batch = self._producer.create_batch()
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # Full (max_batch_size): submit it and start another one.
                    futures.append(await self._send(batch, p))
                    batch = self._producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(
                            f"a record of {len(value or b'')} bytes does not fit an empty "
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
    """Sends bad records to the dead-letter topic (rare: one ``send`` each).

    ``max_value_bytes`` bounds the original value carried by a dead letter (see the module
    docstring); 0 omits every value.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, max_value_bytes: int) -> None:
        self._producer = producer
        self._topic = topic
        self._max_value = max_value_bytes

    @property
    def topic(self) -> str:
        """The dead-letter topic."""
        return self._topic

    @property
    def max_value_bytes(self) -> int:
        """The most bytes of the original value a dead letter carries."""
        return self._max_value

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
        """Queue one dead letter: the original key, (bounded) value and headers plus ours.

        Returns a future that resolves when the broker acknowledged the dead letter; it
        raises only for errors other than "too large" (a too-large dead letter is re-sent
        once without its value; if even that is refused, the loss is logged, not raised).
        """
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
        original = value if value is not None else b""
        size = len(original)
        sent = original
        if reason == OVERSIZE:
            sent = b""  # above --max-record-bytes: likely above the DLQ topic's limit too
        elif size > self._max_value:
            sent = original[: self._max_value]
        first_headers = [*headers, *ours]
        if len(sent) < size:
            first_headers.append((DLQ_HEADERS["value_truncated"], str(size).encode()))
        # Without the value and the original headers (either may be what is too large).
        bare = [*ours, (DLQ_HEADERS["value_truncated"], str(size).encode())]
        where = f"{topic}/{partition}@{offset}"
        try:
            fut = await self._send(key, sent, first_headers)
        except _TOO_LARGE as exc:  # refused by the producer before sending
            log.warning(
                "dead letter of %s too large (%r): sending it without its value", where, exc
            )
            return await self._send_bare(key, bare, where)
        return asyncio.ensure_future(self._acknowledged(fut, key, bare, where))

    async def _send(
        self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = await self._producer.send(
            self._topic, value=value, key=key, headers=headers
        )
        return fut

    async def _acknowledged(
        self, fut: asyncio.Future[Any], key: bytes | None, bare: list[tuple[str, bytes]], where: str
    ) -> Any:
        try:
            return await fut
        except _TOO_LARGE as exc:  # refused by the broker (topic max.message.bytes)
            log.warning("dead letter of %s refused (%r): sending it without its value", where, exc)
        retry = await self._send_bare(key, bare, where)
        return await retry

    async def _send_bare(
        self, key: bytes | None, bare: list[tuple[str, bytes]], where: str
    ) -> asyncio.Future[Any]:
        """The one retry; a "too large" failure of it is logged and resolves the future
        (never fatal: the key or our headers alone exceed the limit, nothing to cut)."""
        try:
            fut = await self._send(key, b"", bare)
        except _TOO_LARGE as exc:
            _log_lost(where, exc)
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return asyncio.ensure_future(_or_lost(fut, where))


async def _or_lost(fut: asyncio.Future[Any], where: str) -> Any:
    try:
        return await fut
    except _TOO_LARGE as exc:
        _log_lost(where, exc)
        return None


def _log_lost(where: str, exc: BaseException) -> None:
    log.error(
        "dead letter of %s lost: refused as too large even without its value (%r); raise the "
        "dead-letter topic's max.message.bytes",
        where,
        exc,
    )
