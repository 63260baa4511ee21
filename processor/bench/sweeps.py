"""The engine's sweeps: throughput of every method over batch sizes (:func:`throughput`),
step time over cached streams (:func:`cached_streams`), the cache's storage dtype
(:func:`state_dtypes`) and catch-up scan against waves (:func:`catchup`). Each returns
plain JSON-able rows (``report`` turns them into tables, plots and PASS/MISS verdicts).

All methods run in this one process over the same model object and the same inputs (see
:class:`~processor.bench.baselines.Feed`). Points that are compared with each other are
measured in alternating time slices (:func:`~processor.bench.harness.measure_alternating`), because
the machine is shared. Engine measurements read ``engine.trace_count`` just before and just
after every timed stretch: a steady state must not retrace.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.bench import baselines as bl
from processor.bench.config import Config, Progress
from processor.bench.harness import Budget, Job, gc_cost, measure_alternating, meminfo
from processor.bench.models import BenchModel, input_pool
from processor.bench.runner import (
    EngineRunner,
    engine_counters,
    gather_scatter_fn,
    result_row,
    stream_names,
)
from processor.records import Record


def throughput(
    bm: BenchModel, cfg: Config, progress: Progress
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Rows for every method (B0 variants, B1, then B2 and the engine per batch size, and
    the engine with XLA at the headline batch), all measured in alternating time slices, and the
    per-call latency samples at the headline batch for the CDF plot."""
    name = bm.spec.name
    sm = bm.step_model
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    inter = bl.Feed(stream_names(cfg.interleaved_streams), pool)
    jobs: list[Job] = []
    meta: dict[str, dict[str, Any]] = {}
    n = cfg.interleaved_streams

    # B0: every call mode over interleaved streams (state swap per switch), and the two
    # fast modes over streams one at a time (reset per switch, no swap).
    for mode in bl.B0_MODES:
        b0 = bl.StatefulKeras(bm, mode, swap=True)
        budget = cfg.predict_budget if mode == "predict" else cfg.b0_budget
        jobs.append(Job(f"B0 {mode}", b0.process, inter.round_robin, budget))
        meta[jobs[-1].name] = dict(
            method="B0", variant=f"{mode}, interleaved, state swap", batch=1, streams=n
        )
    per_stream = 50
    for mode in ("predict_on_batch", "call"):
        b0 = bl.StatefulKeras(bm, mode, swap=False)
        jobs.append(
            Job(
                f"B0 {mode} one-at-a-time",
                b0.process,
                lambda i: inter.one_at_a_time(i, per_stream),
                cfg.b0_budget,
            )
        )
        meta[jobs[-1].name] = dict(
            method="B0",
            batch=1,
            streams=n,
            variant=f"{mode}, one stream at a time ({per_stream} steps each), reset per switch",
        )

    # B1: one compiled step per message, state through host memory.
    step_fn = bl.compiled_step(sm)
    b1 = bl.HostStatePerMessage(sm, step_fn)
    jobs.append(Job("B1", b1.process, inter.round_robin, cfg.b0_budget))
    meta["B1"] = dict(
        method="B1", variant="tf.function step per message, host state dict", batch=1, streams=n
    )

    frames = bm.spec.input_dtype == "uint8"
    batches = [b for b in cfg.batches if not (frames and b > cfg.frame_max_batch)]
    runner = EngineRunner(bm, capacity=max(batches), max_batch=max(batches))
    runners = {"engine": runner}
    progress(f"{name}: engine warm-up of buckets {runner.engine.buckets}: {runner.warmup_s:.1f} s")
    for b in batches:
        streams = stream_names(b)
        b2 = bl.HostTableBatched(sm, step_fn, b)
        jobs.append(Job(f"B2 {b}", b2.process, bl.Feed(streams, pool).step, cfg.budget))
        meta[jobs[-1].name] = dict(
            method="B2", variant="batched step, host NumPy state table", batch=b, streams=b
        )
        jobs.append(runner.job(f"engine {b}", runner.step_maker(streams, pool), cfg.budget))
        meta[jobs[-1].name] = dict(
            method="engine",
            variant="Engine + device-resident StateCache",
            batch=b,
            streams=b,
            bucket=runner.bucket(b),
        )
    hb = cfg.headline_batch
    # The engine's own XLA option at the headline batch: not the default; measured because
    # the breakdown shows the step's elementwise work (which XLA fuses) is a large share.
    if cfg.xla and hb in batches:
        xla = EngineRunner(bm, capacity=hb, max_batch=hb, jit_compile=True)
        runners["xla"] = xla
        progress(f"{name}: XLA engine warm-up: {xla.warmup_s:.1f} s")
        jobs.append(xla.job(f"engine-xla {hb}", xla.step_maker(stream_names(hb), pool), cfg.budget))
        meta[jobs[-1].name] = dict(
            method="engine",
            variant="Engine(jit_compile=True) (XLA)",
            batch=hb,
            streams=hb,
            bucket=xla.bucket(hb),
            xla=True,
        )

    done = measure_alternating(jobs, cfg.slice_s)
    rows = []
    for job in jobs:
        extra = meta[job.name]
        if extra["method"] == "engine":
            extra = {
                **extra,
                **engine_counters(job, runners["xla" if extra.get("xla") else "engine"]),
            }
        rows.append(result_row(name, extra.pop("method"), job, **extra))
        progress(
            f"{name} {job.name}: {job.timing.msg_per_s_median:,.0f} msg/s "
            f"(p50 {job.timing.percentile_ms(50):.3f} ms)"
        )
    for r in runners.values():
        r.close()

    b0_jobs = [j for j in jobs if j.name.startswith("B0")]
    fastest_b0 = max(b0_jobs, key=lambda j: j.timing.msg_per_s_median)
    samples = {
        f"B0 ({fastest_b0.name[3:]})": fastest_b0.timing.samples_ms(),
        "B1": done["B1"].timing.samples_ms(),
    }
    if hb in batches:
        samples[f"B2 {hb}"] = done[f"B2 {hb}"].timing.samples_ms()
        samples[f"engine {hb}"] = done[f"engine {hb}"].timing.samples_ms()
    return rows, samples


# --------------------------------------------------------------------------------------------
# Step time vs cached streams
# --------------------------------------------------------------------------------------------


def cached_streams(bm: BenchModel, cfg: Config, progress: Progress) -> list[dict[str, Any]]:
    """Engine step time for ``cached_batch`` random streams out of N cached ones, for every
    N at once (alternating time slices), plus ``cache.acquire`` alone on the same kind of batch
    (the host map's share: dict + LRU order of N entries)."""
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    per_stream = sum(int(np.prod(s.shape)) for s in bm.step_model.state_spec) * 4
    rows: list[dict[str, Any]] = []
    jobs: list[Job] = []
    live: list[tuple[dict[str, Any], EngineRunner]] = []
    for n in sorted(cfg.cached_streams):
        need = (n + 1) * per_stream
        avail = meminfo().get("MemAvailable", 0)
        # The table is built from a zeros tensor and copied into the variable: up to twice
        # its size at once, plus the host map (~300 B per stream) and 1 GiB of head-room.
        peak = 2 * need + 300 * n + (1 << 30)
        b = min(cfg.cached_batch, n)
        row: dict[str, Any] = {
            "model": bm.spec.name,
            "cached": n,
            "batch": b,
            "state_bytes": need,
            "mem_available_bytes": avail,
        }
        rows.append(row)
        if peak > 0.8 * avail:
            row["skipped"] = (
                f"needs ~{peak / 2**30:.1f} GiB at peak, {avail / 2**30:.1f} GiB "
                "available (limit 80%)"
            )
            progress(f"cached {n:,}: skipped ({row['skipped']})")
            continue
        t0 = time.perf_counter()
        runner = EngineRunner(bm, capacity=n, max_batch=b)
        names = stream_names(n, "c")
        for start in range(0, n, 65_536):
            runner.cache.acquire(names[start : start + 65_536])
        row["setup_s"] = round(time.perf_counter() - t0, 3)
        live.append((row, runner))

        def pick(i: int, n: int = n, b: int = b) -> list[int]:
            chosen: list[int] = (
                np.random.default_rng(cfg.seed + i).choice(n, b, replace=False).tolist()
            )
            return chosen

        def make(
            i: int,
            names: list[str] = names,
            runner: EngineRunner = runner,
            pick: Callable[[int], list[int]] = pick,
        ) -> list[Record]:
            seq = runner.take_seqs()
            return [Record(names[j], seq, pool[j % len(pool)]) for j in pick(i)]

        jobs.append(runner.job(f"step {n}", make, cfg.budget))

        def batch_names(
            i: int, names: list[str] = names, pick: Callable[[int], list[int]] = pick
        ) -> list[str]:
            return [names[j] for j in pick(i + 10**6)]

        jobs.append(Job(f"acquire {n}", runner.cache.acquire, batch_names, cfg.budget))
        gs = gather_scatter_fn(runner.cache.tables)

        def random_slots(i: int, pick: Callable[[int], list[int]] = pick) -> Any:
            return tf.constant(np.asarray(pick(i + 2 * 10**6), np.int32))

        def run_gs(slots: Any, gs: Any = gs) -> Any:
            return gs(slots).numpy()

        def count(slots: Any) -> int:
            return int(slots.shape[0])

        jobs.append(Job(f"gather_scatter {n}", run_gs, random_slots, cfg.budget, count))
        row["gc"] = gc_cost()
    done = measure_alternating(jobs, cfg.slice_s)
    for row, runner in live:
        n = row["cached"]
        row.update(done[f"step {n}"].timing.summary())
        row.update(engine_counters(done[f"step {n}"], runner))
        row["acquire_p50_ms"] = round(done[f"acquire {n}"].timing.percentile_ms(50), 4)
        gs_ms = done[f"gather_scatter {n}"].timing.percentile_ms(50)
        row["gather_scatter_p50_ms"] = round(gs_ms, 4)
        progress(
            f"cached {n:,}: step p50 {row['latency_p50_ms']:.2f} ms, acquire alone "
            f"{row['acquire_p50_ms']:.2f} ms, gather+scatter alone {gs_ms:.2f} ms"
        )
        runner.close()
    gc.collect()
    return rows


# --------------------------------------------------------------------------------------------
# State dtype
# --------------------------------------------------------------------------------------------


def state_dtypes(bm: BenchModel, cfg: Config, progress: Progress) -> list[dict[str, Any]]:
    """The engine at the headline batch with each cache storage dtype (alternating)."""
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    b = cfg.headline_batch
    runners = {d: EngineRunner(bm, capacity=b, max_batch=b, storage_dtype=d) for d in cfg.dtypes}
    jobs = [r.job(d, r.step_maker(stream_names(b), pool), cfg.budget) for d, r in runners.items()]
    measure_alternating(jobs, cfg.slice_s)
    rows = []
    for job in jobs:
        r = runners[job.name]
        rows.append(
            result_row(
                bm.spec.name,
                "engine",
                job,
                state_dtype=job.name,
                batch=b,
                bytes_per_stream=r.cache.bytes_per_stream,
                **engine_counters(job, r),
            )
        )
        progress(f"{bm.spec.name} state {job.name}: {job.timing.msg_per_s_median:,.0f} msg/s")
        r.close()
    return rows


# --------------------------------------------------------------------------------------------
# Catch-up: scan vs single-step waves
# --------------------------------------------------------------------------------------------


def catchup(bm: BenchModel, cfg: Config, progress: Progress) -> list[dict[str, Any]]:
    """T pending records per stream for B streams in one ``process`` call, for each B of
    ``catchup_streams``: waves (``scan_min_steps=0``: T compiled single steps) vs scan
    (``scan_min_steps=2``: one compiled T-step loop), all alternating. Warm-up:
    ``engine.warmup()`` (wave buckets) plus warm-up backlogs, which trace the one scan shape
    used (``warmup(scan=True)`` would trace every scan length x bucket)."""
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    big_t = cfg.catchup_steps
    budget = Budget(min_time=cfg.budget.min_time, min_steps=3, warmup_steps=2)
    runners: dict[str, EngineRunner] = {}
    jobs = []
    for b in cfg.catchup_streams:
        feed = bl.Feed(stream_names(b), pool)
        for label, min_steps in (("waves", 0), ("scan", 2)):
            r = EngineRunner(
                bm, capacity=b, max_batch=b, scan_min_steps=min_steps, max_scan_steps=big_t
            )

            def backlog(i: int, r: EngineRunner = r, feed: bl.Feed = feed) -> list[Record]:
                return feed.backlog(i, big_t, r.take_seqs(big_t))

            runners[f"{label} {b}"] = r
            jobs.append(r.job(f"{label} {b}", backlog, budget))
    measure_alternating(jobs, cfg.slice_s)
    rows = []
    for job in jobs:
        r = runners[job.name]
        label, b = job.name.split()[0], int(job.name.split()[1])
        rows.append(
            result_row(
                bm.spec.name,
                label,
                job,
                pending_steps=big_t,
                streams=b,
                scan_min_steps=r.engine.scan_min_steps,
                **engine_counters(job, r),
            )
        )
        progress(f"catch-up T={big_t} B={b} {label}: {job.timing.msg_per_s_median:,.0f} msg/s")
        r.close()
    return rows
