"""The host-path benchmarks (``processor.bench.host``, ``processor.bench.host_kafka``): the
goals are declared and judged PASS/MISS/NOT RUN on synthetic figures, the floors compute
what they claim, and the sections run at tiny sizes without a broker. No timing is
asserted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processor import codec
from processor.bench import config, host, host_kafka, host_verdicts, report
from processor.bench.goals import GOALS, HOST_MODEL
from processor.bench.harness import Budget
from processor.bench.markdown_host import host_lines
from processor.bench.models import MODELS, load
from processor.records import Output

PP_SUMMARY = (
    "200000 records sent, 91240.875912 records/sec (15.23 MB/sec), 180.41 ms avg latency, "
    "412.00 ms max latency, 171 ms 50th, 380 ms 95th, 405 ms 99th, 411 ms 99.9th."
)


def tiny_host_config() -> config.Config:
    """--quick at even smaller sizes: a handful of calls of 8 streams."""
    budget = Budget(min_time=0.0, min_steps=2, warmup_steps=1)
    return replace(
        config.quick_config(["tiny"], min_time=0.0),
        budget=budget,
        host_streams=8,
        host_replay_steps=2,
        pool_size=64,
    )


def _summary(rate: float) -> dict[str, Any]:
    return {"msg_per_s_median": rate, "latency_p50_ms": 1.0}


def _engine(ratio: float, goal_sizes: bool = True) -> dict[str, Any]:
    return {
        "status": "ran",
        "streams": 1024,
        "batch": 1024,
        "goal_sizes": goal_sizes,
        "process": _summary(1024 * ratio),
        "step_floor": _summary(1024.0),
        "process_ms_p50": 1.0 / ratio,
        "floor_ms_p50": 1.0,
        "process_over_floor": ratio,
        "bookkeeping_us_per_record": 0.5,
    }


def _replay(ratio: float, goal_sizes: bool = True) -> dict[str, Any]:
    return {
        "status": "ran",
        "streams": 1024,
        "records_per_file": 16_384,
        "goal_sizes": goal_sizes,
        "input_bytes_per_record": 170.0,
        "replay": _summary(1000.0 * ratio),
        "codec_floor": _summary(1000.0),
        "replay_over_codec": ratio,
        "unpack_us_per_record": 0.5,
        "pack_us_per_output": 0.5,
    }


def _kafka(ratio: float | None, goal_sizes: bool = True) -> dict[str, Any]:
    pp: dict[str, Any] = (
        {"records_per_s": 100_000.0, "record_size": 170}
        if ratio is not None
        else {"not_run": "no java on the PATH"}
    )
    out: dict[str, Any] = {
        "status": "ran",
        "records": 200_000,
        "streams": 2048,
        "goal_sizes": goal_sizes,
        "value_bytes_per_record": 170.0,
        "key_bytes_per_record": 4.5,
        "msg_per_s": 100_000.0 * (ratio or 0.5),
        "end_to_end": {"mean_batch": 1000.0, "engine_busy_fraction": 0.5},
        "producer_performance": pp,
        "getmany": {"records_per_s": 300_000.0},
        "batch_append": {"msg_per_s_median": 400_000.0},
    }
    if ratio is not None:
        out["run_over_producer_performance"] = ratio
    return out


def test_the_host_goals_are_declared_with_their_thresholds() -> None:
    by_id = {g.id: g for g in GOALS}
    assert (by_id["host_engine"].threshold, by_id["host_engine"].at_most) == (0.7, False)
    assert (by_id["host_replay"].threshold, by_id["host_replay"].at_most) == (0.5, False)
    assert (by_id["host_kafka"].threshold, by_id["host_kafka"].at_most) == (0.7, False)
    assert HOST_MODEL in MODELS
    assert MODELS[HOST_MODEL].input_shape == (32,)


@pytest.mark.parametrize(
    ("verdict", "make", "threshold"),
    [
        (host_verdicts.host_engine, _engine, 0.7),
        (host_verdicts.host_replay, _replay, 0.5),
        (host_verdicts.host_kafka, _kafka, 0.7),
    ],
)
def test_host_verdicts_judge_the_ratio_at_the_goal_sizes_only(
    verdict: Any, make: Any, threshold: float
) -> None:
    assert verdict(make(threshold))["status"] == "PASS"  # inclusive
    assert verdict(make(threshold * 1.5))["status"] == "PASS"
    assert verdict(make(threshold - 0.01))["status"] == "MISS"
    # Below the goal's sizes (--quick): the figures are shown, the goal is not judged.
    small = verdict(make(threshold * 1.5, goal_sizes=False))
    assert small["status"] == "NOT RUN" and "judged at" in small["detail"]
    assert verdict({})["status"] == "NOT RUN"
    assert verdict({"status": "not_run", "reason": "no broker"})["detail"] == "no broker"


def test_host_kafka_is_not_run_without_producer_performance() -> None:
    row = host_verdicts.host_kafka(_kafka(None))
    assert row["status"] == "NOT RUN" and "no java" in row["detail"]
    lines = host_lines({"host_kafka": _kafka(None)})
    assert any("ProducerPerformance (no java" in line for line in lines)


def test_the_report_judges_the_host_goals_in_goal_order() -> None:
    results = {
        "host_engine": _engine(0.3),
        "host_replay": _replay(0.6),
        "host_kafka": _kafka(0.2),
    }
    rows = report.evaluate_goals(results)
    assert [r["id"] for r in rows] == [g.id for g in GOALS]
    status = {r["id"]: r["status"] for r in rows}
    assert (status["host_engine"], status["host_replay"], status["host_kafka"]) == (
        "MISS",
        "PASS",
        "MISS",
    )


def test_no_retrace_counts_the_host_regions() -> None:
    results = {
        "host_engine": {"process": {"retraces_in_timed_region": 1}},
        "host_replay": {"replay": {"retraces_in_timed_region": 0}},
    }
    row = {r["id"]: r for r in report.evaluate_goals(results)}["no_retrace"]
    assert row["status"] == "MISS" and row["detail"] == "host_engine"
    assert row["measured"] == "1/2 timed regions without a retrace"


def test_producer_performance_summary_is_parsed_from_its_last_line() -> None:
    progress = (
        "100000 records sent, 99000.1 records/sec (16.00 MB/sec), 1.0 ms avg latency, "
        "9.0 ms max latency."
    )
    got = host_kafka.parse_producer_performance(f"{progress}\n{PP_SUMMARY}\n")
    assert got == {
        "records": 200_000,
        "records_per_s": 91240.875912,
        "mb_per_s": 15.23,
        "latency_avg_ms": 180.41,
        "latency_max_ms": 412.0,
    }
    with pytest.raises(ValueError, match="no ProducerPerformance summary"):
        host_kafka.parse_producer_performance("log4j: no appenders\n")


def test_producer_performance_needs_the_kafka_jars(tmp_path: Path) -> None:
    with pytest.raises(host_kafka.FloorUnavailable):
        host_kafka.producer_performance("b:9092", "t", records=10, record_size=170, libs=tmp_path)


def test_producer_props_are_the_runtimes_producer_settings() -> None:
    from processor.kafka.io.clients import PRODUCER_DEFAULTS

    props = dict(p.split("=", 1) for p in host_kafka.producer_props("h:1"))
    assert props == {
        "bootstrap.servers": "h:1",
        "acks": str(PRODUCER_DEFAULTS["acks"]),
        "linger.ms": str(PRODUCER_DEFAULTS["linger_ms"]),
        "batch.size": str(PRODUCER_DEFAULTS["max_batch_size"]),
    }


def test_the_codec_floor_packs_what_the_output_encoder_writes() -> None:
    """The floor's maps are output records: packed, they are the encoder's bytes."""
    import msgpack

    maps = host.output_dicts(["a", "b"], 2, (8,))
    assert [(m["stream"], m["seq"]) for m in maps] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    for m in maps:
        encoded = codec.encode_output(Output(m["stream"], m["seq"], np.zeros(8, np.float32)))
        assert msgpack.packb(m, use_bin_type=True) == encoded
    data = b"".join(codec.encode_input("s", k, np.ones(32, np.float32)) for k in range(5))
    assert host.unpack_all(data) == 5
    assert host.pack_all(maps) == sum(len(msgpack.packb(m, use_bin_type=True)) for m in maps)


def test_the_host_sections_run_at_tiny_sizes_without_a_broker() -> None:
    cfg = tiny_host_config()
    assert cfg.bootstrap_servers is None
    engine = host.host_engine(cfg, lambda _: None)
    assert engine["status"] == "ran" and engine["goal_sizes"] is False
    assert engine["process"]["retraces_in_timed_region"] == 0
    assert engine["process"]["messages"] > 0 and engine["step_floor"]["messages"] > 0
    assert engine["process_over_floor"] > 0
    replayed = host.host_replay(cfg, lambda _: None)
    assert replayed["status"] == "ran" and replayed["records_per_file"] == 16
    assert replayed["replay"]["retraces_in_timed_region"] == 0
    assert replayed["replay_over_codec"] > 0
    kafka = host_kafka.host_kafka(cfg, lambda _: None)
    assert kafka == {"status": "not_run", "reason": "no --bootstrap-servers given"}
    results = {"host_engine": engine, "host_replay": replayed, "host_kafka": kafka}
    lines = "\n".join(host_lines(results))
    for heading in ("## Host path", "### Engine", "### Replay", "### Kafka"):
        assert heading in lines, heading
    status = {r["id"]: r["status"] for r in report.evaluate_goals(results)}
    assert status["host_engine"] == status["host_replay"] == status["host_kafka"] == "NOT RUN"


def test_the_free_model_is_one_lstm4_and_a_dense8_head() -> None:
    import keras

    bm = load(HOST_MODEL, seed=1)
    lstm, head = (
        layer for layer in bm.keras_model.layers if not isinstance(layer, keras.layers.InputLayer)
    )
    assert isinstance(lstm, keras.layers.LSTM) and lstm.units == 4
    assert isinstance(head, keras.layers.Dense) and head.units == 8
    assert tuple(bm.step_model.output_shape) == (8,)


def test_the_quick_config_runs_the_host_sections_below_the_goal_sizes() -> None:
    quick, full = config.quick_config(["tiny"]), config.full_config(["lstm2x256"])
    assert (full.host_streams, full.host_kafka_streams) == (1024, 2048)
    assert quick.host_streams < full.host_streams
    assert quick.host_kafka_records < full.host_kafka_records
