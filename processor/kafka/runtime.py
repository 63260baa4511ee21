"""The Kafka runtime: consumer group in, engine on its own thread, outputs and dead letters
out, offsets committed at least once. Composition of the parts in this package.

Data path (one process)::

    fetch loop ──► decode ──► Batcher ──► engine loop ──► worker thread (Engine + cache)
      (pause/resume by FlowControl)  │                          │
                                     └─ bad records ─┐          ▼
                                                     └──► outputs / dead letters ──► producer
    ack loop: gathers each batch's send futures in order ──► OffsetLedger ──► CommitLoop

Guarantees:

* one output per valid input record (key = stream id) unless the engine skips it as a
  duplicate (``seq`` not greater than the stream's last applied ``seq``: a record sent twice,
  or re-delivered while its stream's state is cached) -- counted, not dead-lettered;
* every bad record goes to the dead-letter topic with its reason (a record without a
  message key too: :data:`MISSING_KEY`); good records of the same batch are unaffected;
  a dead letter never stops the processor (see :class:`~.output.DeadLetterWriter`);
* offsets are committed only after the outputs and dead letters of all records before
  them are acknowledged (at-least-once); memory is bounded by ``queue_max_records``;
* on revocation, queued records of the revoked partitions are dropped, in-flight batches
  finish, their offsets are committed; streams of partitions that really moved away are
  forgotten. Without a state topic (a later exactly-once issue) a moved stream restarts
  from its initial state on the new owner -- a documented limitation;
* SIGTERM/SIGINT (via the stop event): stop fetching, drain, produce, commit, return.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import REGISTRY, CollectorRegistry

from processor.codec import UNDECODABLE, RecordDecoder, encode_outputs
from processor.engine import Engine
from processor.errors import BadRecord, LstmStreamError
from processor.kafka.batcher import Batcher, FlowControl
from processor.kafka.clients import client_kwargs
from processor.kafka.commit import CommitLoop
from processor.kafka.ledger import OffsetLedger, Ticket
from processor.kafka.output import DeadLetterWriter, OutputWriter
from processor.kafka.ownership import Ownership
from processor.kafka.rebalance import RebalanceListener
from processor.kafka.worker import EngineWorker, WorkResult
from processor.metrics import Metrics, MetricsServer
from processor.options import EngineOptions
from processor.records import Record
from processor.settings import Settings

__all__ = ["MISSING_KEY", "KafkaRuntimeError", "Processor", "RunStats", "run_processor"]

log = logging.getLogger(__name__)

_FETCH_TIMEOUT_MS = 100  # how long one getmany waits: bounds the reaction to stop/resume
_PIPELINE_DEPTH = 2  # batches submitted to the engine thread ahead of their production
# The fetch loop polls at least this often even when enough records wait for the engine (the
# group coordinator expects regular polls: max_poll_interval_ms); the in-flight bound and the
# pause at the high-water mark still hold.
_MAX_FETCH_GAP_S = 1.0

# Dead-letter reason of a record without a message key (a runtime rule, not the codec's: the
# wire format allows the stream id in the value; Kafka needs it as the key). A null key lets
# the producer's partitioner spread one stream over partitions, so its seqs would arrive out
# of order and later ones be skipped as duplicates: silent loss.
MISSING_KEY = "missing_key"
_MISSING_KEY_DETAIL = (
    "the record has no message key: in Kafka the message key must be the stream id"
)


_GC_YOUNG_THRESHOLD = 50_000  # net allocations between young collections while running
_gc_tuned_by = 0  # running processors that asked for a tuned collector (see _tune_gc)
_saved_threshold: tuple[int, int, int] | None = None


def _tune_gc() -> None:
    """Tune the cyclic garbage collector for the hot path, once per process.

    * Collect once, then freeze every object alive now (TensorFlow, Keras, the model, the
      clients: hundreds of thousands of long-lived objects) out of the collector's reach.
      Without this, each full collection triggered by the per-record allocations walks all
      of them while holding the GIL: about 0.2-0.3 s each, several times a minute at full
      load (measured: 2.3 s of GC in an 8 s benchmark run).
    * Raise the young-generation threshold from 700 to 50,000 net allocations. Per record
      the hot path allocates a few container objects (consumer record, item, record,
      output) that reference counting frees once the record is acknowledged; with 700,
      young collections run every ~100 records and keep walking records still in the
      pipeline (measured: ~0.3 s per 200k records). The working set of the pipeline stays
      below 50,000 containers, so they now run rarely; cyclic garbage is still collected.
    """
    global _gc_tuned_by, _saved_threshold
    if _gc_tuned_by == 0:
        gc.collect()
        gc.freeze()
        young, *older = gc.get_threshold()
        _saved_threshold = (young, older[0], older[1])
        gc.set_threshold(max(young, _GC_YOUNG_THRESHOLD), older[0], older[1])
    _gc_tuned_by += 1


def _restore_gc() -> None:
    """Undo :func:`_tune_gc` when the last processor of this process closes, so that
    frozen garbage (e.g. of processors in tests) becomes collectable again."""
    global _gc_tuned_by, _saved_threshold
    if _gc_tuned_by > 0:
        _gc_tuned_by -= 1
        if _gc_tuned_by == 0:
            gc.unfreeze()
            if _saved_threshold is not None:
                gc.set_threshold(*_saved_threshold)
                _saved_threshold = None


class KafkaRuntimeError(LstmStreamError):
    """The runtime cannot go on (produce failed after the client's retries, a rebalance
    callback failed, a drain timed out...). Offsets of unacknowledged work are not
    committed, so a restart re-processes it."""


@dataclass
class RunStats:
    """Counters of one run (also readable live as ``Processor.stats``)."""

    records_in: int = 0
    outputs: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    dropped_on_revoke: int = 0
    batches: int = 0
    commits: int = 0
    assignments: int = 0
    pauses: int = 0
    peak_in_flight: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Bad:
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None


@dataclass(slots=True)
class _Item:
    """One fetched record on its way through the pipeline."""

    tp: TopicPartition
    offset: int
    arrived: float  # monotonic seconds, for the batcher's deadline
    event_ms: int | None  # ts field, else the Kafka timestamp (for end-to-end latency)
    record: Record | None  # the decoded record, or None for a bad one
    bad: _Bad | None = None


@dataclass(slots=True)
class _Inflight:
    items: list[_Item]
    good: list[_Item]
    ticket: Ticket
    future: Any  # asyncio future of WorkResult, or None when the batch has no good records


class Processor:
    """The runtime. ``await run(stop_event)`` does everything; see the module docstring.

    Args:
        settings: the validated settings.
        registry: where the metrics live (a fresh one per test; the CLI uses the default).
        engine_factory: builds the Engine on the worker thread (default: from the settings'
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
        self.metrics = Metrics(registry if registry is not None else REGISTRY)
        self.stats = RunStats()
        self._registry = registry if registry is not None else REGISTRY
        self._worker = EngineWorker(settings.engine_options(), engine_factory=engine_factory)
        self._batcher: Batcher[_Item] = Batcher(settings.max_batch, settings.max_delay_ms / 1000)
        self._flow = FlowControl(settings.queue_max_records, settings.queue_low_records)
        self._ledger = OffsetLedger()
        self._ownership: Ownership[TopicPartition] = Ownership()
        self._want_server = metrics_server and settings.metrics_port > 0
        self._server: MetricsServer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._decoder: RecordDecoder | None = None
        self._outputs: OutputWriter | None = None
        self._dlq: DeadLetterWriter | None = None
        self._committer: CommitLoop | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ack_queue: asyncio.Queue[Ticket | None] = asyncio.Queue()
        self._wakeup = asyncio.Event()  # new items or a drain request for the engine loop
        self._taken = asyncio.Event()  # the engine loop took a batch: the fetch loop may go on
        # Decoded records the fetch loop keeps ready for the engine loop (see _fetch_loop).
        self._ready_target = (_PIPELINE_DEPTH + 1) * settings.max_batch
        self._fetch_turn = 0  # rotates the partition order of _fetch
        self._progress = asyncio.Event()  # replaced on every completed ticket
        self._failed = asyncio.Event()
        self._failure: BaseException | None = None
        self._stopping = False
        self._flushing = False
        self._running = False
        self._joined = False
        self._rebalancing = False
        self._fetch_floor: dict[TopicPartition, int] = {}
        self._started_at = 0.0
        self._gc_tuned = False

    # ---- public -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Running, in the group with an assignment, not rebalancing or draining."""
        return self._running and self._joined and not self._rebalancing and not self._stopping

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
            await self.start()
            stop_wait = asyncio.ensure_future(stop_event.wait())
            fail_wait = asyncio.ensure_future(self._failed.wait())
            try:
                await asyncio.wait({stop_wait, fail_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
                fail_wait.cancel()
            self._raise_if_failed()
            log.info("stop requested: draining")
            await self._drain()
            self._raise_if_failed()
        finally:
            await self.close()
        return self.stats

    async def start(self) -> None:
        """Metrics server, engine (built and warmed up on its thread), producer, consumer,
        background loops. Idempotent only in the sense that it must be called once."""
        s = self.settings
        self._started_at = time.monotonic()
        if self._want_server:
            self._server = MetricsServer(
                self._registry, host=s.metrics_host, port=s.metrics_port, ready=lambda: self.ready
            )
            self._server.start()
        log.info("building the engine (model %s)", s.model)
        await self._worker.start()
        model = self._worker.engine.model
        self._decoder = RecordDecoder(
            tuple(model.input_shape), model.input_dtype, max_record_bytes=s.max_record_bytes
        )
        consumer_kw, producer_kw = client_kwargs(
            s.bootstrap_servers, s.group_id, s.kafka, drain_timeout=s.drain_timeout
        )
        consumer_kw.setdefault("max_poll_records", s.max_batch)
        self._producer = AIOKafkaProducer(**producer_kw)
        await self._producer.start()
        # Fail fast (or let the broker auto-create) rather than at the first output.
        for topic in (s.output_topic, s.dlq_topic):
            try:
                await self._producer.partitions_for(topic)
            except KafkaError as exc:
                raise KafkaRuntimeError(f"topic {topic!r} is not available: {exc!r}") from exc
        self._outputs = OutputWriter(self._producer, s.output_topic)
        self._dlq = DeadLetterWriter(self._producer, s.dlq_topic, s.dlq_max_value_bytes)
        self._consumer = AIOKafkaConsumer(**consumer_kw)
        await self._consumer.start()
        self._consumer.subscribe(topics=list(s.input_topics), listener=RebalanceListener(self))
        self._committer = CommitLoop(
            self._consumer,
            self._ledger,
            owned=lambda: self._ownership.owned,
            interval_s=s.commit_interval_ms / 1000,
            metrics=self.metrics,
            on_tick=self._refresh_lag,
        )
        if not self._gc_tuned:
            _tune_gc()  # after the engine's warm-up and the clients' start-up
            self._gc_tuned = True
        self._running = True
        self._spawn(self._fetch_loop(), "fetch")
        self._spawn(self._engine_loop(), "engine")
        self._spawn(self._ack_loop(), "ack")
        self._spawn(self._committer.run(), "commit")
        log.info(
            "processing %s -> %s (dead letters: %s) as group %r",
            list(s.input_topics),
            s.output_topic,
            s.dlq_topic,
            s.group_id,
        )

    async def close(self) -> None:
        """Cancel the loops and stop every client; idempotent. Does not commit."""
        self._running = False
        self._stopping = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with _logged("stopping the consumer"):
                await consumer.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            with _logged("stopping the producer"):
                await producer.stop()
        await self._worker.close()
        if self._gc_tuned:
            self._gc_tuned = False
            _restore_gc()
        server, self._server = self._server, None
        if server is not None:
            server.close()

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
            log.error("processor failing: %r", exc)
            self._failure = exc
        self._failed.set()
        self._notify_progress()  # wake anyone waiting on a barrier

    def on_listener_error(self, exc: BaseException) -> None:
        """See :class:`processor.kafka.rebalance.RebalanceHandler`."""
        self._fail(KafkaRuntimeError(f"rebalance callback failed: {exc!r}"))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            if isinstance(self._failure, LstmStreamError):
                raise self._failure
            raise KafkaRuntimeError(f"processor failed: {self._failure!r}") from self._failure

    # ---- fetch --------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        max_batch = self.settings.max_batch
        last_fetch = time.monotonic()
        while not self._stopping:
            if (
                len(self._batcher) >= self._ready_target
                and time.monotonic() - last_fetch < _MAX_FETCH_GAP_S
            ):
                # Enough decoded records wait for the engine: leave the rest in the client's
                # buffer (raw bytes) until a batch is taken. Decoding far ahead in one burst
                # would hold the event loop for a long time (the engine thread then runs out
                # of submitted batches) and fill the queue to the high-water mark, whose
                # pause makes aiokafka discard its prefetched data. (A slow engine does not
                # stop the polling: see _MAX_FETCH_GAP_S.)
                self._taken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._taken.wait(), _FETCH_TIMEOUT_MS / 1000)
                continue
            last_fetch = time.monotonic()
            # Never ask for more than fits below the high-water mark: the bound is exact.
            limit = max(1, min(self._flow.headroom, max_batch))
            batches = await self._fetch(consumer, limit)
            if self._stopping:
                return  # fetched after the stop: not processed, not committed, re-read later
            added = 0
            now = time.monotonic()
            for tp, records in batches.items():
                if not records or not self._ownership.owns(tp):
                    continue  # fetched just before a revocation: the new owner reads them
                items = self._to_items(tp, records, now)
                self._fetch_floor.setdefault(tp, records[0].offset)
                self._batcher.add(items)
                self.metrics.records_in.labels(tp.topic).inc(len(items))
                added += len(items)
            if added:
                self.stats.records_in += added
                self._flow.acquire(added)
                self._apply_flow()
                self._wakeup.set()
                # getmany returns without awaiting anything while records are buffered: let
                # the engine loop submit and produce between two fetches.
                await asyncio.sleep(0)

    async def _fetch(
        self, consumer: AIOKafkaConsumer, limit: int
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Up to ``limit`` buffered records, shared evenly across the fetchable partitions;
        waits up to ``_FETCH_TIMEOUT_MS`` for any record when none is buffered.

        Why per partition: ``getmany`` drains one partition's buffered fetch before the
        next, so a backlog would arrive a partition at a time, and a batch of one
        partition's backlog holds several consecutive records of each of its streams (the
        engine then runs several narrow steps instead of one wide one). With a share from
        every partition the batcher can cut batches of mostly distinct streams."""
        paused = consumer.paused()
        parts = [tp for tp in consumer.assignment() if tp not in paused]
        batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        if len(parts) > 1:
            # Start at another partition each time: when `limit` is below the number of
            # partitions (near the high-water mark), the last ones are not always left out.
            turn = self._fetch_turn = (self._fetch_turn + 1) % len(parts)
            parts = parts[turn:] + parts[:turn]
            share = max(1, limit // len(parts))
            left = limit  # never more than `limit` in all (the flow control bound is exact)
            for tp in parts:
                got = await consumer.getmany(tp, timeout_ms=0, max_records=min(share, left))
                for tp_got, records in got.items():
                    batches[tp_got] = records
                    left -= len(records)
                if left <= 0:
                    break
        if not batches:
            batches = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS, max_records=limit)
        return batches

    def _to_items(
        self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]], now: float
    ) -> list[_Item]:
        decoder = self._decoder
        assert decoder is not None
        # One decode_many call per partition chunk: validation of the common record shape
        # inline, finiteness checked and x arrays made once for the chunk.
        decoded = decoder.decode_many(
            [r.value if r.value is not None else b"" for r in records], [r.key for r in records]
        )
        items: list[_Item] = []
        append = items.append
        for r, record in zip(records, decoded, strict=True):
            if type(record) is Record and r.key is not None:
                ts = record.ts
                append(_Item(tp, r.offset, now, r.timestamp if ts is None else ts, record))
                continue
            if r.key is None:  # first: whatever else is wrong, the producer must set keys
                record = BadRecord(MISSING_KEY, _MISSING_KEY_DETAIL)
            elif r.value is None:
                record = BadRecord(UNDECODABLE, "the record has no value (a tombstone)")
            assert isinstance(record, BadRecord)
            bad = _Bad(record.reason, record.detail, r.key, r.value, tuple(r.headers), r.timestamp)
            append(_Item(tp, r.offset, now, r.timestamp, None, bad))
        return items

    def _apply_flow(self) -> None:
        consumer = self._consumer
        decision = self._flow.decide()
        if consumer is not None and decision == "pause":
            owned = [tp for tp in consumer.assignment() if self._ownership.owns(tp)]
            consumer.pause(*owned)
            log.debug(
                "backpressure: paused %d partitions (%d in flight)",
                len(owned),
                self._flow.in_flight,
            )
        elif consumer is not None and decision == "resume":
            consumer.resume(*consumer.paused())
            log.debug("backpressure: resumed (%d in flight)", self._flow.in_flight)
        self.metrics.in_flight.set(self._flow.in_flight)
        self.stats.pauses = self._flow.pauses
        self.stats.peak_in_flight = self._flow.peak
        if consumer is not None:
            self.metrics.paused_partitions.set(len(consumer.paused()))

    # ---- engine -------------------------------------------------------------------------

    async def _engine_loop(self) -> None:
        # Up to _PIPELINE_DEPTH batches are queued on the worker thread (it runs them in
        # order), so it never waits for the event loop to hand over the next batch while the
        # loop is busy decoding a fetch or producing the previous outputs.
        pending: deque[_Inflight] = deque()
        while True:
            self._fill(pending)
            if not pending:
                batch = await self._next_batch()
                if batch is None:
                    return  # drained
                pending.append(self._submit(batch))
                continue
            current = pending.popleft()
            result: WorkResult | None = await current.future if current.future else None
            self._fill(pending)  # before producing this batch's outputs
            await self._emit(current, result)

    def _fill(self, pending: deque[_Inflight]) -> None:
        while len(pending) < _PIPELINE_DEPTH and (
            self._batcher.due(time.monotonic()) or (self._flushing and len(self._batcher))
        ):
            pending.append(self._submit(self._take()))

    async def _next_batch(self) -> list[_Item] | None:
        while True:
            now = time.monotonic()
            if self._batcher.due(now) or (self._flushing and len(self._batcher)):
                return self._take()
            if self._flushing:
                return None
            self._wakeup.clear()
            timeout = self._batcher.time_until_due(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _take(self) -> list[_Item]:
        batch = self._batcher.take()
        self._taken.set()
        return batch

    def _submit(self, batch: list[_Item]) -> _Inflight:
        ticket = self._ledger.open(batch)
        good = [it for it in batch if it.record is not None]
        future = None
        if good:
            records = [it.record for it in good if it.record is not None]
            future = self._worker.submit(records, [it.tp for it in good])
        return _Inflight(batch, good, ticket, future)

    async def _emit(self, inflight: _Inflight, result: WorkResult | None) -> None:
        assert self._outputs is not None and self._dlq is not None
        ticket = inflight.ticket
        futures: list[Any] = []
        reasons: list[str] = []
        latencies_from: list[int] = []
        if result is not None:
            outputs = result.outputs
            pairs = list(zip([o.stream for o in outputs], encode_outputs(outputs), strict=True))
            futures += await self._outputs.write(pairs)
            skipped = {id(r) for r in result.duplicates}
            latencies_from = [
                it.event_ms
                for it in inflight.good
                if it.event_ms is not None and id(it.record) not in skipped
            ]
            self.metrics.step_seconds.observe(result.seconds)
            self.metrics.observe_cache(
                active=result.cache_active,
                capacity=result.cache_capacity,
                spilled=result.cache_spilled,
                counters=result.cache_counters,
            )
            if result.duplicates:
                self.metrics.duplicates.inc(len(result.duplicates))
                self.stats.duplicates += len(result.duplicates)
        for it in inflight.items:
            bad = it.bad
            if bad is None:
                continue
            futures.append(
                await self._dlq.write(
                    key=bad.key,
                    value=bad.value,
                    headers=bad.headers,
                    reason=bad.reason,
                    detail=bad.detail,
                    topic=it.tp.topic,
                    partition=it.tp.partition,
                    offset=it.offset,
                    timestamp_ms=bad.timestamp_ms,
                )
            )
            reasons.append(bad.reason)
        self.metrics.batch_size.observe(len(inflight.items))
        self.stats.batches += 1
        ticket.futures = futures
        ticket.meta = {
            "outputs": len(result.outputs) if result is not None else 0,
            "reasons": reasons,
            "event_ms": latencies_from,
        }
        self._ack_queue.put_nowait(ticket)

    # ---- acknowledgements and commits ---------------------------------------------------

    async def _ack_loop(self) -> None:
        topic = self.settings.output_topic
        while True:
            ticket = await self._ack_queue.get()
            if ticket is None:
                return
            if ticket.futures:
                try:
                    await asyncio.gather(*ticket.futures)
                except KafkaError as exc:
                    raise KafkaRuntimeError(
                        f"producing outputs/dead letters failed: {exc!r}"
                    ) from exc
            self._ledger.complete(ticket)
            self._flow.release(ticket.count)
            self._apply_flow()
            meta = ticket.meta
            if meta["outputs"]:
                self.metrics.records_out.labels(topic).inc(meta["outputs"])
                self.stats.outputs += meta["outputs"]
            for reason in meta["reasons"]:
                self.metrics.dead_letters.labels(reason).inc()
                self.stats.dead_letters += 1
                self.stats.dead_letter_reasons[reason] = (
                    self.stats.dead_letter_reasons.get(reason, 0) + 1
                )
            if meta["event_ms"]:
                now_ms = time.time() * 1000.0
                ages = (now_ms - np.asarray(meta["event_ms"], dtype=np.float64)) / 1000.0
                self.metrics.latency_seconds.observe_many(np.maximum(ages, 0.0))
            self._notify_progress()

    def _notify_progress(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def _wait_completed(self, seq: int, timeout: float) -> bool:
        """Wait until every ticket up to ``seq`` is acknowledged; False on timeout or
        failure of the processor."""
        deadline = time.monotonic() + timeout
        while self._ledger.completed_seq < seq:
            if self._failure is not None:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def _refresh_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in list(self._ownership.owned):
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = self._ledger.acked(tp)
            if position is None:
                position = self._fetch_floor.get(tp)
            if position is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(0, high - position)
            )
        self.stats.commits = self._committer.commits if self._committer else 0

    # ---- rebalance (called by RebalanceListener inside aiokafka's coordinator) ----------

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Drop queued records of ``partitions``, let in-flight batches finish, commit."""
        self._rebalancing = True
        if not partitions:
            return
        self._ownership.revoke(partitions)
        dropped = self._batcher.drop(partitions)
        if dropped:
            self._flow.release(len(dropped))
            self._apply_flow()
            self.metrics.revoked_dropped.inc(len(dropped))
            self.stats.dropped_on_revoke += len(dropped)
        barrier = self._ledger.last_seq
        finished = await self._wait_completed(barrier, self.settings.drain_timeout)
        committed = False
        if finished and self._committer is not None:
            committed = await self._committer.commit_now(partitions)
        if committed:
            self._ownership.mark_clean(partitions)
        else:
            log.warning(
                "revoked partitions %s without a final commit (in-flight work %s): their "
                "streams restart from the initial state here if they come back",
                sorted(map(str, partitions)),
                "finished" if finished else "did not finish in time",
            )
            await self._worker.forget_partitions(partitions)
        self._ledger.forget(partitions)
        for tp in partitions:
            self._fetch_floor.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        log.info(
            "revoked %d partitions (%d queued records dropped, committed=%s)",
            len(partitions),
            len(dropped),
            committed,
        )

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        """Own the new assignment; keep cached states only of cleanly revoked partitions
        that came back, forget every other stream (start clean)."""
        keep = self._ownership.assign(partitions)
        forgotten = await self._worker.retain_partitions(keep)
        self._ledger.forget(set(partitions) - keep)
        consumer = self._consumer
        if consumer is not None and self._flow.paused and partitions:
            consumer.pause(*partitions)
        self.metrics.rebalances.inc()
        self.metrics.assigned_partitions.set(len(partitions))
        self.stats.assignments += 1
        self._joined = True
        self._rebalancing = False
        log.info(
            "assigned %d partitions (%d kept their cached streams; %d streams forgotten)",
            len(partitions),
            len(keep),
            forgotten,
        )

    # ---- drain --------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Stop fetching, process what was fetched, wait for the acknowledgements, commit."""
        timeout = self.settings.drain_timeout
        self._stopping = True
        fetch = self._tasks.pop("fetch", None)
        if fetch is not None:
            try:
                await asyncio.wait_for(fetch, timeout)
            except TimeoutError:
                log.warning("fetch loop did not stop in time; cancelled")
        self._flushing = True
        self._wakeup.set()
        try:
            engine = self._tasks.pop("engine", None)
            if engine is not None:
                await asyncio.wait_for(engine, timeout)
            self._ack_queue.put_nowait(None)
            ack = self._tasks.pop("ack", None)
            if ack is not None:
                await asyncio.wait_for(ack, timeout)
        except TimeoutError:
            raise KafkaRuntimeError(
                f"drain did not finish within {timeout}s; offsets of unfinished work were not "
                "committed (they will be re-processed)"
            ) from None
        self._raise_if_failed()
        if self._committer is not None and not await self._committer.commit_now():
            raise KafkaRuntimeError("the final offset commit failed")
        self.stats.commits = self._committer.commits if self._committer else 0
        log.info(
            "drained: %d records in, %d outputs, %d dead letters, %d duplicates skipped",
            self.stats.records_in,
            self.stats.outputs,
            self.stats.dead_letters,
            self.stats.duplicates,
        )


@contextlib.contextmanager
def _logged(what: str) -> Any:
    try:
        yield
    except Exception:
        log.exception("%s failed", what)


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
