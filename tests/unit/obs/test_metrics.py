"""The metrics bundle (own registry per test): the run summary read back from its
collectors, and the cache's monotonic counters turned into increments."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from processor.obs.metrics import Metrics


@dataclass(frozen=True)
class Counters:
    """The cache's monotonic counters, as the pipeline reports them."""

    evicted_lru: int = 0
    evicted_idle: int = 0
    spilled: int = 0
    spilled_to_disk: int = 0
    disk_reads: int = 0
    state_lost: int = 0


@dataclass(frozen=True)
class Cache:
    """The cache's numbers after a step, as the pipeline reports them."""

    active: int
    capacity: int
    spilled: int
    counters: Counters = field(default_factory=Counters)
    host: int = 0


@dataclass(frozen=True)
class Step:
    """What one engine step did, as the pipeline reports it."""

    seconds: float
    duplicates: int
    out_of_order: int
    cache: Cache


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
        Step(
            seconds=0.003,
            duplicates=2,
            out_of_order=1,
            cache=Cache(active=5, capacity=10, spilled=1, counters=Counters(spilled=4)),
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


def test_observe_cache_turns_monotonic_cache_counters_into_increments() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    counters = Counters(evicted_lru=5, evicted_idle=0, spilled=5, state_lost=0)
    m.observe_cache(active=64, capacity=256, spilled=5, counters=counters)
    counters = Counters(evicted_lru=8, evicted_idle=2, spilled=10, state_lost=1)
    m.observe_cache(active=128, capacity=256, spilled=9, counters=counters)
    assert value(reg, "lstm_stream_cache_evictions_total", {"cause": "lru"}) == 8
    assert value(reg, "lstm_stream_cache_evictions_total", {"cause": "idle"}) == 2
    assert value(reg, "lstm_stream_cache_spills_total") == 10
    assert value(reg, "lstm_stream_state_lost_total") == 1
    assert value(reg, "lstm_stream_active_streams") == 128
    assert value(reg, "lstm_stream_cache_occupancy_ratio") == 0.5
    assert value(reg, "lstm_stream_spilled_streams") == 9
