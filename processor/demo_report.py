"""The results of ``lstm-stream demo``: what a run did (:class:`DemoSummary`), the evaluation of
its sample streams, and the end-of-run text.

The model forecasts each stream's next sample, so a run measures what kept state is worth:

* stateful — the output for sample t against the sample t+1 that the stream sends next;
* reset — the sample streams replayed afterwards through a second Engine with ``reset`` on
  every record (what a stateless server computes from the same messages,
  :func:`evaluate_sample`);
* naive — "the next sample equals the current one".

All three are scored on exactly the same (sample t, sample t+1) pairs. For a Keras model
:func:`offline_diff` runs the sample streams offline through the model over their whole
sequences and gives the largest difference from the live outputs: the cached, evicted, spilled
and restored states must give the offline model's answers. :func:`format_summary` renders a
summary for the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from processor import codec
from processor.cache import StateCache, resolve_device
from processor.demo_live import Meter, mse
from processor.engine import Engine
from processor.model import StepModel
from processor.options import EngineOptions

import tensorflow as tf  # isort: skip  (after processor: TF environment defaults)


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
class DemoSummary:
    """What a demo run did. Counter identities that hold for every run:
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

    @property
    def throughput(self) -> float:
        """Generated messages per second of live traffic."""
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def sample_history(meter: Meter) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The recorded inputs and live outputs (``[steps, C]`` each) of the sample streams that
    sent at least one message, by stream index."""
    return {s: (np.array(xs), np.array(ys)) for s, (xs, ys) in meter.history.items() if xs}


def evaluate_sample(
    model: StepModel,
    hist: dict[int, tuple[np.ndarray, np.ndarray]],
    ids: list[str],
    opts: EngineOptions,
    channels: int,
) -> ForecastErrors:
    """Score the sample streams of ``hist`` (:func:`sample_history`; ``ids``: the stream ids)
    stateful / reset / naive on identical pairs. The reset outputs come from a fresh Engine
    over ``model`` on ``opts.device``, fed every message with ``reset`` through the codec."""
    if not hist:
        return ForecastErrors(0, 0, None, None, None)
    streams = list(hist)
    n = len(streams)
    cache = StateCache(model.state_spec, n, device=resolve_device(opts.device))
    # Rounds of ROUNDS messages per stream go in one process() call, which the engine runs
    # as one multi-step scan: the reset flags apply at every step inside it (~10x faster
    # than one call per round, measured).
    rounds = 64
    reset_engine = Engine(model, cache, max_batch=n, scan_min_steps=4, max_scan_steps=rounds)
    decoder = codec.RecordDecoder(model.input_shape, model.input_dtype)
    reset_y = {s: np.zeros_like(hist[s][1]) for s in streams}
    depth = max(len(hist[s][0]) for s in streams)
    for t0 in range(0, depth, rounds):
        # Messages t0.. of every sample stream, each starting from the initial state
        # (reset=True), through the same codec and engine as the live run.
        records = [
            decoder.decode(codec.encode_input(ids[s], t, hist[s][0][t], reset=True), ids[s])
            for s in streams
            for t in range(t0, min(t0 + rounds, len(hist[s][0])))
        ]
        index = {ids[s]: s for s in streams}
        for o in reset_engine.process(records).outputs:
            reset_y[index[o.stream]][o.seq] = o.y
    sq_state = sq_reset = sq_naive = 0.0
    pairs = 0
    for s in streams:
        xs, ys = hist[s]
        if len(xs) < 2:
            continue
        target = xs[1:]
        sq_state += float(((ys[:-1] - target) ** 2).sum())
        sq_reset += float(((reset_y[s][:-1] - target) ** 2).sum())
        sq_naive += float(((xs[:-1] - target) ** 2).sum())
        pairs += len(target)
    return ForecastErrors(
        n,
        pairs,
        mse(sq_state, pairs, channels),
        mse(sq_reset, pairs, channels),
        mse(sq_naive, pairs, channels),
    )


def offline_diff(model: StepModel, hist: dict[int, tuple[np.ndarray, np.ndarray]]) -> float | None:
    """Largest |live output - the Keras model on the whole sequence| over the sample
    streams of ``hist`` (at least one), or None when the model is not a Keras model."""
    keras_model = getattr(model, "keras_model", None)
    if keras_model is None:
        return None
    streams = list(hist)
    depth = max(len(hist[s][0]) for s in streams)
    channels = hist[streams[0]][0].shape[1]
    # Zero padding at the end cannot change earlier outputs of a causal recurrent model.
    x = np.zeros((len(streams), depth, channels), np.float32)
    for i, s in enumerate(streams):
        x[i, : len(hist[s][0])] = hist[s][0]
    # One compiled call of the model itself: not predict(), whose Keras 3.15 version can
    # return a single time step for some models once it has traced a longer sequence (see
    # tests/unit/conftest.py); not eager, whose per-step dispatch took seconds here.
    pred = np.asarray(tf.function(lambda v: keras_model(v, training=False))(x))
    return max(
        float(np.abs(pred[i, : len(hist[s][1])] - hist[s][1]).max()) for i, s in enumerate(streams)
    )


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
    return f"{b / a:.1f}x" if a and b is not None else "n/a"


def format_summary(s: DemoSummary) -> str:
    """The end-of-run report (several lines, no trailing newline)."""
    mode = f"target {s.rate_target:,.0f} msg/s" if s.rate_target > 0 else "as fast as possible"
    early = " (stopped early)" if s.stopped_early else ""
    a, sm = s.all_streams, s.sample
    lines = [
        "=== lstm-stream demo summary ===",
        f"model: {s.model}",
        f"live traffic: {s.seconds:.1f} s{early}, {s.streams:,} streams ({s.streams_seen:,} "
        f"sent), {mode}",
        f"messages: {s.generated:,} generated + {s.redelivered:,} redelivered = {s.inputs:,} "
        f"in ({s.input_bytes / 1e6:.1f} MB); {s.decoded:,} decoded, {s.bad_records:,} bad",
        f"outputs: {s.outputs:,} ({s.output_bytes / 1e6:.1f} MB), duplicates dropped "
        f"{s.duplicates:,}; every generated message answered once: "
        f"{'yes' if s.outputs == s.generated else 'NO'}",
        f"throughput: {s.throughput:,.0f} msg/s for the whole path, one tick at a time "
        "(generate, encode, decode, engine on the pipeline's thread, encode output)",
        f"engine: {s.compiled_calls:,} compiled steps, mean batch {s.mean_batch:,.1f}",
        f"latency (generated -> output encoded): p50 {s.latency_p50_ms:.1f} ms, p99 "
        f"{s.latency_p99_ms:.1f} ms, max {s.latency_max_ms:.1f} ms",
        f"state cache: {s.cached:,}/{s.cache_capacity:,} streams cached, {s.spilled_now:,} "
        f"spilled now; admitted {s.admitted:,}, evicted lru {s.evicted_lru:,} idle "
        f"{s.evicted_idle:,}, restored from spill {s.restored_from_spill:,}, states lost "
        f"{s.state_lost:,}",
        "forecast of the next sample, mean squared error (lower is better):",
        f"  {'':28s}{'state kept':>12s}{'state reset':>13s}{'naive x[t]':>12s}{'pairs':>10s}",
        f"  {f'all {a.streams:,} streams':28s}{_f(a.stateful):>12s}{'-':>13s}{_f(a.naive):>12s}"
        f"{a.pairs:>10,}",
        f"  {f'sample of {sm.streams} streams':28s}{_f(sm.stateful):>12s}"
        f"{_f(sm.reset):>13s}{_f(sm.naive):>12s}{sm.pairs:>10,}",
        f"  kept state is {_ratio(sm.stateful, sm.reset)} better than resetting it every "
        f"message and {_ratio(sm.stateful, sm.naive)} better than the naive forecast",
    ]
    if s.offline_max_abs_diff is not None:
        lines.append(
            f"  live outputs vs the offline Keras model on the sample's whole sequences: max "
            f"abs difference {s.offline_max_abs_diff:.2e}"
        )
    return "\n".join(lines)
