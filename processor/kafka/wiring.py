"""The event-loop stages of one started processor, bound to its two clients.

:class:`Stages` builds fetch -> dispatch -> emit -> ack -> commit (see
``docs/architecture.md``) and the consumer-group handler around the objects the processor
keeps across restarts of its clients (pipeline, batcher, flow control, ledger, ownership),
each through its constructor with its collaborators; building it does no I/O. The
:class:`~processor.kafka.runtime.Processor` runs the stages' loops and owns their lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from processor.codec import encode_outputs
from processor.engine.pipeline import Pipeline
from processor.errors import ConfigError
from processor.kafka.checkpoint.commit import CommitLoop, OffsetCommitter, RunCheckpoint
from processor.kafka.checkpoint.cycle import (
    Checkpoint,
    CheckpointCycle,
    CheckpointParts,
    TransactionalCheckpoint,
)
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.states import StateWriter
from processor.kafka.checkpoint.transactions import PartitionProducers
from processor.kafka.durable.record import StateRecordCodec
from processor.kafka.durable.recovery import Recovery
from processor.kafka.group.drop import PartitionDrop
from processor.kafka.group.handler import GroupHandler
from processor.kafka.group.ownership import Ownership
from processor.kafka.io.output import DeadLetterWriter, OutputWriter
from processor.kafka.phase import Lifecycle
from processor.kafka.settings import Settings
from processor.kafka.stages.ack import Acker
from processor.kafka.stages.batcher import Batcher, FlowControl
from processor.kafka.stages.dispatch import Dispatcher
from processor.kafka.stages.emit import Emitter
from processor.kafka.stages.fetch import Fetcher
from processor.kafka.stages.items import Item
from processor.kafka.stages.lag import LagGauge
from processor.obs.metrics import Metrics

__all__ = ["CLOSE_TIMEOUT_S", "PIPELINE_DEPTH", "Stages", "build_producers", "build_recovery"]

PIPELINE_DEPTH = 2  # batches submitted to the engine thread ahead of their emission
CLOSE_TIMEOUT_S = 10.0  # longest a client's stop may take (see Stages.stop_clients)

log = logging.getLogger(__name__)


class Stages:
    """The stages of one run; attributes are the clients, the stage objects, the writers
    of outputs and dead letters, the checkpoint cycle (``cycle``: None without durable
    state) and the group handler.

    Args:
        consumer, producer: the clients (started by the caller, before or after).
        settings: topics, batch size, commit interval, dead-letter limits, timeouts.
        pipeline, batcher, flow, ledger, ownership, metrics, lifecycle: the processor's.
        offset_reset: the consumer's ``auto_offset_reset``.
        codec: the state record codec when stream states are checkpointed to state topics
            (the commit loop then runs the :class:`~processor.kafka.checkpoint.cycle.Checkpoint`
            cycle).
        producers: exactly-once (with ``codec``): the partitions' transactional producers;
            the dispatcher then places the checkpoint barriers.
        recovery: recovers newly assigned partitions' streams (with ``codec``).
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
        metrics: Metrics,
        lifecycle: Lifecycle,
        offset_reset: str,
        codec: StateRecordCodec | None = None,
        producers: PartitionProducers | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        s = settings
        self.consumer = consumer
        self.producer = producer
        fetched = asyncio.Event()  # the fetch stage added items: the dispatcher wakes up
        self.fetcher = Fetcher(
            consumer,
            pipeline.decoder.decode_many,
            batcher,
            flow,
            ownership,
            metrics,
            fetched,
            max_batch=s.engine.max_batch,
            pipeline_depth=PIPELINE_DEPTH,
        )
        self.acker = Acker(ledger, self.fetcher.release, metrics, s.output_topic)
        transactional = producers if codec is not None else None
        self.outputs = OutputWriter(producer, s.output_topic)
        self.dead_letters = DeadLetterWriter(producer, s.dlq_topic, s.dlq_max_value_bytes)
        # The codec's encoder directly (the decoder is the pipeline's): a record then enters
        # each module of its path once (docs/architecture.md).
        emitter = Emitter(
            self.outputs,
            self.dead_letters,
            encode_outputs,
            metrics,
            transactional,
            stale=ledger.fenced_since,
        )
        self.lag = LagGauge(consumer, lambda: ownership.owned, ledger, self.fetcher, metrics)
        self.drop = PartitionDrop(
            consumer, ownership, batcher, ledger, self.fetcher, self.lag, pipeline, lifecycle
        )
        self.offsets = OffsetCommitter(consumer, ledger, lambda: ownership.owned, metrics)
        barrier: TransactionalCheckpoint | None = None
        self.cycle: CheckpointCycle | None = None
        checkpoint: RunCheckpoint = self.offsets.commit_acked
        if codec is not None:
            parts = CheckpointParts(
                pipeline=pipeline,
                ledger=ledger,
                acker=self.acker,
                codec=codec,
                owned=lambda: ownership.owned,
                metrics=metrics,
                barrier_timeout_s=s.drain_timeout,
            )
            if transactional is not None:
                self.cycle = barrier = TransactionalCheckpoint(
                    parts, producers=transactional, on_lost=self.drop.lost
                )
            else:
                self.cycle = checkpoint = Checkpoint(
                    parts,
                    writer=StateWriter(producer, s.state_topics()),
                    commit=self.offsets.commit_offsets,
                    assigned=self.offsets.assigned,
                )
        self.dispatcher = Dispatcher(
            pipeline,
            batcher,
            ledger,
            emitter.emit,
            self.acker.put,
            fetched,
            pipeline_depth=PIPELINE_DEPTH,
            on_taken=self.fetcher.on_taken,
            checkpoint=barrier,
        )
        if barrier is not None:
            # Exactly-once: every checkpoint waits for a barrier between two emissions.
            checkpoint = self.dispatcher.checkpoint
        self.committer = CommitLoop(
            checkpoint, interval_s=s.commit_interval_ms / 1000, on_tick=self.lag.refresh
        )
        self.group = GroupHandler(
            consumer,
            ownership=ownership,
            ledger=ledger,
            flow=flow,
            fetcher=self.fetcher,
            acker=self.acker,
            metrics=metrics,
            drop=self.drop,
            checkpoint=self.committer.commit_now,
            pipeline=pipeline,
            lifecycle=lifecycle,
            durable=s.durable,
            offset_reset=offset_reset,
            drain_timeout_s=s.drain_timeout,
            producers=transactional,
            recovery=recovery,
        )

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


def build_producers(
    settings: Settings,
    producer_kw: Mapping[str, Any],
    factory: Callable[..., AIOKafkaProducer],
    metrics: Metrics,
) -> PartitionProducers | None:
    """Exactly-once only (None otherwise): the per-partition transactional producers, none
    started. Raises :class:`ConfigError` for producer options that break exactly-once."""
    s = settings
    if not (s.exactly_once and s.durable):
        return None
    acks = producer_kw.get("acks", "all")
    if acks not in ("all", -1) or producer_kw.get("enable_idempotence") is False:
        raise ConfigError(
            f"--processing-guarantee exactly-once needs idempotent transactional producers "
            f"with acks=all (given: acks={acks!r}, enable_idempotence="
            f"{producer_kw.get('enable_idempotence')!r}): drop those Kafka options"
        )
    return PartitionProducers(
        producer_kw,
        group_id=s.group_id,
        output_topic=s.output_topic,
        dlq_topic=s.dlq_topic,
        dlq_max_value_bytes=s.dlq_max_value_bytes,
        state_topics=s.state_topics(),
        transaction_timeout_ms=s.transaction_timeout_ms,
        timeout_s=s.drain_timeout,
        metrics=metrics,
        factory=factory,
    )


def build_recovery(
    settings: Settings,
    consumer_kw: Mapping[str, Any],
    pipeline: Pipeline,
    codec: StateRecordCodec,
    metrics: Metrics,
) -> Recovery:
    """The recovery of newly assigned partitions from their state topics (durable state)."""
    return Recovery(
        consumer_kw=consumer_kw,
        state_topics=settings.state_topics(),
        pipeline=pipeline,
        codec=codec,
        reset_on_mismatch=settings.on_state_mismatch == "reset",
        metrics=metrics,
    )
