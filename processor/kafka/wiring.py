"""The event-loop stages of one started processor, bound to its two clients.

:class:`Stages` wires fetch -> dispatch -> emit -> ack -> commit (see
``docs/architecture.md``) around the objects the processor keeps across restarts of its
clients (pipeline, batcher, flow control, ledger, ownership); building it does no I/O. The
:class:`~processor.kafka.runtime.Processor` runs the stages' loops and owns their lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor.codec import encode_outputs
from processor.engine.pipeline import Pipeline
from processor.kafka.checkpoint.commit import CommitLoop
from processor.kafka.checkpoint.cycle import Checkpoint, StateWriter, TransactionalCheckpoint
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.transactions import PartitionProducers
from processor.kafka.durable.record import StateRecordCodec
from processor.kafka.group.ownership import Ownership
from processor.kafka.group.streams import PartitionIndex
from processor.kafka.io.output import DeadLetterWriter, OutputWriter
from processor.kafka.settings import Settings
from processor.kafka.stages.ack import Acker
from processor.kafka.stages.batcher import Batcher, FlowControl
from processor.kafka.stages.dispatch import Dispatcher
from processor.kafka.stages.emit import Emitter
from processor.kafka.stages.fetch import Fetcher
from processor.kafka.stages.items import Item
from processor.obs.metrics import Metrics

__all__ = ["CLOSE_TIMEOUT_S", "PIPELINE_DEPTH", "Stages"]

PIPELINE_DEPTH = 2  # batches submitted to the engine thread ahead of their emission
CLOSE_TIMEOUT_S = 10.0  # longest a client's stop may take (see Stages.stop_clients)
# Longest the lag refresh waits for the consumer's position of one partition: it is known at
# once for a partition being fetched; only one being reset or revoked right now can make it
# wait, and its gauge then keeps the acknowledged offset until the next tick.
POSITION_TIMEOUT_S = 0.5

log = logging.getLogger(__name__)


class Stages:
    """The stages of one run; attributes are the clients and the stage objects.

    Args:
        consumer, producer: the clients (started by the caller, before or after).
        settings: topics, batch size, commit interval, dead-letter limits.
        pipeline, batcher, flow, ledger, ownership, index, metrics: the processor's.
        release: called with the number of records that left the pipeline (the ack stage
            calls it; the processor releases flow control and re-applies it).
        codec: the state record codec when stream states are checkpointed to state topics
            (the commit loop then runs the :class:`~processor.kafka.checkpoint.cycle.Checkpoint`
            cycle).
        producers, on_lost: exactly-once (with ``codec``): the partitions' transactional
            producers, and what to do with partitions whose transaction did not commit
            (partition -> result); the dispatcher then places the checkpoint barriers.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        settings: Settings,
        *,
        pipeline: Pipeline,
        batcher: Batcher[Item],
        flow: FlowControl,
        ledger: OffsetLedger,
        ownership: Ownership[TopicPartition],
        index: PartitionIndex,
        metrics: Metrics,
        release: Callable[[int], None],
        codec: StateRecordCodec | None = None,
        producers: PartitionProducers | None = None,
        on_lost: Callable[[dict[TopicPartition, str]], Awaitable[None]] | None = None,
    ) -> None:
        s = settings
        self.producers = producers
        self.consumer = consumer
        self.producer = producer
        self.acker = Acker(ledger, release, metrics, s.output_topic)
        # The codec's decoder and encoder directly (configured by the pipeline): a record
        # then enters each module of its path once (docs/architecture.md).
        emitter = Emitter(
            OutputWriter(producer, s.output_topic),
            DeadLetterWriter(producer, s.dlq_topic, s.dlq_max_value_bytes),
            encode_outputs,
            metrics,
            producers,
            stale=ledger.fenced_since,
        )
        self.fetcher = Fetcher(
            consumer,
            pipeline.decoder.decode_many,
            batcher,
            flow,
            ownership,
            metrics,
            max_batch=s.engine.max_batch,
            pipeline_depth=PIPELINE_DEPTH,
        )
        self._ownership = ownership
        self._ledger = ledger
        self._metrics = metrics
        self.committer = CommitLoop(
            consumer,
            ledger,
            owned=lambda: ownership.owned,
            interval_s=s.commit_interval_ms / 1000,
            metrics=metrics,
            on_tick=self.refresh_lag,
        )
        checkpoint: Checkpoint | None = None
        if codec is not None:
            common = dict(
                pipeline=pipeline,
                index=index,
                ledger=ledger,
                acker=self.acker,
                codec=codec,
                assigned=self.committer.assigned,
                owned=lambda: ownership.owned,
                metrics=metrics,
                barrier_timeout_s=s.drain_timeout,
            )
            if producers is not None:
                assert on_lost is not None
                checkpoint = TransactionalCheckpoint(producers=producers, on_lost=on_lost, **common)
            else:
                self.committer.checkpoint = Checkpoint(
                    writer=StateWriter(producer, s.state_topics()),
                    commit=self.committer.commit_offsets,
                    **common,  # type: ignore[arg-type]
                )
        self.dispatcher = Dispatcher(
            pipeline,
            batcher,
            ledger,
            index,
            emitter.emit,
            self.acker.put,
            pipeline_depth=PIPELINE_DEPTH,
            on_taken=self.fetcher.on_taken,
            checkpoint=checkpoint,
        )
        self.fetcher.on_fetched = self.dispatcher.notify
        if checkpoint is not None:
            # Exactly-once: every checkpoint waits for a barrier between two emissions.
            self.committer.checkpoint = self.dispatcher.checkpoint

    async def stop_clients(self) -> None:
        """Stop the consumer, then the producer, each within ``CLOSE_TIMEOUT_S``. A
        producer's stop flushes what it still holds, which never ends when the broker does
        not acknowledge; after an abort or a failure nothing depends on those sends (their
        offsets were not committed: a restart produces them again), so the process must not
        wait for them. Never raises."""
        for what, client in (("consumer", self.consumer), ("producer", self.producer)):
            try:
                await asyncio.wait_for(client.stop(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "the %s did not stop within %.0f s; abandoned (records whose outputs "
                    "were not acknowledged are processed again after a restart)",
                    what,
                    CLOSE_TIMEOUT_S,
                )
            except Exception:
                log.exception("stopping the %s failed", what)

    async def refresh_lag(self) -> None:
        """Set the lag gauge of every owned partition: its high watermark minus the next
        offset to acknowledge (before any acknowledgement: the first offset fetched).

        Once every record fetched from a partition is acknowledged, the consumer's position
        is used when it is further on: the offsets between hold no record to process, such
        as the commit markers of a transactional producer, which take an offset each but
        are never handed out. Without that an idle partition written transactionally would
        show a lag of one forever."""
        for tp in list(self._ownership.owned):
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            position = self._ledger.acked(tp)
            if position is None:
                position = self.fetcher.first_offset(tp)
            if position is None:
                continue
            if position == self.fetcher.fetched_to(tp):
                position = max(position, await self._consumer_position(tp, position))
            self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, high - position)
            )

    async def _consumer_position(self, tp: TopicPartition, fallback: int) -> int:
        """The consumer's next fetch offset of ``tp``, or ``fallback`` when it has none at
        once (a partition being revoked or reset right now: the next tick tells)."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the commit
        # loop's cancellation when the position arrives at the same moment (it runs the
        # coroutine as a task of its own), and the loop would then outlive close(). Awaited
        # directly, a known position returns without suspending at all.
        try:
            async with asyncio.timeout(POSITION_TIMEOUT_S):
                return int(await self.consumer.position(tp))
        except Exception:  # a gauge refresh must never fail the commit loop
            return fallback
