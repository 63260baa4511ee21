"""State records as a checkpoint produces them: one per changed stream, to the state topic
partition numbered like the stream's input partition (key = stream id), a tombstone for a
stream whose life ended.

Used by both processing guarantees: :class:`StateWriter` produces them at least once
(:class:`~processor.kafka.checkpoint.cycle.Checkpoint`); exactly-once hands
:func:`state_batch`'s records to each partition's transaction
(:class:`~processor.kafka.checkpoint.cycle.TransactionalCheckpoint`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition

from processor.kafka.io.output import NO_HEADERS, Headers, OutputWriter
from processor.obs.metrics import Metrics

__all__ = ["TOMBSTONE_OFFSET_HEADER", "StateWriter", "count_states", "state_batch"]

#: Header of a tombstone: the next input offset of the checkpoint that wrote it (a state
#: record's value carries it in ``src``). Records of the ended stream below it were applied.
TOMBSTONE_OFFSET_HEADER: Final = "lstm-stream.state.next-offset"


def state_batch(
    pairs: list[tuple[str, bytes | None]], next_offset: int
) -> tuple[list[tuple[bytes, bytes | None, Headers]], int]:
    """One partition's ``(stream, value)`` state records as ``(key, value, headers)`` to
    produce, and their size in bytes (keys and values); a tombstone (value None) carries
    ``next_offset`` (its checkpoint's next input offset) in :data:`TOMBSTONE_OFFSET_HEADER`."""
    out: list[tuple[bytes, bytes | None, Headers]] = []
    size = 0
    ended: Headers = [(TOMBSTONE_OFFSET_HEADER, b"%d" % next_offset)]
    for stream, value in pairs:
        key = stream.encode("utf-8")
        if value is None:
            size += len(key)
            out.append((key, None, ended))
        else:
            size += len(key) + len(value)
            out.append((key, value, NO_HEADERS))
    return out, size


class StateWriter:
    """Produces state records to the state topic of each input topic, to the partition of
    the input record (set explicitly: input producers may hash keys differently)."""

    def __init__(self, producer: AIOKafkaProducer, state_topics: Mapping[str, str]) -> None:
        self._writers = {t: OutputWriter(producer, s) for t, s in state_topics.items()}

    @property
    def state_topics(self) -> dict[str, str]:
        """Input topic -> the state topic its states are written to (a copy)."""
        return {t: w.topic for t, w in self._writers.items()}

    async def write(
        self,
        records: Mapping[Hashable, list[tuple[str, bytes | None]]],
        next_offsets: Mapping[Hashable, int],
    ) -> tuple[list[asyncio.Future[Any]], int]:
        """Queue a checkpoint's records (input partition -> (stream, value), see
        :class:`~processor.engine.sources.Changes`) as :func:`state_batch` makes them
        (``next_offsets[partition]`` for tombstones). Returns the send futures and the bytes
        queued."""
        futures: list[asyncio.Future[Any]] = []
        size = 0
        by_topic: dict[str, dict[int, list[tuple[bytes, bytes | None, Headers]]]] = {}
        for tp, pairs in records.items():
            assert isinstance(tp, TopicPartition)
            batch, n = state_batch(pairs, next_offsets.get(tp, -1))
            by_topic.setdefault(tp.topic, {}).setdefault(tp.partition, []).extend(batch)
            size += n
        for topic, by_partition in by_topic.items():
            futures += await self._writers[topic].write_partitioned(by_partition)
        return futures, size


def count_states(
    metrics: Metrics, records: Iterable[list[tuple[str, bytes | None]]], size: int
) -> None:
    """Count written state records, tombstones and bytes."""
    pairs = [v for batch in records for _, v in batch]
    tombstones = sum(v is None for v in pairs)
    metrics.state_records.inc(len(pairs) - tombstones)
    metrics.state_tombstones.inc(tombstones)
    metrics.state_bytes.inc(size)
