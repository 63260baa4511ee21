"""The processor's Prometheus metrics: one :class:`Metrics` bundle, created against an
injected ``CollectorRegistry`` (each test gets its own). Units are seconds; histogram buckets
are chosen for what they measure:

* batch sizes: powers of two up to 16384 (the engine's buckets are powers of two and 1.5x
  steps between them, so each histogram bucket spans at most two compiled shapes);
* step time: 0.5 ms .. 10 s (a 1024-row step of a 2x256 LSTM is ~10-30 ms on a CPU);
* end-to-end latency: 1 ms .. 2 min (from the record's event time, ``ts`` or the Kafka
  timestamp, to the acknowledgement of its output; clocks of other hosts may skew it).

The bundle reads what an engine step did through :class:`StepFigures` (plain numbers), so
this package imports nothing of the engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processor.obs.histogram import BulkHistogram
from processor.obs.stats import RunStats, sample_total, sample_totals

__all__ = [
    "BATCH_BUCKETS",
    "CHECKPOINT_BUCKETS",
    "LATENCY_BUCKETS",
    "STEP_BUCKETS",
    "TRANSACTION_RESULTS",
    "CacheCounters",
    "CacheFigures",
    "Metrics",
    "StepFigures",
]

BATCH_BUCKETS = tuple(float(1 << i) for i in range(15))  # 1 .. 16384
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
#: ``result`` label values of ``lstm_stream_transactions_total``.
TRANSACTION_RESULTS = ("committed", "aborted", "fenced", "timeout")
# Checkpoints and restores: milliseconds (a few streams) to minutes (a large partition).
CHECKPOINT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    180.0,
)
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
)  # fmt: skip


class CacheCounters(Protocol):
    """The state cache's monotonic counters that the metrics count."""

    @property
    def evicted_lru(self) -> int: ...
    @property
    def evicted_idle(self) -> int: ...
    @property
    def spilled(self) -> int: ...
    @property
    def spilled_to_disk(self) -> int: ...
    @property
    def disk_reads(self) -> int: ...
    @property
    def state_lost(self) -> int: ...


class CacheFigures(Protocol):
    """The state cache's numbers after a step: streams on the device, its capacity, streams
    off the device (``host`` of them in the host table, the rest in the disk store) and its
    monotonic counters."""

    @property
    def active(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def spilled(self) -> int: ...
    @property
    def host(self) -> int: ...
    @property
    def counters(self) -> CacheCounters: ...


class StepFigures(Protocol):
    """What one engine step did, as :meth:`Metrics.observe_step` reads it: its time, the
    stale records it skipped by kind, and the cache's numbers afterwards."""

    @property
    def seconds(self) -> float: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def out_of_order(self) -> int: ...
    @property
    def cache(self) -> CacheFigures: ...


class Metrics:
    """The processor's metrics, all prefixed ``lstm_stream_``.

    Counters are incremented by the stages as events happen, each event in one place; the
    run's summary (:meth:`summary`) is read back from them. Cache numbers are copied from
    the engine's cache after each batch with :meth:`observe_cache` (the cache keeps
    monotonic counters; this turns their growth into counter increments).
    """

    def __init__(self, registry: CollectorRegistry, namespace: str = "lstm_stream") -> None:
        def c(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), namespace=namespace, registry=registry)

        def g(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), namespace=namespace, registry=registry)

        self.records_in = c("records_in", "Input records consumed", ["topic"])
        self.records_out = c("records_out", "Output records acknowledged by the broker", ["topic"])
        self.dead_letters = c(
            "dead_letters",
            "Bad input records sent to the dead-letter topic, by reason (a code of "
            "processor.codec.reasons.REASONS)",
            ["reason"],
        )
        self.duplicates = c(
            "duplicates_skipped",
            "Records skipped because their seq equals the stream's last applied seq (a "
            "re-sent or re-delivered record); no output, not dead-lettered",
        )
        self.out_of_order = c(
            "out_of_order_skipped",
            "Records skipped because their seq is below the stream's last applied seq (the "
            "producer broke the per-key order); no output, not dead-lettered, logged",
        )
        self.batch_size = Histogram(
            "batch_records",
            "Records per engine batch",
            namespace=namespace,
            registry=registry,
            buckets=BATCH_BUCKETS,
        )
        self.step_seconds = Histogram(
            "step_seconds",
            "Engine time per batch (gather, step, scatter; on the worker thread)",
            namespace=namespace,
            registry=registry,
            buckets=STEP_BUCKETS,
        )
        # One observation per record: binned per batch (see BulkHistogram).
        self.latency_seconds = BulkHistogram(
            "end_to_end_latency_seconds",
            "From a record's event time (its ts field, else its Kafka timestamp) to the "
            "acknowledgement of its output",
            namespace=namespace,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )
        self.active_streams = g("active_streams", "Streams whose state is on the device")
        self.cache_capacity = g("cache_capacity", "Streams the device state table holds")
        self.cache_occupancy = g("cache_occupancy_ratio", "active_streams / cache_capacity")
        self.spilled_streams = g(
            "spilled_streams",
            "Streams whose state is off the device: in the host table or the disk store",
        )
        self.host_streams = g("host_streams", "Streams whose state is in the host table")
        self.disk_streams = g("disk_streams", "Streams whose state is in the disk store")
        self.evictions = c("cache_evictions", "Streams evicted from the device", ["cause"])
        self.spills = c("cache_spills", "States moved from the device to the host table")
        self.disk_spills = c(
            "cache_disk_spills", "States moved from the host table to the disk store"
        )
        self.disk_reads = c(
            "cache_disk_reads", "States of returning streams read back from the disk store"
        )
        self.consumer_lag = g(
            "consumer_lag_records",
            "High watermark minus the next offset to acknowledge, per owned partition",
            ["topic", "partition"],
        )
        self.in_flight = g("in_flight_records", "Records fetched but not yet acknowledged")
        self.paused_partitions = g("paused_partitions", "Partitions paused by backpressure")
        self.assigned_partitions = g("assigned_partitions", "Partitions owned by this member")
        self.rebalances = c("rebalances", "Partition assignments received")
        self.revoked_dropped = c(
            "revoked_records_dropped",
            "Queued records of revoked partitions dropped unprocessed (re-read by the new owner)",
        )
        self.backpressure_pauses = c(
            "backpressure_pauses", "Times every partition was paused at the high-water mark"
        )
        self.commits = c("commits", "Successful offset commits")
        self.commit_failures = c("commit_failures", "Failed offset commits")
        # durable state
        self.state_records = c(
            "state_records", "Stream states written to the state topic (checkpoints)"
        )
        self.state_tombstones = c(
            "state_tombstones", "Tombstones written to the state topic (streams that ended)"
        )
        self.state_bytes = c("state_bytes", "Bytes (keys and values) written to the state topic")
        self.checkpoint_seconds = Histogram(
            "checkpoint_seconds",
            "One checkpoint: barrier, acknowledgement wait, state records produced and "
            "acknowledged, offsets committed",
            namespace=namespace,
            registry=registry,
            buckets=CHECKPOINT_BUCKETS,
        )
        self.restore_seconds = Histogram(
            "restore_seconds",
            "Restoring the streams of newly assigned partitions from their state topic",
            namespace=namespace,
            registry=registry,
            buckets=CHECKPOINT_BUCKETS,
        )
        self.restore_records = c("restore_records", "State records read while restoring")
        self.restored_partitions = c("restored_partitions", "Partitions restored")
        self.restoring_partitions = g(
            "restoring_partitions", "Partitions being restored now (not yet consumed)"
        )
        self.restore_skipped = c(
            "restore_skipped",
            "State records skipped while restoring, by reason (model_mismatch: written for a "
            "model with other state names or shapes, under --on-state-mismatch reset)",
            ["reason"],
        )
        self.state_lost = c(
            "state_lost",
            "Stream states lost (unreadable from the disk tier or the state topic): such a "
            "stream restarts from its initial state; must stay 0",
        )
        # exactly-once
        self.transactions = c(
            "transactions",
            "Per-partition transactions ended, by result: committed, aborted (a send or a "
            "commit failed; the partition is restored from its state topic), fenced (another "
            "member started the partition's producer: this one stops owning it), timeout (the "
            "commit or abort did not finish in time; the producer is discarded)",
            ["result"],
        )
        for result in TRANSACTION_RESULTS:
            self.transactions.labels(result)  # every result exported from the start, at 0
        self.transaction_seconds = Histogram(
            "transaction_seconds",
            "Ending one partition's transaction: its state records produced and acknowledged, "
            "its offsets added, the commit acknowledged",
            namespace=namespace,
            registry=registry,
            buckets=CHECKPOINT_BUCKETS,
        )
        self.producers_active = g(
            "producers_active", "Transactional producers started (one per owned partition)"
        )
        self._cache_seen: dict[str, int] = {}

    def observe_step(self, stepped: StepFigures) -> None:
        """Count what one engine step did: its time, skipped records, cache numbers."""
        self.step_seconds.observe(stepped.seconds)
        if stepped.duplicates:
            self.duplicates.inc(stepped.duplicates)
        if stepped.out_of_order:
            self.out_of_order.inc(stepped.out_of_order)
        cache = stepped.cache
        self.observe_cache(
            active=cache.active,
            capacity=cache.capacity,
            spilled=cache.spilled,
            counters=cache.counters,
            host=cache.host,
        )

    def summary(self, *, peak_in_flight: int = 0) -> RunStats:
        """The run's counters as a :class:`RunStats` (``peak_in_flight`` is the flow
        control's, not a metric)."""
        reasons = {k[0]: int(v) for k, v in sample_totals(self.dead_letters).items() if v}
        return RunStats(
            records_in=sample_total(self.records_in),
            outputs=sample_total(self.records_out),
            dead_letters=sum(reasons.values()),
            duplicates=sample_total(self.duplicates),
            out_of_order=sample_total(self.out_of_order),
            dropped_on_revoke=sample_total(self.revoked_dropped),
            batches=sample_total(self.batch_size, "_count"),
            commits=sample_total(self.commits),
            assignments=sample_total(self.rebalances),
            pauses=sample_total(self.backpressure_pauses),
            peak_in_flight=peak_in_flight,
            dead_letter_reasons=reasons,
        )

    def observe_cache(
        self,
        *,
        active: int,
        capacity: int,
        spilled: int,
        counters: CacheCounters,
        host: int = 0,
    ) -> None:
        """Copy the cache's numbers: sizes as gauges, its monotonic counters
        (``evicted_lru``, ``evicted_idle``, ``spilled``, ``spilled_to_disk``, ``disk_reads``,
        ``state_lost``) as increments."""
        self.active_streams.set(active)
        self.cache_capacity.set(capacity)
        self.cache_occupancy.set(active / capacity if capacity else 0.0)
        self.spilled_streams.set(spilled)
        self.host_streams.set(host)
        self.disk_streams.set(spilled - host)
        for key, value, counter, label in (
            ("evicted_lru", counters.evicted_lru, self.evictions, "lru"),
            ("evicted_idle", counters.evicted_idle, self.evictions, "idle"),
            ("spilled", counters.spilled, self.spills, None),
            ("spilled_to_disk", counters.spilled_to_disk, self.disk_spills, None),
            ("disk_reads", counters.disk_reads, self.disk_reads, None),
            ("state_lost", counters.state_lost, self.state_lost, None),
        ):
            delta = value - self._cache_seen.get(key, 0)
            if delta > 0:
                (counter.labels(label) if label else counter).inc(delta)
            self._cache_seen[key] = value
