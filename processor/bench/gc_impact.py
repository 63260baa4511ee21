"""Python's garbage collector in the steady state: the engine step plus output encoding
with the default GC against ``gc.freeze()`` after start-up, and the time spent in the
collector."""

from __future__ import annotations

import gc
import time
from typing import Any

import processor  # noqa: F401  (TF environment defaults)
from processor import codec
from processor.bench.config import Config, Progress
from processor.bench.harness import Budget, Job, measure_alternating
from processor.bench.models import BenchModel, input_pool
from processor.bench.runner import EngineRunner, result_row, stream_names
from processor.records import Record


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
            runner.step_maker(stream_names(b), pool),
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
            result_row(
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
