"""The evaluation of a demo run's sample streams, after the live phase.

:func:`evaluate_sample` scores the sample streams three ways on exactly the same pairs: with
the state kept (the live outputs), with the state reset on every message (the messages
replayed through a second engine, what a stateless server computes) and the baseline (the
naive "next = current" for forecasts, zero for targets). :func:`offline_diff` runs the
sample streams through the Keras model offline over their whole sequences and gives the
largest difference from the live outputs: the cached, evicted, spilled and restored states
must give the offline model's answers.
"""

from __future__ import annotations

import numpy as np

from processor import codec
from processor.config.engine_options import EngineOptions
from processor.demo.meter import History, mse
from processor.demo.report import ForecastErrors
from processor.engine.build import build_engine
from processor.model import StepModel

import tensorflow as tf  # isort: skip  (after processor: TF environment defaults)

__all__ = ["evaluate_sample", "offline_diff"]

#: Messages per sample stream in one engine call of the reset replay.
RESET_ROUNDS = 64


def evaluate_sample(
    model: StepModel,
    hist: History,
    ids: list[str],
    opts: EngineOptions,
    channels: int,
) -> ForecastErrors:
    """Score the sample streams of ``hist`` (:meth:`~processor.demo.meter.Meter.sample_history`;
    ``ids``: the stream ids) stateful / reset / baseline on identical pairs. The reset
    outputs come from a fresh engine over ``model`` on ``opts.device`` (its other options
    are the defaults: float32 states, a device row for every sample stream), fed every message with
    ``reset`` through the codec.

    Streams with targets score each output against its target (baseline: zero); streams
    without score each output as a forecast of the next input (baseline: the current one)."""
    if not hist:
        return ForecastErrors(0, 0, None, None, None)
    streams = list(hist)
    n = len(streams)
    # Rounds of RESET_ROUNDS messages per stream go in one process() call, which the engine
    # runs as one multi-step scan: the reset flags apply at every step inside it (~10x
    # faster than one call per round, measured).
    rounds = RESET_ROUNDS
    reset_opts = EngineOptions(
        device=opts.device,
        cache_capacity=n,
        max_batch=n,
        scan_min_steps=4,
        max_scan_steps=rounds,
        spill_capacity=0,  # nothing is evicted: every sample stream has its device row
        threads=0,
    )
    reset_engine = build_engine(reset_opts, model)
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
        xs, ys, ts = hist[s]
        if ts is not None:
            sq_state += float(((ys - ts) ** 2).sum())
            sq_reset += float(((reset_y[s] - ts) ** 2).sum())
            sq_naive += float((ts.astype(np.float64) ** 2).sum())
            pairs += len(ts)
            continue
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


def offline_diff(model: StepModel, hist: History) -> float | None:
    """Largest |live output - the Keras model on the whole sequence| over the sample
    streams of ``hist`` (at least one), or None when the model is not a Keras model or
    takes its initial states from an init model (whose offline reference is not here)."""
    keras_model = getattr(model, "keras_model", None)
    if keras_model is None or model.has_init_model:
        return None
    streams = list(hist)
    depth = max(len(hist[s][0]) for s in streams)
    first = hist[streams[0]][0]
    # Zero padding at the end cannot change earlier outputs of a causal recurrent model.
    x = np.zeros((len(streams), depth, *first.shape[1:]), first.dtype)
    for i, s in enumerate(streams):
        x[i, : len(hist[s][0])] = hist[s][0]
    # One compiled call of the model itself: not predict(), whose Keras 3.15 version can
    # return a single time step for some models once it has traced a longer sequence (see
    # tests/unit/conftest.py); not eager, whose per-step dispatch took seconds here.
    pred = np.asarray(tf.function(lambda v: keras_model(v, training=False))(x))
    return max(
        float(np.abs(pred[i, : len(hist[s][1])] - hist[s][1]).max()) for i, s in enumerate(streams)
    )
