"""The state cache's tiers under load: what a million resident streams cost a step, and what
a cold read from the disk tier costs a returning stream.

Two measurements on one model (:func:`tiers`, a section of ``lstm-stream bench``; also
``python -m processor.bench.tiers [--quick]`` on its own):

* **Step time, many vs few resident streams.** Engine A holds ``streams`` streams across
  the tiers (``capacity`` on the device, ``host_rows`` in the host table, the rest on
  disk); engine B holds 1,024 streams, all on the device; engine C has A's device table,
  full, and nothing in the lower tiers. All step batches of device-resident streams (random
  ones, a fresh seq each call), in alternating time slices. ``step_ratio`` = A / B (goal: at
  most 1.25) includes the cost of a larger device table (random rows of a table larger than
  the CPU caches); ``tier_ratio`` = A / C isolates what the populated lower tiers add.
* **Cold read from disk.** ``cache.acquire`` of a batch of streams that are all on disk
  (each call new ones): the read and decode, the write into device slots and the eviction
  cascade it causes (device -> host -> disk), per returning stream in microseconds.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from processor.bench.harness import Budget, Job, measure_alternating
from processor.bench.models import BenchModel, input_pool
from processor.engine.engine import Engine
from processor.records import Record
from processor.state.cache import StateCache, StreamState

__all__ = ["tiers"]

FEW = 1024


def _engine(bm: BenchModel, capacity: int, host_rows: int, batch: int) -> Engine:
    cache = StateCache(bm.step_model.state_spec, capacity, spill_capacity=host_rows)
    engine = Engine(bm.step_model, cache, max_batch=batch, scan_min_steps=0)
    engine.warmup()
    return engine


def _fill(engine: Engine, names: list[str], on_device: int) -> None:
    """Make ``names`` resident: the last ``on_device`` admitted to the device, the others
    loaded into the host table and the disk (oldest on disk)."""
    spec = engine.cache.spec
    zeros = tuple(np.zeros(s.shape, np.float32) for s in spec)
    lower = names[: len(names) - on_device]
    for start in range(0, len(lower), 65_536):
        engine.cache.load({s: StreamState(zeros, 0) for s in lower[start : start + 65_536]})
    device = names[len(names) - on_device :]
    for start in range(0, len(device), engine.max_batch):
        engine.cache.acquire(device[start : start + engine.max_batch])


def tiers(
    bm: BenchModel,
    *,
    streams: int = 1_000_000,
    capacity: int = 65_536,
    host_rows: int = 262_144,
    batch: int = 1024,
    budget: Budget | None = None,
    slice_s: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Both measurements (see the module docstring); returns their figures."""
    budget = budget or Budget(min_time=3.0, min_steps=20, warmup_steps=3)
    batch = min(batch, FEW, capacity)
    pool = input_pool(bm.spec, 256, seed=seed)
    t0 = time.perf_counter()
    many = _engine(bm, capacity, host_rows, batch)
    names = [f"t{i}" for i in range(streams)]
    _fill(many, names, capacity)
    setup_s = time.perf_counter() - t0
    cache = many.cache
    progress(
        f"tiers: {streams:,} streams resident (device {len(cache):,}, host "
        f"{cache.host_count:,}, disk {cache.disk_count:,}) in {setup_s:.1f} s"
    )
    few = _engine(bm, FEW, 0, batch)
    few_names = [f"f{i}" for i in range(FEW)]
    few.cache.acquire(few_names)
    same = _engine(bm, capacity, 0, batch)
    same_names = [f"d{i}" for i in range(capacity)]
    _fill(same, same_names, capacity)
    device_names = names[streams - capacity :]
    seqs = {"many": 0, "few": 0, "same": 0}

    def maker(key: str, pick_from: list[str]) -> Callable[[int], list[Record]]:
        def make(i: int) -> list[Record]:
            seqs[key] += 1
            rng = np.random.default_rng(seed + i)
            chosen = rng.choice(len(pick_from), batch, replace=False)
            return [Record(pick_from[j], seqs[key], pool[j % len(pool)]) for j in chosen.tolist()]

        return make

    jobs = [
        Job("many", many.process, maker("many", device_names), budget),
        Job("few", few.process, maker("few", few_names), budget),
        Job("same", same.process, maker("same", same_names), budget),
    ]
    measure_alternating(jobs, slice_s)
    step = {job.name: float(np.median(job.timing.durations)) for job in jobs}
    ratio = step["many"] / step["few"]
    tier_ratio = step["many"] / step["same"]
    progress(
        f"tiers: step of {batch} device-resident streams: {step['many'] * 1e3:.2f} ms with "
        f"{streams:,} resident, {step['few'] * 1e3:.2f} ms with {FEW:,} (ratio {ratio:.3f}), "
        f"{step['same'] * 1e3:.2f} ms with a full device table only (ratio {tier_ratio:.3f})"
    )

    # Cold reads: the oldest loaded streams are on disk; each call takes `batch` new ones.
    on_disk = names[: cache.disk_count]
    calls = max(1, min(len(on_disk) // batch, 50))
    durations: list[float] = []
    reads_before = cache.stats.disk_reads
    for i in range(calls):
        chunk = on_disk[i * batch : (i + 1) * batch]
        started = time.perf_counter()
        cache.acquire(chunk)
        durations.append(time.perf_counter() - started)
    reads = cache.stats.disk_reads - reads_before
    per_stream_us = float(np.median(durations)) / batch * 1e6
    progress(f"tiers: cold read from disk: {per_stream_us:.1f} us per returning stream")
    result = {
        "model": bm.spec.name,
        "streams": streams,
        "capacity": capacity,
        "host_rows": host_rows,
        "state_bytes": cache.bytes_per_stream,
        "batch": batch,
        "setup_s": round(setup_s, 1),
        "step_ms_many": round(step["many"] * 1e3, 4),
        "step_ms_few": round(step["few"] * 1e3, 4),
        "step_ms_device_only": round(step["same"] * 1e3, 4),
        "step_ratio": round(ratio, 4),
        "tier_ratio": round(tier_ratio, 4),
        "step_calls": {job.name: job.timing.calls for job in jobs},
        "cold_read_us_per_stream": round(per_stream_us, 2),
        "cold_read_calls": calls,
        "cold_reads_from_disk": reads,
        "state_lost": cache.stats.state_lost,
    }
    for engine in (many, few, same):
        engine.cache.close()
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m processor.bench.tiers``: the section alone, figures as JSON."""
    from processor.bench.models import DEFAULT_MODELS, load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100,000 streams, capacities / 8 (8,192 device rows, 32,768 host rows), short budget",
    )
    parser.add_argument("--model", default=DEFAULT_MODELS[0])
    parser.add_argument("--streams", type=int, default=None)
    args = parser.parse_args(argv)
    bm = load(args.model, 0)
    streams = args.streams or (100_000 if args.quick else 1_000_000)
    budget = Budget(min_time=1.0, min_steps=10, warmup_steps=2) if args.quick else None
    capacity, host_rows = (8192, 32_768) if args.quick else (65_536, 262_144)
    result = tiers(bm, streams=streams, capacity=capacity, host_rows=host_rows, budget=budget)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
