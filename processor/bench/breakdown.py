"""Where the engine's step time goes: one step at the headline batch split into parts, each
timed alone, all in alternating time slices, with this machine's matmul rate beside them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.bench import baselines as bl
from processor.bench.config import Config, Progress
from processor.bench.harness import Job, matmul_fn, measure_alternating
from processor.bench.models import BenchModel, input_pool
from processor.bench.results import BREAKDOWN_PARTS
from processor.bench.runner import EngineRunner, engine_counters, gather_scatter_fn, stream_names


def _matmul_shapes(keras_model: Any, batch: int) -> list[tuple[int, int, int]]:
    """The matmuls one step of the model performs, as ``(m, k, n)``: an LSTM/GRU layer does
    ``x @ kernel`` and ``h @ recurrent_kernel``; a Dense layer ``x @ kernel``."""
    shapes = []
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.RNN):
            k, rk = layer.cell.kernel.shape, layer.cell.recurrent_kernel.shape
            shapes += [(batch, int(k[0]), int(k[1])), (batch, int(rk[0]), int(rk[1]))]
        elif isinstance(layer, keras.layers.Dense):
            k = layer.kernel.shape
            shapes.append((batch, int(k[0]), int(k[1])))
    return shapes


def breakdown(bm: BenchModel, cfg: Config, progress: Progress) -> dict[str, Any]:
    """Split one engine step at the headline batch into parts, each timed alone (all parts
    alternating in time slices):

    * ``process``: ``Engine.process`` of B records (one per stream), the whole step;
    * ``host_path``: the same on a second engine whose compiled call is replaced by
      returning a ready output (Python per record: grouping, cache lookups, input packing,
      Output objects);
    * ``compiled_call``: the engine's compiled gather -> step -> scatter on ready tensors;
    * ``bare_step``: the model step alone, compiled, on ready tensors (no gather/scatter);
    * ``gather_scatter``: gather + scatter of B rows of the state tables, no model;
    * ``gather_scatter_fused``: the same from one table holding all state tensors side by
      side (a prototype of a possible cache layout);
    * ``dispatch``: a compiled function with the same arguments doing nothing (TF's per-call
      overhead);
    * ``matmuls``: only the step's matmuls at batch B (the compute floor on this CPU).

    Replacing the engine's compiled call uses its private ``_step_fn`` attribute (the
    benchmark prototypes, it does not change the engine); if that is gone, ``host_path`` and
    ``compiled_call`` are reported as not measured.
    """
    sm = bm.step_model
    b = cfg.headline_batch
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    budget = cfg.budget
    streams = stream_names(b)
    runner = EngineRunner(bm, capacity=b, max_batch=b)
    host = EngineRunner(bm, capacity=b, max_batch=b)
    tables = runner.cache.tables
    x = tf.constant(np.stack([pool[k % len(pool)] for k in range(b)]))
    slots = tf.constant(np.arange(b, dtype=np.int32))
    fresh = tf.constant(np.zeros(b, bool))
    states = [tf.constant(np.zeros((b, *s.shape), np.float32)) for s in sm.state_spec]

    def timed(name: str, fn: Callable[[], Any]) -> Job:
        return Job(name, lambda _: fn(), lambda i: i, budget, messages=lambda _: b)

    jobs = [runner.job("process", runner.step_maker(streams, pool), budget)]
    step_fn = getattr(runner.engine, "_step_fn", None)
    if step_fn is not None:
        y_ready = tf.zeros((b, *sm.output_shape), tf.float32)
        host.engine._step_fn = lambda x, s, f, r: y_ready  # prototype: the host path only
        jobs.append(host.job("host_path", host.step_maker(streams, pool), budget))
        run_init = tf.constant(False)
        jobs.append(timed("compiled_call", lambda: step_fn(x, slots, fresh, run_init).numpy()))

    bare = bl.compiled_step(sm)
    jobs.append(timed("bare_step", lambda: bare(x, states)[0].numpy()))

    gather_scatter = gather_scatter_fn(tables)
    jobs.append(timed("gather_scatter", lambda: gather_scatter(slots).numpy()))

    widths = [int(np.prod(s.shape)) for s in sm.state_spec]
    fused = tf.Variable(tf.zeros((b + 1, sum(widths))), trainable=False)

    @tf.function
    def gather_scatter_fused(slots: Any) -> Any:
        pieces = tf.split(tf.gather(fused, slots), widths, axis=1)
        fused.scatter_nd_update(tf.expand_dims(slots, 1), tf.concat(pieces, 1))
        return slots[0]

    jobs.append(timed("gather_scatter_fused", lambda: gather_scatter_fused(slots).numpy()))

    @tf.function
    def nothing(x: Any, slots: Any, fresh: Any) -> Any:
        return slots[0]

    jobs.append(timed("dispatch", lambda: nothing(x, slots, fresh).numpy()))
    shapes = _matmul_shapes(bm.keras_model, b)
    mm, mm_flops = matmul_fn(shapes)
    jobs.append(timed("matmuls", mm))
    # This machine's reference rate measured in the same alternating time slices as the parts, so
    # that the step's FLOP/s and the reference see the same load from other jobs.
    ref, ref_flops = matmul_fn([(1024, 1024, 1024)])
    jobs.append(timed("matmul_1024", ref))

    done = measure_alternating(jobs, cfg.slice_s)
    parts: dict[str, Any] = {"model": bm.spec.name, "batch": b}
    for name in BREAKDOWN_PARTS:
        if name in done:
            parts[name] = done[name].timing.summary()
        else:
            parts[name] = {"not_measured": "Engine._step_fn is gone (engine changed)"}
    parts["process"].update(engine_counters(done["process"], runner))
    mm_ms = done["matmuls"].timing.percentile_ms(50)
    parts["matmuls"].update(
        shapes=[list(s) for s in shapes],
        flops_per_call=mm_flops,
        gflops_at_p50=round(mm_flops / mm_ms / 1e6, 3),
    )
    ref_ms = done["matmul_1024"].timing.percentile_ms(50)
    parts["matmul_1024"] = {
        **done["matmul_1024"].timing.summary(),
        "gflops_at_p50": round(ref_flops / ref_ms / 1e6, 3),
    }
    parts["engine_gflops_at_p50"] = round(
        bm.flops_per_step * b / parts["process"]["latency_p50_ms"] / 1e6, 3
    )
    parts["summary_p50_ms"] = {
        k: round(done[k].timing.percentile_ms(50), 4) if k in done else None
        for k in BREAKDOWN_PARTS
    }
    total = parts["summary_p50_ms"]["process"]
    host_ms = parts["summary_p50_ms"]["host_path"]
    if host_ms is not None and total:
        parts["python_us_per_record"] = round(host_ms / b * 1e3, 3)
        parts["host_share_of_step"] = round(host_ms / total, 3)
    runner.close()
    host.close()
    progress(f"breakdown {bm.spec.name}@{b}: {parts['summary_p50_ms']}")
    return parts
