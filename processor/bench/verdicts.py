"""Verdicts on the goals the benchmark measures in this process: engine against B1 and B0,
FLOP/s, cached streams, replay, state tiers, catch-up, the seed frame model and retracing.
Each is a pure function of the results dict returning one row of the goals table (see
:func:`processor.bench.goals.verdict`). Ratios use the median-based rate (messages per call /
median call time) of each method, because the machine is shared and a few calls slowed by
another job would move the mean-based rate; the mean-based ratio is shown beside it."""

from __future__ import annotations

import math
from typing import Any

from processor.bench.goals import FLOPS_MODEL, HEADLINE_MODEL, verdict
from processor.bench.results import SectionStatus, engine_row, find_rows, fmt, rates, section_rows


def _headline(results: dict[str, Any]) -> tuple[list[dict[str, Any]], Any, dict[str, Any] | None]:
    """The throughput rows, the headline batch and the headline model's engine row there."""
    tp = section_rows(results, "throughput")
    b = results.get("config", {}).get("headline_batch", 1024)
    return tp, b, engine_row(tp, HEADLINE_MODEL, b)


def engine_vs_b1(results: dict[str, Any]) -> dict[str, Any]:
    """The ``engine_vs_b1`` goal: the engine at the headline batch over B1."""
    tp, b, eng = _headline(results)
    scope = f"{HEADLINE_MODEL}, batch {b}"
    e_med, e_mean = rates(eng)
    not_measured = f"{HEADLINE_MODEL} at batch {b} not measured"
    b1 = next(iter(find_rows(tp, model=HEADLINE_MODEL, method="B1")), None)
    if eng and b1:
        r_med, r_mean = e_med / rates(b1)[0], e_mean / rates(b1)[1]
        return verdict(
            "engine_vs_b1",
            r_med,
            f"{r_med:.1f}x (mean-based {r_mean:.1f}x)",
            f"engine {fmt(e_med, 0)} msg/s, B1 {fmt(rates(b1)[0], 0)} msg/s",
            scope=scope,
        )
    return verdict("engine_vs_b1", None, "n/a", not_measured)


def engine_vs_b0(results: dict[str, Any]) -> dict[str, Any]:
    """The ``engine_vs_b0`` goal: the engine at the headline batch over the fastest B0."""
    tp, b, eng = _headline(results)
    scope = f"{HEADLINE_MODEL}, batch {b}"
    e_med, e_mean = rates(eng)
    not_measured = f"{HEADLINE_MODEL} at batch {b} not measured"
    b0s = find_rows(tp, model=HEADLINE_MODEL, method="B0")
    if eng and b0s:
        best = max(b0s, key=lambda r: rates(r)[0])
        r_med, r_mean = e_med / rates(best)[0], e_mean / rates(best)[1]
        slowest = min(b0s, key=lambda r: rates(r)[0])
        ref_gf = results.get("matmul", {}).get("reference_gflops")
        fl = results.get("models", {}).get(HEADLINE_MODEL, {}).get("flops_per_step")
        ceiling = ""
        if ref_gf and fl:
            top = ref_gf * 1e9 / fl
            ceiling = (
                f"; this CPU's compute ceiling for the model ({ref_gf:.0f} GFLOP/s / "
                f"{fl / 1e6:.2f} MFLOP) is {top:,.0f} msg/s = {top / rates(best)[0]:,.0f}x "
                "the fastest B0"
            )
        return verdict(
            "engine_vs_b0",
            r_med,
            f"{r_med:.0f}x (mean-based {r_mean:.0f}x)",
            f"against the fastest B0 ({best['variant']}: {fmt(rates(best)[0], 0)} msg/s); "
            f"against {slowest['variant']} ({fmt(rates(slowest)[0], 1)} msg/s) it is "
            f"{e_med / rates(slowest)[0]:,.0f}x{ceiling}",
            scope=scope,
        )
    return verdict("engine_vs_b0", None, "n/a", not_measured)


def engine_flops(results: dict[str, Any]) -> dict[str, Any]:
    """The ``engine_flops`` goal: the engine's FLOP/s over a 1024^3 matmul's, from the
    breakdown (same time slices) or else from the batch sweep."""
    tp, b, _ = _headline(results)
    ref = results.get("matmul", {}).get("reference_gflops")
    f_row = engine_row(tp, FLOPS_MODEL, b)
    flops = results.get("models", {}).get(FLOPS_MODEL, {}).get("flops_per_step")
    bd = results.get("breakdown", {}).get(FLOPS_MODEL, {})
    sweep_note = ""
    if f_row and ref and flops:
        achieved = flops * rates(f_row)[0] / 1e9
        sweep_note = (
            f"batch sweep: {achieved:.1f} GFLOP/s = {achieved / ref:.0%} of the best 1024^3 "
            f"matmul seen at start/end ({ref:.1f} GFLOP/s)"
        )
    if bd.get("matmul_1024") and bd.get("engine_gflops_at_p50"):
        # Both sides measured in the same alternating time slices: same load from other jobs.
        eng_gf, ref_gf = bd["engine_gflops_at_p50"], bd["matmul_1024"]["gflops_at_p50"]
        frac = eng_gf / ref_gf
        return verdict(
            "engine_flops",
            frac,
            f"{frac:.0%} ({eng_gf:.1f} of {ref_gf:.1f} GFLOP/s)",
            "engine step (Engine.process p50) and a float32 1024^3 tf.matmul timed in the "
            "same alternating time slices (breakdown section)"
            + (f"; {sweep_note}" if sweep_note else ""),
            scope=f"{FLOPS_MODEL}, batch {bd.get('batch')}",
        )
    if sweep_note:
        frac = flops * rates(f_row)[0] / 1e9 / ref
        return verdict(
            "engine_flops",
            frac,
            f"{frac:.1%}",
            sweep_note,
            scope=f"{FLOPS_MODEL}, batch {b}",
        )
    return verdict("engine_flops", None, "n/a", f"{FLOPS_MODEL} at batch {b} not in this run")


def cached_1m(results: dict[str, Any]) -> dict[str, Any]:
    """The ``cached_1m`` goal: step time with the most cached streams over the fewest (NOT
    RUN below 1M)."""
    cached = [r for r in section_rows(results, "cached_streams") if "skipped" not in r]
    if len(cached) >= 2:
        small = min(cached, key=lambda r: r["cached"])
        large = max(cached, key=lambda r: r["cached"])
        ratio = large["latency_p50_ms"] / small["latency_p50_ms"]
        is_1m = large["cached"] >= 1_000_000
        skipped = [r for r in section_rows(results, "cached_streams") if "skipped" in r]
        return verdict(
            "cached_1m",
            ratio,
            f"{ratio:.2f}x ({large['cached']:,} vs {small['cached']:,} cached, p50 "
            f"{large['latency_p50_ms']:.2f} vs {small['latency_p50_ms']:.2f} ms)",
            ""
            if is_1m
            else "largest point measured is below 1M"
            + (f": {skipped[-1]['skipped']}" if skipped else ""),
            ran=is_1m,
        )
    return verdict("cached_1m", None, "n/a", "fewer than two cached-stream points")


def replay(results: dict[str, Any]) -> dict[str, Any]:
    """The ``replay`` goal: replay over the faster engine-only figure."""
    tp = section_rows(results, "throughput")
    rp = results.get("replay", {})
    if rp.get("msg_per_s_median"):
        same = rp.get("engine_same_groups", {}).get("msg_per_s_median", 0.0)
        model_eng = engine_row(tp, rp["model"], rp.get("max_batch"))
        base = max(same, rates(model_eng)[0] if model_eng else 0.0)
        frac = rp["msg_per_s_median"] / base
        return verdict(
            "replay",
            frac,
            f"{frac:.1%}",
            f"replay {fmt(rp['msg_per_s_median'], 0)} msg/s (with the GC not frozen, "
            "as a library caller that skips gc.freeze() gets: "
            f"{fmt(rp.get('replay_default_gc', {}).get('msg_per_s_median', math.nan), 0)}) "
            "vs the faster engine-only "
            f"figure {fmt(base, 0)} msg/s (same groups {fmt(same, 0)}, one record per "
            f"stream per call {fmt(rates(model_eng)[0], 0)})",
        )
    return verdict("replay", None, "n/a", str(rp.get("reason", "not measured")))


def tiers_1m(results: dict[str, Any]) -> dict[str, Any]:
    """The ``tiers_1m`` goal: step time with 1M streams across the state tiers over 1k."""
    tr = results.get("tiers", {})
    if tr.get("step_ratio"):
        return verdict(
            "tiers_1m",
            float(tr["step_ratio"]),
            f"{tr['step_ratio']:.3f}x",
            f"{tr['streams']:,} streams resident (device {tr['capacity']:,}, host "
            f"{tr['host_rows']:,} rows, the rest on disk): step {tr['step_ms_many']:.2f} ms "
            f"vs {tr['step_ms_few']:.2f} ms with 1k; cold read from disk "
            f"{tr['cold_read_us_per_stream']:.0f} us per stream",
        )
    return verdict("tiers_1m", None, "n/a", "not measured")


def catchup(results: dict[str, Any]) -> dict[str, Any]:
    """The ``catchup`` goal: scan over waves at the largest stream count measured."""
    cu = section_rows(results, "catchup")
    # At the largest stream count measured: the catch-up after a restart or a rebalance,
    # when many streams are behind at once (the stricter case: compute dominates there).
    b_max = max((r["streams"] for r in cu), default=None)
    waves = find_rows(cu, method="waves", streams=b_max)
    scan = find_rows(cu, method="scan", streams=b_max)
    if waves and scan:
        ratio = rates(scan[0])[0] / rates(waves[0])[0]
        others = ", ".join(
            f"B={r['streams']}: {rates(r)[0] / rates(w[0])[0]:.2f}x"
            for r in find_rows(cu, method="scan")
            if r["streams"] != b_max and (w := find_rows(cu, method="waves", streams=r["streams"]))
        )
        return verdict(
            "catchup",
            ratio,
            f"{ratio:.2f}x (mean-based {rates(scan[0])[1] / rates(waves[0])[1]:.2f}x)",
            f"scan {fmt(rates(scan[0])[0], 0)} msg/s, waves {fmt(rates(waves[0])[0], 0)} "
            f"msg/s" + (f"; other stream counts: {others}" if others else ""),
            scope=f"T={scan[0]['pending_steps']}, {b_max} streams",
        )
    return verdict("catchup", None, "n/a", "waves and scan not both measured")


def seed_frames(fr: dict[str, Any]) -> dict[str, Any]:
    """The ``seed_frames`` goal from the frames section (``processor.bench.frames``): the
    best engine batch's median-based rate over the fastest seed-way variant's. NOT RUN
    without both, or when the two ways disagreed (a ratio of different computations)."""
    sm = fr.get("summary") or {}
    if fr.get("status") != SectionStatus.RAN or not sm:
        return verdict("seed_frames", None, "n/a", str(fr.get("reason", "not measured")))
    ag = fr.get("agreement", {})
    ratio = float(sm["ratio"])
    by_batch = ", ".join(f"{b}: {r:.1f}x" for b, r in sm.get("ratio_by_batch", {}).items())
    detail = (
        f"engine {fmt(sm['engine_msg_per_s'], 1)} frames/s at its best batch "
        f"{sm['best_batch']} vs the seed's way ({sm['seed_variant'].split(',')[0]}) "
        f"{fmt(sm['seed_msg_per_s'], 1)} frames/s; by batch: {by_batch}"
    )
    if "bare_over_seed" in sm:
        detail += (
            f"; the model step alone (compiled, ready tensors, no state table) reaches "
            f"{sm['bare_over_seed']:.1f}x at batch {sm['bare_best_batch']}"
        )
    if "engine_over_bare" in sm:
        detail += f", and the engine runs at {sm['engine_over_bare']:.0%} of it at its best batch"
    scope = f"seed_frames, best batch {sm['best_batch']}"
    measured = f"{ratio:.1f}x (mean-based {float(sm['ratio_mean_based']):.1f}x)"
    if not ag.get("ok"):
        return verdict(
            "seed_frames", None, measured, "the two ways disagree: " + detail, scope=scope
        )
    return verdict("seed_frames", ratio, measured, detail, scope=scope)


def no_retrace(results: dict[str, Any]) -> dict[str, Any]:
    """The ``no_retrace`` goal: how many timed regions retraced (the sweeps', the frames
    section's engine points, replay's and the host path's)."""
    rp = results.get("replay", {})
    checked, offenders = 0, []
    timed = [
        (s, section_rows(results, s))
        for s in ("throughput", "cached_streams", "state_dtype", "catchup")
    ]
    timed.append(("frames", section_rows(results.get("frames", {}), "rows")))
    for section, rows in timed:
        for r in rows:
            if "retraces_in_timed_region" in r:
                checked += 1
                if r["retraces_in_timed_region"]:
                    offenders.append(f"{section}:{r.get('model')}:{r.get('batch', '')}")
    host = [
        ("replay", rp),
        ("replay", rp.get("engine_same_groups", {})),
        ("host_engine", results.get("host_engine", {}).get("process", {})),
        ("host_replay", results.get("host_replay", {}).get("replay", {})),
    ]
    for name, extra in host:
        if "retraces_in_timed_region" in extra:
            checked += 1
            if extra["retraces_in_timed_region"]:
                offenders.append(name)
    return verdict(
        "no_retrace",
        len(offenders),
        f"{checked - len(offenders)}/{checked} timed regions without a retrace",
        ", ".join(offenders),
        scope="engine.trace_count over timed regions",
        ran=checked > 0,
    )
