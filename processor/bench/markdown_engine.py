"""The markdown of the sections measured in this process: throughput per model, step time
over cached streams, state dtype, catch-up, replay, Python GC, state tiers, the seed frame
model and the breakdown of an engine step. Each function returns the lines of one section
(nothing when the run lacks it) from the results dict."""

from __future__ import annotations

import math
from typing import Any

from processor.bench.results import (
    BREAKDOWN_PARTS,
    SectionStatus,
    find_rows,
    fmt,
    markdown_table,
    section_rows,
)


def throughput_lines(results: dict[str, Any]) -> list[str]:
    """One table per model: every method and batch size, with the engine's FLOP/s as a
    share of the reference matmul's."""
    lines: list[str] = []
    models = results.get("models", {})
    mm = results.get("matmul", {})
    tp = section_rows(results, "throughput")
    ref = mm.get("reference_gflops") or math.nan
    for model in dict.fromkeys(r["model"] for r in tp):
        flops = models.get(model, {}).get("flops_per_step", 0)
        lines += [f"## Throughput: {model}", ""]
        rows = []
        for r in find_rows(tp, model=model):
            gf = flops * r["msg_per_s_median"] / 1e9 if r["method"] == "engine" else None
            rows.append(
                [
                    r["method"],
                    r.get("variant", ""),
                    r.get("batch", ""),
                    fmt(r["msg_per_s_median"], 0),
                    fmt(r["msg_per_s"], 0),
                    fmt(r["latency_p50_ms"], 3),
                    fmt(r["latency_p99_ms"], 3),
                    fmt(r.get("cpu_cores_used") or math.nan, 2),
                    "" if gf is None else f"{gf:.1f} ({gf / ref:.0%})",
                    r.get("retraces_in_timed_region", ""),
                ]
            )
        lines += markdown_table(
            [
                "method",
                "variant",
                "batch",
                "msg/s",
                "mean msg/s",
                "p50 ms",
                "p99 ms",
                "cores used",
                "GFLOP/s (% matmul)",
                "retraces",
            ],
            rows,
        )
    return lines


def cached_lines(results: dict[str, Any]) -> list[str]:
    """Engine step time over the number of cached streams."""
    lines: list[str] = []
    cached = section_rows(results, "cached_streams")
    if cached:
        lines += ["## Step time vs cached streams (engine, random streams per step)", ""]
        rows = []
        for r in cached:
            table = f"{r['state_bytes'] / 2**20:,.0f} MiB"
            if "skipped" in r:
                rows.append(
                    [
                        r["model"],
                        f"{r['cached']:,}",
                        r["batch"],
                        table,
                        "skipped: " + r["skipped"],
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            gcs = r.get("gc", {})
            rows.append(
                [
                    r["model"],
                    f"{r['cached']:,}",
                    r["batch"],
                    table,
                    fmt(r["latency_p50_ms"], 2),
                    fmt(r["latency_p99_ms"], 2),
                    fmt(r["msg_per_s_median"], 0),
                    fmt(r.get("acquire_p50_ms", math.nan), 2),
                    fmt(r.get("gather_scatter_p50_ms", math.nan), 2),
                    f"{gcs.get('tracked_objects', 0):,} / {gcs.get('full_collect_ms', 0):.0f} ms",
                    r["retraces_in_timed_region"],
                ]
            )
        lines += markdown_table(
            [
                "model",
                "cached",
                "batch",
                "state table",
                "step p50 ms",
                "step p99 ms",
                "msg/s",
                "acquire alone p50 ms",
                "gather+scatter alone p50 ms",
                "GC objects / full collection",
                "retraces",
            ],
            rows,
        )
    return lines


def dtype_lines(results: dict[str, Any]) -> list[str]:
    """The engine with each state storage dtype."""
    lines: list[str] = []
    dt = section_rows(results, "state_dtype")
    if dt:
        lines += ["## State dtype (engine)", ""]
        lines += markdown_table(
            [
                "model",
                "state dtype",
                "batch",
                "bytes/stream",
                "msg/s",
                "p50 ms",
                "p99 ms",
                "retraces",
            ],
            [
                [
                    r["model"],
                    r["state_dtype"],
                    r["batch"],
                    r["bytes_per_stream"],
                    fmt(r["msg_per_s_median"], 0),
                    fmt(r["latency_p50_ms"], 2),
                    fmt(r["latency_p99_ms"], 2),
                    r["retraces_in_timed_region"],
                ]
                for r in dt
            ],
        )
    return lines


def catchup_lines(results: dict[str, Any]) -> list[str]:
    """Catch-up: waves against scan per stream count."""
    lines: list[str] = []
    cu = section_rows(results, "catchup")
    if cu:
        lines += ["## Catch-up (T pending records per stream in one process() call)", ""]
        lines += markdown_table(
            [
                "model",
                "path",
                "T",
                "streams",
                "msg/s",
                "p50 ms per backlog",
                "wave calls",
                "scan calls",
                "retraces",
            ],
            [
                [
                    r["model"],
                    r["method"],
                    r["pending_steps"],
                    r["streams"],
                    fmt(r["msg_per_s_median"], 0),
                    fmt(r["latency_p50_ms"], 1),
                    r["wave_calls_per_call"],
                    r["scan_calls_per_call"],
                    r["retraces_in_timed_region"],
                ]
                for r in cu
            ],
        )
    return lines


def replay_lines(results: dict[str, Any]) -> list[str]:
    """Replay against its parts (always a heading; "Not run" without figures)."""
    lines: list[str] = []
    rp = results.get("replay", {})
    lines += ["## Replay (decode -> engine -> encode, in-memory files)", ""]
    if rp.get("msg_per_s_median"):
        sg = rp.get("engine_same_groups", {})
        lines += markdown_table(
            [
                "model",
                "streams",
                "records/file",
                "replay msg/s",
                "replay, GC not frozen msg/s",
                "engine same groups msg/s",
                "decode µs/record",
                "encode µs/output",
                "bytes/record",
                "retraces",
            ],
            [
                [
                    rp["model"],
                    rp["streams"],
                    rp["records_per_file"],
                    fmt(rp["msg_per_s_median"], 0),
                    fmt(rp.get("replay_default_gc", {}).get("msg_per_s_median", math.nan), 0),
                    fmt(sg.get("msg_per_s_median", math.nan), 0),
                    rp["decode_us_per_record"],
                    rp["encode_us_per_output"],
                    rp["input_bytes_per_record"],
                    rp["retraces_in_timed_region"],
                ]
            ],
        )
    else:
        lines += [f"Not run: {rp.get('reason', 'not measured')}", ""]
    return lines


def gc_lines(results: dict[str, Any]) -> list[str]:
    """Python GC in the steady state: default against gc.freeze()."""
    lines: list[str] = []
    gi = section_rows(results, "gc_impact")
    if gi:
        lines += ["## Python GC in the steady state (engine step + output encoding)", ""]
        lines += markdown_table(
            [
                "model",
                "batch",
                "GC",
                "mean msg/s",
                "msg/s",
                "p50 ms",
                "p99 ms",
                "time in GC",
                "full collections",
                "ms each",
            ],
            [
                [
                    r["model"],
                    r["batch"],
                    r["gc"],
                    fmt(r["msg_per_s"], 0),
                    fmt(r["msg_per_s_median"], 0),
                    fmt(r["latency_p50_ms"], 2),
                    fmt(r["latency_p99_ms"], 2),
                    f"{(r.get('gc_share') or 0):.1%}",
                    r["gen2_collections"],
                    r.get("gen2_ms_each") or "",
                ]
                for r in gi
            ],
        )
    return lines


def tiers_lines(results: dict[str, Any]) -> list[str]:
    """The state tiers' step time with many streams resident (one paragraph)."""
    lines: list[str] = []
    tr = results.get("tiers", {})
    if tr.get("step_ratio"):
        lines += [
            "State tiers: with "
            f"{tr['streams']:,} streams resident (device {tr['capacity']:,} rows, host "
            f"{tr['host_rows']:,} rows, the rest on disk) a step of {tr['batch']:,} "
            f"device-resident streams takes {tr['step_ms_many']:.2f} ms against "
            f"{tr['step_ms_few']:.2f} ms with 1k resident ({tr['step_ratio']:.3f}x) and "
            f"{tr['step_ms_device_only']:.2f} ms with a full device table only; a returning "
            f"stream read back from disk costs {tr['cold_read_us_per_stream']:.0f} us "
            "(`processor.bench.tiers`).",
            "",
        ]
    return lines


def breakdown_lines(results: dict[str, Any]) -> list[str]:
    """Where an engine step goes, per model of the breakdown."""
    lines: list[str] = []
    bd = results.get("breakdown", {})
    if bd:
        lines += ["## Where an engine step goes (p50 ms per call, each part timed alone)", ""]
        keys = list(BREAKDOWN_PARTS)
        rows = []
        for model, p in bd.items():
            s = p.get("summary_p50_ms", {})
            ref = p.get("matmul_1024", {}).get("gflops_at_p50")
            eng = p.get("engine_gflops_at_p50")
            rows.append(
                [model, p.get("batch")]
                + [fmt(s.get(k) or math.nan, 2) for k in keys]
                + [p.get("python_us_per_record", ""), p.get("host_share_of_step", "")]
                + [f"{eng:.0f} / {ref:.0f} ({eng / ref:.0%})" if eng and ref else ""]
            )
        lines += markdown_table(
            [
                "model",
                "batch",
                *keys,
                "host µs/record",
                "host share",
                "engine / 1024³ matmul GFLOP/s",
            ],
            rows,
        )
        lines += [
            "`process` = Engine.process of one record per stream; `host_path` = the same with "
            "the compiled call replaced by a ready output (Python per record); "
            "`compiled_call` = the engine's gather→step→scatter function on ready tensors; "
            "`bare_step` = the model step alone; `gather_scatter` = state rows in and out "
            "alone; `gather_scatter_fused` = the same from one table with all state tensors "
            "side by side (prototype); `dispatch` = an empty compiled call; `matmuls` = only "
            "the step's matmuls; last column: the model's FLOPs per step x batch / `process` "
            "against a float32 1024³ tf.matmul timed in the same alternating slices.",
            "",
        ]
    return lines


def frames_lines(fr: dict[str, Any]) -> list[str]:
    """The markdown of the frames section (seed's way vs engine on the seed frame model)."""
    lines = ["## Frames: the seed model, the seed's way vs the engine", ""]
    if fr.get("status") != SectionStatus.RAN:
        return [*lines, f"{fr.get('status', 'not_run')}: {fr.get('reason', '')}", ""]
    ag = fr.get("agreement", {})
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in ag.get("max_abs_diff", {}).items())
    lines += [
        f"Model: {fr.get('description')} ({fr.get('params', 0):,} parameters, init model "
        f"{fr.get('init_params', 0):,}; {fr.get('flops_per_frame', 0) / 1e6:.1f} MFLOP per "
        "frame).  ",
        f"Agreement over {ag.get('streams')} streams x {ag.get('steps')} steps against the "
        f"Keras sequence model: {diffs} (tolerance {ag.get('tolerance', 0):.0e}): "
        + ("ok" if ag.get("ok") else "**MISMATCH**"),
        "",
    ]
    lines += markdown_table(
        [
            "method",
            "variant",
            "streams per call",
            "frames/s",
            "mean frames/s",
            "p50 ms per call",
            "p99 ms per call",
            "cores used",
            "retraces",
        ],
        [
            [
                r["method"],
                r.get("variant", ""),
                r.get("batch", ""),
                fmt(r["msg_per_s_median"], 1),
                fmt(r["msg_per_s"], 1),
                fmt(r["latency_p50_ms"], 2),
                fmt(r["latency_p99_ms"], 2),
                fmt(r.get("cpu_cores_used") or math.nan, 2),
                r.get("retraces_in_timed_region", ""),
            ]
            for r in fr.get("rows", [])
        ],
    )
    sm = fr.get("summary") or {}
    if sm:
        lines += [
            f"Best engine batch: {sm['best_batch']} ({sm['ratio']:.1f}x the fastest seed "
            f"variant). Measured by `{fr.get('measured_by')}`, all points in alternating "
            "time slices; every stream's first frame (the init model) falls in the warm-up "
            "calls.",
            "",
        ]
    return lines
