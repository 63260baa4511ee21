"""The markdown of the sections measured through a Kafka broker: end to end against
engine-only and durable state against stateless, exactly-once against at-least-once, the
durable state's restore and state volume, and camera frames. Each function returns the
lines of one section from the results (or from its section of them)."""

from __future__ import annotations

import math
from typing import Any

from processor.bench.results import SectionStatus, fmt, markdown_table


def kafka_lines(results: dict[str, Any]) -> list[str]:
    """Kafka end to end (always a heading), durable state's cost and the exactly-once tables."""
    lines: list[str] = []
    kf = results.get("kafka", {})
    lines += ["## Kafka end to end", ""]
    if kf.get("msg_per_s"):
        e2e = kf.get("end_to_end", {})
        eo = kf.get("engine_only_same_records", {})
        lines += markdown_table(
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
                    fmt(kf["msg_per_s"], 0),
                    fmt(eo.get("records_per_s", math.nan), 0),
                    fmt(e2e.get("mean_batch", math.nan), 0),
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
            f"same run without a state topic: {fmt(kf['msg_per_s'], 0)} vs "
            f"{fmt(st.get('records_per_s', math.nan), 0)} msg/s "
            f"({kf['durable_over_stateless']:.1%}, median of the per-repeat ratios); state "
            f"{e2e.get('state_bytes_per_s', math.nan) / 1e6:.1f} MB/s against output "
            f"{e2e.get('output_bytes_per_s', math.nan) / 1e6:.1f} MB/s.",
            "",
        ]
    lines += exactly_once_lines(kf)
    return lines


def durable_lines(results: dict[str, Any]) -> list[str]:
    """Durable state: restore and state volume (always a heading)."""
    lines: list[str] = []
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
        lines += markdown_table(
            ["active streams", "records", "msg/s", "state MB/s", "output MB/s", "state/output"],
            [
                [
                    f"{v['streams']:,}",
                    f"{v['records']:,}",
                    fmt(v["records_per_s"], 0),
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
    return lines


def exactly_once_lines(kf: dict[str, Any]) -> list[str]:
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
            return "n/a" if v is None else fmt(float(v), digits)

        lines += markdown_table(
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
                    fmt(r["at_least_once"]["records_per_s"], 0),
                    fmt(r["exactly_once"]["records_per_s"], 0),
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
            f"Engine-only on the same records: {fmt(eng, 0)} msg/s.",
            "",
        ]
    if latency:
        lines += markdown_table(
            ["commit interval", "guarantee", "records/s", "outputs read", "p50 ms", "p99 ms"],
            [
                [
                    f"{r['commit_interval_ms']:,} ms",
                    r["processing_guarantee"],
                    fmt(r["rate"], 0),
                    f"{r['samples']:,}",
                    fmt(r["p50_ms"], 1),
                    fmt(r["p99_ms"], 1),
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


def frames_kafka_lines(fk: dict[str, Any]) -> list[str]:
    """The markdown of the camera-frames section: decode cost per frame, and raw and JPEG
    frames through Kafka against engine-only."""
    lines = ["## Camera frames: decode cost and frames through Kafka", ""]
    decode = fk.get("decode", [])
    if decode:
        lines += markdown_table(
            ["encoding", "record bytes", "decode us/frame (decode_many, 512 frames)"],
            [
                [d["encoding"], f"{d['record_bytes']:,.0f}", f"{d['decode_us_per_frame']:.1f}"]
                for d in decode
            ],
        )
        lines.append("")
    if fk.get("status") != SectionStatus.RAN:
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
    lines += markdown_table(
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
