"""The Kafka runtime's lifecycle: build the stages, run their loops, handle rebalances, drain.

Each stage has its own module: fetch.py -> batcher.py -> dispatch.py -> (the pipeline's
engine thread) -> emit.py -> ack.py -> commit.py, wired by stages.py
(``docs/architecture.md`` draws the path). :class:`Processor` only composes them: it starts
the clients and the loops, fails loudly when a loop fails, forwards rebalances, and drains
on stop.

Guarantees:

* one output per valid input record (key = stream id) unless it is stale: a ``seq`` equal
  to the stream's last applied one (a re-delivery: ``duplicate``) or below it (the producer
  broke per-key order: ``out_of_order``, logged) is skipped and counted, not dead-lettered;
* every bad record goes to the dead-letter topic with its reason (a record without a
  message key too: ``missing_key``); good records of the same batch are unaffected;
  a dead letter never stops the processor (see :class:`~.output.DeadLetterWriter`);
* offsets are committed only after the outputs and dead letters of all records before
  them are acknowledged (at-least-once); memory is bounded by ``queue_max_records``;
* with a state topic (the default), every commit interval is a checkpoint
  (:mod:`~processor.kafka.checkpoint.cycle`): the changed streams' states are written after the
  outputs they cover are acknowledged, then exactly the offsets they cover are committed;
  a newly assigned partition is paused, its streams restored from its state topic
  partition (:mod:`~processor.kafka.durable.recovery`), and it is consumed from its committed
  offset only then; re-delivered records whose seq is not above the restored one are
  skipped as duplicates;
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
import contextlib
import enum
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY, CollectorRegistry

from processor.config.engine_options import EngineOptions
from processor.engine.build import build_engine
from processor.engine.engine import Engine
from processor.engine.pipeline import Pipeline, StalePolicy
from processor.errors import ConfigError, LstmStreamError
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.checkpoint.transactions import PartitionProducers
from processor.kafka.durable.record import StateRecordCodec
from processor.kafka.durable.recovery import Recovery
from processor.kafka.durable.topic import prepare_state_topics
from processor.kafka.group.ownership import Ownership
from processor.kafka.group.rebalance import RebalanceListener
from processor.kafka.group.streams import PartitionIndex
from processor.kafka.io.clients import client_kwargs, start_client
from processor.kafka.io.topics import TopicWaitStopped, admin_kwargs, prepare_topics_with
from processor.kafka.settings import Settings
from processor.kafka.stages.batcher import Batcher, FlowControl
from processor.kafka.stages.items import Item
from processor.kafka.wiring import Stages
from processor.obs.metrics import Metrics, MetricsServer, RunStats

__all__ = ["KafkaRuntimeError", "Processor", "RunStats", "run_processor"]

log = logging.getLogger(__name__)


class KafkaRuntimeError(LstmStreamError):
    """The runtime cannot go on (produce failed after the client's retries, a rebalance
    callback failed, a drain timed out...). Offsets of unacknowledged work are not
    committed, so a restart re-processes it."""


class Phase(enum.Enum):
    """Where the processor is in its life; only RUNNING is ready (``/readyz``)."""

    CREATED = "created"
    STARTING = "starting"  # building the engine, preparing topics, joining the group
    RUNNING = "running"
    REBALANCING = "rebalancing"
    STOPPING = "stopping"


class Processor:
    """The runtime. ``await run(stop_event)`` does everything; see the module docstring.

    Args:
        settings: the validated settings.
        registry: where the metrics live (a fresh one per test; the CLI uses the default).
        engine_factory: builds the Engine on the engine thread (default: from the settings'
            model path); tests pass a prepared model this way.
        metrics_server: serve /metrics, /healthz, /readyz when ``settings.metrics_port`` is
            set.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        engine_factory: Callable[[EngineOptions], Engine] | None = None,
        metrics_server: bool = True,
    ) -> None:
        self.settings = settings
        self._registry = registry if registry is not None else REGISTRY
        self.metrics = Metrics(self._registry)
        factory = engine_factory or build_engine
        self.pipeline = Pipeline(
            lambda: factory(settings.engine),
            stale=StalePolicy.SKIP,
            max_record_bytes=settings.max_record_bytes,
            warmup="scan",  # catch-up after a restart must not trace mid-traffic
        )
        self.batcher: Batcher[Item] = Batcher(
            settings.engine.max_batch, settings.max_delay_ms / 1000
        )
        self.flow = FlowControl(settings.queue_max_records, settings.queue_low_records)
        self.ledger = OffsetLedger()
        self.ownership: Ownership[TopicPartition] = Ownership()
        self._index = PartitionIndex(track_changes=settings.durable)
        # Built once the engine exists (durable state only); tests running on fake clients
        # may set their own Recovery.
        self.codec: StateRecordCodec | None = None
        self.recovery: Recovery | None = None
        # Exactly-once: the owned partitions' transactional producers (built at start).
        self.producers: PartitionProducers | None = None
        self._offset_reset = "earliest"  # the consumer's auto_offset_reset
        self._server: MetricsServer | None = None
        if metrics_server and settings.metrics_port > 0:
            self._server = MetricsServer(
                self._registry,
                host=settings.metrics_host,
                port=settings.metrics_port,
                ready=lambda: self.ready,
            )
        self._stages: Stages | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._phase = Phase.CREATED
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()

    # ---- public -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Running, in the group with an assignment, not rebalancing or draining."""
        return self._phase is Phase.RUNNING

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
                fail_wait = asyncio.ensure_future(self._failed.wait())
                try:
                    await asyncio.wait({stop_wait, fail_wait}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                    fail_wait.cancel()
            self._raise_if_failed()
            await self.drain()
            self._raise_if_failed()
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
        self._phase = Phase.STARTING
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
            ready = await prepare_topics_with(
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
                await prepare_state_topics(
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
            self.recovery = Recovery(
                consumer_kw=consumer_kw,
                state_topics=s.state_topics(),
                pipeline=self.pipeline,
                index=self._index,
                codec=self.codec,
                reset_on_mismatch=s.on_state_mismatch == "reset",
                metrics=self.metrics,
            )
        self._build_producers(producer_kw, AIOKafkaProducer)
        consumer = AIOKafkaConsumer(**consumer_kw)
        producer = AIOKafkaProducer(**producer_kw)
        self._attach(consumer, producer)  # from here on close() stops both stages
        await producer.start()
        await consumer.start()
        consumer.subscribe(topics=list(s.input_topics), listener=RebalanceListener(self))
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
        Rebalances are the caller's to deliver (:meth:`on_assigned`, :meth:`on_revoked`)."""
        self._phase = Phase.STARTING
        await self._start_pipeline()
        if producer_factory is not None:
            self._build_producers({}, producer_factory)
        self._attach(consumer, producer)
        self._start_loops()

    async def _check_cluster(self, client_kw: dict[str, Any]) -> None:
        """Bootstrap an admin client with the clients' connection settings and close it: a
        wrong password, an untrusted certificate or an unreachable cluster is reported in
        seconds, as one :class:`~processor.errors.KafkaAccessError`, instead of after the
        engine's build and warm-up."""
        admin = AIOKafkaAdminClient(**admin_kwargs(client_kw))
        await start_client(admin, client_kw, self.settings.kafka)
        await admin.close()

    def _build_producers(
        self, producer_kw: dict[str, Any], factory: Callable[..., AIOKafkaProducer]
    ) -> None:
        """Exactly-once only: the per-partition transactional producers (none started)."""
        s = self.settings
        if not (s.exactly_once and s.durable):
            return
        acks = producer_kw.get("acks", "all")
        if acks not in ("all", -1) or producer_kw.get("enable_idempotence") is False:
            raise ConfigError(
                f"--processing-guarantee exactly-once needs idempotent transactional producers "
                f"with acks=all (given: acks={acks!r}, enable_idempotence="
                f"{producer_kw.get('enable_idempotence')!r}): drop those Kafka options"
            )
        self.producers = PartitionProducers(
            producer_kw,
            group_id=s.group_id,
            output_topic=s.output_topic,
            dlq_topic=s.dlq_topic,
            dlq_max_value_bytes=s.dlq_max_value_bytes,
            state_topics=s.state_topics(),
            transaction_timeout_ms=s.transaction_timeout_ms,
            timeout_s=s.drain_timeout,
            metrics=self.metrics,
            factory=factory,
        )

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
        self._spawn(c.fetcher.run(), "fetch")
        self._spawn(c.dispatcher.run(), "dispatch")
        self._spawn(c.acker.run(), "ack")
        self._spawn(c.committer.run(), "commit")

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
            index=self._index,
            metrics=self.metrics,
            release=self._release,
            codec=self.codec,
            producers=self.producers if self.codec is not None else None,
            on_lost=self._on_lost,
        )

    async def close(self) -> None:
        """Cancel the loops, stop every client and the engine thread; idempotent. Does not
        commit."""
        self._phase = Phase.STOPPING
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        stages, self._stages = self._stages, None
        if self.producers is not None:
            await self.producers.close()
        if stages is not None:
            await stages.stop_clients()
        await asyncio.get_running_loop().run_in_executor(None, self.pipeline.close)
        if self._server is not None:
            self._server.close()

    # ---- failure plumbing ---------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"lstm-stream-{name}")
        self._tasks[name] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            # The project's own errors reach the caller of run() (the command logs them
            # once); anything else is unexpected and logged here with its type.
            if isinstance(exc, LstmStreamError):
                log.debug("processor failing: %s", exc)
            else:
                log.error("processor failing: %r", exc)
            self._failure = exc
        self._failed.set()
        if self._stages is not None:
            self._stages.acker.abandon()  # wake anyone waiting on a barrier

    def on_listener_error(self, exc: BaseException) -> None:
        """See :class:`processor.kafka.group.rebalance.RebalanceHandler`."""
        if isinstance(exc, LstmStreamError):
            self._fail(exc)  # says what went wrong (a state topic of another model...)
        else:
            self._fail(KafkaRuntimeError(f"rebalance callback failed: {exc!r}"))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            if isinstance(self._failure, LstmStreamError):
                raise self._failure
            raise KafkaRuntimeError(f"processor failed: {self._failure!r}") from self._failure

    # ---- flow and lag -------------------------------------------------------------------

    def _release(self, n: int) -> None:
        """Records left the pipeline (acknowledged, or dropped on revocation)."""
        self.flow.release(n)
        if self._stages is not None:
            self._stages.fetcher.apply_flow()

    # ---- rebalance (called by RebalanceListener inside aiokafka's coordinator) ----------

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Drop queued records of ``partitions``, let in-flight batches finish, commit."""
        if self._phase is not Phase.STOPPING:
            self._phase = Phase.REBALANCING
        stages = self._stages
        if not partitions or stages is None:
            return
        self.ownership.revoke(partitions)
        dropped = self.batcher.drop(partitions)
        if dropped:
            self._release(len(dropped))
            self.metrics.revoked_dropped.inc(len(dropped))
        finished = await stages.acker.wait_completed(
            self.ledger.last_seq, self.settings.drain_timeout
        )
        committed = finished and await stages.committer.commit_now(partitions)
        if committed:
            self.ownership.mark_clean({tp: self.ledger.committed(tp) for tp in partitions})
        else:
            log.warning(
                "revoked partitions %s without a final checkpoint (in-flight work %s): "
                "their streams are %s if they come back",
                sorted(map(str, partitions)),
                "finished" if finished else "did not finish in time",
                "restored from the last checkpoint"
                if self.settings.durable
                else "restarted from the initial state",
            )
            await self._forget_streams(lambda tp: tp in partitions)
        if self.producers is not None:
            # Committed (nothing open) or not (the next owner's start aborts what is open).
            producers = self.producers
            await asyncio.gather(*(producers.discard(tp) for tp in partitions))
        self.ledger.forget(partitions)
        stages.fetcher.forget(partitions)
        for tp in partitions:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        log.info(
            "revoked %d partitions (%d queued records dropped, committed=%s)",
            len(partitions),
            len(dropped),
            committed,
        )

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Own the new assignment. Cached streams of a partition are kept only when it was
        revoked cleanly from this member and (with durable state) its committed offset is
        still the one committed then; every other partition's streams are forgotten and,
        with durable state, restored from the state topic before it is consumed."""
        candidates = self.ownership.assign(partitions)
        stages = self._stages
        durable = self.settings.durable and stages is not None
        if stages is not None and durable:
            # Before any await: nothing of the new assignment is fetched or enters the
            # pipeline until each partition is kept or restored and sought to its committed
            # offset (aiokafka fetches a new assignment while this callback runs).
            self.ownership.restore(partitions)
            stages.consumer.pause(*partitions)
            if self.producers is not None:
                # Fence the previous owners first: from here on nobody else commits a
                # transaction of these partitions, so their committed offsets are final.
                await self.producers.start(partitions)
            keep = await self._provably_unchanged(stages, candidates)
        else:
            keep = set(candidates)
        restore = set(partitions) - keep
        forgotten = await self._forget_streams(lambda tp: tp not in keep)
        self.ledger.forget(restore)
        if stages is not None and durable:
            applied: dict[TopicPartition, dict[str, int]] = {}
            if self.recovery is not None and restore:
                applied = await self.recovery.restore(restore)
            known = {tp: candidates[tp] for tp in keep}
            await self._consume_from_committed(stages, partitions, known, applied)
        if stages is not None and self.flow.paused and partitions:
            stages.consumer.pause(*partitions)
        self.metrics.rebalances.inc()
        self.metrics.assigned_partitions.set(len(partitions))
        if self._phase is not Phase.STOPPING:
            self._phase = Phase.RUNNING
        log.info(
            "assigned %d partitions (%d kept their cached streams, %d restored; %d streams "
            "forgotten)",
            len(partitions),
            len(keep),
            len(restore) if self.recovery is not None else 0,
            forgotten,
        )

    async def _provably_unchanged(
        self, stages: Stages, candidates: dict[TopicPartition, int | None]
    ) -> set[TopicPartition]:
        """The cleanly revoked partitions whose group offset is still the one this member
        committed at their revocation: nobody processed them in between (an offset commit
        can succeed after this member was evicted, so cleanliness alone proves nothing)."""
        keep: set[TopicPartition] = set()
        for tp, mine in candidates.items():
            if await stages.consumer.committed(tp) == mine:
                keep.add(tp)
        return keep

    async def _consume_from_committed(
        self,
        stages: Stages,
        partitions: set[TopicPartition],
        known: dict[TopicPartition, int | None],
        applied: dict[TopicPartition, dict[str, int]],
    ) -> None:
        """Start consuming held-back ``partitions`` at their committed offsets (``known``
        ones: already read; none committed: the reset policy's end). Records fetched for them
        meanwhile were dropped at admission, so every position is set explicitly; the seeks,
        the re-delivery marks of restored streams (``applied``) and the ownership change
        happen in one step of the event loop, so no fetch sees a partition half-started."""
        consumer = stages.consumer
        targets: dict[TopicPartition, int] = {}
        for tp in sorted(partitions):
            committed = known[tp] if tp in known else await consumer.committed(tp)
            if committed is None:
                if self._offset_reset == "latest":
                    committed = (await consumer.end_offsets([tp]))[tp]
                else:
                    committed = (await consumer.beginning_offsets([tp]))[tp]
            targets[tp] = committed
        for tp, offset in targets.items():
            consumer.seek(tp, offset)
            stages.fetcher.replay_until(tp, applied.get(tp, {}))
        self.ownership.restored(partitions)
        if not self.flow.paused:
            consumer.resume(*partitions)

    async def _on_lost(self, lost: dict[TopicPartition, str]) -> None:
        """Partitions whose transaction did not commit (partition -> result; their producers
        are discarded, an aborted transaction is aborted): stop owning them, drop what was
        queued or in flight for them, forget their streams (their uncommitted state), and
        ask the group for a new assignment.

        Recovery goes through the group on purpose. A fenced partition may belong to another
        member now; restarting its producer here would fence that member in turn. An aborted
        one may be in the middle of moving. The rebalance settles who owns what, and the
        owner restores each partition from its state topic under a freshly started producer
        (which fences any producer of the partition still around) in
        :meth:`on_assigned`."""
        stages = self._stages
        if stages is None:
            return
        parts = set(lost)
        for tp, result in sorted(lost.items()):
            if result == "fenced":
                log.warning(
                    "fenced out of partition %s: its transactional producer was fenced "
                    "(another member started it, or the broker aborted a transaction open "
                    "longer than --transaction-timeout-ms); this member stops processing it "
                    "and rejoins the group",
                    tp,
                )
            else:
                log.warning(
                    "partition %s: its transaction %s; its uncommitted work is dropped and "
                    "the group is rejoined, the partition's owner restores it from its last "
                    "commit",
                    tp,
                    "was aborted" if result == "aborted" else "timed out",
                )
        self.ownership.revoke(parts)
        assigned = stages.consumer.assignment()
        stages.consumer.pause(*(tp for tp in parts if tp in assigned))
        dropped = self.batcher.drop(parts)
        if dropped:
            self._release(len(dropped))
        self.ledger.forget(parts)
        stages.fetcher.forget(parts)
        forgotten = await self._forget_streams(lambda tp: tp in parts)
        log.info(
            "partitions %s: %d queued records dropped, %d streams forgotten",
            sorted(map(str, parts)),
            len(dropped),
            forgotten,
        )
        if self._phase is not Phase.STOPPING:  # a drain that lost a partition fails instead
            _request_rejoin(stages.consumer)

    async def _forget_streams(self, match: Callable[[Any], bool]) -> int:
        index = self._index
        return await asyncio.wrap_future(
            self.pipeline.call(lambda engine: index.forget(engine, match))
        )

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
        self._phase = Phase.STOPPING
        stages.fetcher.stop()
        fetch = self._tasks.pop("fetch", None)
        if fetch is not None:
            try:
                await asyncio.wait_for(fetch, timeout)
            except TimeoutError:
                log.warning("fetch loop did not stop in time; cancelled")
        stages.dispatcher.flush()
        try:
            dispatch = self._tasks.pop("dispatch", None)
            if dispatch is not None:
                await asyncio.wait_for(dispatch, timeout)
            stages.acker.finish()
            ack = self._tasks.pop("ack", None)
            if ack is not None:
                await asyncio.wait_for(ack, timeout)
        except TimeoutError:
            raise KafkaRuntimeError(
                f"drain did not finish within {timeout}s; offsets of unfinished work were not "
                "committed (they will be re-processed)"
            ) from None
        self._raise_if_failed()
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


def _request_rejoin(consumer: AIOKafkaConsumer) -> None:
    """Make the consumer rejoin its group (revoking and reassigning every partition) at
    its next poll. aiokafka offers no public call for this; its group coordinator does."""
    coordinator = getattr(consumer, "_coordinator", None)
    request = getattr(coordinator, "request_rejoin", None)
    if request is None:
        log.error(
            "cannot ask the consumer to rejoin its group (aiokafka changed): partitions that "
            "lost their transaction stay paused until the next rebalance"
        )
        return
    request()


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
