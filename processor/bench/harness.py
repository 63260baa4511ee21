"""Timing harness, machine description and the matmul reference rate.

Timing rule used everywhere: a method's work for one call is timed with
``time.perf_counter`` around that call only; the inputs of the call (pre-built records) are
made before the clock starts. Throughput is messages / sum of call times, so building the
benchmark's own inputs never counts against (or for) a method. Every point runs warm-up
calls first, then at least ``min_steps`` calls and at least ``min_time`` seconds of calls
(capped by ``max_steps``). Points that are compared with each other are measured in
alternating time slices (:func:`measure_alternating`).
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)


@dataclass
class Timing:
    """Per-call durations (seconds) of one measured point and the messages they carried."""

    durations: list[float] = field(default_factory=list)
    messages: int = 0
    warmup_calls: int = 0
    # Process CPU time (all threads) spent inside the timed calls: divided by the wall time
    # it shows how many cores the method actually got (the machine is shared).
    cpu_seconds: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.durations)

    @property
    def seconds(self) -> float:
        return float(sum(self.durations))

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def msg_per_s_median(self) -> float:
        """Messages per call / median call time: robust to other jobs stealing the CPU
        for a few calls (the mean-based :attr:`msg_per_s` is not)."""
        if not self.durations:
            return 0.0
        median = float(np.median(np.asarray(self.durations)))
        return self.messages / self.calls / median if median > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.durations:
            return float("nan")
        return float(np.percentile(np.asarray(self.durations), q) * 1e3)

    def summary(self) -> dict[str, Any]:
        """The figures every measured point reports (latencies are per call, in ms)."""
        return {
            "messages": self.messages,
            "calls": self.calls,
            "seconds": round(self.seconds, 6),
            "msg_per_s": round(self.msg_per_s, 3),
            "msg_per_s_median": round(self.msg_per_s_median, 3),
            # From the fastest call: the least disturbed by other jobs, for reference only.
            "msg_per_s_best": round(self.messages / self.calls / min(self.durations), 3)
            if self.durations and min(self.durations) > 0
            else None,
            "latency_p50_ms": round(self.percentile_ms(50), 4),
            "latency_p99_ms": round(self.percentile_ms(99), 4),
            "latency_mean_ms": round(self.seconds / self.calls * 1e3, 4) if self.calls else None,
            "warmup_calls": self.warmup_calls,
            "cpu_cores_used": round(self.cpu_seconds / self.seconds, 3) if self.seconds else None,
        }

    def samples_ms(self, limit: int = 2000) -> list[float]:
        """Up to ``limit`` call durations in ms (evenly subsampled), for the CDF plot."""
        d = self.durations
        if len(d) > limit:
            idx = np.linspace(0, len(d) - 1, limit).astype(int)
            d = [d[i] for i in idx]
        return [round(v * 1e3, 5) for v in d]


@dataclass(frozen=True)
class Budget:
    """How long each measured point runs (see the module docstring)."""

    min_time: float = 1.0
    min_steps: int = 5
    max_steps: int = 100_000
    warmup_steps: int = 3


@dataclass
class Job:
    """One measured point for :func:`measure_alternating`.

    ``call(make_input(i))`` is timed for i = 0, 1, ... (the index keeps counting across
    slices, so inputs are never repeated); ``messages(arg)`` counts the messages in a call.
    ``probe``, if given, returns counters (e.g. the engine's trace count) read just before and
    just after each time slice's calls; their deltas are summed in :attr:`deltas`.
    """

    name: str
    call: Callable[[Any], Any]
    make_input: Callable[[int], Any]
    budget: Budget
    messages: Callable[[Any], int] = len
    probe: Callable[[], dict[str, int]] | None = None
    # Run just before/after each time slice's calls (e.g. gc.freeze / gc.unfreeze).
    enter: Callable[[], Any] | None = None
    leave: Callable[[], Any] | None = None
    timing: Timing = field(default_factory=Timing)
    deltas: dict[str, int] = field(default_factory=dict)
    next_index: int = 0

    def _take(self) -> Any:
        arg = self.make_input(self.next_index)
        self.next_index += 1
        return arg


def _satisfied(job: Job) -> bool:
    b, t = job.budget, job.timing
    return t.calls >= b.max_steps or (t.calls >= b.min_steps and t.seconds >= b.min_time)


def measure_alternating(
    jobs: Sequence[Job], slice_s: float = 0.1, *, freeze: bool = True
) -> dict[str, Job]:
    """Measure several points in alternation: all warm-ups first, then round-robin time
    slices (each job runs calls for ``slice_s`` seconds, at least one call, then the next
    job) until every job has met its budget.

    On a shared machine the load changes from one second to the next; alternating the points
    that are compared in short slices spreads any slowdown over all of them instead of one,
    so their ratios stay fair. Returns the jobs by name (``timing`` and ``deltas`` filled).

    ``freeze``: after the warm-ups, ``gc.freeze()`` everything alive (TensorFlow, Keras, the
    models, the engines), as a long-running process does after start-up (``lstm-stream
    demo`` does). Otherwise every full collection walks those ~300k objects (~0.2-0.3 s),
    and where one lands decides a point's median more than the method does. Objects created
    while timing (records, outputs, cache entries) are collected as usual. The GC section
    measures the default (``freeze=False``) on purpose.
    """
    for job in jobs:
        for _ in range(job.budget.warmup_steps):
            job.call(job._take())
        job.timing.warmup_calls = job.budget.warmup_steps
    if freeze:
        gc.collect()
        gc.freeze()
    try:
        _alternate(jobs, slice_s)
    finally:
        if freeze:
            gc.unfreeze()
    return {job.name: job for job in jobs}


def _alternate(jobs: Sequence[Job], slice_s: float) -> None:
    active = [job for job in jobs if not _satisfied(job)]
    while active:
        for job in active:
            # Collect the young garbage of the set-up and of the other jobs outside the timed
            # region. Not a full collection: with TensorFlow loaded that takes ~0.25 s, and
            # the full collections that a method's own allocations trigger belong to it.
            gc.collect(1)
            if job.enter:
                job.enter()
            before = job.probe() if job.probe else {}
            timing, spent, calls = job.timing, 0.0, 0
            while calls == 0 or (spent < slice_s and not _satisfied(job)):
                arg = job._take()
                c0 = time.process_time()
                t0 = time.perf_counter()
                job.call(arg)
                dt = time.perf_counter() - t0
                timing.cpu_seconds += time.process_time() - c0
                timing.durations.append(dt)
                timing.messages += job.messages(arg)
                spent += dt
                calls += 1
            if job.probe:
                after = job.probe()
                for k, v in after.items():
                    job.deltas[k] = job.deltas.get(k, 0) + v - before.get(k, 0)
            if job.leave:
                job.leave()
        active = [job for job in active if not _satisfied(job)]


def measure(
    call: Callable[[Any], Any],
    make_input: Callable[[int], Any],
    messages_per_call: Callable[[Any], int],
    budget: Budget,
) -> Timing:
    """Time ``call(make_input(i))`` for i = 0, 1, ... (warm-up calls first, untimed): one
    job, one time slice as long as its budget (:func:`measure_alternating`)."""
    job = Job("one", call, make_input, budget, messages_per_call)
    return measure_alternating([job], slice_s=float("inf"), freeze=False)["one"].timing


def time_fn(fn: Callable[[], Any], budget: Budget) -> Timing:
    """Time a no-argument function (one 'message' per call) under ``budget``."""
    return measure(lambda _: fn(), lambda i: i, lambda _: 1, budget)


# --------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def meminfo() -> dict[str, int]:
    """``MemTotal``/``MemAvailable`` in bytes from /proc/meminfo (empty if unreadable)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as fp:
            for line in fp:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def gc_cost() -> dict[str, Any]:
    """How many objects Python's GC tracks and what one full collection costs now (with
    TensorFlow and Keras loaded, a full collection walks hundreds of thousands of objects)."""
    gc.collect()
    t0 = time.perf_counter()
    gc.collect()
    return {
        "tracked_objects": len(gc.get_objects()),
        "full_collect_ms": round((time.perf_counter() - t0) * 1e3, 3),
        "thresholds": list(gc.get_threshold()),
    }


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, library versions and TF's thread settings (as TF reports them)."""
    import keras

    mem = meminfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cores": os.cpu_count(),
        "cores_available": affinity,
        "mem_total_bytes": mem.get("MemTotal"),
        "mem_available_bytes": mem.get("MemAvailable"),
        "load_average_at_start": load_average(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "onednn_env": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }


# --------------------------------------------------------------------------------------------
# Reference compute rate
# --------------------------------------------------------------------------------------------


def matmul_rate(n: int = 1024, reps: int = 10, budget: Budget | None = None) -> dict[str, Any]:
    """float32 ``[n,n] @ [n,n]`` in a tf.function: best and median GFLOP/s (2·n³ per call).

    The result is read back to the host (``.numpy()`` of one element) so the timing covers
    the whole computation, not just the dispatch.
    """
    budget = budget or Budget(min_time=0.0, min_steps=reps, max_steps=reps, warmup_steps=2)
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n)).astype(np.float32))
    b = tf.constant(rng.standard_normal((n, n)).astype(np.float32))

    @tf.function
    def mm(a: Any, b: Any) -> Any:
        return tf.matmul(a, b)[0, 0]

    timing = time_fn(lambda: mm(a, b).numpy(), budget)
    flops = 2.0 * n**3
    best = min(timing.durations)
    median = statistics.median(timing.durations)
    return {
        "n": n,
        "reps": timing.calls,
        "flops_per_call": flops,
        "best_s": best,
        "median_s": median,
        "best_gflops": round(flops / best / 1e9, 3),
        "median_gflops": round(flops / median / 1e9, 3),
    }


def matmul_fn(shapes: Sequence[tuple[int, int, int]]) -> tuple[Callable[[], Any], float]:
    """A no-argument function running just the matmuls ``[m,k]@[k,n]`` of ``shapes`` in one
    tf.function (the compute floor of a step made of them), and their FLOPs per call."""
    rng = np.random.default_rng(1)
    pairs = [
        (
            tf.constant(rng.standard_normal((m, k)).astype(np.float32)),
            tf.constant(rng.standard_normal((k, n)).astype(np.float32)),
        )
        for m, k, n in shapes
    ]

    @tf.function
    def mms(pairs: Any) -> Any:
        return tf.add_n([tf.matmul(a, b)[0, 0] for a, b in pairs])

    flops = float(sum(2 * m * k * n for m, k, n in shapes))
    return (lambda: mms(pairs).numpy()), flops
