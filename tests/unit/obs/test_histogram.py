"""BulkHistogram: the samples of a Prometheus histogram, fed whole arrays."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from processor.obs.histogram import BulkHistogram
from processor.obs.metrics import LATENCY_BUCKETS


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
