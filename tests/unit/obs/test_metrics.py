"""The metrics bundle (own registry per test) and the metrics/health HTTP server."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from processor.engine.pipeline import CacheSnapshot, Stepped
from processor.obs.metrics import LATENCY_BUCKETS, BulkHistogram, Metrics, MetricsServer


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    v = registry.get_sample_value(name, labels or {})
    assert v is not None, f"no sample {name}{labels or ''}"
    return v


def test_the_run_summary_is_read_back_from_the_collectors_that_count_each_event() -> None:
    """Each event is counted once, in its Prometheus collector; RunStats is a view of them
    (summed over labels, per reason for dead letters), so the two can never disagree."""
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.records_in.labels("in-a").inc(3)
    m.records_in.labels("in-b").inc(4)
    m.dead_letters.labels("non_finite").inc()
    m.dead_letters.labels("missing_key").inc(2)
    for size in (10, 20, 30):
        m.batch_size.observe(size)
    m.observe_step(
        Stepped(
            [],
            [],
            [],
            duplicates=2,
            out_of_order=1,
            seconds=0.003,
            cache=CacheSnapshot(active=5, capacity=10, spilled=1, counters={"spilled": 4}),
        )
    )
    stats = m.summary(peak_in_flight=42)
    assert stats.records_in == 7
    assert stats.dead_letters == 3
    assert stats.dead_letter_reasons == {"non_finite": 1, "missing_key": 2}
    assert stats.batches == 3
    assert (stats.duplicates, stats.out_of_order) == (2, 1)
    assert stats.peak_in_flight == 42
    # What the summary reports is what a scrape shows.
    assert value(reg, "lstm_stream_duplicates_skipped_total") == stats.duplicates
    assert value(reg, "lstm_stream_out_of_order_skipped_total") == stats.out_of_order
    assert value(reg, "lstm_stream_step_seconds_count") == 1
    assert value(reg, "lstm_stream_cache_occupancy_ratio") == 0.5
    assert value(reg, "lstm_stream_cache_spills_total") == 4
    # 20 and 30 fall in the 32 bucket, not in the 16 one.
    assert value(reg, "lstm_stream_batch_records_bucket", {"le": "16.0"}) == 1
    assert value(reg, "lstm_stream_batch_records_bucket", {"le": "32.0"}) == 3
    # Another bundle in another registry is independent (one registry per test).
    other = Metrics(CollectorRegistry())
    assert other.summary().records_in == 0


def test_bulk_histogram_exposes_the_samples_of_a_histogram() -> None:
    """Same bucket counts (a value equal to a bound falls in that bound's bucket), count and
    sum as prometheus_client's Histogram fed one value at a time; no _created sample."""
    values = np.concatenate(
        [np.random.default_rng(1).exponential(0.5, 3000), LATENCY_BUCKETS, [0.0, 1e9, 0.0011]]
    )
    reg_one, reg_bulk = CollectorRegistry(), CollectorRegistry()
    one = Histogram("lat", "doc", namespace="ns", registry=reg_one, buckets=LATENCY_BUCKETS)
    bulk = BulkHistogram("lat", "doc", namespace="ns", registry=reg_bulk, buckets=LATENCY_BUCKETS)
    for v in values:
        one.observe(float(v))
    for chunk in np.array_split(values, 3):
        bulk.observe_many(chunk)
    bulk.observe_many([])

    def samples(reg: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for m in reg.collect()
            for s in m.samples
            if not s.name.endswith("_created")
        }

    got, want = samples(reg_bulk), samples(reg_one)
    assert got.keys() == want.keys()
    assert {k: v for k, v in got.items() if k[0] != "ns_lat_sum"} == {
        k: v for k, v in want.items() if k[0] != "ns_lat_sum"
    }
    assert got[("ns_lat_sum", "")] == pytest.approx(want[("ns_lat_sum", "")])
    assert b"# TYPE ns_lat histogram" in generate_latest(reg_bulk)
    with pytest.raises(ValueError, match=r"Duplicated timeseries"):
        BulkHistogram("lat", "doc", namespace="ns", registry=reg_bulk, buckets=[1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        BulkHistogram("x", "doc", namespace="ns", registry=CollectorRegistry(), buckets=[2, 1])


def test_observe_cache_turns_monotonic_cache_counters_into_increments() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    counters = {"evicted_lru": 5, "evicted_idle": 0, "spilled": 5, "state_lost": 0}
    m.observe_cache(active=64, capacity=256, spilled=5, counters=counters)
    counters = {"evicted_lru": 8, "evicted_idle": 2, "spilled": 10, "state_lost": 1}
    m.observe_cache(active=128, capacity=256, spilled=9, counters=counters)
    assert value(reg, "lstm_stream_cache_evictions_total", {"cause": "lru"}) == 8
    assert value(reg, "lstm_stream_cache_evictions_total", {"cause": "idle"}) == 2
    assert value(reg, "lstm_stream_cache_spills_total") == 10
    assert value(reg, "lstm_stream_state_lost_total") == 1
    assert value(reg, "lstm_stream_active_streams") == 128
    assert value(reg, "lstm_stream_cache_occupancy_ratio") == 0.5
    assert value(reg, "lstm_stream_spilled_streams") == 9


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_server_serves_metrics_health_and_readiness() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.records_in.labels("t").inc(7)
    ready = {"value": False}
    server = MetricsServer(reg, host="127.0.0.1", port=0, ready=lambda: ready["value"])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(f"{base}/metrics")
        assert status == 200 and 'lstm_stream_records_in_total{topic="t"} 7.0' in body
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/readyz")[0] == 503
        ready["value"] = True
        assert _get(f"{base}/readyz") == (200, "ready\n")
        assert _get(f"{base}/nope")[0] == 404
    finally:
        server.close()
        server.close()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.port
