"""Turn the benchmark's results into verdicts on the project's performance goals,
results.json, results.md and PNG plots. Pure functions of the results dict, except the
writers.

The goals are listed once, in :data:`GOALS`; ``docs/benchmarks/goals.md`` has a section per
goal id saying what is measured, why the threshold matters and how to reproduce it. A goal
is PASS or MISS by the figures of the run being reported, or NOT RUN when that run lacks
them: a MISS is a finding of the run, not an error of the benchmark.

Ratios use the median-based rate (messages per call / median call time) of each method,
because the machine is shared and a few calls slowed by another job would move the
mean-based rate; the mean-based ratio is shown beside it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The parts of an engine step the breakdown times, in report order (see sweeps.breakdown).
BREAKDOWN_PARTS = (
    "process",
    "host_path",
    "compiled_call",
    "bare_step",
    "gather_scatter",
    "gather_scatter_fused",
    "dispatch",
    "matmuls",
)

PASS, MISS, NOT_RUN = "PASS", "MISS", "NOT RUN"

HEADLINE_MODEL = "lstm2x256"
FLOPS_MODEL = "lstm2x512"

#: Where each goal is explained, relative to the repository root.
GOALS_DOC = "docs/benchmarks/goals.md"


@dataclass(frozen=True)
class Goal:
    """One performance goal of the project.

    ``statement`` is the goal with its threshold as the report prints it (the heading of
    the goal's section in ``docs/benchmarks/goals.md`` carries the same text); ``threshold``
    is the number the measured value is compared with: it must reach it, or, with
    ``at_most``, not exceed it.
    """

    id: str
    statement: str
    threshold: float
    at_most: bool = False

    def status(self, value: float) -> str:
        """PASS when ``value`` meets the threshold, MISS otherwise (NaN included: a figure
        that could not be computed meets nothing)."""
        ok = value <= self.threshold if self.at_most else value >= self.threshold
        return PASS if ok else MISS


#: The project's performance goals, in report order.
GOALS: tuple[Goal, ...] = (
    Goal("engine_vs_b1", "engine >= 15x B1", 15.0),
    Goal("engine_vs_b0", "engine >= 500x B0", 500.0),
    Goal("engine_flops", "engine >= 50% of matmul FLOP/s", 0.5),
    Goal("cached_1m", "step time with 1M cached streams <= 1.25x with 1k", 1.25, at_most=True),
    Goal("replay", "replay >= 70% of engine-only msg/s", 0.7),
    Goal("kafka", "kafka end to end >= 50% of engine-only msg/s", 0.5),
    Goal("durable_cost", "kafka with durable state >= 85% of stateless msg/s", 0.85),
    Goal(
        "exactly_once",
        "kafka exactly-once >= 70% of at-least-once msg/s at a 1 s commit interval",
        0.7,
    ),
    Goal("restore", "restore >= 20k streams/s", 20_000.0),
    Goal(
        "tiers_1m",
        "step time with 1M streams across the tiers <= 1.25x with 1k",
        1.25,
        at_most=True,
    ),
    Goal("catchup", "catch-up scan >= 3x waves", 3.0),
    Goal("seed_frames", "engine >= 20x the seed's way on the seed frame model", 20.0),
    Goal(
        "frames_kafka",
        "camera frames through kafka (raw and JPEG) >= 50% of engine-only frames/s",
        0.5,
    ),
    # The measured value is the number of timed regions that retraced.
    Goal("no_retrace", "no retracing in steady state", 0.0, at_most=True),
)
_GOAL = {g.id: g for g in GOALS}


def _rows(results: dict[str, Any], section: str) -> list[dict[str, Any]]:
    rows = results.get(section)
    return rows if isinstance(rows, list) else []


def _find(rows: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _engine(rows: Iterable[dict[str, Any]], model: str, batch: Any) -> dict[str, Any] | None:
    """The default engine's row (not the XLA variant) for ``model`` at ``batch``."""
    found = [r for r in _find(rows, model=model, method="engine", batch=batch) if not r.get("xla")]
    return found[0] if found else None


def _rate(row: dict[str, Any] | None) -> tuple[float, float]:
    if not row:
        return (float("nan"), float("nan"))
    return (float(row.get("msg_per_s_median", math.nan)), float(row.get("msg_per_s", math.nan)))


def _verdict(
    gid: str,
    value: float | None,
    measured: str,
    detail: str = "",
    *,
    scope: str = "",
    ran: bool = True,
) -> dict[str, Any]:
    """One row of the goals table: goal ``gid`` judged on ``value`` (NOT RUN when ``ran``
    is false or there is no value); ``scope`` says what the figures were taken on."""
    goal = _GOAL[gid]
    status = goal.status(value) if ran and value is not None else NOT_RUN
    return {
        "id": gid,
        "goal": goal.statement + (f" ({scope})" if scope else ""),
        "threshold": goal.threshold,
        "status": status,
        "measured": measured,
        "detail": detail,
    }


def _fmt(v: float, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def evaluate_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/MISS/NOT RUN for each goal of :data:`GOALS`, in that order, from the figures of
    this one run. Each entry has ``id``, ``goal`` (the statement and what it was measured
    on), ``threshold``, ``status``, ``measured`` and ``detail``."""
    out: list[dict[str, Any]] = []
    tp = _rows(results, "throughput")
    b = results.get("config", {}).get("headline_batch", 1024)
    scope = f"{HEADLINE_MODEL}, batch {b}"
    eng = _engine(tp, HEADLINE_MODEL, b)
    e_med, e_mean = _rate(eng)
    not_measured = f"{HEADLINE_MODEL} at batch {b} not measured"

    b1 = next(iter(_find(tp, model=HEADLINE_MODEL, method="B1")), None)
    if eng and b1:
        r_med, r_mean = e_med / _rate(b1)[0], e_mean / _rate(b1)[1]
        out.append(
            _verdict(
                "engine_vs_b1",
                r_med,
                f"{r_med:.1f}x (mean-based {r_mean:.1f}x)",
                f"engine {_fmt(e_med, 0)} msg/s, B1 {_fmt(_rate(b1)[0], 0)} msg/s",
                scope=scope,
            )
        )
    else:
        out.append(_verdict("engine_vs_b1", None, "n/a", not_measured))

    b0s = _find(tp, model=HEADLINE_MODEL, method="B0")
    if eng and b0s:
        best = max(b0s, key=lambda r: _rate(r)[0])
        r_med, r_mean = e_med / _rate(best)[0], e_mean / _rate(best)[1]
        slowest = min(b0s, key=lambda r: _rate(r)[0])
        ref_gf = results.get("matmul", {}).get("reference_gflops")
        fl = results.get("models", {}).get(HEADLINE_MODEL, {}).get("flops_per_step")
        ceiling = ""
        if ref_gf and fl:
            top = ref_gf * 1e9 / fl
            ceiling = (
                f"; this CPU's compute ceiling for the model ({ref_gf:.0f} GFLOP/s / "
                f"{fl / 1e6:.2f} MFLOP) is {top:,.0f} msg/s = {top / _rate(best)[0]:,.0f}x "
                "the fastest B0"
            )
        out.append(
            _verdict(
                "engine_vs_b0",
                r_med,
                f"{r_med:.0f}x (mean-based {r_mean:.0f}x)",
                f"against the fastest B0 ({best['variant']}: {_fmt(_rate(best)[0], 0)} msg/s); "
                f"against {slowest['variant']} ({_fmt(_rate(slowest)[0], 1)} msg/s) it is "
                f"{e_med / _rate(slowest)[0]:,.0f}x{ceiling}",
                scope=scope,
            )
        )
    else:
        out.append(_verdict("engine_vs_b0", None, "n/a", not_measured))

    ref = results.get("matmul", {}).get("reference_gflops")
    f_row = _engine(tp, FLOPS_MODEL, b)
    flops = results.get("models", {}).get(FLOPS_MODEL, {}).get("flops_per_step")
    bd = results.get("breakdown", {}).get(FLOPS_MODEL, {})
    sweep_note = ""
    if f_row and ref and flops:
        achieved = flops * _rate(f_row)[0] / 1e9
        sweep_note = (
            f"batch sweep: {achieved:.1f} GFLOP/s = {achieved / ref:.0%} of the best 1024^3 "
            f"matmul seen at start/end ({ref:.1f} GFLOP/s)"
        )
    if bd.get("matmul_1024") and bd.get("engine_gflops_at_p50"):
        # Both sides measured in the same alternating time slices: same load from other jobs.
        eng_gf, ref_gf = bd["engine_gflops_at_p50"], bd["matmul_1024"]["gflops_at_p50"]
        frac = eng_gf / ref_gf
        out.append(
            _verdict(
                "engine_flops",
                frac,
                f"{frac:.0%} ({eng_gf:.1f} of {ref_gf:.1f} GFLOP/s)",
                "engine step (Engine.process p50) and a float32 1024^3 tf.matmul timed in the "
                "same alternating time slices (breakdown section)"
                + (f"; {sweep_note}" if sweep_note else ""),
                scope=f"{FLOPS_MODEL}, batch {bd.get('batch')}",
            )
        )
    elif sweep_note:
        frac = flops * _rate(f_row)[0] / 1e9 / ref
        out.append(
            _verdict(
                "engine_flops",
                frac,
                f"{frac:.1%}",
                sweep_note,
                scope=f"{FLOPS_MODEL}, batch {b}",
            )
        )
    else:
        out.append(
            _verdict("engine_flops", None, "n/a", f"{FLOPS_MODEL} at batch {b} not in this run")
        )

    cached = [r for r in _rows(results, "cached_streams") if "skipped" not in r]
    if len(cached) >= 2:
        small = min(cached, key=lambda r: r["cached"])
        large = max(cached, key=lambda r: r["cached"])
        ratio = large["latency_p50_ms"] / small["latency_p50_ms"]
        is_1m = large["cached"] >= 1_000_000
        skipped = [r for r in _rows(results, "cached_streams") if "skipped" in r]
        out.append(
            _verdict(
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
        )
    else:
        out.append(_verdict("cached_1m", None, "n/a", "fewer than two cached-stream points"))

    rp = results.get("replay", {})
    if rp.get("msg_per_s_median"):
        same = rp.get("engine_same_groups", {}).get("msg_per_s_median", 0.0)
        model_eng = _engine(tp, rp["model"], rp.get("max_batch"))
        base = max(same, _rate(model_eng)[0] if model_eng else 0.0)
        frac = rp["msg_per_s_median"] / base
        out.append(
            _verdict(
                "replay",
                frac,
                f"{frac:.1%}",
                f"replay {_fmt(rp['msg_per_s_median'], 0)} msg/s (with the GC not frozen, "
                "as a library caller that skips gc.freeze() gets: "
                f"{_fmt(rp.get('replay_default_gc', {}).get('msg_per_s_median', math.nan), 0)}) "
                "vs the faster engine-only "
                f"figure {_fmt(base, 0)} msg/s (same groups {_fmt(same, 0)}, one record per "
                f"stream per call {_fmt(_rate(model_eng)[0], 0)})",
            )
        )
    else:
        out.append(_verdict("replay", None, "n/a", str(rp.get("reason", "not measured"))))

    kf = results.get("kafka", {})
    if kf.get("msg_per_s"):
        same = float(kf.get("engine_only_same_records", {}).get("records_per_s", 0.0))
        k_eng = _engine(tp, kf.get("model", HEADLINE_MODEL), kf.get("max_batch"))
        base = max(same, _rate(k_eng)[0] if k_eng else 0.0)
        frac = kf["msg_per_s"] / base
        out.append(
            _verdict(
                "kafka",
                frac,
                f"{frac:.1%}",
                f"end to end {_fmt(kf['msg_per_s'], 0)} msg/s ({kf.get('records'):,} records, "
                f"{kf.get('streams')} streams) vs the faster engine-only figure "
                f"{_fmt(base, 0)} msg/s (same records {_fmt(same, 0)}, batch sweep "
                f"{_fmt(_rate(k_eng)[0], 0)})",
            )
        )
    else:
        out.append(_verdict("kafka", None, "n/a", str(kf.get("reason", "not measured"))))

    if kf.get("durable_over_stateless"):
        cost = float(kf["durable_over_stateless"])
        stateless = kf.get("stateless", {})
        out.append(
            _verdict(
                "durable_cost",
                cost,
                f"{cost:.1%}",
                f"durable state {_fmt(kf['msg_per_s'], 0)} msg/s vs no state topic "
                f"{_fmt(stateless.get('records_per_s', math.nan), 0)} msg/s (median of the "
                "per-repeat ratios), commit interval 1 s",
            )
        )
    else:
        out.append(_verdict("durable_cost", None, "n/a", str(kf.get("reason", "not measured"))))

    out.append(_exactly_once_verdict(kf))

    rs = results.get("durable", {}).get("restore", {})
    if rs.get("streams_per_s"):
        out.append(
            _verdict(
                "restore",
                float(rs["streams_per_s"]),
                f"{rs['streams_per_s']:,.0f}/s",
                f"{rs['streams']:,} streams ({rs['state_bytes_per_stream']:,.0f} B per state "
                f"record) in {rs['seconds']:.2f} s, {rs['mb_per_s']:.1f} MB/s",
            )
        )
    else:
        reason = results.get("durable", {}).get("reason", "not measured")
        out.append(_verdict("restore", None, "n/a", str(reason)))

    tr = results.get("tiers", {})
    if tr.get("step_ratio"):
        out.append(
            _verdict(
                "tiers_1m",
                float(tr["step_ratio"]),
                f"{tr['step_ratio']:.3f}x",
                f"{tr['streams']:,} streams resident (device {tr['capacity']:,}, host "
                f"{tr['host_rows']:,} rows, the rest on disk): step {tr['step_ms_many']:.2f} ms "
                f"vs {tr['step_ms_few']:.2f} ms with 1k; cold read from disk "
                f"{tr['cold_read_us_per_stream']:.0f} us per stream",
            )
        )
    else:
        out.append(_verdict("tiers_1m", None, "n/a", "not measured"))

    cu = _rows(results, "catchup")
    # At the largest stream count measured: the catch-up after a restart or a rebalance,
    # when many streams are behind at once (the stricter case: compute dominates there).
    b_max = max((r["streams"] for r in cu), default=None)
    waves = _find(cu, method="waves", streams=b_max)
    scan = _find(cu, method="scan", streams=b_max)
    if waves and scan:
        ratio = _rate(scan[0])[0] / _rate(waves[0])[0]
        others = ", ".join(
            f"B={r['streams']}: {_rate(r)[0] / _rate(w[0])[0]:.2f}x"
            for r in _find(cu, method="scan")
            if r["streams"] != b_max and (w := _find(cu, method="waves", streams=r["streams"]))
        )
        out.append(
            _verdict(
                "catchup",
                ratio,
                f"{ratio:.2f}x (mean-based {_rate(scan[0])[1] / _rate(waves[0])[1]:.2f}x)",
                f"scan {_fmt(_rate(scan[0])[0], 0)} msg/s, waves {_fmt(_rate(waves[0])[0], 0)} "
                f"msg/s" + (f"; other stream counts: {others}" if others else ""),
                scope=f"T={scan[0]['pending_steps']}, {b_max} streams",
            )
        )
    else:
        out.append(_verdict("catchup", None, "n/a", "waves and scan not both measured"))

    out.append(_seed_frames_verdict(results.get("frames", {})))
    out.append(_frames_kafka_verdict(results.get("frames_kafka", {})))

    checked, offenders = 0, []
    timed = [
        (s, _rows(results, s)) for s in ("throughput", "cached_streams", "state_dtype", "catchup")
    ]
    timed.append(("frames", _rows(results.get("frames", {}), "rows")))
    for section, rows in timed:
        for r in rows:
            if "retraces_in_timed_region" in r:
                checked += 1
                if r["retraces_in_timed_region"]:
                    offenders.append(f"{section}:{r.get('model')}:{r.get('batch', '')}")
    for extra in (rp, rp.get("engine_same_groups", {})):
        if "retraces_in_timed_region" in extra:
            checked += 1
            if extra["retraces_in_timed_region"]:
                offenders.append("replay")
    out.append(
        _verdict(
            "no_retrace",
            len(offenders),
            f"{checked - len(offenders)}/{checked} timed regions without a retrace",
            ", ".join(offenders),
            scope="engine.trace_count over timed regions",
            ran=checked > 0,
        )
    )
    return out


def _seed_frames_verdict(fr: dict[str, Any]) -> dict[str, Any]:
    """The ``seed_frames`` goal from the frames section (``processor.bench.frames``): the
    best engine batch's median-based rate over the fastest seed-way variant's. NOT RUN
    without both, or when the two ways disagreed (a ratio of different computations)."""
    sm = fr.get("summary") or {}
    if fr.get("status") != "ran" or not sm:
        return _verdict("seed_frames", None, "n/a", str(fr.get("reason", "not measured")))
    ag = fr.get("agreement", {})
    ratio = float(sm["ratio"])
    by_batch = ", ".join(f"{b}: {r:.1f}x" for b, r in sm.get("ratio_by_batch", {}).items())
    detail = (
        f"engine {_fmt(sm['engine_msg_per_s'], 1)} frames/s at its best batch "
        f"{sm['best_batch']} vs the seed's way ({sm['seed_variant'].split(',')[0]}) "
        f"{_fmt(sm['seed_msg_per_s'], 1)} frames/s; by batch: {by_batch}"
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
        return _verdict(
            "seed_frames", None, measured, "the two ways disagree: " + detail, scope=scope
        )
    return _verdict("seed_frames", ratio, measured, detail, scope=scope)


def _frames_kafka_verdict(fk: dict[str, Any]) -> dict[str, Any]:
    """The ``frames_kafka`` goal: the lower of the raw and JPEG end-to-end rates over
    engine-only (medians of per-round ratios)."""
    if fk.get("status") != "ran":
        return _verdict("frames_kafka", None, "n/a", str(fk.get("reason", "not measured")))
    raw, jpeg = float(fk["raw_over_engine"]), float(fk["jpeg_over_engine"])
    rounds = fk.get("rounds", [])
    engine = statistics.median(r["engine_only"]["records_per_s"] for r in rounds)
    detail = (
        f"raw {raw:.0%}, JPEG {jpeg:.0%} of engine-only ({engine:,.0f} frames/s), "
        f"{len(rounds)} round(s)"
    )
    return _verdict(
        "frames_kafka",
        min(raw, jpeg),
        f"{min(raw, jpeg):.0%}",
        detail,
        scope=f"cnn_lstm, {fk.get('records', 0):,} frames of {fk.get('streams', 0)} streams",
    )


def frames_kafka_lines(fk: dict[str, Any]) -> list[str]:
    """The markdown of the camera-frames section: decode cost per frame, and raw and JPEG
    frames through Kafka against engine-only."""
    lines = ["## Camera frames: decode cost and frames through Kafka", ""]
    decode = fk.get("decode", [])
    if decode:
        lines += _table(
            ["encoding", "record bytes", "decode us/frame (decode_many, 512 frames)"],
            [
                [d["encoding"], f"{d['record_bytes']:,.0f}", f"{d['decode_us_per_frame']:.1f}"]
                for d in decode
            ],
        )
        lines.append("")
    if fk.get("status") != "ran":
        return [*lines, f"Through Kafka: not run ({fk.get('reason', '')}).", ""]
    rows = []
    for i, r in enumerate(fk.get("rounds", [])):
        rows.append(
            [
                i + 1,
                f"{r['engine_only']['records_per_s']:,.0f}",
                f"{r['raw']['records_per_s']:,.0f} ({r['raw_over_engine']:.0%})",
                f"{r['jpeg']['records_per_s']:,.0f} ({r['jpeg_over_engine']:.0%})",
                f"{r['raw']['input_bytes'] / r['raw']['records']:,.0f} / "
                f"{r['jpeg']['input_bytes'] / r['jpeg']['records']:,.0f}",
            ]
        )
    lines += _table(
        [
            "round",
            "engine-only frames/s",
            "raw end to end",
            "JPEG end to end",
            "bytes/record raw / JPEG",
        ],
        rows,
    )
    return [*lines, ""]


def frames_lines(fr: dict[str, Any]) -> list[str]:
    """The markdown of the frames section (seed's way vs engine on the seed frame model)."""
    lines = ["## Frames: the seed model, the seed's way vs the engine", ""]
    if fr.get("status") != "ran":
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
    lines += _table(
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
                _fmt(r["msg_per_s_median"], 1),
                _fmt(r["msg_per_s"], 1),
                _fmt(r["latency_p50_ms"], 2),
                _fmt(r["latency_p99_ms"], 2),
                _fmt(r.get("cpu_cores_used") or math.nan, 2),
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


#: The ``exactly_once`` goal is judged only on runs at least this many commit intervals
#: long: an exactly-once run's timer includes the wait for the end of its last interval (up
#: to one interval), which would otherwise decide the ratio (``--quick`` sizes).
EOS_MIN_INTERVALS = 5


def _exactly_once_verdict(kf: dict[str, Any]) -> dict[str, Any]:
    """The ``exactly_once`` goal from the Kafka section's ``exactly_once`` figures: the
    median per-pair ratio at the 1 s commit interval (NOT RUN without it, or when the
    at-least-once run lasted fewer than :data:`EOS_MIN_INTERVALS` intervals)."""
    eo = kf.get("exactly_once", {})
    row = next((r for r in eo.get("intervals", []) if r.get("commit_interval_ms") == 1000), None)
    ratio = float(row["eos_over_alos"]) if row else math.nan
    if row is None or math.isnan(ratio):
        return _verdict("exactly_once", None, "n/a", str(kf.get("reason", "not measured")))
    x, a = row["exactly_once"], row["at_least_once"]
    wait = float(x["seconds"]) - float(x.get("ack_seconds", x["seconds"]))
    if float(a["seconds"]) < EOS_MIN_INTERVALS:  # seconds of 1 s intervals
        return _verdict(
            "exactly_once",
            None,
            f"{ratio:.1%}",
            f"runs of {float(a['seconds']):.1f} s are shorter than {EOS_MIN_INTERVALS} commit "
            f"intervals: the exactly-once run's wait for its last commit ({wait:.2f} s) "
            "would decide the ratio",
        )
    others = ", ".join(
        f"{r['commit_interval_ms']} ms: {r['eos_over_alos']:.1%}"
        for r in eo.get("intervals", [])
        if r is not row
    )
    return _verdict(
        "exactly_once",
        ratio,
        f"{ratio:.1%}",
        f"exactly-once {_fmt(x['records_per_s'], 0)} msg/s (to the last output committed; "
        f"{wait:.2f} s of it after the last acknowledgement) vs at-least-once "
        f"{_fmt(a['records_per_s'], 0)} msg/s, median of {len(row['pairs'])} pair(s)"
        + (f"; other intervals: {others}" if others else ""),
    )


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def _clean(obj: Any) -> Any:
    """JSON-safe copy: drops keys starting with '_' (arrays kept for tests), NaN -> None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # NumPy scalars
        return _clean(obj.item())
    return obj


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(results), indent=2, sort_keys=False) + "\n")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    mm = results.get("matmul", {})
    quick = " (--quick: indicative only)" if results.get("quick") else ""
    gcs = results.get("gc", {})
    gc_line = (
        f"{gcs['tracked_objects']:,} tracked objects after loading the models; one full "
        f"collection takes {gcs['full_collect_ms']:.0f} ms."
        if "tracked_objects" in gcs
        else "not measured."
    )
    lines = [
        "# lstm-stream benchmark",
        "",
        f"Command: `{results.get('command', '')}`  ",
        f"Started {results.get('started_at', '?')}, wall time "
        f"{results.get('wall_time_s', 0):.0f} s{quick}.  ",
        f"Machine: {m.get('cpu_model')} ({m.get('cores_available')} cores available, flags "
        f"{', '.join(m.get('cpu_flags', []))}), {(m.get('mem_total_bytes') or 0) / 2**30:.0f} "
        f"GiB; TF {m.get('tensorflow')}, Keras {m.get('keras')}, NumPy {m.get('numpy')}.  ",
        f"TF threads: intra-op {m.get('tf_intra_op_threads')}, inter-op "
        f"{m.get('tf_inter_op_threads')}. Load average at start "
        f"{m.get('load_average_at_start')}, at end {results.get('load_average_at_end')} "
        "(the machine is shared; `cores used` below = process CPU time / wall time of the "
        "timed calls).  ",
        f"float32 matmul 1024³ (tf.function): best {mm.get('start', {}).get('best_gflops')} / "
        f"median {mm.get('start', {}).get('median_gflops')} GFLOP/s at start, best "
        f"{mm.get('end', {}).get('best_gflops')} at end; reference "
        f"{mm.get('reference_gflops')} GFLOP/s.  ",
        f"Python GC: {gc_line}",
        "",
        "Rates: `msg/s` = messages per call / median call time (robust to other jobs on the "
        "shared machine); `mean msg/s` = all messages / all call time. Latency is per call: "
        "per message for B0/B1, per batch step for B2/engine.",
        "",
        "## Performance goals",
        "",
        f"The project's performance goals; `{GOALS_DOC}` explains each one by its id (what "
        "is measured, why the threshold matters, how to reproduce it). PASS and MISS are "
        "judged on the figures of this run only; NOT RUN means this run lacks them.",
        "",
    ]
    lines += _table(
        ["id", "goal", "measured", "status", "detail"],
        [
            [f"`{g['id']}`", g["goal"], g["measured"], f"**{g['status']}**", g["detail"]]
            for g in results.get("goals", [])
        ],
    )
    ag = results.get("agreement", {})
    if ag:
        lines += ["## Agreement (same inputs, same weights)", ""]
        rows = []
        for name, a in ag.items():
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in a.get("max_abs_diff", {}).items())
            rows.append(
                [
                    name,
                    f"{a['streams']}x{a['steps']}",
                    diffs,
                    f"{a['tolerance']:.0e}",
                    "ok" if a.get("ok") else "**MISMATCH**",
                ]
            )
        lines += _table(
            ["model", "streams x steps", "max |diff| vs Keras whole-sequence", "tol", ""], rows
        )
    models = results.get("models", {})
    if models:
        lines += ["## Models", ""]
        lines += _table(
            [
                "model",
                "description",
                "FLOPs/msg (engine's count)",
                "not counted",
                "state bytes/stream (f32)",
            ],
            [
                [
                    k,
                    v["description"],
                    f"{v['flops_per_step']:,}",
                    f"{v.get('extra_flops', 0):,}",
                    f"{v['state_bytes_float32']:,}",
                ]
                for k, v in models.items()
            ],
        )
    tp = _rows(results, "throughput")
    ref = mm.get("reference_gflops") or math.nan
    for model in dict.fromkeys(r["model"] for r in tp):
        flops = models.get(model, {}).get("flops_per_step", 0)
        lines += [f"## Throughput: {model}", ""]
        rows = []
        for r in _find(tp, model=model):
            gf = flops * r["msg_per_s_median"] / 1e9 if r["method"] == "engine" else None
            rows.append(
                [
                    r["method"],
                    r.get("variant", ""),
                    r.get("batch", ""),
                    _fmt(r["msg_per_s_median"], 0),
                    _fmt(r["msg_per_s"], 0),
                    _fmt(r["latency_p50_ms"], 3),
                    _fmt(r["latency_p99_ms"], 3),
                    _fmt(r.get("cpu_cores_used") or math.nan, 2),
                    "" if gf is None else f"{gf:.1f} ({gf / ref:.0%})",
                    r.get("retraces_in_timed_region", ""),
                ]
            )
        lines += _table(
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
    cached = _rows(results, "cached_streams")
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
                    _fmt(r["latency_p50_ms"], 2),
                    _fmt(r["latency_p99_ms"], 2),
                    _fmt(r["msg_per_s_median"], 0),
                    _fmt(r.get("acquire_p50_ms", math.nan), 2),
                    _fmt(r.get("gather_scatter_p50_ms", math.nan), 2),
                    f"{gcs.get('tracked_objects', 0):,} / {gcs.get('full_collect_ms', 0):.0f} ms",
                    r["retraces_in_timed_region"],
                ]
            )
        lines += _table(
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
    dt = _rows(results, "state_dtype")
    if dt:
        lines += ["## State dtype (engine)", ""]
        lines += _table(
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
                    _fmt(r["msg_per_s_median"], 0),
                    _fmt(r["latency_p50_ms"], 2),
                    _fmt(r["latency_p99_ms"], 2),
                    r["retraces_in_timed_region"],
                ]
                for r in dt
            ],
        )
    cu = _rows(results, "catchup")
    if cu:
        lines += ["## Catch-up (T pending records per stream in one process() call)", ""]
        lines += _table(
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
                    _fmt(r["msg_per_s_median"], 0),
                    _fmt(r["latency_p50_ms"], 1),
                    r["wave_calls_per_call"],
                    r["scan_calls_per_call"],
                    r["retraces_in_timed_region"],
                ]
                for r in cu
            ],
        )
    rp = results.get("replay", {})
    lines += ["## Replay (decode -> engine -> encode, in-memory files)", ""]
    if rp.get("msg_per_s_median"):
        sg = rp.get("engine_same_groups", {})
        lines += _table(
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
                    _fmt(rp["msg_per_s_median"], 0),
                    _fmt(rp.get("replay_default_gc", {}).get("msg_per_s_median", math.nan), 0),
                    _fmt(sg.get("msg_per_s_median", math.nan), 0),
                    rp["decode_us_per_record"],
                    rp["encode_us_per_output"],
                    rp["input_bytes_per_record"],
                    rp["retraces_in_timed_region"],
                ]
            ],
        )
    else:
        lines += [f"Not run: {rp.get('reason', 'not measured')}", ""]
    gi = _rows(results, "gc_impact")
    if gi:
        lines += ["## Python GC in the steady state (engine step + output encoding)", ""]
        lines += _table(
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
                    _fmt(r["msg_per_s"], 0),
                    _fmt(r["msg_per_s_median"], 0),
                    _fmt(r["latency_p50_ms"], 2),
                    _fmt(r["latency_p99_ms"], 2),
                    f"{(r.get('gc_share') or 0):.1%}",
                    r["gen2_collections"],
                    r.get("gen2_ms_each") or "",
                ]
                for r in gi
            ],
        )
    kf = results.get("kafka", {})
    lines += ["## Kafka end to end", ""]
    if kf.get("msg_per_s"):
        e2e = kf.get("end_to_end", {})
        eo = kf.get("engine_only_same_records", {})
        lines += _table(
            [
                "model",
                "records",
                "streams",
                "partitions",
                "end-to-end msg/s",
                "engine-only msg/s (same records)",
                "mean batch",
                "engine busy",
                "pauses",
            ],
            [
                [
                    kf.get("model"),
                    f"{kf.get('records'):,}",
                    kf.get("streams"),
                    e2e.get("partitions"),
                    _fmt(kf["msg_per_s"], 0),
                    _fmt(eo.get("records_per_s", math.nan), 0),
                    _fmt(e2e.get("mean_batch", math.nan), 0),
                    f"{e2e.get('engine_busy_fraction', math.nan):.0%}",
                    e2e.get("pauses"),
                ]
            ],
        )
        lines += [
            f"Measured by `{kf.get('measured_by')}`: the records are produced first, then "
            "the processor is timed from its first fetched record to the broker's "
            "acknowledgement of its last output (median of the repeats).",
            "",
        ]
    else:
        lines += [f"{kf.get('status', 'not_run')}: {kf.get('reason', '')}", ""]
    if kf.get("stateless"):
        st = kf["stateless"]
        lines += [
            "Durable state (the default: a state topic checkpointed every 1 s) against the "
            f"same run without a state topic: {_fmt(kf['msg_per_s'], 0)} vs "
            f"{_fmt(st.get('records_per_s', math.nan), 0)} msg/s "
            f"({kf['durable_over_stateless']:.1%}, median of the per-repeat ratios); state "
            f"{e2e.get('state_bytes_per_s', math.nan) / 1e6:.1f} MB/s against output "
            f"{e2e.get('output_bytes_per_s', math.nan) / 1e6:.1f} MB/s.",
            "",
        ]
    lines += _exactly_once_lines(kf)
    du = results.get("durable", {})
    lines += ["## Durable state", ""]
    if du.get("restore"):
        rs = du["restore"]
        lines += [
            f"Restore: {rs['streams']:,} streams of {du.get('model')} "
            f"({rs['state_bytes_per_stream']:,.0f} B per state record, {rs['partitions']} "
            f"partitions) in {rs['seconds']:.2f} s: {rs['streams_per_s']:,.0f} streams/s, "
            f"{rs['mb_per_s']:.1f} MB/s.",
            "",
        ]
        lines += _table(
            ["active streams", "records", "msg/s", "state MB/s", "output MB/s", "state/output"],
            [
                [
                    f"{v['streams']:,}",
                    f"{v['records']:,}",
                    _fmt(v["records_per_s"], 0),
                    f"{v['state_bytes_per_s'] / 1e6:.2f}",
                    f"{v['output_bytes_per_s'] / 1e6:.2f}",
                    f"{v['state_over_output']:.2f}",
                ]
                for v in du.get("state_volume", [])
            ],
        )
        lines += [
            f"Measured by `{du.get('measured_by')}`: state bytes are keys and values written "
            "to the state topic (each changed stream once per 1 s checkpoint), output bytes "
            "the keys and values of the output topic.",
            "",
        ]
    else:
        lines += [f"{du.get('status', 'not_run')}: {du.get('reason', '')}", ""]
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
    if results.get("frames"):
        lines += frames_lines(results["frames"])
    if results.get("frames_kafka"):
        lines += frames_kafka_lines(results["frames_kafka"])
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
                + [_fmt(s.get(k) or math.nan, 2) for k in keys]
                + [p.get("python_us_per_record", ""), p.get("host_share_of_step", "")]
                + [f"{eng:.0f} / {ref:.0f} ({eng / ref:.0%})" if eng and ref else ""]
            )
        lines += _table(
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
    errors = results.get("errors", [])
    if errors:
        lines += ["## Errors (sections that failed; the rest of the run went on)", ""]
        lines += [f"- {e['section']}: {e['error']}" for e in errors] + [""]
    notes = results.get("notes", [])
    skipped = results.get("config", {}).get("skipped", [])
    if notes or skipped:
        lines += ["## Notes", ""] + [f"- {n}" for n in [*notes, *skipped]] + [""]
    return "\n".join(lines)


def _exactly_once_lines(kf: dict[str, Any]) -> list[str]:
    """The Kafka section's exactly-once tables (throughput per commit interval, then the
    read_committed latency); nothing when the section did not measure them."""
    eo = kf.get("exactly_once", {})
    rows, latency = eo.get("intervals", []), eo.get("latency", [])
    if not rows and not latency:
        return []
    lines = ["### Exactly-once against at-least-once", ""]
    if rows:
        eng = kf.get("engine_only_same_records", {}).get("records_per_s", math.nan)

        def opt(v: Any, digits: int = 3) -> str:
            return "n/a" if v is None else _fmt(float(v), digits)

        lines += _table(
            [
                "commit interval",
                "at-least-once msg/s",
                "exactly-once msg/s",
                "EOS / ALOS",
                "EOS / engine-only",
                "EOS wait after last ack (s)",
                "transactions",
                "transaction s (mean)",
                "EOS engine busy",
            ],
            [
                [
                    f"{r['commit_interval_ms']:,} ms",
                    _fmt(r["at_least_once"]["records_per_s"], 0),
                    _fmt(r["exactly_once"]["records_per_s"], 0),
                    f"{r['eos_over_alos']:.1%}",
                    f"{r['exactly_once']['records_per_s'] / eng:.1%}",
                    opt(
                        r["exactly_once"]["seconds"]
                        - r["exactly_once"].get("ack_seconds", r["exactly_once"]["seconds"]),
                        2,
                    ),
                    opt(r["exactly_once"].get("transactions_committed"), 0),
                    opt(r["exactly_once"].get("transaction_seconds_mean")),
                    f"{r['exactly_once'].get('engine_busy_fraction', math.nan):.0%}",
                ]
                for r in rows
            ],
        )
        lines += [
            f"{rows[0]['records']:,} records per run, both modes with the state topic; "
            "EOS / ALOS is the median of the per-pair ratios (each pair measured back to "
            "back, which goes first alternating), the rates are each mode's median run. The "
            "exactly-once timer stops when the last output is committed (the group's "
            "committed offsets at the end of the input and no transaction open on the "
            "output topic), so it includes the wait for the end of the last commit interval "
            "(the column *wait after last ack*); where that wait is a large share of the run "
            "(short runs, long intervals) the figure understates the steady rate. "
            f"Engine-only on the same records: {_fmt(eng, 0)} msg/s.",
            "",
        ]
    if latency:
        lines += _table(
            ["commit interval", "guarantee", "records/s", "outputs read", "p50 ms", "p99 ms"],
            [
                [
                    f"{r['commit_interval_ms']:,} ms",
                    r["processing_guarantee"],
                    _fmt(r["rate"], 0),
                    f"{r['samples']:,}",
                    _fmt(r["p50_ms"], 1),
                    _fmt(r["p99_ms"], 1),
                ]
                for r in latency
            ],
        )
        lines += [
            "End-to-end latency as a `read_committed` reader of the output topic sees it: a "
            "paced input whose records carry `ts` (the wall clock when made), latency = when "
            "the reader got the output minus its `ts`, the first seconds of each run left "
            f"out (`{eo.get('measured_by')}.bench_visible_latency`). Producer, processor and "
            "reader share one process and its event loop.",
            "",
        ]
    return lines


def plots(results: dict[str, Any], out: Path) -> list[str]:
    """Write the PNG plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")

    def plain_log_x(ax: Any) -> None:
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())

    written = []
    tp = _rows(results, "throughput")
    models = list(dict.fromkeys(r["model"] for r in tp))
    if models:
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            rows = _find(tp, model=model)
            for method, style in (("engine", "o-"), ("B2", "s--")):
                pts = sorted(
                    (r["batch"], r["msg_per_s_median"])
                    for r in _find(rows, method=method)
                    if not r.get("xla")
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, label=method)
            for r in _find(rows, method="engine", xla=True):
                ax.plot([r["batch"]], [r["msg_per_s_median"]], "r*", ms=10, label="engine, XLA")
            for method, color, ls in (("B1", "tab:red", ":"), ("B0", "tab:gray", "-.")):
                rs = _find(rows, method=method)
                if rs:
                    best = max(rs, key=lambda r: r["msg_per_s_median"])
                    note = ", fastest variant" if method == "B0" else ""
                    ax.axhline(
                        best["msg_per_s_median"],
                        color=color,
                        ls=ls,
                        label=f"{method} (per message{note})",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            plain_log_x(ax)
            ax.set_xlabel("batch size (streams per step)")
            ax.set_ylabel("messages / s (median-based)")
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_batch.png", dpi=100)
        plt.close(fig)
        written.append("throughput_vs_batch.png")

    cached = [r for r in _rows(results, "cached_streams") if "skipped" not in r]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if cached:
        xs = [r["cached"] for r in cached]
        p50 = [r["latency_p50_ms"] for r in cached]
        p99 = [r["latency_p99_ms"] for r in cached]
        ax.plot(xs, p50, "o-", label="p50")
        ax.plot(xs, p99, "^--", label="p99")
        ax.set_xscale("log")
        plain_log_x(ax)
        ax.set_title(f"{cached[0]['model']}, batch {cached[0]['batch']}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
    ax.set_xlabel("cached streams")
    ax.set_ylabel("engine step time (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "step_time_vs_cached.png", dpi=100)
    plt.close(fig)
    written.append("step_time_vs_cached.png")

    samples = results.get("latency_samples_ms", {})
    names = list(samples)
    fig, axes = plt.subplots(
        1, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 4.2), squeeze=False
    )
    for ax, model in zip(axes[0], names or ["none"], strict=True):
        for method, vals in samples.get(model, {}).items():
            if vals:
                xs = sorted(vals)
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post", label=method)
        ax.set_xscale("log")
        plain_log_x(ax)
        ax.set_xlabel("latency per call (ms)")
        ax.set_ylabel("fraction of calls")
        hb = results.get("config", {}).get("headline_batch")
        ax.set_title(f"{model} (B2/engine: batch {hb})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=100)
    plt.close(fig)
    written.append("latency_cdf.png")
    return written


def write_all(results: dict[str, Any], out: Path) -> None:
    """results.json, results.md and the plots into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plots(results, out)
    write_json(results, out / "results.json")
    (out / "results.md").write_text(markdown(_clean(results)))
