"""The markdown of the host-path sections (free model): the engine against its step-only
floor, replay against the msgpack codec floor, and ``run`` through Kafka against
ProducerPerformance and aiokafka's own floors. A pure function of the results dict."""

from __future__ import annotations

import math
from typing import Any

from processor.bench.results import SectionStatus, fmt, markdown_table


def _us(rate: float) -> str:
    """Microseconds per record at ``rate`` records/s."""
    return fmt(1e6 / rate, 2) if rate else "n/a"


def _engine(he: dict[str, Any]) -> list[str]:
    n = he["batch"]
    points = [("Engine.process", "process"), ("step-only floor", "step_floor")]
    if "step_floor_xla" in he:
        points.append(("step-only floor, XLA", "step_floor_xla"))
    rows = [
        [
            label,
            fmt(he[k]["latency_p50_ms"], 3),
            fmt(he[k]["msg_per_s_median"], 0),
            _us(he[k]["msg_per_s_median"]),
        ]
        for label, k in points
    ]
    return [
        f"### Engine: batches of {n:,} records of {he['streams']:,} streams",
        "",
        *markdown_table(["point", "p50 ms per batch", "msg/s", "us per record"], rows),
        f"Engine.process runs at {he['process_over_floor']:.0%} of the step-only floor (the "
        "engine's compiled gather -> step -> scatter on tensors made once); its bookkeeping "
        f"(grouping, cache lookups, input packing, Output objects) costs "
        f"{he['bookkeeping_us_per_record']:.2f} us per record.",
        "",
    ]


def _replay(hr: dict[str, Any]) -> list[str]:
    rows = [
        ["replay", fmt(hr["replay"]["msg_per_s_median"], 0), _us(hr["replay"]["msg_per_s_median"])],
        [
            "codec floor (msgpack unpack + pack)",
            fmt(hr["codec_floor"]["msg_per_s_median"], 0),
            _us(hr["codec_floor"]["msg_per_s_median"]),
        ],
        ["msgpack unpack alone", "", fmt(hr["unpack_us_per_record"], 2)],
        ["msgpack packb alone", "", fmt(hr["pack_us_per_output"], 2)],
    ]
    return [
        f"### Replay: files of {hr['records_per_file']:,} records of {hr['streams']:,} streams "
        f"({hr['input_bytes_per_record']:.0f} B per record)",
        "",
        *markdown_table(["point", "msg/s", "us per record"], rows),
        f"Replay runs at {hr['replay_over_codec']:.0%} of what msgpack alone does with the "
        "same bytes.",
        "",
    ]


def _kafka(hk: dict[str, Any]) -> list[str]:
    if hk.get("status") != SectionStatus.RAN:
        return ["### Kafka", "", f"{hk.get('status', 'not_run')}: {hk.get('reason', '')}", ""]
    pp = hk.get("producer_performance", {})
    pp_rate = float(pp.get("records_per_s", math.nan))
    e2e = hk["end_to_end"]
    runs = pp.get("runs_records_per_s", [])
    pp_label = "ProducerPerformance" + (f" ({pp['not_run']})" if "not_run" in pp else "")
    if len(runs) > 1:
        pp_label += f" (faster of {len(runs)} runs: {', '.join(fmt(r, 0) for r in runs)})"
    rows = [
        ["run end to end (free model)", fmt(hk["msg_per_s"], 0), _us(hk["msg_per_s"])],
        [
            pp_label,
            fmt(pp_rate, 0),
            _us(pp_rate) if not math.isnan(pp_rate) else "n/a",
        ],
        [
            "aiokafka getmany, nothing else",
            fmt(hk["getmany"]["records_per_s"], 0),
            _us(hk["getmany"]["records_per_s"]),
        ],
        [
            "aiokafka BatchBuilder.append, not sent",
            fmt(hk["batch_append"]["msg_per_s_median"], 0),
            _us(hk["batch_append"]["msg_per_s_median"]),
        ],
    ]
    ratio = hk.get("run_over_producer_performance")
    return [
        f"### Kafka: {hk['records']:,} records of {hk['streams']:,} streams "
        f"({hk['value_bytes_per_record']:.0f} B values, {hk['key_bytes_per_record']:.0f} B keys)",
        "",
        *markdown_table(["figure", "records/s", "us per record"], rows),
        f"run: mean batch {fmt(e2e.get('mean_batch', math.nan), 0)}, engine busy "
        f"{e2e.get('engine_busy_fraction', math.nan):.0%}"
        + (f"; run / ProducerPerformance = {ratio:.0%}" if ratio is not None else "")
        + ". ProducerPerformance writes records of the same value size with the runtime's "
        "producer settings; the two aiokafka figures bound what a record path on aiokafka "
        "can reach.",
        "",
    ]


def host_lines(results: dict[str, Any]) -> list[str]:
    """The host-path section (nothing when the run has none of its parts)."""
    he, hr = results.get("host_engine", {}), results.get("host_replay", {})
    hk = results.get("host_kafka", {})
    if not (he or hr or hk):
        return []
    lines = [
        "## Host path (free model: LSTM(4), almost no compute)",
        "",
        "Each figure against a floor measured in the same run (the engine's and replay's in "
        "the same alternating time slices).",
        "",
    ]
    for part, render in ((he, _engine), (hr, _replay)):
        if part.get("status") == SectionStatus.RAN:
            lines += render(part)
        elif part:
            lines += [f"{part.get('status')}: {part.get('reason', '')}", ""]
    if hk:
        lines += _kafka(hk)
    return lines
