"""The summary of one run (:class:`RunStats`) and how it is read from Prometheus
collectors (:func:`sample_total`): every event is counted once, in its collector, and the
summary is a view of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.registry import Collector

__all__ = ["RunStats", "sample_total", "sample_totals"]


@dataclass
class RunStats:
    """The summary of one run, read from the metrics
    (:meth:`processor.obs.metrics.Metrics.summary`)."""

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


def sample_totals(collector: Collector, suffix: str = "_total") -> dict[tuple[str, ...], float]:
    """Sample values of a collector whose name ends with ``suffix``, by label values."""
    out: dict[tuple[str, ...], float] = {}
    for family in collector.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                key = tuple(sample.labels.values())
                out[key] = out.get(key, 0.0) + sample.value
    return out


def sample_total(collector: Collector, suffix: str = "_total") -> int:
    """The sum of :func:`sample_totals` over every label value."""
    return int(sum(sample_totals(collector, suffix).values()))
