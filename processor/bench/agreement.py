"""Agreement: every method of the benchmark computes the same function. Each runs over the
same interleaved inputs and is compared with the Keras model run over each whole sequence
at once."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

import processor  # noqa: F401  (TF environment defaults)
from processor import codec
from processor.bench import baselines as bl
from processor.bench.models import BenchModel, input_pool
from processor.bench.runner import stream_names
from processor.engine.engine import Engine
from processor.records import Output, Record
from processor.state.cache import StateCache


def _collect(outputs: Sequence[Output], streams: Sequence[str], steps: int, width: int) -> Any:
    index = {s: k for k, s in enumerate(streams)}
    got = np.full((len(streams), steps, width), np.nan, np.float32)
    for o in outputs:
        got[index[o.stream], o.seq] = np.asarray(o.y).reshape(-1)
    return got


def agreement(bm: BenchModel, n_streams: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """Run every method over the same ``n_streams`` x ``steps`` inputs (interleaved arrival)
    and compare with the Keras model run over each whole sequence at once.

    Returns ``max_abs_diff`` per method, the tolerance and ``ok`` (every method within it,
    every output present); ``_outputs``/``_reference`` keep the arrays (for tests; left out
    of the JSON).
    """
    sm = bm.step_model
    streams = stream_names(n_streams, "a")
    pool = input_pool(bm.spec, n_streams * steps, seed=seed + 1)
    feed = bl.Feed(streams, pool)
    xs = np.stack([np.stack([feed.x(k, t) for t in range(steps)]) for k in range(n_streams)])
    ref = np.asarray(bm.keras_model(xs, training=False)).reshape(n_streams, steps, -1)
    width = ref.shape[-1]
    interleaved = [r for t in range(steps) for r in feed.step(t)]
    stream_major = [feed.one_at_a_time(i, steps)[0] for i in range(n_streams * steps)]
    step_fn = bl.compiled_step(sm)
    outs: dict[str, Any] = {}

    def run(name: str, method: bl.Method, records: Sequence[Record], per_step: bool) -> None:
        if per_step:
            produced: list[Output] = []
            for t in range(steps):
                produced.extend(method.process(records[t * n_streams : (t + 1) * n_streams]))
        else:
            produced = method.process(records)
        outs[name] = _collect(produced, streams, steps, width)

    run("b0_call", bl.StatefulKeras(bm, "call"), interleaved, False)
    run("b0_predict_on_batch", bl.StatefulKeras(bm, "predict_on_batch"), interleaved, False)
    run("b0_one_at_a_time", bl.StatefulKeras(bm, "call", swap=False), stream_major, False)
    run("b1", bl.HostStatePerMessage(sm, step_fn), interleaved, False)
    run("b2", bl.HostTableBatched(sm, step_fn, n_streams), interleaved, True)
    waves = Engine(sm, StateCache(sm.state_spec, 8), max_batch=8, scan_min_steps=0)
    run("engine_waves", bl.EngineMethod(waves), interleaved, True)
    scan = Engine(sm, StateCache(sm.state_spec, 8), max_batch=8, scan_min_steps=2)
    run("engine_scan", bl.EngineMethod(scan), interleaved, False)
    outs["replay"] = _collect(_replay_outputs(bm, interleaved), streams, steps, width)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    diffs = {
        name: float(np.abs(got - ref).max()) if not np.isnan(got).any() else float("inf")
        for name, got in outs.items()
    }
    return {
        "model": bm.spec.name,
        "streams": n_streams,
        "steps": steps,
        "reference": "keras_model(whole sequences) in one call",
        "tolerance": tol,
        "max_abs_diff": diffs,
        "ok": all(d <= tol for d in diffs.values()),
        "not_checked": {"b0_predict": "same predict function as predict_on_batch, ~40 ms/call"},
        "_outputs": outs,
        "_reference": ref,
    }


def _replay_outputs(bm: BenchModel, records: Sequence[Record]) -> list[Output]:
    from processor.replay import replay

    sm = bm.step_model
    engine = Engine(sm, StateCache(sm.state_spec, 8), max_batch=8)
    data = b"".join(codec.encode_input(r.stream, r.seq, r.x) for r in records)
    out = io.BytesIO()
    stats = replay(engine, io.BytesIO(data), out, io.BytesIO())
    if stats.dead_letters:
        raise RuntimeError(f"replay dead-lettered {stats.dead_letters} benchmark records")
    outputs = []
    for frame in codec.iter_framed(io.BytesIO(out.getvalue()), 1 << 24):
        d = codec.decode_output(frame.raw or b"")
        outputs.append(Output(d["stream"], d["seq"], d["y"]))
    return outputs
