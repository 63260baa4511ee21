"""The results of ``lstm-stream demo``: what a run did (:class:`DemoSummary`, with its
:class:`ForecastErrors`) and how it is told: :func:`format_summary` (the end-of-run text),
:func:`summary_record` and :func:`write_summary_json` (the same figures as JSON, for scripts
and CI), :func:`describe_model` (the model's line).

The error table scores each kind's outputs three ways on the same pairs (see
:mod:`processor.demo.evaluate`): state kept, state reset on every message, and the
baseline (:data:`ERROR_TERMS` names them for each :class:`~processor.demo.config.DemoKind`).
Pure formatting: nothing here runs the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processor.demo.config import DemoKind
from processor.model import StepModel

__all__ = [
    "ERROR_TERMS",
    "DemoSummary",
    "ErrorTerms",
    "ForecastErrors",
    "describe_model",
    "format_summary",
    "summary_record",
    "write_summary_json",
]


@dataclass(frozen=True)
class ForecastErrors:
    """Mean squared forecast errors on the same (sample t, sample t+1) pairs; ``None`` when
    there were no pairs (or, for ``reset``, when it was not measured)."""

    streams: int
    pairs: int
    stateful: float | None
    reset: float | None
    naive: float | None


@dataclass(frozen=True)
class ErrorTerms:
    """How a kind of demo names its error figures: the ``metric``, the ``baseline`` column
    and the ``message`` unit."""

    metric: str
    baseline: str
    baseline_long: str
    message: str


#: The error figures' names by demo kind.
ERROR_TERMS = {
    DemoKind.SENSOR: ErrorTerms(
        "forecast of the next sample, mean squared error",
        "naive x[t]",
        "the naive forecast",
        "message",
    ),
    DemoKind.FRAMES: ErrorTerms(
        "velocity of the object in each frame, mean squared error ((px/frame)^2)",
        "zero (1 frame)",
        "the one-frame baseline (constant zero, the mean velocity)",
        "frame",
    ),
}


@dataclass(frozen=True)
class DemoSummary:
    """What a demo run did (``kind``: sensor forecasts or frames velocities; see
    :data:`ERROR_TERMS`). Counter identities that hold for every run:
    ``inputs == generated + redelivered``, ``inputs == decoded + bad_records``,
    ``outputs + duplicates == decoded`` and, with no state lost,
    ``duplicates == redelivered``."""

    model: str
    streams: int
    seconds: float
    stopped_early: bool
    rate_target: float
    generated: int
    redelivered: int
    inputs: int
    decoded: int
    bad_records: int
    outputs: int
    duplicates: int
    input_bytes: int
    output_bytes: int
    ticks: int
    compiled_calls: int
    mean_batch: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    streams_seen: int
    cache_capacity: int
    cached: int
    spilled_now: int
    admitted: int
    evicted_lru: int
    evicted_idle: int
    restored_from_spill: int
    state_lost: int
    all_streams: ForecastErrors
    sample: ForecastErrors
    offline_max_abs_diff: float | None
    training: str | None = None
    kind: DemoKind = DemoKind.SENSOR

    @property
    def throughput(self) -> float:
        """Generated messages per second of live traffic."""
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def input_mb_per_s(self) -> float:
        """Input record bytes (redelivered copies included) per second, in MB (10^6 bytes)."""
        return self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def output_mb_per_s(self) -> float:
        """Output record bytes per second, in MB (10^6 bytes)."""
        return self.output_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def describe_model(model: StepModel, path: str | None) -> str:
    """One line on the model: where it came from (``path``, None = trained in this run), its
    shapes, state and cost."""
    state = ", ".join(f"{s.name}{list(s.shape)}" for s in model.state_spec)
    src = path if path is not None else "example model trained in this run"
    return (
        f"{src}: input {list(model.input_shape)}, output {list(model.output_shape)}, "
        f"state {state}, {model.flops_per_step:,} FLOP/step"
    )


def _f(v: float | None, spec: str = ".5f") -> str:
    return "n/a" if v is None else format(v, spec)


def _ratio(a: float | None, b: float | None) -> str:
    r = _ratio_value(a, b)
    return "n/a" if r is None else f"{r:.1f}x"


def _ratio_value(a: float | None, b: float | None) -> float | None:
    """How many times ``a`` (the kept-state error) is below ``b``; None when undefined."""
    return b / a if a and b is not None else None


def _number(v: float | None) -> float | None:
    # JSON has no NaN or infinity (strict parsers reject them): an undefined figure is null.
    return None if v is None or not math.isfinite(v) else float(v)


def _errors_record(e: ForecastErrors) -> dict[str, Any]:
    return {
        "streams": e.streams,
        "pairs": e.pairs,
        "kept": _number(e.stateful),
        "reset": _number(e.reset),
        "baseline": _number(e.naive),
    }


def summary_record(s: DemoSummary) -> dict[str, Any]:
    """The figures of ``s`` as one JSON-ready object (what ``demo --summary-json`` writes).

    The same numbers :func:`format_summary` prints, unrounded: undefined figures (no
    messages, no pairs, a non-Keras model's offline check) are ``null``, never NaN. Keys:
    ``kind``, ``model``, ``streams``, ``streams_seen``, ``seconds``, ``stopped_early``,
    ``rate_target`` (0 = as fast as possible); ``messages`` (the counters of
    :class:`DemoSummary` plus ``answered_once``); ``throughput`` (``messages_per_s``,
    ``input_mb_per_s``, ``output_mb_per_s``); ``batches`` (``ticks``, ``compiled_calls``,
    ``mean_batch``); ``latency_ms`` (``p50``, ``p99``, ``max``); ``cache``; ``errors``
    (``metric``; ``all_streams`` and ``sample``, each with ``streams``, ``pairs`` and the
    mean squared errors ``kept``, ``reset`` and ``baseline``; ``kept_vs_reset`` and
    ``kept_vs_baseline``: how many times the kept-state error is lower, from the sample);
    ``offline_max_abs_diff``; ``training`` (the training report, or null).
    """
    sm = s.sample
    return {
        "kind": str(s.kind),
        "model": s.model,
        "streams": s.streams,
        "streams_seen": s.streams_seen,
        "seconds": s.seconds,
        "stopped_early": s.stopped_early,
        "rate_target": s.rate_target,
        "messages": {
            "generated": s.generated,
            "redelivered": s.redelivered,
            "inputs": s.inputs,
            "decoded": s.decoded,
            "bad_records": s.bad_records,
            "outputs": s.outputs,
            "duplicates": s.duplicates,
            "input_bytes": s.input_bytes,
            "output_bytes": s.output_bytes,
            "answered_once": s.outputs == s.generated,
        },
        "throughput": {
            "messages_per_s": s.throughput,
            "input_mb_per_s": s.input_mb_per_s,
            "output_mb_per_s": s.output_mb_per_s,
        },
        "batches": {
            "ticks": s.ticks,
            "compiled_calls": s.compiled_calls,
            "mean_batch": s.mean_batch,
        },
        "latency_ms": {
            "p50": _number(s.latency_p50_ms),
            "p99": _number(s.latency_p99_ms),
            "max": _number(s.latency_max_ms),
        },
        "cache": {
            "capacity": s.cache_capacity,
            "cached": s.cached,
            "spilled_now": s.spilled_now,
            "admitted": s.admitted,
            "evicted_lru": s.evicted_lru,
            "evicted_idle": s.evicted_idle,
            "restored_from_spill": s.restored_from_spill,
            "state_lost": s.state_lost,
        },
        "errors": {
            "metric": ERROR_TERMS[s.kind].metric,
            "all_streams": _errors_record(s.all_streams),
            "sample": _errors_record(sm),
            "kept_vs_reset": _number(_ratio_value(sm.stateful, sm.reset)),
            "kept_vs_baseline": _number(_ratio_value(sm.stateful, sm.naive)),
        },
        "offline_max_abs_diff": _number(s.offline_max_abs_diff),
        "training": s.training,
    }


def write_summary_json(s: DemoSummary, path: str | Path) -> Path:
    """Write :func:`summary_record` of ``s`` to ``path`` (parent directories created) as
    one JSON object and a newline; returns the path. Raises OSError if it cannot be written."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary_record(s), indent=2, allow_nan=False) + "\n")
    return out


def format_summary(s: DemoSummary) -> str:
    """The end-of-run report (several lines, no trailing newline)."""
    mode = f"target {s.rate_target:,.0f} msg/s" if s.rate_target > 0 else "as fast as possible"
    early = " (stopped early)" if s.stopped_early else ""
    a, sm, terms = s.all_streams, s.sample, ERROR_TERMS[s.kind]
    unit = terms.message
    lines = [
        "=== lstm-stream demo summary ===",
        f"model: {s.model}",
        f"live traffic: {s.seconds:.1f} s{early}, {s.streams:,} streams ({s.streams_seen:,} "
        f"sent), {mode}",
        f"{unit}s: {s.generated:,} generated + {s.redelivered:,} redelivered = {s.inputs:,} "
        f"in ({s.input_bytes / 1e6:.1f} MB); {s.decoded:,} decoded, {s.bad_records:,} bad",
        f"outputs: {s.outputs:,} ({s.output_bytes / 1e6:.1f} MB), duplicates dropped "
        f"{s.duplicates:,}; every generated {unit} answered once: "
        f"{'yes' if s.outputs == s.generated else 'NO'}",
        f"throughput: {s.throughput:,.0f} {unit}s/s, {s.input_mb_per_s:,.1f} MB/s in and "
        f"{s.output_mb_per_s:,.1f} MB/s out, for the whole path, one tick at a time "
        "(generate, encode, decode, engine on the pipeline's thread, encode output)",
        f"engine: {s.compiled_calls:,} compiled steps, mean batch {s.mean_batch:,.1f}",
        f"latency (generated -> output encoded): p50 {s.latency_p50_ms:.1f} ms, p99 "
        f"{s.latency_p99_ms:.1f} ms, max {s.latency_max_ms:.1f} ms",
        f"state cache: {s.cached:,}/{s.cache_capacity:,} streams cached, {s.spilled_now:,} "
        f"spilled now; admitted {s.admitted:,}, evicted lru {s.evicted_lru:,} idle "
        f"{s.evicted_idle:,}, restored from spill {s.restored_from_spill:,}, states lost "
        f"{s.state_lost:,}",
        f"{terms.metric} (lower is better):",
        f"  {'':28s}{'state kept':>12s}{'state reset':>13s}{terms.baseline:>16s}{'pairs':>10s}",
        f"  {f'all {a.streams:,} streams':28s}{_f(a.stateful):>12s}{'-':>13s}{_f(a.naive):>16s}"
        f"{a.pairs:>10,}",
        f"  {f'sample of {sm.streams} streams':28s}{_f(sm.stateful):>12s}"
        f"{_f(sm.reset):>13s}{_f(sm.naive):>16s}{sm.pairs:>10,}",
        f"  kept state is {_ratio(sm.stateful, sm.reset)} better than resetting it every "
        f"{unit} and {_ratio(sm.stateful, sm.naive)} better than {terms.baseline_long}",
    ]
    if s.offline_max_abs_diff is not None:
        whole = "clips" if s.kind == DemoKind.FRAMES else "sequences"
        lines.append(
            f"  live outputs vs the offline Keras model on the sample's whole {whole}: max "
            f"abs difference {s.offline_max_abs_diff:.2e}"
        )
    return "\n".join(lines)
