"""Frames: the project's original video model, stepped the seed's way and by the engine.

The seed model (:func:`build_seed`) takes 84x84x1 uint8 frames: a per-frame CNN encoder
(``Rescaling(1/255)``, Conv2D 32 8x8/4, 64 4x4/2, 64 3x3/1, Flatten, Dense 512), then two
LSTM cells of 512 units; a stream's initial ``(h, c)`` of both cells is computed from its
first frame by an init model (first frame -> the same encoder -> one Dense per state). It is
larger than the benchmark's ``cnn_lstm`` (:mod:`processor.bench.models`: two convolutions of
16 and 32 filters and a Dense 256, no init model), whose encoder is a cut-down version of
this one for the throughput sweep; this section measures the seed's own sizes.

Two ways of running it, measured side by side in this process, in alternating time slices
(:func:`~processor.bench.harness.measure_alternating`):

* **the seed's way** (:class:`SeedLoop`): one model call per frame per stream, batch 1; each
  stream's ``(h, c)`` of both cells kept in host memory, fed in and read out on every call;
  a stream's first frame runs the init model first. Two variants: a direct Keras call
  (``model(inputs)``, eager) and the same step wrapped in a ``tf.function``; the goal uses the
  faster one (the one least favourable to the engine).
* **the engine**: :func:`processor.engine.build.build_engine` on the model and init model
  saved as ``.keras`` files (the sequence model has a ``TimeDistributed`` encoder and two ``LSTM``
  layers, as :mod:`processor.model.keras_step` loads them), one record per stream per
  ``Engine.process`` call, at several batch sizes;
* **the bare step** at the same batch sizes: the seed's step compiled and run on ready
  tensors, no state table, records or outputs: what the model itself costs on this machine,
  hence how far any batched serving can take the ratio.

Before timing, :func:`agreement` checks that both ways give the same outputs on a few steps.
:func:`frames_section` is the section of ``lstm-stream bench``; ``python -m
processor.bench.frames`` runs it alone and writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

import processor  # noqa: F401  (TF/Keras environment defaults before the imports below)
from processor.bench import baselines as bl
from processor.bench.config import Config, Progress
from processor.bench.harness import (
    Budget,
    Job,
    describe_machine,
    load_average,
    measure_alternating,
)
from processor.bench.results import SectionStatus
from processor.records import Output, Record

import keras  # isort: skip
import tensorflow as tf  # isort: skip

FRAME_SHAPE = (84, 84, 1)
UNITS = 512
ENCODER_DIM = 512
#: Engine batch sizes of the full run (streams per ``Engine.process`` call).
SEED_BATCHES = (1, 64, 256, 1024)

# Matmul-like FLOPs per frame: 2 * out_h * out_w * out_c * (k * k * in_c) per conv, the
# encoder's Dense, and per LSTM cell 2 * (in + units) * 4 * units.
CONV_FLOPS = (
    2 * 20 * 20 * 32 * (8 * 8 * 1) + 2 * 9 * 9 * 64 * (4 * 4 * 32) + 2 * 7 * 7 * 64 * (3 * 3 * 64)
)
FLOPS_PER_FRAME = (
    CONV_FLOPS + 2 * 7 * 7 * 64 * ENCODER_DIM + 2 * 2 * (ENCODER_DIM + UNITS) * 4 * UNITS
)


@dataclass
class SeedModels:
    """The seed model in its three forms, all sharing one set of weights.

    ``sequence``: ``[B, T, 84, 84, 1]`` uint8 -> ``[B, T, 512]`` (what the engine loads);
    ``init``: ``[B, 84, 84, 1]`` -> ``[h1, c1, h2, c2]``, each ``[B, 512]``;
    ``step``: ``[frame [B, 84, 84, 1], h1, c1, h2, c2]`` -> ``[y, h1, c1, h2, c2]`` (the
    seed's per-frame call; ``y`` is the top cell's ``h``).
    """

    sequence: Any
    init: Any
    step: Any


def build_seed(seed: int = 0) -> SeedModels:
    """Build the seed model with seeded random weights (speed does not depend on them; the
    init heads are scaled so that initial states carry signal into the agreement check)."""
    keras.utils.set_random_seed(seed)
    encoder = [
        keras.layers.Rescaling(1.0 / 255.0),
        keras.layers.Conv2D(32, 8, strides=4, activation="relu"),
        keras.layers.Conv2D(64, 4, strides=2, activation="relu"),
        keras.layers.Conv2D(64, 3, strides=1, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(ENCODER_DIM, activation="relu"),
    ]
    lstm1 = keras.layers.LSTM(UNITS, return_sequences=True)
    lstm2 = keras.layers.LSTM(UNITS, return_sequences=True)

    # The sequence model: Rescaling and Dense act on the last axes, so they need no wrapper;
    # the convolutions and Flatten see one frame at a time through TimeDistributed.
    rescale, c1, c2, c3, flat, dense = encoder
    td = keras.layers.TimeDistributed
    seq_in = keras.Input((None, *FRAME_SHAPE), dtype="uint8")
    h = rescale(seq_in)
    for layer in (c1, c2, c3, flat):
        h = td(layer)(h)
    sequence = keras.Model(seq_in, lstm2(lstm1(dense(h))), name="seed_frames")

    frame_in = keras.Input(FRAME_SHAPE, dtype="uint8")
    z = frame_in
    for layer in encoder:
        z = layer(z)
    heads = [
        keras.layers.Dense(UNITS, activation="tanh" if n[0] == "h" else None, name=f"init_{n}")
        for n in ("h1", "c1", "h2", "c2")
    ]
    init = keras.Model(frame_in, [head(z) for head in heads], name="seed_frames_init")

    step = _SeedStep(encoder, lstm1.cell, lstm2.cell)
    step([np.zeros((1, *FRAME_SHAPE), np.uint8)] + [np.zeros((1, UNITS), np.float32)] * 4)
    return SeedModels(sequence, init, step)


class _SeedStep(keras.Model):
    """One frame through the encoder and both cells, the states in and out explicitly."""

    def __init__(self, encoder: Sequence[Any], cell1: Any, cell2: Any) -> None:
        super().__init__(name="seed_frames_step")
        self.encoder = list(encoder)
        self.cell1, self.cell2 = cell1, cell2

    def call(self, inputs: Sequence[Any], training: bool = False) -> list[Any]:
        frame, h1, c1, h2, c2 = inputs
        z = frame
        for layer in self.encoder:
            z = layer(z, training=training)
        y1, (h1, c1) = self.cell1(z, [h1, c1], training=training)
        y2, (h2, c2) = self.cell2(y1, [h2, c2], training=training)
        return [y2, h1, c1, h2, c2]


class SeedLoop:
    """The seed's way as a :class:`~processor.bench.baselines.Method`: for every record, one
    call of ``step`` on that one frame (batch 1) with the stream's states from a host dict,
    the new states read back into it; a stream's first frame runs ``init`` first (as the
    engine does: initial states from the first frame, then the step on that frame).

    ``step`` and ``init`` are callables on lists of arrays/tensors (the Keras models, or
    ``tf.function`` wrappers of them). No seq is checked: the loop trusts its input.
    """

    def __init__(self, step: Callable[[list[Any]], Any], init: Callable[[Any], Any]) -> None:
        self.step = step
        self.init = init
        self.states: dict[str, list[np.ndarray]] = {}

    def process(self, records: Sequence[Record]) -> list[Output]:
        out = []
        for r in records:
            x = r.x[None]
            states = self.states.get(r.stream)
            if states is None:
                states = [np.asarray(s) for s in self.init(x)]
            y, *new = self.step([x, *states])
            self.states[r.stream] = [np.asarray(s) for s in new]
            out.append(Output(r.stream, r.seq, np.asarray(y)[0]))
        return out


def compiled(model: Any) -> Callable[[Any], Any]:
    """``model`` wrapped in one ``tf.function`` (fixed batch-1 shapes: one trace)."""

    @tf.function(reduce_retracing=True)
    def call(inputs: Any) -> Any:
        return model(inputs, training=False)

    return call


def seed_variants(models: SeedModels) -> dict[str, SeedLoop]:
    """The seed's way in its two variants, by name: ``call`` (direct Keras calls) and
    ``tf.function`` (the same calls compiled)."""
    return {
        "call": SeedLoop(
            lambda xs: models.step(xs, training=False),
            lambda x: models.init(x, training=False),
        ),
        "tf.function": SeedLoop(compiled(models.step), compiled(models.init)),
    }


def save_models(models: SeedModels, directory: str | Path) -> tuple[str, str]:
    """Save the sequence and init models as ``.keras`` files; returns their paths."""
    d = Path(directory)
    model_path, init_path = str(d / "seed_frames.keras"), str(d / "seed_frames_init.keras")
    models.sequence.save(model_path)
    models.init.save(init_path)
    return model_path, init_path


def build_frames_engine(model_path: str, init_path: str, max_batch: int) -> Any:
    """The engine through the ordinary path (``EngineOptions`` -> ``build_engine``), with
    room for every stream this section uses; warmed up."""
    from processor.config.engine_options import EngineOptions
    from processor.engine.build import build_engine

    options = EngineOptions(
        model=model_path,
        init_model=init_path,
        max_batch=max_batch,
        cache_capacity=max(4096, 4 * max_batch),
        threads=0,  # TensorFlow's pools were sized at start-up; they cannot change now
    )
    engine = build_engine(options)
    engine.warmup()
    return engine


def frame_pool(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random frames ``[n, 84, 84, 1]`` uint8 (records reference rows: no copies)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *FRAME_SHAPE), dtype=np.uint8)


def max_abs_diffs(
    reference: Mapping[tuple[str, int], np.ndarray], others: Mapping[str, Sequence[Output]]
) -> dict[str, float]:
    """Largest absolute difference of each method's outputs from ``reference`` (keyed by
    ``(stream, seq)``); ``inf`` when a method misses an output or adds one."""
    out: dict[str, float] = {}
    for name, outputs in others.items():
        got = {(o.stream, o.seq): np.asarray(o.y) for o in outputs}
        if set(got) != set(reference):
            out[name] = float("inf")
            continue
        out[name] = max(
            (float(np.max(np.abs(got[k] - reference[k]))) for k in reference), default=0.0
        )
    return out


def agreement(
    models: SeedModels, engine: Any, *, streams: int = 2, steps: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Feed the same frames to the seed's way (both variants) and to ``engine``; compare
    them with the Keras sequence model run over whole sequences from the init model's
    states. Streams are named ``agree-*`` (unused elsewhere); ``ok`` when every method is
    within ``tolerance`` and the reference carries signal."""
    pool = frame_pool(streams * steps, seed + 1)
    feed = bl.Feed([f"agree-{k}" for k in range(streams)], pool)
    xs = np.stack([[feed.x(k, t) for t in range(steps)] for k in range(streams)])
    init = models.init(xs[:, 0], training=False)
    # Keras 3 LSTM takes initial_state per layer: run the two layers by hand.
    lstm1, lstm2 = (
        layer for layer in models.sequence.layers if isinstance(layer, keras.layers.LSTM)
    )
    h = models.sequence.layers[1](xs)
    for layer in models.sequence.layers[2:]:
        if layer is lstm1:
            h = layer(h, initial_state=list(init[0:2]))
        elif layer is lstm2:
            h = layer(h, initial_state=list(init[2:4]))
        else:
            h = layer(h)
    ref_arr = np.asarray(h)
    reference = {(feed.streams[k], t): ref_arr[k, t] for k in range(streams) for t in range(steps)}
    outputs: dict[str, list[Output]] = {}
    for name, loop in seed_variants(models).items():
        outputs[f"seed {name}"] = [o for t in range(steps) for o in loop.process(feed.step(t))]
    method = bl.EngineMethod(engine)
    outputs["engine"] = [o for t in range(steps) for o in method.process(feed.step(t))]
    diffs = max_abs_diffs(reference, outputs)
    tolerance = 1e-4
    signal = float(np.max(np.abs(ref_arr)))
    return {
        "streams": streams,
        "steps": steps,
        "tolerance": tolerance,
        "reference_max_abs": round(signal, 6),
        "max_abs_diff": diffs,
        "ok": signal > 1e-2 and all(d <= tolerance for d in diffs.values()),
    }


def best_engine_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The engine row with the highest median-based rate (None without engine rows)."""
    engine = [r for r in rows if r.get("method") == "engine"]
    return max(engine, key=lambda r: float(r["msg_per_s_median"]), default=None)


def fastest_seed_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The seed-way row with the highest median-based rate (None without seed rows)."""
    seed = [r for r in rows if r.get("method") == "seed"]
    return max(seed, key=lambda r: float(r["msg_per_s_median"]), default=None)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The section's headline: the best engine batch against the fastest seed variant, and
    every engine batch's ratio to that seed variant; with ``bare step`` rows also the best
    bare step's ratio to the seed (the ceiling of the ratio on this machine) and the engine
    against the bare step at the engine's best batch. Empty when engine or seed is missing."""
    best, seed = best_engine_row(rows), fastest_seed_row(rows)
    if best is None or seed is None or not seed["msg_per_s_median"]:
        return {}
    base = float(seed["msg_per_s_median"])
    bare = [r for r in rows if r.get("method") == "bare step"]
    ceiling: dict[str, Any] = {}
    if bare:
        top = max(bare, key=lambda r: float(r["msg_per_s_median"]))
        ceiling["bare_best_batch"] = top["batch"]
        ceiling["bare_over_seed"] = float(top["msg_per_s_median"]) / base
        same = [r for r in bare if r["batch"] == best["batch"]]
        if same and same[0]["msg_per_s_median"]:
            ceiling["engine_over_bare"] = float(best["msg_per_s_median"]) / float(
                same[0]["msg_per_s_median"]
            )
    return {
        **ceiling,
        "best_batch": best["batch"],
        "engine_msg_per_s": best["msg_per_s_median"],
        "seed_variant": seed["variant"],
        "seed_msg_per_s": base,
        "ratio": float(best["msg_per_s_median"]) / base,
        "ratio_mean_based": float(best["msg_per_s"]) / float(seed["msg_per_s"])
        if seed["msg_per_s"]
        else float("nan"),
        "ratio_by_batch": {
            str(r["batch"]): round(float(r["msg_per_s_median"]) / base, 3)
            for r in rows
            if r.get("method") == "engine"
        },
    }


def _bare_job(step: Callable[[Any], Any], frames: np.ndarray, budget: Budget) -> Job:
    """A job timing ``step`` on ``frames`` (one per stream) and zero states, read back."""
    b = len(frames)
    inputs = [tf.constant(frames)] + [tf.zeros((b, UNITS))] * 4

    def call(_: int) -> Any:
        return step(inputs)[0].numpy()

    return Job(f"bare step {b}", call, lambda i: i, budget, messages=lambda _: b)


def frames_section(
    batches: Sequence[int],
    *,
    budget: Budget,
    seed_budget: Budget,
    slice_s: float,
    seed_streams: int = 16,
    seed: int = 0,
    progress: Progress = lambda _: None,
) -> dict[str, Any]:
    """Measure the seed model the seed's way (both variants, ``seed_streams`` streams
    interleaved, one frame per call) and the engine at each of ``batches`` (one record per
    stream per call; streams of different batch sizes are disjoint), all in alternating
    time slices after an agreement check. Returns ``status`` ``not_run`` and a ``reason``
    when ``batches`` is empty, else ``status``, ``model``, ``agreement``, ``rows`` (one per
    measured point, with the harness's timing summary) and ``summary`` (:func:`summarise`).
    Steady state: every stream's first frame (the init model) falls in the warm-up calls.
    """
    if not batches:
        return {
            "status": SectionStatus.NOT_RUN,
            "reason": "no batch sizes configured (--quick skips it)",
        }
    models = build_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_path, init_path = save_models(models, tmp)
        engine = build_frames_engine(model_path, init_path, max(batches))
    progress(f"frames: engine buckets {engine.buckets} warmed up")
    ag = agreement(models, engine, seed=seed)
    progress(f"frames: agreement {'ok' if ag['ok'] else 'MISMATCH'} {ag['max_abs_diff']}")
    pool = frame_pool(max(4 * max(batches), 256), seed)
    jobs: list[Job] = []
    meta: dict[str, dict[str, Any]] = {}
    inter = bl.Feed([f"seed-{k}" for k in range(seed_streams)], pool)
    for name, loop in seed_variants(models).items():
        jobs.append(Job(f"seed {name}", loop.process, inter.round_robin, seed_budget))
        meta[jobs[-1].name] = {
            "method": "seed",
            "variant": f"{name}, one model call per frame per stream, host state",
            "batch": 1,
            "streams": seed_streams,
        }
    method = bl.EngineMethod(engine)

    def probe() -> dict[str, int]:
        return {"trace": engine.trace_count}

    bare_step = compiled(models.step)
    for b in batches:
        feed = bl.Feed([f"e{b}-{k}" for k in range(b)], pool)
        jobs.append(Job(f"engine {b}", method.process, feed.step, budget, probe=probe))
        meta[jobs[-1].name] = {
            "method": "engine",
            "variant": "build_engine(model + init model files)",
            "batch": b,
            "streams": b,
        }
        # The model's own cost at this batch: the same step compiled, on ready tensors, with
        # no state table, records or outputs; the engine can approach it, not beat it.
        jobs.append(_bare_job(bare_step, pool[:b], budget))
        meta[jobs[-1].name] = {
            "method": "bare step",
            "variant": "the model step alone, compiled, on ready tensors",
            "batch": b,
            "streams": b,
        }
    measure_alternating(jobs, slice_s)
    rows = []
    for job in jobs:
        row = {"model": "seed_frames", **meta[job.name], **job.timing.summary()}
        if job.probe is not None:
            row["retraces_in_timed_region"] = job.deltas.get("trace", 0)
        rows.append(row)
        progress(
            f"frames {job.name}: {job.timing.msg_per_s_median:,.1f} frames/s "
            f"(p50 {job.timing.percentile_ms(50):.2f} ms per call)"
        )
    return {
        "status": SectionStatus.RAN,
        "model": "seed_frames",
        "description": "84x84x1 uint8 -> Rescaling -> Conv2D 32 8x8/4, 64 4x4/2, 64 3x3/1 -> "
        "Flatten -> Dense 512 -> 2x LSTM(512); init model: first frame -> encoder -> Dense "
        "to h, c of each layer",
        "params": int(models.sequence.count_params()),
        "init_params": int(models.init.count_params()),
        "flops_per_frame": FLOPS_PER_FRAME,
        "agreement": ag,
        "rows": rows,
        "summary": summarise(rows),
        "measured_by": "processor.bench.frames.frames_section",
    }


def seed_frames(cfg: Config, progress: Progress) -> dict[str, Any]:
    """The frames section (:func:`frames_section`) sized by ``cfg``:
    engine batches ``cfg.frames_batches`` (none: ``status`` ``not_run``), the seed's way over
    ``cfg.frames_seed_streams`` streams with ``cfg.b0_budget`` (per-frame calls, like B0)."""
    return frames_section(
        cfg.frames_batches,
        budget=cfg.budget,
        seed_budget=replace(
            cfg.b0_budget, warmup_steps=max(cfg.b0_budget.warmup_steps, 2 * cfg.frames_seed_streams)
        ),
        slice_s=cfg.slice_s,
        seed_streams=cfg.frames_seed_streams,
        seed=cfg.seed,
        progress=progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m processor.bench.frames``: this section alone, full sizes unless
    ``--quick``; writes ``results.json`` and ``results.md`` (with the ``seed_frames`` goal)
    to ``--out``. Exit code 1 when the two ways disagree."""
    from processor.bench import report
    from processor.bench.markdown_engine import frames_lines
    from processor.bench.verdicts import seed_frames as seed_frames_verdict

    p = argparse.ArgumentParser(prog="python -m processor.bench.frames")
    p.add_argument("--out", default="bench-frames", help="output directory")
    p.add_argument("--quick", action="store_true", help="batches 1 and 64, ~0.1 s per point")
    args = p.parse_args(argv)
    from processor.engine.threads import configure_threads

    # The thread pools `lstm-stream bench` uses by default (2 intra-op, 1 inter-op), sized
    # before TensorFlow runs anything.
    configure_threads(2, 1)
    t = 0.1 if args.quick else 1.0
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    machine = describe_machine()  # before the run: its load average is the one at start
    result = frames_section(
        (1, 64) if args.quick else SEED_BATCHES,
        budget=Budget(min_time=t, min_steps=6, warmup_steps=2),
        seed_budget=Budget(min_time=t, min_steps=30, warmup_steps=20),
        slice_s=0.1,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    results: dict[str, Any] = {
        "command": "python -m processor.bench.frames " + " ".join(argv or sys.argv[1:]),
        "quick": args.quick,
        "started_at": started,
        "machine": machine,
        "load_average_at_end": load_average(),
        "frames": result,
    }
    results["goals"] = [seed_frames_verdict(result)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(results, out / "results.json")
    md = [
        "# lstm-stream benchmark: frames",
        "",
        f"Command: `{results['command'].strip()}`, started {started}.  ",
        f"Machine: {machine['cpu_model']} ({machine['cores_available']} cores available); TF "
        f"{machine['tensorflow']}, Keras {machine['keras']}; TF threads intra-op "
        f"{machine['tf_intra_op_threads']}, inter-op {machine['tf_inter_op_threads']}. Load "
        f"average at start {machine['load_average_at_start']}, at end "
        f"{results['load_average_at_end']} (the machine is shared).",
        "",
        "| id | goal | measured | status | detail |",
        "|---|---|---|---|---|",
        *(
            f"| `{g['id']}` | {g['goal']} | {g['measured']} | **{g['status']}** | {g['detail']} |"
            for g in results["goals"]
        ),
        "",
        *frames_lines(result),
    ]
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(frames_lines(result)))
    return 0 if result.get("agreement", {}).get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
