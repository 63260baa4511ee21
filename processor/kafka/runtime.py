"""The Kafka runtime's lifecycle: build the stages, start and run their loops, fail loudly,
drain, close.

Each stage has its own module: fetch.py -> batcher.py -> dispatch.py -> (the pipeline's
engine thread) -> emit.py -> ack.py -> commit.py, built by wiring.py; rebalances go to the
consumer-group handler (:mod:`processor.kafka.group.handler`) through the rebalance listener
(``docs/architecture.md`` draws the path). :class:`Processor` only composes them: it starts
the clients and the loops, fails loudly when a loop or a rebalance fails, and drains on
stop.

Guarantees:

* one output per valid input record (key = stream id) unless it is stale: a ``seq`` equal
  to the stream's last applied one (a re-delivery: ``duplicate``) or below it (the producer
  broke per-key order: ``out_of_order``, logged) is skipped and counted, not dead-lettered;
* every bad record goes to the dead-letter topic with its reason (a record without a
  message key too: ``missing_key``); good records of the same batch are unaffected;
  a dead letter never stops the processor (see
  :class:`~processor.kafka.io.output.DeadLetterWriter`);
* offsets are committed only after the outputs and dead letters of all records before
  them are acknowledged (at-least-once); memory is bounded by ``queue_max_records``;
* with a state topic (the default), every commit interval is a checkpoint
  (:mod:`~processor.kafka.checkpoint.cycle`): the changed streams' states are written after the
  outputs they cover are acknowledged, then exactly the offsets they cover are committed;
  a newly assigned partition is held back (paused), its streams recovered from its state
  topic partition (:mod:`~processor.kafka.durable.recovery`), and it is consumed from its
  committed offset only then. Each recovered state carries the input offset of the
  checkpoint it comes from: re-delivered records of its stream below that offset are skipped
  as duplicates (whatever their seq), and the seq rule above catches any other re-delivery;
* on revocation, queued records of the revoked partitions are dropped, in-flight batches
  finish, a checkpoint is taken and committed; streams of partitions that really moved away
  are forgotten (without a state topic, ``--state-topic none``, a moved stream restarts from
  its initial state on the new owner);
* with ``--processing-guarantee exactly-once``, each input partition's outputs, dead
  letters, state records and offsets of one commit interval form one transaction of that
  partition's own transactional producer (:mod:`~processor.kafka.checkpoint.transactions`): a
  read_committed reader sees each output once, and a member whose producer was fenced stops
  processing the partition and rejoins the group;
* SIGTERM/SIGINT (via the stop event): stop fetching, drain, produce, commit, return.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry

from processor.config.engine_options import EngineOptions
from processor.engine.build import build_engine
from processor.engine.engine import Engine
from processor.engine.pipeline import Pipeline, StalePolicy
from processor.errors import LstmStreamError
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.transactions import PartitionProducers
from processor.kafka.durable.record import StateRecordCodec
from processor.kafka.durable.recovery import Recovery
from processor.kafka.group.handler import GroupHandler
from processor.kafka.group.ownership import Ownership
from processor.kafka.group.rebalance import RebalanceListener
from processor.kafka.io.bootstrap import start_client
from processor.kafka.io.clients import admin_kwargs, client_kwargs
from processor.kafka.io.metadata import TopicWaitStopped
from processor.kafka.loops import KafkaRuntimeError, Loops
from processor.kafka.network import MetricsEndpoint, Network
from processor.kafka.phase import Lifecycle, Phase
from processor.kafka.settings import Settings
from processor.kafka.stages.batcher import Batcher, FlowControl
from processor.kafka.stages.items import Item
from processor.kafka.wiring import Stages, build_producers, build_recovery
from processor.obs.metrics import Metrics
from processor.obs.stats import RunStats

__all__ = ["KafkaRuntimeError", "Processor", "RunStats", "run_processor"]

log = logging.getLogger(__name__)


class Processor:
    """The runtime. ``await run(stop_event)`` does everything; see the module docstring.

    Args:
        settings: the validated settings.
        registry: where the metrics live (a fresh one per test; the CLI uses the default).
        engine_factory: builds the Engine on the engine thread (default: from the settings'
            model path); tests pass a prepared model this way.
        metrics_server: serve /metrics, /healthz, /readyz when ``settings.metrics_port`` is
            set.
        network: makes the Kafka clients, prepares the topics and makes the metrics server
            (default: the real ones; see :class:`~processor.kafka.network.Network`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        engine_factory: Callable[[EngineOptions], Engine] | None = None,
        metrics_server: bool = True,
        network: Network | None = None,
    ) -> None:
        self.settings = settings
        self._network = network if network is not None else Network()
        self._registry = registry if registry is not None else REGISTRY
        self.metrics = Metrics(self._registry)
        factory = engine_factory or build_engine
        self.pipeline = Pipeline(
            lambda: factory(settings.engine),
            stale=StalePolicy.SKIP,
            max_record_bytes=settings.max_record_bytes,
            warmup="scan",  # catch-up after a restart must not trace mid-traffic
            track_changes=settings.durable,
        )
        self.batcher: Batcher[Item] = Batcher(
            settings.engine.max_batch, settings.max_delay_ms / 1000
        )
        self.flow = FlowControl(settings.queue_max_records, settings.queue_low_records)
        self.ledger = OffsetLedger()
        self.ownership: Ownership[TopicPartition] = Ownership()
        # Built once the engine exists (durable state only).
        self.codec: StateRecordCodec | None = None
        self.recovery: Recovery | None = None
        # Exactly-once: the owned partitions' transactional producers (built at start).
        self.producers: PartitionProducers | None = None
        self._offset_reset = "earliest"  # the consumer's auto_offset_reset
        self._server: MetricsEndpoint | None = None
        if metrics_server and settings.metrics_port > 0:
            self._server = self._network.metrics_server(
                self._registry,
                host=settings.metrics_host,
                port=settings.metrics_port,
                ready=lambda: self.ready,
            )
        self._stages: Stages | None = None
        self._lifecycle = Lifecycle()
        self._loops = Loops(on_failure=self._abandon)

    # ---- public -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Running, in the group with an assignment, not rebalancing or draining."""
        return self._lifecycle.phase is Phase.RUNNING

    @property
    def stages(self) -> Stages:
        """The started stages (RuntimeError before the start or after the close)."""
        if self._stages is None:
            raise RuntimeError("the processor's stages are not started")
        return self._stages

    @property
    def group(self) -> GroupHandler:
        """The consumer-group handler of the started stages (what the rebalance listener
        calls; a caller of :meth:`start_with` delivers rebalances to it)."""
        return self.stages.group

    @property
    def stats(self) -> RunStats:
        """The run's counters so far (read from the metrics)."""
        return self.metrics.summary(peak_in_flight=self.flow.peak)

    @property
    def metrics_port(self) -> int | None:
        """The metrics server's port, once started (None without a server)."""
        return self._server.port if self._server is not None else None

    async def run(self, stop_event: asyncio.Event | None = None) -> RunStats:
        """Start, process until ``stop_event`` is set, then drain and commit and return.

        Raises :class:`KafkaRuntimeError` (or the engine's/model's errors) on failure; the
        offsets of unfinished work are then left uncommitted.
        """
        stop_event = stop_event or asyncio.Event()
        try:
            await self.start(stop_event)
            if not stop_event.is_set():
                stop_wait = asyncio.ensure_future(stop_event.wait())
                fail_wait = asyncio.ensure_future(self._loops.failed.wait())
                try:
                    await asyncio.wait({stop_wait, fail_wait}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                    fail_wait.cancel()
            self._loops.raise_if_failed()
            await self.drain()
            self._loops.raise_if_failed()
        finally:
            await self.close()
        return self.stats

    async def start(self, stop_event: asyncio.Event | None = None) -> None:
        """Metrics server, a first contact with the cluster, engine (built and warmed up on
        its thread), topics, stages, the stages' loops. Call once. A set ``stop_event`` ends
        a wait for input topics.

        Invalid Kafka options (:class:`ConfigError`) and a cluster that cannot be reached or
        refuses the TLS/SASL settings (:class:`~processor.errors.KafkaAccessError`) fail the
        start before the engine is built."""
        s = self.settings
        self._lifecycle.starting()
        if self._server is not None:
            self._server.start()
        consumer_kw, producer_kw = client_kwargs(
            s.bootstrap_servers, s.group_id, s.kafka, drain_timeout=s.drain_timeout
        )
        consumer_kw.setdefault("max_poll_records", s.engine.max_batch)
        await self._check_cluster(consumer_kw)
        log.info("building the engine (model %s)", s.engine.model)
        await self._start_pipeline()
        try:
            ready = await self._network.prepare_topics(
                admin_kwargs(consumer_kw),
                input_topics=s.input_topics,
                output_topics=(s.output_topic, s.dlq_topic),
                partitions=s.topic_partitions,
                replication_factor=s.topic_replication_factor,
                create_inputs=s.create_input_topics,
                stop=stop_event,
            )
            log.info("topics ready (partitions): %s", dict(ready.partitions))
            if s.durable:
                await self._network.prepare_state_topics(
                    admin_kwargs(consumer_kw),
                    s.state_topics(),
                    {t: ready.partitions[t] for t in s.input_topics},
                    replication_factor=s.topic_replication_factor,
                )
                log.info("state topics ready: %s", s.state_topics())
        except TopicWaitStopped:
            log.info("stopped while waiting for the input topics: nothing was consumed")
            return
        self._offset_reset = str(consumer_kw.get("auto_offset_reset", "earliest"))
        if self.codec is not None:
            self.recovery = build_recovery(s, consumer_kw, self.pipeline, self.codec, self.metrics)
        network = self._network
        self.producers = build_producers(s, producer_kw, network.producer, self.metrics)
        consumer = network.consumer(**consumer_kw)
        producer = network.producer(**producer_kw)
        self._attach(consumer, producer)  # from here on close() stops both stages
        await producer.start()
        await consumer.start()
        listener = RebalanceListener(self.group, on_error=self._on_listener_error)
        consumer.subscribe(topics=list(s.input_topics), listener=listener)
        self._start_loops()
        log.info(
            "processing %s -> %s (dead letters: %s) as group %r",
            list(s.input_topics),
            s.output_topic,
            s.dlq_topic,
            s.group_id,
        )

    async def start_with(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        producer_factory: Callable[..., AIOKafkaProducer] | None = None,
    ) -> None:
        """Start on clients the caller made, started and subscribed (in-process fakes in
        the stage tests): the engine, the stages and their loops; no topic preparation.
        Exactly-once makes its transactional producers with ``producer_factory``.
        Rebalances are the caller's to deliver (to :attr:`group`)."""
        self._lifecycle.starting()
        await self._start_pipeline()
        if producer_factory is not None:
            self.producers = build_producers(self.settings, {}, producer_factory, self.metrics)
        self._attach(consumer, producer)
        self._start_loops()

    async def _check_cluster(self, client_kw: dict[str, Any]) -> None:
        """Bootstrap an admin client with the clients' connection settings and close it: a
        wrong password, an untrusted certificate or an unreachable cluster is reported in
        seconds, as one :class:`~processor.errors.KafkaAccessError`, instead of after the
        engine's build and warm-up."""
        admin = self._network.admin(**admin_kwargs(client_kw))
        await start_client(admin, client_kw, self.settings.kafka)
        await admin.close()

    async def _start_pipeline(self) -> None:
        """Build the engine on its thread; with durable state, the state record codec."""
        await asyncio.wrap_future(self.pipeline.start())
        if self.settings.durable:
            model = self.pipeline.engine.model
            self.codec = StateRecordCodec(
                model.state_spec, self.settings.engine.state_dtype, model.identity
            )

    def _start_loops(self) -> None:
        c = self._stages
        assert c is not None
        # After the engine's warm-up and the stages' start-up: everything long-lived exists.
        self.pipeline.freeze_gc()
        self._loops.spawn(c.fetcher.run(), "fetch")
        self._loops.spawn(c.dispatcher.run(), "dispatch")
        self._loops.spawn(c.acker.run(), "ack")
        self._loops.spawn(c.committer.run(), "commit")

    def _attach(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        """Build the stages bound to the clients (no I/O)."""
        self._stages = Stages(
            consumer,
            producer,
            self.settings,
            pipeline=self.pipeline,
            batcher=self.batcher,
            flow=self.flow,
            ledger=self.ledger,
            ownership=self.ownership,
            metrics=self.metrics,
            lifecycle=self._lifecycle,
            offset_reset=self._offset_reset,
            codec=self.codec,
            producers=self.producers,
            recovery=self.recovery,
        )

    async def close(self) -> None:
        """Cancel the loops, stop every client and the engine thread; idempotent. Does not
        commit."""
        self._lifecycle.close()
        await self._loops.cancel()
        stages, self._stages = self._stages, None
        if self.producers is not None:
            await self.producers.close()
        if stages is not None:
            await stages.stop_clients()
        await asyncio.get_running_loop().run_in_executor(None, self.pipeline.close)
        if self._server is not None:
            self._server.close()

    # ---- failure ------------------------------------------------------------------------

    def _abandon(self) -> None:
        """The run failed: wake anyone waiting on a barrier."""
        if self._stages is not None:
            self._stages.acker.abandon()

    def _on_listener_error(self, exc: BaseException) -> None:
        """A rebalance callback raised (see :class:`~processor.kafka.group.rebalance.
        RebalanceListener`): the processor must not continue silently."""
        if isinstance(exc, LstmStreamError):
            self._loops.fail(exc)  # says what went wrong (a state topic of another model...)
        else:
            self._loops.fail(KafkaRuntimeError(f"rebalance callback failed: {exc!r}"))

    # ---- drain --------------------------------------------------------------------------

    async def drain(self) -> None:
        """Stop fetching, process what was fetched, wait for the acknowledgements, commit
        (what :meth:`run` does on stop; callers of :meth:`start_with` call it themselves,
        then :meth:`close`). Raises :class:`KafkaRuntimeError` when that cannot finish."""
        stages = self._stages
        if stages is None:
            return  # stopped before the stages started
        log.info("stop requested: draining")
        timeout = self.settings.drain_timeout
        self._lifecycle.stop()
        stages.fetcher.stop()
        fetch = self._loops.pop("fetch")
        if fetch is not None:
            try:
                await asyncio.wait_for(fetch, timeout)
            except TimeoutError:
                log.warning("fetch loop did not stop in time; cancelled")
        stages.dispatcher.flush()
        try:
            dispatch = self._loops.pop("dispatch")
            if dispatch is not None:
                await asyncio.wait_for(dispatch, timeout)
            stages.acker.finish()
            ack = self._loops.pop("ack")
            if ack is not None:
                await asyncio.wait_for(ack, timeout)
        except TimeoutError:
            raise KafkaRuntimeError(
                f"drain did not finish within {timeout}s; offsets of unfinished work were not "
                "committed (they will be re-processed)"
            ) from None
        self._loops.raise_if_failed()
        if not await stages.committer.commit_now():
            raise KafkaRuntimeError("the final offset commit failed")
        stats = self.stats
        log.info(
            "drained: %d records in, %d outputs, %d dead letters, %d duplicates and %d "
            "out-of-order records skipped",
            stats.records_in,
            stats.outputs,
            stats.dead_letters,
            stats.duplicates,
            stats.out_of_order,
        )


async def run_processor(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    stop_event: asyncio.Event | None = None,
    engine_factory: Callable[[EngineOptions], Engine] | None = None,
) -> RunStats:
    """Run the processor in this event loop until ``stop_event`` is set (in-process use:
    tests, benchmarks); returns its counters after a graceful drain. See :class:`Processor`."""
    processor = Processor(settings, registry=registry, engine_factory=engine_factory)
    return await processor.run(stop_event)
