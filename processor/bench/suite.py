"""One whole benchmark run: :func:`run` measures every section a
:class:`~processor.bench.config.Config` sizes (matmul reference, per model agreement and
throughput, GC cost, cached streams, state dtypes, catch-up, replay, GC impact, the Kafka
sections, state tiers, frames, breakdowns, the host path on the free model, matmul again)
and returns the results dict with the goals judged. A section that raises is recorded in
``errors`` and the run goes on."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import processor  # noqa: F401  (TF environment defaults)
from processor.bench import (
    agreement,
    breakdown,
    frames,
    gc_impact,
    harness,
    host,
    host_kafka,
    kafka_sections,
    replay_bench,
    report,
    sweeps,
)
from processor.bench.config import Config
from processor.bench.models import load
from processor.bench.tiers import tiers

log = logging.getLogger(__name__)


def _progress_printer(started: float) -> Callable[[str], None]:
    """A progress callback printing each line to stderr with the seconds since ``started``."""

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return progress


def run(
    cfg: Config,
    *,
    command: str = "",
    threads: tuple[int, int] = (2, 1),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every section of ``cfg`` and return the results dict (with ``goals`` evaluated).
    A section that raises is recorded in ``errors`` and the run goes on. ``command`` and
    ``threads`` (intra-op, inter-op as requested) are recorded; ``progress`` gets a line per
    step (default: printed to stderr with the time since the start)."""
    started = time.perf_counter()
    say = progress or _progress_printer(started)
    results: dict[str, Any] = {
        "schema": "lstm-stream-bench/2",
        "command": command,
        "quick": cfg.quick,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": harness.describe_machine(),
        "threads_requested": {"intra_op": threads[0], "inter_op": threads[1]},
        "config": cfg.to_json(),
        "models": {},
        "agreement": {},
        "throughput": [],
        "cached_streams": [],
        "state_dtype": [],
        "catchup": [],
        "replay": {},
        "kafka": {},
        "durable": {},
        "frames": {},
        "frames_kafka": {},
        "breakdown": {},
        "gc_impact": [],
        "host_engine": {},
        "host_replay": {},
        "host_kafka": {},
        "latency_samples_ms": {},
        "errors": [],
        "notes": [
            "Points that are compared with each other (all methods and batch sizes of a "
            "model; the cached-stream counts; the dtypes; waves vs scan; replay vs its parts; "
            "the breakdown's parts and the 1024³ matmul) are measured in alternating time "
            f"slices of {cfg.slice_s} s, so that load from other jobs on this shared machine "
            "falls on all of them alike.",
            "B0 is measured with model.predict, predict_on_batch and a direct call; the "
            "engine_vs_b0 goal uses the fastest B0 variant (the one least favourable to the "
            "engine).",
            "B0 interleaved: one stateful model holds one state, so each switch of stream "
            "reads the layer state variables back to the host and assigns the next stream's "
            "saved state; B0 one-at-a-time runs 50 steps of a stream, then resets for the "
            "next (no swap; only possible when streams do not interleave).",
            "B1 and B2 share one tf.function of the model step; they track no seq and detect "
            "no duplicates (the engine does).",
            "Catch-up warm-up uses engine.warmup() plus warm-up backlogs, which trace the one "
            "scan shape measured (warmup(scan=True) would trace every length x bucket).",
            "On this CPU machine 'device-resident' and 'host' memory are the same RAM: B2's "
            "extra cost is the copies and NumPy fancy indexing, not a bus transfer.",
            "Python GC: after each group's warm-up the harness runs gc.freeze(), as a "
            "long-running process does after start-up (lstm-stream demo does): otherwise each "
            "full collection walks every TensorFlow/Keras object (the 'gc' figure above) and "
            "where one lands decides a point's median more than the method does. Objects "
            "created while timing are collected as usual. The 'Python GC' section measures "
            "the default on purpose, and the replay table shows replay with the default GC.",
        ],
    }

    def section(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # recorded and reported; the other sections still run
            log.debug("bench section %s failed", name, exc_info=True)
            results["errors"].append(
                {
                    "section": name,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=6),
                }
            )
            say(f"section {name} FAILED: {type(exc).__name__}: {exc}")

    matmul_budget = harness.Budget(
        min_time=0.0,
        min_steps=5 if cfg.quick else 15,
        max_steps=5 if cfg.quick else 15,
        warmup_steps=2,
    )

    def matmul_start() -> None:
        results["matmul"] = {"start": harness.matmul_rate(budget=matmul_budget)}
        say(f"matmul: {results['matmul']['start']['best_gflops']} GFLOP/s best")

    section("matmul", matmul_start)

    loaded: dict[str, Any] = {}
    for name in cfg.models:

        def one_model(name: str = name) -> None:
            bm = load(name, cfg.seed)
            loaded[name] = bm
            per_stream = sum(s.shape[0] for s in bm.step_model.state_spec) * 4
            results["models"][name] = {
                "description": bm.spec.description,
                "input_shape": list(bm.spec.input_shape),
                "input_dtype": bm.spec.input_dtype,
                "params": int(bm.keras_model.count_params()),
                "flops_per_step": bm.flops_per_step,
                "extra_flops": bm.spec.extra_flops,
                "state_bytes_float32": per_stream,
            }
            ag = agreement.agreement(bm, cfg.agreement_streams, cfg.agreement_steps, cfg.seed)
            results["agreement"][name] = ag
            say(f"{name} agreement: {'ok' if ag['ok'] else 'MISMATCH'} {ag['max_abs_diff']}")
            rows, samples = sweeps.throughput(bm, cfg, say)
            results["throughput"] += rows
            results["latency_samples_ms"][name] = samples

        section(f"throughput:{name}", one_model)

    # With the models loaded: what one full GC pass costs in this process (see the notes).
    section("gc", lambda: results.__setitem__("gc", harness.gc_cost()))
    first = next(iter(loaded.values()), None)
    if first is not None:
        bm0 = first

        def cached() -> None:
            results["cached_streams"] += sweeps.cached_streams(bm0, cfg, say)

        def catchup() -> None:
            results["catchup"] += sweeps.catchup(bm0, cfg, say)

        def replay() -> None:
            results["replay"] = replay_bench.replay_bench(bm0, cfg, say)

        def gc_steady() -> None:
            results["gc_impact"] = gc_impact.gc_impact(bm0, cfg, say)

        def kafka() -> None:
            results["kafka"] = kafka_sections.kafka_end_to_end(bm0, cfg, say)

        def durable() -> None:
            results["durable"] = kafka_sections.durable_state(bm0, cfg, say)

        def state_tiers() -> None:
            quick = {"streams": 100_000, "capacity": 8192, "host_rows": 32_768}
            results["tiers"] = tiers(
                bm0, **(quick if cfg.quick else {}), budget=cfg.budget, progress=say
            )

        section("cached_streams", cached)
        for name in cfg.dtype_models:
            if name in loaded:

                def dtypes(name: str = name) -> None:
                    results["state_dtype"] += sweeps.state_dtypes(loaded[name], cfg, say)

                section(f"state_dtype:{name}", dtypes)
        section("catchup", catchup)
        section("replay", replay)
        section("gc_impact", gc_steady)
        section("kafka", kafka)
        section("durable", durable)
        section("tiers", state_tiers)
        section("frames", lambda: results.__setitem__("frames", frames.seed_frames(cfg, say)))
        section(
            "frames_kafka",
            lambda: results.__setitem__("frames_kafka", kafka_sections.frames_kafka(cfg, say)),
        )
        for name in cfg.breakdown_models:
            if name in loaded:

                def parts(name: str = name) -> None:
                    results["breakdown"][name] = breakdown.breakdown(loaded[name], cfg, say)

                section(f"breakdown:{name}", parts)

    # The host path, on the free model whatever models were asked for.
    section("host_engine", lambda: results.__setitem__("host_engine", host.host_engine(cfg, say)))
    section("host_replay", lambda: results.__setitem__("host_replay", host.host_replay(cfg, say)))
    section(
        "host_kafka", lambda: results.__setitem__("host_kafka", host_kafka.host_kafka(cfg, say))
    )

    def matmul_end() -> None:
        mm = results.setdefault("matmul", {})
        mm["end"] = harness.matmul_rate(budget=matmul_budget)
        # The stricter reference: the best rate this machine showed in this run.
        mm["reference_gflops"] = max(
            v["best_gflops"] for k, v in mm.items() if k in ("start", "end")
        )

    section("matmul_end", matmul_end)
    results["load_average_at_end"] = harness.load_average()
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    results["goals"] = report.evaluate_goals(results)
    results["methods"] = sorted(
        {r["method"] for r in results["throughput"]}
        | ({"replay"} if results["replay"].get("msg_per_s") else set())
        | ({"kafka"} if results["kafka"].get("msg_per_s") else set())
    )
    return results
