"""What the sections share to time the engine: :class:`EngineRunner` (a warmed-up Engine
over a fresh StateCache with one seq counter), the engine's counters over a timed job
(:func:`engine_counters`), stream names, result rows, and a compiled gather + scatter of
the state tables without the model (:func:`gather_scatter_fn`)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.bench import baselines as bl
from processor.bench.harness import Budget, Job
from processor.bench.models import BenchModel
from processor.engine.engine import Engine
from processor.records import Record
from processor.state.cache import StateCache


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


def stream_names(n: int, prefix: str = "s") -> list[str]:
    """``n`` stream ids: ``{prefix}0`` to ``{prefix}{n-1}``."""
    return [f"{prefix}{i}" for i in range(n)]


def result_row(model: str, method: str, job: Job, **extra: Any) -> dict[str, Any]:
    """One result row: ``model``, ``method``, ``extra`` and ``job``'s timing summary."""
    return {"model": model, "method": method, **extra, **job.timing.summary()}


def gather_scatter_fn(tables: Sequence[Any]) -> Any:
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
