"""Restore on assignment: a partition's stream states, read back from its state topic
partition into the cache before any of its records is processed.

:class:`Recovery` reads the state partitions of newly assigned input partitions to their end
(group-less consumer, ``read_committed``; the end rule is :func:`restore_partitions`'s: robust
to a trailing transaction marker and to compaction's gaps), last record per stream wins, a
tombstone deletes. Records are decoded and loaded on the engine thread
(:meth:`PartitionIndex.load`), into the cache's host tiers: a partition with more streams
than the device holds loses none. It returns, per input partition and restored stream, the
next input offset of the checkpoint the stream's state (or tombstone) comes from: the
stream's records below it were applied, so a re-delivery of them is skipped whatever its
seq -- exact even when the newest checkpoint was only partly written before a crash, since
each stream is judged by its own record.

A state record of a model with other state names or shapes stops the processor
(``--on-state-mismatch refuse``, :class:`StateMismatchError`) or is skipped, its stream
starting from the initial state (``reset``, counted in ``restore_skipped_total``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from processor.engine.engine import Engine
from processor.engine.pipeline import Pipeline
from processor.kafka.checkpoint.cycle import TOMBSTONE_OFFSET_HEADER
from processor.kafka.durable.reader import restore_consumer_kwargs, restore_partitions
from processor.kafka.durable.record import StateMismatchError, StateRecordCodec
from processor.kafka.group.streams import PartitionIndex
from processor.obs.metrics import Metrics

__all__ = ["Recovery"]

_LOADS_AHEAD = 3  # restored chunks queued on the engine thread while more are fetched

log = logging.getLogger(__name__)


class Recovery:
    """See the module docstring.

    Args:
        consumer_kw: the group consumer's keyword arguments (the restore consumer's are
            derived from them: same cluster and security, no group).
        state_topics: input topic -> its state topic.
        pipeline: the engine thread.
        index: loads the states and records their partitions.
        codec: decodes state records.
        reset_on_mismatch: skip records of another model instead of refusing them.
        metrics: restore duration, records, partitions restoring, skipped records.
    """

    def __init__(
        self,
        *,
        consumer_kw: Mapping[str, Any],
        state_topics: Mapping[str, str],
        pipeline: Pipeline,
        index: PartitionIndex,
        codec: StateRecordCodec,
        reset_on_mismatch: bool,
        metrics: Metrics,
    ) -> None:
        self._consumer_kw = restore_consumer_kwargs(consumer_kw)
        self._state_topics = dict(state_topics)
        self._pipeline = pipeline
        self._index = index
        # One codec per state topic, so that its errors name the topic.
        self._codecs = {
            topic: StateRecordCodec(
                codec.spec, codec.storage_dtype, codec.model_identity, state_topic=state
            )
            for topic, state in state_topics.items()
        }
        self._reset = reset_on_mismatch
        self._metrics = metrics

    async def restore(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, dict[str, int]]:
        """Load the states of ``partitions`` (input partitions); returns, per partition, per
        restored stream (tombstoned ones too), the next input offset of the checkpoint its
        state comes from: the stream's records below it were applied before that checkpoint
        (:meth:`~processor.kafka.stages.fetch.Fetcher.replay_until` skips them when re-delivered).

        Raises :class:`StateMismatchError` (refuse mode), the restore reader's errors
        (:class:`~processor.kafka.durable.reader.RestoreError` when a partition makes no progress),
        or Kafka errors; cancellable (a revocation mid-restore)."""
        if not partitions:
            return {}
        t0 = time.perf_counter()
        by_state = {
            TopicPartition(self._state_topics[tp.topic], tp.partition): tp for tp in partitions
        }
        applied: dict[TopicPartition, dict[str, int]] = {tp: {} for tp in partitions}
        metrics = self._metrics
        metrics.restoring_partitions.inc(len(partitions))
        consumer = AIOKafkaConsumer(**self._consumer_kw)
        try:
            await consumer.start()

            # Chunks are decoded and loaded on the engine thread while the next ones are
            # fetched: up to _LOADS_AHEAD calls queued there (its FIFO keeps their order, so
            # a later record of a stream still wins).
            loading: deque[asyncio.Future[tuple[TopicPartition, dict[str, int]]]] = deque()

            async def settle(keep: int) -> None:
                while len(loading) > keep:
                    tp, chunk = await loading.popleft()
                    applied[tp].update(chunk)

            async def apply(
                state_tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
            ) -> None:
                tp = by_state[state_tp]

                def load(engine: Engine) -> tuple[TopicPartition, dict[str, int]]:
                    return tp, self._load(engine, tp, records)

                loading.append(asyncio.wrap_future(self._pipeline.call(load)))
                await settle(_LOADS_AHEAD)

            try:
                stats = await restore_partitions(consumer, list(by_state), apply)
                await settle(0)
            finally:
                for pending in loading:  # a failure or a cancellation: do not leave them
                    pending.cancel()
        finally:
            metrics.restoring_partitions.dec(len(partitions))
            await consumer.stop()
        seconds = time.perf_counter() - t0
        records = sum(s.records for s in stats.values())
        metrics.restore_seconds.observe(seconds)
        metrics.restore_records.inc(records)
        metrics.restored_partitions.inc(len(partitions))
        log.info(
            "restored %d partitions from their state topics: %d records (%d tombstones, "
            "%.1f MB) in %.2f s",
            len(partitions),
            records,
            sum(s.tombstones for s in stats.values()),
            sum(s.bytes for s in stats.values()) / 1e6,
            seconds,
        )
        return applied

    def _load(
        self, engine: Engine, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
    ) -> dict[str, int]:
        """Decode one chunk of a state partition (engine thread) and load it; returns, per
        stream of the chunk, the next input offset of the checkpoint its last record comes
        from (records of the stream below it were applied; -1: none known)."""
        codec = self._codecs[tp.topic]
        keyed = [r for r in records if r.key is not None]  # others: not written by us
        values = [r.value for r in keyed if r.value is not None]
        decoded = codec.decode_many(values)
        # The last record of a stream wins: its position among the chunk's keyed records,
        # and what it is (a decoded state j, a tombstone, or a record that failed).
        last: dict[str, tuple[int, int]] = {}  # stream -> (kind, j)
        row_of = dict(zip(decoded.index, range(len(decoded.index)), strict=True))
        failed = dict(decoded.errors)
        v = 0
        applied: dict[str, int] = {}
        skipped = 0
        for r in keyed:
            stream = r.key.decode("utf-8", "replace")
            if r.value is None:
                last[stream] = (_ENDED, -1)
                applied[stream] = _tombstone_offset(r.headers)
                continue
            i, v = v, v + 1
            j = row_of.get(i)
            if j is not None:
                last[stream] = (_STATE, j)
                applied[stream] = decoded.next_offsets[j]
                continue
            exc = failed[i]
            last[stream] = (_ENDED, -1)  # no older record of this stream may win
            applied[stream] = -1  # the model applies its records from the initial state
            if isinstance(exc, StateMismatchError):
                if not self._reset:
                    raise StateMismatchError(
                        f"{exc} (--on-state-mismatch reset starts those streams from the "
                        "initial state instead)"
                    ) from None
                skipped += 1
            else:
                self._metrics.state_lost.inc()
                log.error(
                    "state of stream %r lost: its record at %s offset %d cannot be read (%s); "
                    "the stream starts from the initial state",
                    stream,
                    tp,
                    r.offset,
                    exc,
                )
        if skipped:
            self._metrics.restore_skipped.labels("model_mismatch").inc(skipped)
            log.warning(
                "state topic partition %s: %d states of another model skipped "
                "(--on-state-mismatch reset): those streams start from the initial state",
                tp,
                skipped,
            )
        live = [(s, j) for s, (kind, j) in last.items() if kind == _STATE]
        rows = np.array([j for _, j in live], np.intp)
        self._index.load(
            engine,
            tp,
            [s for s, _ in live],
            decoded.seqs[rows],
            [a[rows] for a in decoded.arrays],
            [s for s, (kind, _) in last.items() if kind == _ENDED],
        )
        return applied


_STATE, _ENDED = 0, 1  # what a stream's last record in a restored chunk is


def _tombstone_offset(headers: Any) -> int:
    """The checkpoint offset a tombstone carries (:data:`TOMBSTONE_OFFSET_HEADER`); -1 when
    it carries none (then no re-delivered record of the stream is recognised as such)."""
    for name, value in headers or ():
        if name == TOMBSTONE_OFFSET_HEADER:
            try:
                return int(value)
            except ValueError:
                return -1
    return -1
