"""Prometheus metrics of the processor and the HTTP server that exposes them.

:class:`Metrics` is one bundle created against an injected ``CollectorRegistry`` (each test
gets its own). Units are seconds; histogram buckets are chosen for what they measure:

* batch sizes: powers of two up to 16384 (the engine's buckets are powers of two and 1.5x
  steps between them, so each histogram bucket spans at most two compiled shapes);
* step time: 0.5 ms .. 10 s (a 1024-row step of a 2x256 LSTM is ~10-30 ms on a CPU);
* end-to-end latency: 1 ms .. 2 min (from the record's event time, ``ts`` or the Kafka
  timestamp, to the acknowledgement of its output; clocks of other hosts may skew it).

:class:`MetricsServer` serves ``/metrics``, ``/healthz`` (the process is alive) and
``/readyz`` (assigned and running) from a thread with the standard library's WSGI server.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from processor.engine.pipeline import Stepped

__all__ = [
    "BATCH_BUCKETS",
    "LATENCY_BUCKETS",
    "STEP_BUCKETS",
    "TRANSACTION_RESULTS",
    "BulkHistogram",
    "Metrics",
    "MetricsServer",
    "RunStats",
]

log = logging.getLogger(__name__)

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


class BulkHistogram:
    """A Prometheus histogram fed whole arrays of observations at once.

    ``prometheus_client.Histogram.observe`` costs about 0.6 us per value (a lock and a
    bucket search in Python per call); the runtime observes one end-to-end latency per
    record, so :meth:`observe_many` bins a whole batch with numpy instead. Exposes exactly
    the samples a ``Histogram`` of the same name and buckets does (``_bucket`` with ``le``,
    ``_count``, ``_sum``), without ``_created``. Thread-safe (scrapes run on the server
    thread).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        *,
        namespace: str,
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"buckets must be strictly increasing, got {buckets!r}")
        if bounds[-1] == float("inf"):
            bounds.pop()  # +Inf is always added
        self.name = f"{namespace}_{name}" if namespace else name
        self._doc = documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._le = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        """One observation."""
        self.observe_many(np.array([value], dtype=np.float64))

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Observations in bulk (any 1-D sequence of numbers); cost ~O(n) in numpy."""
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return
        # Bucket i counts values <= bounds[i] (Prometheus "le"): the first bound >= value.
        counts = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=len(self._le))
        total = float(v.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        """The metric family without samples (lets the registry check name clashes)."""
        return [HistogramMetricFamily(self.name, self._doc)]

    def collect(self) -> Iterable[Metric]:
        """Cumulative buckets, count and sum, as a ``Histogram`` exposes them."""
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        family = HistogramMetricFamily(self.name, self._doc)
        family.add_metric([], list(zip(self._le, cumulative, strict=True)), total)
        return [family]


@dataclass
class RunStats:
    """The summary of one run, read from the metrics (:meth:`Metrics.summary`): every
    event is counted once, in its Prometheus collector, and this is a view of them."""

    records_in: int = 0
    outputs: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    dropped_on_revoke: int = 0
    batches: int = 0
    commits: int = 0
    assignments: int = 0
    pauses: int = 0
    peak_in_flight: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


def _total(collector: Any, suffix: str = "_total") -> dict[tuple[str, ...], float]:
    """Sample values of a collector whose name ends with ``suffix``, by label values."""
    out: dict[tuple[str, ...], float] = {}
    for family in collector.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                key = tuple(sample.labels.values())
                out[key] = out.get(key, 0.0) + sample.value
    return out


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

    def observe_step(self, stepped: Stepped) -> None:
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

        def one(collector: Any, suffix: str = "_total") -> int:
            return int(sum(_total(collector, suffix).values()))

        reasons = {k[0]: int(v) for k, v in _total(self.dead_letters).items() if v}
        return RunStats(
            records_in=one(self.records_in),
            outputs=one(self.records_out),
            dead_letters=sum(reasons.values()),
            duplicates=one(self.duplicates),
            out_of_order=one(self.out_of_order),
            dropped_on_revoke=one(self.revoked_dropped),
            batches=one(self.batch_size, "_count"),
            commits=one(self.commits),
            assignments=one(self.rebalances),
            pauses=one(self.backpressure_pauses),
            peak_in_flight=peak_in_flight,
            dead_letter_reasons=reasons,
        )

    def observe_cache(
        self,
        *,
        active: int,
        capacity: int,
        spilled: int,
        counters: dict[str, int],
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
        for key, counter, label in (
            ("evicted_lru", self.evictions, "lru"),
            ("evicted_idle", self.evictions, "idle"),
            ("spilled", self.spills, None),
            ("spilled_to_disk", self.disk_spills, None),
            ("disk_reads", self.disk_reads, None),
            ("state_lost", self.state_lost, None),
        ):
            value = counters.get(key, 0)
            delta = value - self._cache_seen.get(key, 0)
            if delta > 0:
                (counter.labels(label) if label else counter).inc(delta)
            self._cache_seen[key] = value


# ---- HTTP -------------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP from a daemon thread.

    ``ready`` is called on each ``/readyz`` request (from the server thread: it must only
    read simple state). ``port=0`` binds an ephemeral port (see :attr:`port`); the CLI uses
    0 to mean "no server" and does not create one.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.server_address[1])

    def _app(self) -> Callable[..., Iterable[bytes]]:
        metrics_app = make_wsgi_app(self._registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                try:
                    ready = bool(self._ready())
                except Exception:  # a failing probe means "not ready", never a 500 loop
                    log.exception("readiness check failed")
                    ready = False
                status = "200 OK" if ready else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [b"ready\n" if ready else b"not ready\n"]
            if path in ("/metrics", "/"):
                result: Iterable[bytes] = metrics_app(environ, start_response)
                return result
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]

        return app

    def start(self) -> None:
        """Bind and serve from a daemon thread. Raises ``OSError`` if the port is taken."""
        if self._server is not None:
            return
        server = make_server(
            self._host,
            self._requested_port,
            self._app(),
            server_class=_Server,
            handler_class=_QuietHandler,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="lstm-metrics-http", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
