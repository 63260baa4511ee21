"""Recovery on assignment: a partition's streams re-created from its state topic partition
before any of its records is processed.

:class:`Recovery` reads the state partitions of newly assigned input partitions to their end
(the *restore read*: a group-less consumer, ``read_committed``; the end rule is
:func:`~processor.kafka.durable.reader.restore_partitions`'s, robust to a trailing
transaction marker and to compaction's gaps), last record per stream wins, a tombstone
deletes. Each chunk is decoded (:meth:`Recovery.decode`) and *loaded* into the cache on the
engine thread (:meth:`~processor.engine.pipeline.Pipeline.load_states`), into the cache's
host tiers: a partition with more streams than the device holds loses none. It returns, per
input partition and recovered stream, the next input offset of the checkpoint the stream's
state (or tombstone) comes from: the stream's records below it were applied, so a
re-delivery of them is skipped whatever its seq -- exact even when the newest checkpoint was
only partly written before a crash, since each stream is judged by its own record.

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

from processor.engine.pipeline import Pipeline
from processor.engine.sources import Loaded
from processor.kafka.checkpoint.states import TOMBSTONE_OFFSET_HEADER
from processor.kafka.durable.reader import restore_consumer_kwargs, restore_partitions
from processor.kafka.durable.record import StateMismatchError, StateRecordCodec
from processor.obs.metrics import Metrics

__all__ = ["Recovery"]

_LOADS_AHEAD = 3  # chunks queued on the engine thread for loading while more are fetched

log = logging.getLogger(__name__)


class Recovery:
    """See the module docstring.

    Args:
        consumer_kw: the group consumer's keyword arguments (the restore read's consumer's
            are derived from them: same cluster and security, no group).
        state_topics: input topic -> its state topic.
        pipeline: loads the states on the engine thread (and notes their partitions).
        codec: decodes state records.
        reset_on_mismatch: skip records of another model instead of refusing them.
        metrics: the ``restore_*`` metrics (duration, records, partitions being recovered,
            skipped records).
    """

    def __init__(
        self,
        *,
        consumer_kw: Mapping[str, Any],
        state_topics: Mapping[str, str],
        pipeline: Pipeline,
        codec: StateRecordCodec,
        reset_on_mismatch: bool,
        metrics: Metrics,
    ) -> None:
        self._consumer_kw = restore_consumer_kwargs(consumer_kw)
        self._state_topics = dict(state_topics)
        self._pipeline = pipeline
        # One codec per state topic, so that its errors name the topic.
        self._codecs = {
            topic: StateRecordCodec(
                codec.spec, codec.storage_dtype, codec.model_identity, state_topic=state
            )
            for topic, state in state_topics.items()
        }
        self._reset = reset_on_mismatch
        self._metrics = metrics

    @property
    def reset_on_mismatch(self) -> bool:
        """Whether records of another model are skipped (True) or refused."""
        return self._reset

    async def recover(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, dict[str, int]]:
        """Load the states of ``partitions`` (input partitions); returns, per partition, per
        recovered stream (tombstoned ones too), the next input offset of the checkpoint its
        state comes from: the stream's records below it were applied before that checkpoint
        (:meth:`~processor.kafka.stages.fetch.Fetcher.replay_until` skips them when re-delivered).

        Raises :class:`StateMismatchError` (refuse mode), the restore reader's errors
        (:class:`~processor.kafka.durable.reader.RestoreError` when a partition makes no progress),
        or Kafka errors; cancellable (a revocation mid-recovery)."""
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
            # fetched: up to _LOADS_AHEAD loads queued there (its FIFO keeps their order, so
            # a later record of a stream still wins).
            loading: deque[tuple[TopicPartition, asyncio.Future[Loaded]]] = deque()

            async def settle(keep: int) -> None:
                while len(loading) > keep:
                    tp, load = loading.popleft()
                    applied[tp].update((await load).positions)

            async def apply(
                state_tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
            ) -> None:
                tp = by_state[state_tp]

                def decode() -> Loaded:
                    return self.decode(tp, records)

                load = asyncio.wrap_future(self._pipeline.load_states(tp, decode))
                loading.append((tp, load))
                await settle(_LOADS_AHEAD)

            try:
                stats = await restore_partitions(consumer, list(by_state), apply)
                await settle(0)
            finally:
                for _, pending in loading:  # a failure or a cancellation: do not leave them
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
            "recovered %d partitions from their state topics: %d records (%d tombstones, "
            "%.1f MB) in %.2f s",
            len(partitions),
            records,
            sum(s.tombstones for s in stats.values()),
            sum(s.bytes for s in stats.values()) / 1e6,
            seconds,
        )
        return applied

    def decode(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> Loaded:
        """Decode one chunk of the state partition of input partition ``tp`` (on the engine
        thread, where it is then loaded): the states to load, the ended streams, and as
        ``positions``, per stream of the chunk, the next input offset of the checkpoint its
        last record comes from (records of the stream below it were applied; -1: none
        known). Raises :class:`StateMismatchError` for a record of another model in refuse
        mode."""
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
        return Loaded(
            [s for s, _ in live],
            decoded.seqs[rows],
            [a[rows] for a in decoded.arrays],
            [s for s, (kind, _) in last.items() if kind == _ENDED],
            applied,
        )


_STATE, _ENDED = 0, 1  # what a stream's last record in a chunk read back is


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
