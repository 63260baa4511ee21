"""The benchmark's measurements: each function measures one section and returns plain
JSON-able dicts (``report`` turns them into tables, plots and PASS/MISS verdicts).

All methods run in this one process over the same model object and the same inputs (see
:class:`~processor.bench.baselines.Feed`). Points that are compared with each other are
measured in alternating time slices (:func:`~processor.bench.harness.measure_alternating`), because
the machine is shared. Engine measurements read ``engine.trace_count`` just before and just
after every timed stretch: a steady state must not retrace.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor import codec
from processor.bench import baselines as bl
from processor.bench.harness import Budget, Job, gc_cost, matmul_fn, measure_alternating, meminfo
from processor.bench.models import BenchModel, input_pool
from processor.bench.report import BREAKDOWN_PARTS
from processor.engine.engine import Engine
from processor.records import Output, Record
from processor.state.cache import StateCache

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    """Everything that sizes a benchmark run (see :func:`full_config`, :func:`quick_config`)."""

    models: tuple[str, ...]
    batches: tuple[int, ...]
    # Frame models move ~7 KiB per message: their batch sweep stops here (time, memory).
    frame_max_batch: int
    headline_batch: int
    budget: Budget
    b0_budget: Budget
    predict_budget: Budget  # model.predict is ~50x slower than predict_on_batch
    slice_s: float  # time slice of the round-robin between points that are compared
    interleaved_streams: int
    cached_streams: tuple[int, ...]
    cached_batch: int
    dtypes: tuple[str, ...]
    dtype_models: tuple[str, ...]
    catchup_steps: int
    catchup_streams: tuple[int, ...]  # stream counts B, each with T pending records
    replay_streams: int
    replay_steps_per_file: int
    breakdown_models: tuple[str, ...]
    xla: bool = True  # also measure Engine(jit_compile=True) at the headline batch
    gc_seconds: float = 6.0  # per variant of the GC section
    kafka_records: int = 200_000  # records produced, then drained, end to end
    kafka_repeats: int = 3  # alternating engine-only / end-to-end pairs; medians reported
    kafka_streams: int = 2048
    # Commit intervals of the exactly-once vs at-least-once pairs (same records each); the
    # 1 s pair reuses the durable run above as its at-least-once half.
    eos_intervals_ms: tuple[int, ...] = (100, 1000, 5000)
    # Commit intervals of the read_committed latency runs (each mode once per interval);
    # every run is paced for eos_latency_s or four intervals, whichever is longer.
    eos_latency_intervals_ms: tuple[int, ...] = (100, 1000, 5000)
    eos_latency_s: float = 10.0
    eos_latency_rate: float = 2000.0  # records/s of the paced input (well below capacity)
    restore_streams: int = 100_000  # states restored from a state topic (durable section)
    state_volume_streams: tuple[int, ...] = (1_000, 10_000, 100_000)  # active streams
    # Engine batch sizes of the frames section (seed frame model, seed's way vs engine);
    # empty = the section is not run (--quick: it would double --quick's time).
    frames_batches: tuple[int, ...] = ()
    frames_seed_streams: int = 16  # streams interleaved by the seed's per-frame loop
    # Camera frames through Kafka (cnn_lstm, raw and JPEG records); 0 records = not run.
    frames_kafka_records: int = 20_000
    frames_kafka_streams: int = 256
    agreement_streams: int = 3
    agreement_steps: int = 5
    pool_size: int = 4096
    seed: int = 0
    bootstrap_servers: str | None = None
    quick: bool = False
    skipped: tuple[str, ...] = field(default_factory=tuple)  # points left out, and why

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def full_config(models: Sequence[str], min_time: float | None = None) -> Config:
    """The full run (~10 minutes on 2 cores)."""
    t = 1.0 if min_time is None else min_time
    return Config(
        models=tuple(models),
        batches=(1, 8, 64, 256, 1024, 4096),
        frame_max_batch=1024,
        headline_batch=1024,
        budget=Budget(min_time=t, min_steps=6, warmup_steps=3),
        b0_budget=Budget(min_time=t, min_steps=30, warmup_steps=3),
        predict_budget=Budget(min_time=t, min_steps=6, max_steps=60, warmup_steps=2),
        slice_s=0.1,
        interleaved_streams=16,
        cached_streams=(1024, 100_000, 1_000_000),
        cached_batch=1024,
        dtypes=("float32", "float16", "bfloat16"),
        dtype_models=("lstm2x256", "lstm2x512"),
        catchup_steps=32,
        catchup_streams=(16, 256, 1024),
        replay_streams=1024,
        replay_steps_per_file=16,
        breakdown_models=("lstm2x256", "lstm2x512", "cnn_lstm"),
        frames_batches=(1, 64, 256, 1024),
        skipped=(
            "cnn_lstm batch 4096: a 4096-frame step moves 28 MiB of input and takes about a "
            "second; its sweep stops at 1024",
            "batch sizes 2, 4, 16, 32, 128, 512, 2048 are left out to keep the run under "
            "~15 minutes",
        ),
    )


def quick_config(models: Sequence[str], min_time: float | None = None) -> Config:
    """``--quick``: one small model, a few batch sizes, tiny counts (well under a minute)."""
    t = 0.1 if min_time is None else min_time
    return Config(
        models=tuple(models),
        batches=(1, 64, 1024),
        frame_max_batch=64,
        headline_batch=1024,
        budget=Budget(min_time=t, min_steps=3, warmup_steps=2),
        b0_budget=Budget(min_time=t, min_steps=5, warmup_steps=2),
        predict_budget=Budget(min_time=t, min_steps=2, max_steps=5, warmup_steps=1),
        slice_s=0.05,
        interleaved_streams=4,
        cached_streams=(1024, 16_384),
        cached_batch=1024,
        dtypes=("float32", "float16", "bfloat16"),
        dtype_models=tuple(models[:1]),
        catchup_steps=32,
        catchup_streams=(64,),
        replay_streams=256,
        replay_steps_per_file=16,
        breakdown_models=tuple(models[:1]),
        agreement_steps=4,
        xla=False,
        gc_seconds=1.0,
        kafka_records=10_000,
        kafka_repeats=1,
        kafka_streams=512,
        frames_kafka_records=0,
        eos_intervals_ms=(1000,),
        eos_latency_intervals_ms=(),
        restore_streams=10_000,
        state_volume_streams=(1_000,),
        quick=True,
        skipped=(
            "--quick: one model, batches 1/64/1024, cached streams 1k/16k (not 1M), catch-up "
            "over 64 streams, no XLA variant, ~0.1 s per point, exactly-once at a 1 s commit "
            "interval only and no latency runs: figures are indicative only",
            "--quick: the frames section (seed frame model, seed's way vs engine) is not run",
        ),
    )


# --------------------------------------------------------------------------------------------
# Engine runner
# --------------------------------------------------------------------------------------------


class EngineRunner:
    """An Engine over a fresh StateCache, warmed up (``engine.warmup()``), with one seq
    counter for everything fed to it, so no measurement ever feeds a duplicate."""

    def __init__(
        self,
        model: BenchModel,
        *,
        capacity: int,
        max_batch: int,
        storage_dtype: str = "float32",
        scan_min_steps: int = 4,
        max_scan_steps: int = 64,
        jit_compile: bool = False,
    ) -> None:
        self.model = model
        self.cache = StateCache(
            model.step_model.state_spec, capacity, storage_dtype=storage_dtype, spill_capacity=0
        )
        self.engine = Engine(
            model.step_model,
            self.cache,
            max_batch=max_batch,
            scan_min_steps=scan_min_steps,
            max_scan_steps=max_scan_steps,
            jit_compile=jit_compile,
        )
        t0 = time.perf_counter()
        self.engine.warmup()
        self.warmup_s = time.perf_counter() - t0
        self._seq = 0
        self.method = bl.EngineMethod(self.engine)

    def take_seqs(self, n: int = 1) -> int:
        """Reserve ``n`` consecutive seqs newer than any fed before; returns the first."""
        first = self._seq
        self._seq += n
        return first

    def probe(self) -> dict[str, int]:
        s = self.engine.stats
        return {
            "trace": self.engine.trace_count,
            "waves": s.wave_calls,
            "scans": s.scan_calls,
            "padded": s.padded_rows,
        }

    def job(
        self,
        name: str,
        make: Callable[[int], Any],
        budget: Budget,
        call: Callable[[Any], Any] | None = None,
        messages: Callable[[Any], int] = len,
    ) -> Job:
        """A job timing ``engine.process`` (or ``call``) with the engine's counters probed."""
        return Job(name, call or self.method.process, make, budget, messages, probe=self.probe)

    def step_maker(self, streams: Sequence[str], pool: np.ndarray) -> Callable[[int], list[Record]]:
        """Call ``i`` -> one record per stream (inputs of step ``i``) with a fresh seq."""
        feed = bl.Feed(streams, pool)
        return lambda i: feed.step(i, self.take_seqs())

    def bucket(self, n: int) -> int:
        """The padded batch size the engine uses for ``n`` streams."""
        return min(b for b in self.engine.buckets if b >= n)

    def close(self) -> None:
        """Drop the references to the tables (large caches must be freed before the next)."""
        del self.engine, self.cache, self.method
        gc.collect()


def engine_counters(job: Job, runner: EngineRunner) -> dict[str, Any]:
    """The engine's counters over ``job``'s timed calls, per call."""
    calls = max(1, job.timing.calls)
    d = job.deltas
    return {
        "retraces_in_timed_region": d.get("trace", 0),
        "wave_calls_per_call": round(d.get("waves", 0) / calls, 3),
        "scan_calls_per_call": round(d.get("scans", 0) / calls, 3),
        "padded_rows_per_call": round(d.get("padded", 0) / calls, 3),
        "trace_count_total": runner.engine.trace_count,
        "warmup_s": round(runner.warmup_s, 3),
    }


def _streams(n: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _row(model: str, method: str, job: Job, **extra: Any) -> dict[str, Any]:
    return {"model": model, "method": method, **extra, **job.timing.summary()}


# --------------------------------------------------------------------------------------------
# Agreement: every method computes the same function
# --------------------------------------------------------------------------------------------


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
    streams = _streams(n_streams, "a")
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


# --------------------------------------------------------------------------------------------
# Throughput: B0, B1, B2 and the engine over batch sizes
# --------------------------------------------------------------------------------------------


def throughput(
    bm: BenchModel, cfg: Config, progress: Progress
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Rows for every method (B0 variants, B1, then B2 and the engine per batch size, and
    the engine with XLA at the headline batch), all measured in alternating time slices, and the
    per-call latency samples at the headline batch for the CDF plot."""
    name = bm.spec.name
    sm = bm.step_model
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    inter = bl.Feed(_streams(cfg.interleaved_streams), pool)
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
        streams = _streams(b)
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
        jobs.append(xla.job(f"engine-xla {hb}", xla.step_maker(_streams(hb), pool), cfg.budget))
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
        rows.append(_row(name, extra.pop("method"), job, **extra))
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
        names = _streams(n, "c")
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
        gs = _gather_scatter_fn(runner.cache.tables)

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
    jobs = [r.job(d, r.step_maker(_streams(b), pool), cfg.budget) for d, r in runners.items()]
    measure_alternating(jobs, cfg.slice_s)
    rows = []
    for job in jobs:
        r = runners[job.name]
        rows.append(
            _row(
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
        feed = bl.Feed(_streams(b), pool)
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
            _row(
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


# --------------------------------------------------------------------------------------------
# Replay: decode -> engine -> encode
# --------------------------------------------------------------------------------------------


def replay_bench(bm: BenchModel, cfg: Config, progress: Progress) -> dict[str, Any]:
    """:func:`processor.replay.replay` over in-memory files of ``codec.encode_input``
    records (``replay_streams`` streams, ``replay_steps_per_file`` records each per file),
    alternating with: the same with Python's default GC (see :func:`measure_alternating`);
    the same engine work on
    the same records already decoded, in the groups replay forms; the decoder alone; the
    output encoder alone."""
    from processor.replay import GROUP_RECORDS, replay

    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    r, steps = cfg.replay_streams, cfg.replay_steps_per_file
    b = min(cfg.headline_batch, r)
    streams = _streams(r, "r")
    feed = bl.Feed(streams, pool)
    rp = EngineRunner(bm, capacity=r, max_batch=b)
    same = EngineRunner(bm, capacity=r, max_batch=b)

    def records_of(i: int, runner: EngineRunner) -> list[Record]:
        return feed.backlog(i, steps, runner.take_seqs(steps))

    def encode(records: Sequence[Record]) -> bytes:
        return b"".join(codec.encode_input(x.stream, x.seq, x.x) for x in records)

    sizes: list[int] = []

    def replay_input(i: int) -> tuple[bytes, int]:
        recs = records_of(i, rp)
        data = encode(recs)
        sizes.append(len(data))
        return data, len(recs)

    dead = [0]

    def run_replay(arg: tuple[bytes, int]) -> None:
        data, n = arg
        stats = replay(rp.engine, io.BytesIO(data), io.BytesIO(), io.BytesIO())
        dead[0] += stats.dead_letters
        if stats.outputs != n:
            raise RuntimeError(f"replay gave {stats.outputs} outputs for {n} records")

    def in_groups(records: list[Record]) -> list[Output]:
        outs: list[Output] = []
        for start in range(0, len(records), GROUP_RECORDS):
            outs.extend(same.method.process(records[start : start + GROUP_RECORDS]))
        return outs

    decoder = codec.RecordDecoder(bm.step_model.input_shape, bm.step_model.input_dtype)
    frames = [
        f.raw or b"" for f in codec.iter_framed(io.BytesIO(encode(feed.backlog(0, steps))), 1 << 24)
    ]
    sample_out = [
        Output(s, 0, np.zeros(bm.step_model.output_shape, np.float32)) for s in streams
    ] * steps
    budget = Budget(min_time=cfg.budget.min_time, min_steps=3, warmup_steps=1)
    rp_frozen = EngineRunner(bm, capacity=r, max_batch=b)

    def replay_input_frozen(i: int) -> tuple[bytes, int]:
        recs = records_of(i, rp_frozen)
        return encode(recs), len(recs)

    def run_replay_frozen(arg: tuple[bytes, int]) -> None:
        data, n = arg
        stats = replay(rp_frozen.engine, io.BytesIO(data), io.BytesIO(), io.BytesIO())
        if stats.outputs != n:
            raise RuntimeError(f"replay gave {stats.outputs} outputs for {n} records")

    # replay() with the start-up objects not frozen (`lstm-stream replay` freezes them; a
    # library caller may not): full collections then walk them all (unfrozen for its slices
    # only).
    frozen = rp_frozen.job(
        "replay_default_gc",
        replay_input_frozen,
        budget,
        call=run_replay_frozen,
        messages=lambda a: a[1],
    )
    frozen.enter, frozen.leave = gc.unfreeze, gc.freeze
    jobs = [
        rp.job("replay", replay_input, budget, call=run_replay, messages=lambda a: a[1]),
        frozen,
        same.job("engine_same_groups", lambda i: records_of(i, same), budget, call=in_groups),
        Job("decode", lambda fs: [decoder.decode(f) for f in fs], lambda i: frames, budget),
        Job(
            "encode", lambda os: [codec.encode_output(o) for o in os], lambda i: sample_out, budget
        ),
    ]
    done = measure_alternating(jobs, cfg.slice_s)
    result = {
        "model": bm.spec.name,
        "streams": r,
        "records_per_file": r * steps,
        "group_records": GROUP_RECORDS,
        "max_batch": b,
        "input_bytes_per_record": round(sum(sizes) / max(1, len(sizes)) / (r * steps), 1),
        "dead_letters": dead[0],
        **done["replay"].timing.summary(),
        **{
            k: v
            for k, v in engine_counters(done["replay"], rp).items()
            if k == "retraces_in_timed_region"
        },
        "engine_same_groups": {
            **done["engine_same_groups"].timing.summary(),
            **engine_counters(done["engine_same_groups"], same),
        },
        "replay_default_gc": {
            **done["replay_default_gc"].timing.summary(),
            **engine_counters(done["replay_default_gc"], rp_frozen),
        },
        "decode_us_per_record": round(1e6 / done["decode"].timing.msg_per_s_median, 3),
        "encode_us_per_output": round(1e6 / done["encode"].timing.msg_per_s_median, 3),
    }
    rp.close()
    rp_frozen.close()
    same.close()
    progress(
        f"replay: {result['msg_per_s_median']:,.0f} msg/s; engine same groups "
        f"{result['engine_same_groups']['msg_per_s_median']:,.0f} msg/s; decode "
        f"{result['decode_us_per_record']} us/record, encode {result['encode_us_per_output']} "
        "us/output"
    )
    return result


# --------------------------------------------------------------------------------------------
# Python's garbage collector in the steady state
# --------------------------------------------------------------------------------------------


class _GcTracker:
    """Counts collections per generation and the time spent in them (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.micros = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = int(info["generation"])
            self.collections[g] += 1
            self.micros[g] += int((time.perf_counter() - self._t0) * 1e6)

    def probe(self) -> dict[str, int]:
        return {
            "gen2_collections": self.collections[2],
            "gen01_collections": self.collections[0] + self.collections[1],
            "gc_us": sum(self.micros),
            "gen2_us": self.micros[2],
        }


def gc_impact(bm: BenchModel, cfg: Config, progress: Progress) -> list[dict[str, Any]]:
    """The engine step plus output encoding (what a runtime does per batch) at the headline
    batch for ``gc_seconds``, with Python's default GC and with ``gc.freeze()`` after
    start-up, alternating. Full collections are rare but walk every object TensorFlow and
    Keras created (hundreds of thousands), so they show in the mean rate and the p99, not in
    the median: this section reports the time spent in the collector."""
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    b = cfg.headline_batch
    runner = EngineRunner(bm, capacity=b, max_batch=b)
    tracker = _GcTracker()

    def step_and_encode(records: list[Record]) -> None:
        outputs = runner.method.process(records)
        for o in outputs:
            codec.encode_output(o)

    budget = Budget(min_time=cfg.gc_seconds, min_steps=3, warmup_steps=2)
    jobs = []
    for label in ("default", "gc.freeze()"):
        job = Job(
            label,
            step_and_encode,
            runner.step_maker(_streams(b), pool),
            budget,
            probe=tracker.probe,
        )
        if label != "default":
            job.enter, job.leave = gc.freeze, gc.unfreeze
        jobs.append(job)
    gc.callbacks.append(tracker)
    try:
        # Long slices: full collections are rare events; short ones would cut the collector's
        # natural rhythm into pieces (each slice starts with a young-generation collection).
        measure_alternating(jobs, max(cfg.slice_s, cfg.gc_seconds / 3), freeze=False)
    finally:
        gc.callbacks.remove(tracker)
    rows = []
    for job in jobs:
        d, wall = job.deltas, job.timing.seconds
        rows.append(
            _row(
                bm.spec.name,
                "engine + encode",
                job,
                gc=job.name,
                batch=b,
                gen2_collections=d.get("gen2_collections", 0),
                gen01_collections=d.get("gen01_collections", 0),
                gc_seconds=round(d.get("gc_us", 0) / 1e6, 4),
                gc_share=round(d.get("gc_us", 0) / 1e6 / wall, 4) if wall else None,
                gen2_ms_each=round(d["gen2_us"] / 1e3 / d["gen2_collections"], 2)
                if d.get("gen2_collections")
                else None,
            )
        )
        progress(
            f"GC {job.name}: {job.timing.msg_per_s:,.0f} msg/s (mean), p99 "
            f"{job.timing.percentile_ms(99):.1f} ms, {rows[-1]['gc_share']:.1%} of the time in "
            f"the collector ({rows[-1]['gen2_collections']} full collections)"
        )
    runner.close()
    return rows


# --------------------------------------------------------------------------------------------
# Kafka end to end
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _kafka_logs_quiet() -> Iterator[None]:
    """The Kafka runtime logs every group event at INFO; the benchmark's own progress lines
    suffice while it runs."""
    quiet = [logging.getLogger(n) for n in ("aiokafka", "processor.kafka")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


def kafka_end_to_end(bm: BenchModel, cfg: Config, progress: Progress) -> dict[str, Any]:
    """Produce -> ``lstm-stream run`` (the Kafka runtime, in this process) -> output topic,
    through the broker at ``cfg.bootstrap_servers``, on this benchmark's model (saved to a
    temporary ``.keras`` file, same weights).

    Measured by :func:`processor.bench.kafka.bench_end_to_end` (N records produced to a
    fresh topic first, then timed from the processor's first fetched record until every
    output is visible to a ``read_committed`` reader: acknowledged at-least-once, committed
    exactly-once) and, for the same records and batch size, its engine-only twin
    :func:`processor.bench.kafka.bench_engine_only`. ``msg_per_s`` is the end-to-end rate
    (at-least-once, durable state, 1 s commit interval).

    Each repeat runs, back to back: engine-only, durable at-least-once and exactly-once at
    1 s (when 1000 is in ``cfg.eos_intervals_ms``), no state topic, then an at-least-once /
    exactly-once pair at each other interval of ``cfg.eos_intervals_ms``; which of a pair
    goes first alternates between repeats. Ratios are medians of per-pair ratios. Then one
    read_committed latency run per mode and interval of ``cfg.eos_latency_intervals_ms``
    (:func:`processor.bench.eos.bench_visible_latency`). The exactly-once figures are under
    ``exactly_once``: ``intervals`` (:func:`processor.bench.eos.summarise_pairs` rows),
    ``latency`` and ``eos_over_alos_1s``.
    """
    if cfg.bootstrap_servers is None:
        return {"status": "not_run", "reason": "no --bootstrap-servers given"}
    try:
        from processor.bench import eos
        from processor.bench import kafka as kafka_bench
        from processor.config.engine_options import EngineOptions
    except ImportError as exc:  # the runtime is optional for the rest of the benchmark
        return {"status": "not_run", "reason": f"Kafka runtime not importable: {exc}"}
    b = cfg.headline_batch
    streams, records = cfg.kafka_streams, cfg.kafka_records
    bootstrap = cfg.bootstrap_servers
    at_1s = 1000 in cfg.eos_intervals_ms
    others = [ms for ms in cfg.eos_intervals_ms if ms != 1000]
    eos_pairs: dict[int, list[tuple[dict[str, Any], dict[str, Any]]]] = {
        ms: [] for ms in cfg.eos_intervals_ms
    }
    latency: list[dict[str, Any]] = []
    with _kafka_logs_quiet(), tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{bm.spec.name}.keras")
        bm.keras_model.save(path)
        options = EngineOptions(
            model=path,
            max_batch=b,
            cache_capacity=max(4096, 2 * streams),
            threads=0,  # TensorFlow's pools were sized at start-up; they cannot change now
        )

        def end_to_end(**kw: Any) -> dict[str, Any]:
            return asyncio.run(
                kafka_bench.bench_end_to_end(
                    bootstrap, options, records=records, streams=streams, **kw
                )
            )

        # Alternate the measurements and keep the median run of each: one pair is at the
        # mercy of whatever else the shared machine does during its few seconds.
        pairs = []
        for i in range(cfg.kafka_repeats):
            progress(f"kafka: engine-only on {records:,} records ({i + 1}/{cfg.kafka_repeats})")
            eo = kafka_bench.bench_engine_only(options, records=records, streams=streams)
            ex: dict[str, Any] | None = None
            if at_1s and i % 2:  # which of the pair goes first alternates between repeats
                progress("kafka: end to end exactly-once, 1 s commit interval")
                ex = end_to_end(processing_guarantee=eos.EXACTLY_ONCE)
            progress(f"kafka: end to end through {bootstrap}, durable state")
            ee = end_to_end()
            if at_1s and ex is None:
                progress("kafka: end to end exactly-once, 1 s commit interval")
                ex = end_to_end(processing_guarantee=eos.EXACTLY_ONCE)
            if ex is not None:
                eos_pairs[1000].append((ee, ex))
            progress("kafka: end to end without a state topic")
            es = end_to_end(durable=False)
            pairs.append((eo, ee, es))
            for ms in others:
                progress(f"kafka: at-least-once and exactly-once, {ms} ms commit interval")
                eos_pairs[ms].append(
                    eos.measure_pair(
                        bootstrap,
                        options,
                        records=records,
                        streams=streams,
                        commit_interval_ms=ms,
                        eos_first=bool(i % 2),
                    )
                )
        for ms in cfg.eos_latency_intervals_ms:
            for guarantee in (eos.AT_LEAST_ONCE, eos.EXACTLY_ONCE):
                progress(f"kafka: read_committed latency, {guarantee}, {ms} ms commit interval")
                latency.append(
                    asyncio.run(
                        eos.bench_visible_latency(
                            bootstrap,
                            options,
                            processing_guarantee=guarantee,
                            commit_interval_ms=ms,
                            rate=cfg.eos_latency_rate,
                            seconds=max(cfg.eos_latency_s, 4 * ms / 1000),
                            streams=min(streams, 256),
                        )
                    )
                )

        def median(k: int) -> dict[str, Any]:
            runs = sorted((p[k] for p in pairs), key=lambda r: r["records_per_s"])
            return runs[len(runs) // 2]

        engine_only, e2e, stateless = median(0), median(1), median(2)
        # Per repeat, durable over stateless measured back to back; the median of those.
        costs = sorted(p[1]["records_per_s"] / p[2]["records_per_s"] for p in pairs)
    intervals = [eos.summarise_pairs(ms, eos_pairs[ms]) for ms in sorted(eos_pairs)]
    by_ms = {row["commit_interval_ms"]: row for row in intervals}
    exactly_once: dict[str, Any] = {
        "intervals": intervals,
        "latency": latency,
        "measured_by": "processor.bench.eos",
    }
    if 1000 in by_ms:
        exactly_once["eos_over_alos_1s"] = by_ms[1000]["eos_over_alos"]
    result = {
        "status": "ran",
        "model": bm.spec.name,
        "bootstrap_servers": bootstrap,
        "records": records,
        "streams": streams,
        "max_batch": b,
        "msg_per_s": round(float(e2e["records_per_s"]), 3),
        "end_to_end": e2e,
        "stateless": stateless,
        "durable_over_stateless": costs[len(costs) // 2],
        "engine_only_same_records": engine_only,
        "exactly_once": exactly_once,
        "measured_by": "processor.bench.kafka.bench_end_to_end",
        "repeats": [
            {
                "engine_only_msg_per_s": round(float(eo["records_per_s"]), 1),
                "end_to_end_msg_per_s": round(float(ee["records_per_s"]), 1),
                "stateless_msg_per_s": round(float(es["records_per_s"]), 1),
            }
            for eo, ee, es in pairs
        ],
    }
    progress(
        f"kafka: {result['msg_per_s']:,.0f} msg/s end to end with durable state, "
        f"{stateless['records_per_s']:,.0f} without; engine-only on the same records "
        f"{engine_only['records_per_s']:,.0f} msg/s"
    )
    for row in intervals:
        progress(
            f"kafka: exactly-once {row['exactly_once']['records_per_s']:,.0f} msg/s vs "
            f"at-least-once {row['at_least_once']['records_per_s']:,.0f} at "
            f"{row['commit_interval_ms']} ms ({row['eos_over_alos']:.1%}, median of pairs)"
        )
    return result


def durable_state(bm: BenchModel, cfg: Config, progress: Progress) -> dict[str, Any]:
    """What durable state costs besides throughput (:mod:`processor.bench.durable`):
    restoring ``cfg.restore_streams`` streams of this model from a state topic, and the
    state bytes/s written against output bytes/s at several active stream counts."""
    if cfg.bootstrap_servers is None:
        return {"status": "not_run", "reason": "no --bootstrap-servers given"}
    from processor.bench import durable
    from processor.config.engine_options import EngineOptions

    with _kafka_logs_quiet(), tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{bm.spec.name}.keras")
        bm.keras_model.save(path)
        options = EngineOptions(
            model=path,
            max_batch=cfg.headline_batch,
            cache_capacity=65_536,
            spill_capacity=131_072,
            threads=0,
        )
        progress(f"durable: restore of {cfg.restore_streams:,} streams")
        restore = asyncio.run(
            durable.bench_restore(cfg.bootstrap_servers, options, streams=cfg.restore_streams)
        )
        progress(
            f"durable: restored {restore['streams_per_s']:,.0f} streams/s "
            f"({restore['mb_per_s']:.1f} MB/s)"
        )
        volume = []
        for streams in cfg.state_volume_streams:
            progress(f"durable: state bytes at {streams:,} active streams")
            volume += durable.bench_state_volume(
                cfg.bootstrap_servers,
                options,
                records=cfg.kafka_records,
                stream_counts=(streams,),
            )
    return {
        "status": "ran",
        "model": bm.spec.name,
        "restore": restore,
        "state_volume": volume,
        "measured_by": "processor.bench.durable",
    }


# --------------------------------------------------------------------------------------------
# Frames: the seed frame model, the seed's way vs the engine
# --------------------------------------------------------------------------------------------


def seed_frames(cfg: Config, progress: Progress) -> dict[str, Any]:
    """The frames section (:func:`processor.bench.frames.frames_section`) sized by ``cfg``:
    engine batches ``cfg.frames_batches`` (none: ``status`` ``not_run``), the seed's way over
    ``cfg.frames_seed_streams`` streams with ``cfg.b0_budget`` (per-frame calls, like B0)."""
    from processor.bench import frames

    return frames.frames_section(
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


# --------------------------------------------------------------------------------------------
# Where the engine's step time goes
# --------------------------------------------------------------------------------------------


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


def _gather_scatter_fn(tables: Sequence[Any]) -> Any:
    """A compiled gather + scatter of the given rows of every state table, as the engine's
    step does them (casts included), without the model in between."""

    @tf.function
    def gather_scatter(slots: Any) -> Any:
        idx = tf.expand_dims(slots, 1)
        for tab in tables:
            rows = tf.cast(tf.gather(tab, slots), tf.float32)
            tab.scatter_nd_update(idx, tf.cast(rows, tab.dtype))
        return slots[0]

    return gather_scatter


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
    streams = _streams(b)
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

    gather_scatter = _gather_scatter_fn(tables)
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


def frames_kafka(cfg: Config, progress: Progress) -> dict[str, Any]:
    """Camera frames through Kafka (:mod:`processor.bench.frames_kafka`): ``run`` on
    ``cfg.frames_kafka_records`` 84x84x1 frames sent raw and as JPEG against engine-only
    (``cfg.kafka_repeats`` rounds, median ratios), when there is a broker and records; and
    always the decode stage's cost per frame for raw, JPEG and PNG payloads."""
    from processor.bench import frames_kafka as fk

    progress("frames: decode cost per frame (raw, jpeg, png)")
    out: dict[str, Any] = {"decode": fk.bench_decode_cost()}
    if cfg.bootstrap_servers is None or not cfg.frames_kafka_records:
        why = "no --bootstrap-servers given" if cfg.bootstrap_servers is None else "--quick"
        return out | {"status": "not_run", "reason": why}
    with _kafka_logs_quiet(), tempfile.TemporaryDirectory() as tmp:
        model = fk.save_frames_model(str(Path(tmp) / "cnn_lstm.keras"))
        progress(f"frames: through Kafka, {cfg.frames_kafka_records:,} frames raw and jpeg")
        result = fk.bench_frames_through_kafka(
            cfg.bootstrap_servers,
            model,
            records=cfg.frames_kafka_records,
            streams=cfg.frames_kafka_streams,
            repeat=cfg.kafka_repeats,
            threads=0,  # TensorFlow's pools were sized at start-up; they cannot change now
        )
    return out | result | {"status": "ran"}
