"""Restore on assignment: a partition's stream states, read back from its state topic
partition into the cache before any of its records is processed.

:class:`Recovery` reads the state partitions of newly assigned input partitions to their end
(group-less consumer, ``read_committed``; the end rule is :func:`restore_partitions`'s: robust
to a trailing transaction marker and to compaction's gaps), last record per stream wins, a
tombstone deletes. Records are decoded and loaded on the engine thread
(:meth:`PartitionIndex.load`), into the cache's host tiers: a partition with more streams
than the device holds loses none. It returns, per input partition, the offset of the
checkpoint its states come from, below which records are re-deliveries.

A state record of a model with other state names or shapes stops the processor
(``--on-state-mismatch refuse``, :class:`StateMismatchError`) or is skipped, its stream
starting from the initial state (``reset``, counted in ``restore_skipped_total``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from processor.cache import StreamState
from processor.engine import Engine
from processor.kafka.restore import restore_consumer_kwargs, restore_partitions
from processor.kafka.staterecord import BadStateRecordError, StateMismatchError, StateRecordCodec
from processor.kafka.streams import PartitionIndex
from processor.metrics import Metrics
from processor.pipeline import Pipeline

__all__ = ["Recovery"]

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

    async def restore(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Load the states of ``partitions`` (input partitions); returns, per partition with
        any state, the next offset of the newest checkpoint its records come from.

        Raises :class:`StateMismatchError` (refuse mode), the restore reader's errors
        (:class:`~processor.kafka.restore.RestoreError` when a partition makes no progress),
        or Kafka errors; cancellable (a revocation mid-restore)."""
        if not partitions:
            return {}
        t0 = time.perf_counter()
        by_state = {
            TopicPartition(self._state_topics[tp.topic], tp.partition): tp for tp in partitions
        }
        checkpoints: dict[TopicPartition, int] = {}
        metrics = self._metrics
        metrics.restoring_partitions.inc(len(partitions))
        consumer = AIOKafkaConsumer(**self._consumer_kw)
        try:
            await consumer.start()

            async def apply(
                state_tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
            ) -> None:
                tp = by_state[state_tp]
                newest = await asyncio.wrap_future(
                    self._pipeline.call(lambda engine: self._load(engine, tp, records))
                )
                if newest > checkpoints.get(tp, -1):
                    checkpoints[tp] = newest

            stats = await restore_partitions(consumer, list(by_state), apply)
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
        return checkpoints

    def _load(
        self, engine: Engine, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
    ) -> int:
        """Decode one chunk of a state partition (engine thread) and load it; returns the
        newest checkpoint offset seen in it (-1: none)."""
        states: dict[str, StreamState | None] = {}
        newest = -1
        skipped = 0
        codec = self._codecs[tp.topic]
        for r in records:
            if r.key is None:
                continue  # not written by this processor
            stream = r.key.decode("utf-8", "replace")
            if r.value is None:
                states[stream] = None
                continue
            try:
                decoded = codec.decode_full(r.value)
            except StateMismatchError as exc:
                if not self._reset:
                    raise StateMismatchError(
                        f"{exc} (--on-state-mismatch reset starts those streams from the "
                        "initial state instead)"
                    ) from None
                skipped += 1
                states[stream] = None  # an older record of this stream must not win
                continue
            except BadStateRecordError as exc:
                states[stream] = None
                self._metrics.state_lost.inc()
                log.error(
                    "state of stream %r lost: its record at %s offset %d cannot be read (%s); "
                    "the stream starts from the initial state",
                    stream,
                    tp,
                    r.offset,
                    exc,
                )
                continue
            states[stream] = decoded.state()
            newest = max(newest, decoded.source[2])
        if skipped:
            self._metrics.restore_skipped.labels("model_mismatch").inc(skipped)
            log.warning(
                "state topic partition %s: %d states of another model skipped "
                "(--on-state-mismatch reset): those streams start from the initial state",
                tp,
                skipped,
            )
        self._index.load(engine, tp, states)
        return newest
