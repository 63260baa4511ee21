"""Verdicts on the goals measured through a Kafka broker: end to end against engine-only,
durable state against stateless, exactly-once against at-least-once, restore, and camera
frames. Each is a pure function of the results (or of its section) returning one row of the
goals table (see :func:`processor.bench.goals.verdict`)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from processor.bench.goals import HEADLINE_MODEL, verdict
from processor.bench.results import SectionStatus, engine_row, fmt, rates, section_rows

#: The ``exactly_once`` goal is judged only on runs at least this many commit intervals
#: long: an exactly-once run's timer includes the wait for the end of its last interval (up
#: to one interval), which would otherwise decide the ratio (``--quick`` sizes).
EOS_MIN_INTERVALS = 5


def kafka(results: dict[str, Any]) -> dict[str, Any]:
    """The ``kafka`` goal: end to end over the faster engine-only figure."""
    tp = section_rows(results, "throughput")
    kf = results.get("kafka", {})
    if kf.get("msg_per_s"):
        same = float(kf.get("engine_only_same_records", {}).get("records_per_s", 0.0))
        k_eng = engine_row(tp, kf.get("model", HEADLINE_MODEL), kf.get("max_batch"))
        base = max(same, rates(k_eng)[0] if k_eng else 0.0)
        frac = kf["msg_per_s"] / base
        return verdict(
            "kafka",
            frac,
            f"{frac:.1%}",
            f"end to end {fmt(kf['msg_per_s'], 0)} msg/s ({kf.get('records'):,} records, "
            f"{kf.get('streams')} streams) vs the faster engine-only figure "
            f"{fmt(base, 0)} msg/s (same records {fmt(same, 0)}, batch sweep "
            f"{fmt(rates(k_eng)[0], 0)})",
        )
    return verdict("kafka", None, "n/a", str(kf.get("reason", "not measured")))


def durable_cost(results: dict[str, Any]) -> dict[str, Any]:
    """The ``durable_cost`` goal: durable state over no state topic (median of repeats)."""
    kf = results.get("kafka", {})
    if kf.get("durable_over_stateless"):
        cost = float(kf["durable_over_stateless"])
        stateless = kf.get("stateless", {})
        return verdict(
            "durable_cost",
            cost,
            f"{cost:.1%}",
            f"durable state {fmt(kf['msg_per_s'], 0)} msg/s vs no state topic "
            f"{fmt(stateless.get('records_per_s', math.nan), 0)} msg/s (median of the "
            "per-repeat ratios), commit interval 1 s",
        )
    return verdict("durable_cost", None, "n/a", str(kf.get("reason", "not measured")))


def exactly_once(kf: dict[str, Any]) -> dict[str, Any]:
    """The ``exactly_once`` goal from the Kafka section's ``exactly_once`` figures: the
    median per-pair ratio at the 1 s commit interval (NOT RUN without it, or when the
    at-least-once run lasted fewer than :data:`EOS_MIN_INTERVALS` intervals)."""
    eo = kf.get("exactly_once", {})
    row = next((r for r in eo.get("intervals", []) if r.get("commit_interval_ms") == 1000), None)
    ratio = float(row["eos_over_alos"]) if row else math.nan
    if row is None or math.isnan(ratio):
        return verdict("exactly_once", None, "n/a", str(kf.get("reason", "not measured")))
    x, a = row["exactly_once"], row["at_least_once"]
    wait = float(x["seconds"]) - float(x.get("ack_seconds", x["seconds"]))
    if float(a["seconds"]) < EOS_MIN_INTERVALS:  # seconds of 1 s intervals
        return verdict(
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
    return verdict(
        "exactly_once",
        ratio,
        f"{ratio:.1%}",
        f"exactly-once {fmt(x['records_per_s'], 0)} msg/s (to the last output committed; "
        f"{wait:.2f} s of it after the last acknowledgement) vs at-least-once "
        f"{fmt(a['records_per_s'], 0)} msg/s, median of {len(row['pairs'])} pair(s)"
        + (f"; other intervals: {others}" if others else ""),
    )


def restore(results: dict[str, Any]) -> dict[str, Any]:
    """The ``restore`` goal: streams restored from a state topic per second."""
    rs = results.get("durable", {}).get("restore", {})
    if rs.get("streams_per_s"):
        return verdict(
            "restore",
            float(rs["streams_per_s"]),
            f"{rs['streams_per_s']:,.0f}/s",
            f"{rs['streams']:,} streams ({rs['state_bytes_per_stream']:,.0f} B per state "
            f"record) in {rs['seconds']:.2f} s, {rs['mb_per_s']:.1f} MB/s",
        )
    reason = results.get("durable", {}).get("reason", "not measured")
    return verdict("restore", None, "n/a", str(reason))


def frames_kafka(fk: dict[str, Any]) -> dict[str, Any]:
    """The ``frames_kafka`` goal: the lower of the raw and JPEG end-to-end rates over
    engine-only (medians of per-round ratios)."""
    if fk.get("status") != SectionStatus.RAN:
        return verdict("frames_kafka", None, "n/a", str(fk.get("reason", "not measured")))
    raw, jpeg = float(fk["raw_over_engine"]), float(fk["jpeg_over_engine"])
    rounds = fk.get("rounds", [])
    engine = statistics.median(r["engine_only"]["records_per_s"] for r in rounds)
    detail = (
        f"raw {raw:.0%}, JPEG {jpeg:.0%} of engine-only ({engine:,.0f} frames/s), "
        f"{len(rounds)} round(s)"
    )
    return verdict(
        "frames_kafka",
        min(raw, jpeg),
        f"{min(raw, jpeg):.0%}",
        detail,
        scope=f"cnn_lstm, {fk.get('records', 0):,} frames of {fk.get('streams', 0)} streams",
    )
