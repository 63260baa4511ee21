"""``lstm-stream bench``: the methods compute the same thing, and a (tiny) run writes
complete results. No timing is asserted anywhere: speed is only reported."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processor.bench import baselines as bl
from processor.bench import command, config, models, report
from processor.bench.agreement import agreement
from processor.bench.goals import GOALS, GOALS_DOC, Goal
from processor.bench.harness import Budget
from processor.bench.markdown import markdown
from processor.bench.results import BREAKDOWN_PARTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny() -> models.BenchModel:
    return models.load("tiny", seed=3)


def tiny_config() -> config.Config:
    """Even smaller than --quick: every section runs, with a handful of calls each."""
    cfg = config.quick_config(["tiny"], min_time=0.0)
    budget = Budget(min_time=0.0, min_steps=2, warmup_steps=1)
    return replace(
        cfg,
        batches=(1, 8),
        headline_batch=8,
        budget=budget,
        b0_budget=budget,
        predict_budget=Budget(min_time=0.0, min_steps=1, max_steps=1, warmup_steps=1),
        interleaved_streams=3,
        cached_streams=(16, 64),
        cached_batch=8,
        catchup_steps=4,
        catchup_streams=(4,),
        replay_streams=8,
        replay_steps_per_file=3,
        host_streams=8,
        host_replay_steps=2,
        pool_size=64,
        xla=False,
        gc_seconds=0.05,
    )


def test_all_methods_agree_with_the_keras_model(tiny: models.BenchModel) -> None:
    result = agreement(tiny, n_streams=3, steps=5, seed=1)
    ref = result["_reference"]
    # The reference must carry signal, or agreeing with it would prove nothing.
    assert np.abs(ref).max() > 1e-2
    assert set(result["max_abs_diff"]) == {
        "b0_call",
        "b0_predict_on_batch",
        "b0_one_at_a_time",
        "b1",
        "b2",
        "engine_waves",
        "engine_scan",
        "replay",
    }
    for name, got in result["_outputs"].items():
        assert not np.isnan(got).any(), f"{name} left outputs missing"
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=name)
    # Baselines and engine agree with each other directly, too.
    np.testing.assert_allclose(
        result["_outputs"]["b0_call"], result["_outputs"]["engine_waves"], atol=1e-5
    )
    np.testing.assert_allclose(result["_outputs"]["b1"], result["_outputs"]["b2"], atol=1e-5)
    assert result["ok"] is True


def test_stateful_keras_without_swap_loses_interleaved_state(tiny: models.BenchModel) -> None:
    """Why B0 needs the state swap for interleaved streams: without it every switch resets
    the state, and the outputs differ from the model's (the comparison is sensitive)."""
    steps, n = 4, 2
    pool = models.input_pool(tiny.spec, n * steps, seed=5)
    feed = bl.Feed(["p", "q"], pool)
    records = [r for t in range(steps) for r in feed.step(t)]
    swapped = bl.StatefulKeras(tiny, "call", swap=True).process(records)
    reset = bl.StatefulKeras(tiny, "call", swap=False).process(records)
    xs = np.stack([np.stack([feed.x(k, t) for t in range(steps)]) for k in range(n)])
    ref = np.asarray(tiny.keras_model(xs, training=False))
    got = {(o.stream, o.seq): o.y for o in swapped}
    lost = {(o.stream, o.seq): o.y for o in reset}
    for k, s in enumerate(["p", "q"]):
        for t in range(steps):
            np.testing.assert_allclose(got[(s, t)], ref[k, t], atol=1e-5)
    # Step 0 starts from zeros either way; later steps lose their history without the swap.
    assert max(np.abs(lost[("p", t)] - ref[0, t]).max() for t in range(1, steps)) > 1e-3


def test_feed_gives_each_stream_step_the_same_input_in_any_order() -> None:
    pool = np.arange(40, dtype=np.float32).reshape(20, 2)
    feed = bl.Feed(["a", "b"], pool)
    by_step = {(r.stream, r.seq): r.x for t in range(3) for r in feed.step(t)}
    by_rr = {(r.stream, r.seq): r.x for i in range(6) for r in feed.round_robin(i)}
    by_stream = {(r.stream, r.seq): r.x for i in range(6) for r in feed.one_at_a_time(i, 3)}
    assert by_step.keys() == by_rr.keys() == by_stream.keys()
    for key, x in by_step.items():
        np.testing.assert_array_equal(x, by_rr[key])
        np.testing.assert_array_equal(x, by_stream[key])
    backlog = feed.backlog(1, 2, seq0=100)
    assert [(r.stream, r.seq) for r in backlog] == [("a", 100), ("b", 100), ("a", 101), ("b", 101)]
    np.testing.assert_array_equal(backlog[0].x, feed.x(0, 2))


def test_bench_run_writes_complete_results(tmp_path: Path) -> None:
    from processor.cli import command_parser

    out = tmp_path / "bench"
    parser, _ = command_parser("bench")
    args = parser.parse_args(["--quick", "--models", "tiny", "--out", str(out)])
    code = command.run_and_write(tiny_config(), args)
    assert code == 0

    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "lstm-stream-bench/2"
    assert results["errors"] == []
    machine = results["machine"]
    for key in (
        "cpu_model",
        "logical_cores",
        "tensorflow",
        "tf_intra_op_threads",
        "tf_inter_op_threads",
    ):
        assert key in machine
    assert results["matmul"]["reference_gflops"] > 0
    assert set(results["methods"]) == {"B0", "B1", "B2", "engine", "replay"}
    assert results["agreement"]["tiny"]["ok"] is True

    rows = results["throughput"]
    assert {(r["method"], r["batch"]) for r in rows if r["method"] in ("B2", "engine")} == {
        ("B2", 1),
        ("B2", 8),
        ("engine", 1),
        ("engine", 8),
    }
    b0_variants = {r["variant"].split(",")[0] for r in rows if r["method"] == "B0"}
    assert b0_variants == {"predict", "predict_on_batch", "call"}
    for r in rows:
        assert r["messages"] > 0 and r["msg_per_s"] > 0
        assert r["latency_p50_ms"] <= r["latency_p99_ms"]
        if r["method"] == "engine":
            assert r["retraces_in_timed_region"] == 0
    assert {r["cached"] for r in results["cached_streams"]} == {16, 64}
    assert {r["state_dtype"] for r in results["state_dtype"]} == {"float32", "float16", "bfloat16"}
    catchup = {r["method"]: r for r in results["catchup"]}
    assert catchup["waves"]["wave_calls_per_call"] == 4  # T single steps per backlog
    assert catchup["scan"]["scan_calls_per_call"] == 1  # one scan per backlog
    assert results["replay"]["msg_per_s"] > 0 and results["replay"]["dead_letters"] == 0
    assert {r["gc"] for r in results["gc_impact"]} == {"default", "gc.freeze()"}
    assert results["gc"]["tracked_objects"] > 0
    assert results["kafka"]["status"] == "not_run"
    assert set(results["breakdown"]["tiny"]["summary_p50_ms"]) == set(BREAKDOWN_PARTS)
    ids = {g["id"]: g["status"] for g in results["goals"]}
    assert list(ids) == [g.id for g in GOALS]
    assert set(ids.values()) <= {"PASS", "MISS", "NOT RUN"}
    assert ids["kafka"] == ids["host_kafka"] == "NOT RUN"  # no broker given
    assert results["host_engine"]["status"] == results["host_replay"]["status"] == "ran"
    assert ids["cached_1m"] == "NOT RUN"  # 64 cached streams are not 1M
    assert "targets" not in results

    md = (out / "results.md").read_text()
    for heading in (
        "## Performance goals",
        "## Throughput: tiny",
        "## Step time vs cached streams",
        "## State dtype",
        "## Catch-up",
        "## Replay",
        "## Python GC",
        "## Kafka end to end",
        "## Where an engine step goes",
        "## Host path",
    ):
        assert heading in md, heading
    for g in results["goals"]:
        assert f"| `{g['id']}` | {g['goal']} |" in md
    for name in ("throughput_vs_batch.png", "step_time_vs_cached.png", "latency_cdf.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    assert sorted(results["plots"]) == sorted(
        ["throughput_vs_batch.png", "step_time_vs_cached.png", "latency_cdf.png"]
    )


def _tp(method: str, rate: float, batch: int = 1024, **kw: Any) -> dict[str, Any]:
    return {
        "model": "lstm2x256",
        "method": method,
        "batch": batch,
        "msg_per_s": rate,
        "msg_per_s_median": rate,
        "variant": kw.pop("variant", method),
        **kw,
    }


def test_goals_follow_the_measured_ratios() -> None:
    results: dict[str, Any] = {
        "config": {"headline_batch": 1024},
        "throughput": [
            _tp("engine", 30_000, retraces_in_timed_region=0),
            _tp("B1", 1_000, 1),
            _tp("B0", 100, 1, variant="call"),
            _tp("B0", 10, 1, variant="predict"),
        ],
        "catchup": [
            {
                "method": "waves",
                "msg_per_s": 10.0,
                "msg_per_s_median": 10.0,
                "pending_steps": 32,
                "streams": 8,
                "retraces_in_timed_region": 1,
            },
            {
                "method": "scan",
                "msg_per_s": 40.0,
                "msg_per_s_median": 40.0,
                "pending_steps": 32,
                "streams": 8,
                "retraces_in_timed_region": 0,
            },
        ],
    }
    status = {t["id"]: t["status"] for t in report.evaluate_goals(results)}
    assert status["engine_vs_b1"] == "PASS"  # 30x >= 15x
    assert status["engine_vs_b0"] == "MISS"  # 300x against the fastest B0 is < 500x
    assert status["catchup"] == "PASS"  # 4x >= 3x
    assert status["no_retrace"] == "MISS"  # the waves region retraced once
    assert status["engine_flops"] == status["cached_1m"] == status["replay"] == "NOT RUN"
    results["throughput"][1] = _tp("B1", 3_000, 1)
    # The catch-up verdict is taken at the largest stream count measured.
    for method, rate in (("waves", 100.0), ("scan", 120.0)):
        results["catchup"].append(
            {
                "method": method,
                "msg_per_s": rate,
                "msg_per_s_median": rate,
                "pending_steps": 32,
                "streams": 1024,
                "retraces_in_timed_region": 0,
            }
        )
    status = {t["id"]: t["status"] for t in report.evaluate_goals(results)}
    assert status["engine_vs_b1"] == "MISS"  # 10x
    assert status["catchup"] == "MISS"  # 1.2x at 1024 streams


def test_goal_thresholds_are_inclusive_in_their_direction() -> None:
    at_least = Goal("g", "x >= 3", 3.0)
    at_most = Goal("h", "y <= 1.25", 1.25, at_most=True)
    assert [at_least.status(v) for v in (3.0, 2.999, 10.0)] == ["PASS", "MISS", "PASS"]
    assert [at_most.status(v) for v in (1.25, 1.2501, 0.5)] == ["PASS", "MISS", "PASS"]
    # A figure that could not be computed meets no goal.
    assert at_least.status(float("nan")) == at_most.status(float("nan")) == "MISS"


def test_every_goal_is_explained_in_the_goals_document() -> None:
    """The report points readers to docs/benchmarks/goals.md by goal id: each goal needs its
    section there, headed by the id and the same statement (threshold included)."""
    doc = (Path(__file__).parents[3] / GOALS_DOC).read_text()
    headings = [line for line in doc.splitlines() if line.startswith("## `")]
    assert headings == [f"## `{g.id}`: {g.statement}" for g in GOALS]
    assert len({g.id for g in GOALS}) == len(GOALS)


def test_goals_not_run_without_figures_and_judged_at_the_threshold() -> None:
    assert {g["status"] for g in report.evaluate_goals({})} == {"NOT RUN"}
    results: dict[str, Any] = {
        "config": {"headline_batch": 1024},
        "throughput": [_tp("engine", 1_000)],
        "cached_streams": [
            {"cached": 1024, "latency_p50_ms": 10.0},
            {"cached": 1_000_000, "latency_p50_ms": 12.5},
        ],
        "replay": {
            "model": "lstm2x256",
            "max_batch": 1024,
            "msg_per_s_median": 700.0,
            "engine_same_groups": {"msg_per_s_median": 900.0},
        },
        "kafka": {
            "model": "lstm2x256",
            "max_batch": 1024,
            "msg_per_s": 499.0,
            "records": 10,
            "streams": 2,
            "engine_only_same_records": {"records_per_s": 800.0},
        },
    }
    goals = {g["id"]: g for g in report.evaluate_goals(results)}
    assert goals["cached_1m"]["status"] == "PASS"  # exactly 1.25x
    # Replay is divided by the faster engine-only figure (the sweep's 1,000, not 900).
    assert goals["replay"]["status"] == "PASS" and goals["replay"]["measured"] == "70.0%"
    assert goals["kafka"]["status"] == "MISS" and goals["kafka"]["measured"] == "49.9%"
    assert goals["kafka"]["threshold"] == 0.5
    results["cached_streams"][1]["cached"] = 100_000  # below 1M: the goal cannot be judged
    assert {g["id"]: g for g in report.evaluate_goals(results)}["cached_1m"]["status"] == (
        "NOT RUN"
    )


def test_kafka_bench_steps_are_deterministic_valid_model_input() -> None:
    from processor.bench.kafka_setup import synthetic_steps

    floats = synthetic_steps(3, (2, 4), "float32", seed=7)
    first, second = next(floats), next(floats)
    assert first.shape == (3, 2, 4) and first.dtype == np.float32
    assert np.isfinite(first).all() and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, next(synthetic_steps(3, (2, 4), "float32", seed=7)))
    frames = next(synthetic_steps(2, (5, 5, 1), "uint8"))
    assert frames.dtype == np.uint8 and frames.shape == (2, 5, 5, 1)


def test_kafka_bench_does_not_load_a_cli_command_module() -> None:
    """The Kafka benchmark is library code: neither it nor anything it imports (at the top or
    inside its functions) may load the module of a CLI command."""
    import ast
    import subprocess
    import sys

    import processor.bench.kafka as kafka_bench
    import processor.bench.kafka_setup as kafka_setup

    used: set[str] = set()
    for module in (kafka_bench, kafka_setup):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    ours = sorted(m for m in used if m.split(".")[0] == "processor")
    assert "processor.kafka.runtime" in ours  # the lazy imports are seen
    commands = (
        "processor.kafka.tools.produce",
        "processor.kafka.tools.tail",
        "processor.cli",
        "processor.kafka.command",
    )
    code = (
        f"import importlib, sys\nfor m in {ours!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m in {commands!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]"


def test_percentiles_interpolate_between_ranks_and_reject_bad_quantiles() -> None:
    from processor.bench.eos import percentiles

    got = percentiles([40.0, 10.0, 30.0, 20.0, 50.0])  # order does not matter
    assert got["p50"] == 30.0 and got["count"] == 5
    assert got["p99"] == pytest.approx(49.6)  # 40 + 0.96 * (50 - 40): between the ranks
    assert got["mean"] == 30.0 and got["max"] == 50.0
    assert percentiles(range(101), qs=(0, 12.5))["p12.5"] == 12.5
    empty = percentiles([])
    assert empty["count"] == 0 and np.isnan(empty["p50"]) and np.isnan(empty["p99"])
    with pytest.raises(ValueError, match="outside"):
        percentiles([1.0], qs=(101,))


def test_median_ratio_is_taken_per_pair() -> None:
    from processor.bench.eos import median_ratio

    # Per-pair ratios 0.5, 0.8, 0.9: the median is 0.8, not the ratio of the medians
    # (80 / 100) nor of the sums.
    assert median_ratio([(50.0, 100.0), (160.0, 200.0), (90.0, 100.0)]) == pytest.approx(0.8)
    assert np.isnan(median_ratio([]))
    assert np.isnan(median_ratio([(1.0, 2.0), (1.0, 0.0)]))  # no rate, no ratio


def test_outputs_count_as_committed_only_at_the_input_end_with_no_open_transaction() -> None:
    from processor.bench.guarantees import outputs_committed

    ends = {"in-0": 100, "in-1": 50}
    out_ends = {"out-0": 120, "out-1": 70}
    assert outputs_committed({"in-0": 100, "in-1": 50}, ends, out_ends, out_ends)
    # One input partition's offsets are still one transaction behind.
    assert not outputs_committed({"in-0": 100, "in-1": 40}, ends, out_ends, out_ends)
    # A partition without a committed offset yet.
    assert not outputs_committed({"in-0": 100}, ends, out_ends, out_ends)
    # Offsets committed, but a commit marker not yet on one output partition: its last
    # stable offset still sits at the transaction's first record.
    assert not outputs_committed(
        {"in-0": 100, "in-1": 50}, ends, {"out-0": 120, "out-1": 30}, out_ends
    )


def test_transaction_timeout_exceeds_two_commit_intervals() -> None:
    from processor.bench.guarantees import transaction_timeout_for

    assert transaction_timeout_for(1000) == 30_000  # the settings' default
    for ms in (100, 1000, 5000, 15_000, 60_000):
        assert transaction_timeout_for(ms) > 2 * ms


def _e2e(rate: float, seconds: float = 10.0, ack: float = 9.0) -> dict[str, Any]:
    return {"records": 1000, "records_per_s": rate, "seconds": seconds, "ack_seconds": ack}


def test_summarise_pairs_keeps_the_median_run_and_the_median_pair_ratio() -> None:
    from processor.bench.eos import summarise_pairs

    pairs = [(_e2e(100.0), _e2e(90.0)), (_e2e(200.0), _e2e(100.0)), (_e2e(120.0), _e2e(84.0))]
    row = summarise_pairs(1000, pairs)
    assert row["commit_interval_ms"] == 1000 and row["records"] == 1000
    assert row["eos_over_alos"] == pytest.approx(0.7)  # ratios 0.9, 0.5, 0.7
    assert row["at_least_once"]["records_per_s"] == 120.0
    assert row["exactly_once"]["records_per_s"] == 90.0
    assert [p["ratio"] for p in row["pairs"]] == pytest.approx([0.9, 0.5, 0.7])
    with pytest.raises(ValueError):
        summarise_pairs(1000, [])


def _kafka_with_eos(ratio_1s: float | None) -> dict[str, Any]:
    from processor.bench.eos import summarise_pairs

    intervals = [summarise_pairs(100, [(_e2e(100.0), _e2e(40.0))])]
    if ratio_1s is not None:
        intervals.append(summarise_pairs(1000, [(_e2e(100.0), _e2e(100.0 * ratio_1s))]))
    return {
        "model": "lstm2x256",
        "max_batch": 1024,
        "msg_per_s": 100.0,
        "records": 1000,
        "streams": 2,
        "engine_only_same_records": {"records_per_s": 150.0},
        "exactly_once": {
            "intervals": intervals,
            "latency": [
                {
                    "commit_interval_ms": 1000,
                    "processing_guarantee": "exactly-once",
                    "rate": 2000.0,
                    "samples": 16_000,
                    "p50_ms": 612.0,
                    "p99_ms": 1180.0,
                }
            ],
            "measured_by": "processor.bench.eos",
        },
    }


def test_exactly_once_goal_is_judged_at_the_1s_interval_only() -> None:
    def verdict(kafka: dict[str, Any]) -> dict[str, Any]:
        goals = {g["id"]: g for g in report.evaluate_goals({"kafka": kafka})}
        return goals["exactly_once"]

    met = verdict(_kafka_with_eos(0.7))
    assert met["status"] == "PASS" and met["measured"] == "70.0%"  # inclusive
    assert "100 ms: 40.0%" in met["detail"]  # the other interval is shown, not judged
    assert verdict(_kafka_with_eos(0.69))["status"] == "MISS"
    assert verdict(_kafka_with_eos(None))["status"] == "NOT RUN"  # no 1 s pair measured
    # Runs shorter than five intervals: the wait for the last commit would decide the ratio.
    short = _kafka_with_eos(0.7)
    short["exactly_once"]["intervals"][1]["at_least_once"]["seconds"] = 4.9
    assert verdict(short)["status"] == "NOT RUN" and "4.9 s" in verdict(short)["detail"]
    assert verdict({"status": "not_run", "reason": "no broker"})["status"] == "NOT RUN"


def test_markdown_reports_exactly_once_throughput_and_latency() -> None:
    results = {"kafka": _kafka_with_eos(0.8), "goals": []}
    md = markdown(results)
    assert "### Exactly-once against at-least-once" in md
    assert "| 1,000 ms | 100 | 80 | 80.0% |" in md
    assert "| 1,000 ms | exactly-once | 2,000 | 16,000 | 612.0 | 1,180.0 |" in md
    no_eos = markdown({"kafka": {"status": "not_run", "reason": "x"}, "goals": []})
    assert "Exactly-once" not in no_eos


# --------------------------------------------------------------------------------------------
# Frames: the seed frame model, the seed's way vs the engine
# --------------------------------------------------------------------------------------------


def _fr_row(method: str, batch: int, rate: float, variant: str = "v", **kw: Any) -> dict[str, Any]:
    return {
        "model": "seed_frames",
        "method": method,
        "variant": variant,
        "batch": batch,
        "msg_per_s": kw.pop("mean", rate),
        "msg_per_s_median": rate,
        "latency_p50_ms": 1.0,
        "latency_p99_ms": 2.0,
        **kw,
    }


def _frames_result(engine_best: float, ok: bool = True) -> dict[str, Any]:
    from processor.bench import frames

    rows = [
        _fr_row("seed", 1, 40.0, "call, one model call per frame"),
        _fr_row("seed", 1, 50.0, "tf.function, one model call per frame", mean=25.0),
        _fr_row("engine", 1, 30.0, retraces_in_timed_region=0),
        _fr_row("engine", 256, engine_best, retraces_in_timed_region=0),
        _fr_row("engine", 1024, engine_best - 1.0, retraces_in_timed_region=0),
        _fr_row("bare step", 256, 1_250.0),
        _fr_row("bare step", 1024, 1_500.0),
    ]
    return {
        "status": "ran",
        "agreement": {"ok": ok, "streams": 2, "steps": 4, "tolerance": 1e-4, "max_abs_diff": {}},
        "rows": rows,
        "summary": frames.summarise(rows),
    }


def test_frames_summary_takes_the_best_engine_batch_over_the_fastest_seed_variant() -> None:
    from processor.bench import frames

    sm = _frames_result(1_000.0)["summary"]
    assert sm["best_batch"] == 256
    assert sm["seed_variant"].startswith("tf.function")
    assert sm["ratio"] == pytest.approx(20.0)
    assert sm["ratio_mean_based"] == pytest.approx(40.0)  # 1000 / the variant's mean 25
    assert sm["ratio_by_batch"] == {"1": 0.6, "256": 20.0, "1024": 19.98}
    # The bare step bounds the ratio (best bare batch), and the engine is set against the
    # bare step at the engine's own best batch.
    assert sm["bare_best_batch"] == 1024 and sm["bare_over_seed"] == pytest.approx(30.0)
    assert sm["engine_over_bare"] == pytest.approx(0.8)
    # Without either side there is nothing to compare.
    assert frames.summarise([_fr_row("engine", 1, 10.0)]) == {}
    assert frames.summarise([_fr_row("seed", 1, 10.0)]) == {}


def test_seed_frames_goal_is_judged_at_20x_and_not_on_disagreeing_methods() -> None:
    def goal(fr: dict[str, Any]) -> dict[str, Any]:
        return {g["id"]: g for g in report.evaluate_goals({"frames": fr})}["seed_frames"]

    assert goal(_frames_result(1_000.0))["status"] == "PASS"  # exactly 20x
    assert goal(_frames_result(999.0))["status"] == "MISS"  # 19.98x
    missed = goal(_frames_result(900.0))
    assert missed["status"] == "MISS" and missed["measured"].startswith("18.0x")
    assert "best batch 256" in missed["goal"]
    assert goal(_frames_result(5_000.0, ok=False))["status"] == "NOT RUN"
    skipped = goal({"status": "not_run", "reason": "no batch sizes configured"})
    assert skipped["status"] == "NOT RUN" and "no batch sizes" in skipped["detail"]
    # The frames section's engine points count for no_retrace.
    fr = _frames_result(1_000.0)
    fr["rows"][3]["retraces_in_timed_region"] = 1
    retrace = {g["id"]: g for g in report.evaluate_goals({"frames": fr})}["no_retrace"]
    assert retrace["status"] == "MISS" and "frames:seed_frames:256" in retrace["detail"]


def test_frames_markdown_lists_every_point() -> None:
    md = markdown({"frames": _frames_result(1_000.0), "goals": []})
    assert "## Frames: the seed model, the seed's way vs the engine" in md
    assert md.count("| seed |") == 2 and md.count("| engine |") == 3
    assert md.count("| bare step |") == 2
    not_run = markdown({"frames": {"status": "not_run", "reason": "--quick"}, "goals": []})
    assert "not_run: --quick" in not_run


def test_seed_loop_runs_init_on_a_streams_first_frame_only_and_keeps_states_apart() -> None:
    from processor.bench import frames
    from processor.records import Record

    inits: list[float] = []

    def init(x: Any) -> list[np.ndarray]:
        inits.append(float(x.sum()))
        return [np.full((1, 1), 100.0 * float(x.sum()))]

    def step(inputs: list[Any]) -> list[np.ndarray]:
        x, s = inputs
        assert x.shape[0] == 1  # one frame per call
        new = s + x.sum()
        return [new, new]

    loop = frames.SeedLoop(step, init)
    one = np.ones(2)
    out = loop.process([Record("a", 0, one), Record("b", 0, 2 * one), Record("a", 1, 3 * one)])
    assert inits == [2.0, 4.0]  # once per stream, from its first frame
    # a: init 200 + 2 (first frame) + 6 (second); b: init 400 + 4.
    assert [(o.stream, o.seq, float(o.y[0])) for o in out] == [
        ("a", 0, 202.0),
        ("b", 0, 404.0),
        ("a", 1, 208.0),
    ]


def test_frames_diffs_flag_missing_outputs() -> None:
    from processor.bench import frames
    from processor.records import Output

    ref = {("a", 0): np.array([1.0, 2.0]), ("a", 1): np.array([0.0, 0.0])}
    outs = {
        "close": [Output("a", 0, np.array([1.0, 2.5])), Output("a", 1, np.array([0.0, -0.1]))],
        "short": [Output("a", 0, np.array([1.0, 2.0]))],
    }
    assert frames.max_abs_diffs(ref, outs) == {"close": 0.5, "short": float("inf")}


def test_frames_section_runs_in_the_full_config_only() -> None:
    from processor.bench import frames

    assert config.full_config(["lstm2x256"]).frames_batches == (1, 64, 256, 1024)
    quick = config.quick_config(["lstm2x256"])
    assert quick.frames_batches == ()
    assert frames.seed_frames(quick, lambda _: None)["status"] == "not_run"


def test_seed_model_and_engine_agree_with_the_sequence_model(tmp_path: Path) -> None:
    """The seed's per-frame loop (both variants) and the engine built from the saved model
    and init model files give the Keras sequence model's outputs."""
    from processor.bench import frames

    seed = frames.build_seed(0)
    model_path, init_path = frames.save_models(seed, tmp_path)
    engine = frames.build_frames_engine(model_path, init_path, max_batch=2)
    ag = frames.agreement(seed, engine, streams=2, steps=3)
    assert set(ag["max_abs_diff"]) == {"seed call", "seed tf.function", "engine"}
    assert ag["reference_max_abs"] > 1e-2
    assert ag["ok"] is True


def _frames_kafka(raw: list[float], jpeg: list[float]) -> dict[str, Any]:
    rounds = [
        {
            "engine_only": {"records_per_s": 1000.0},
            "raw": {"records_per_s": 1000.0 * r, "input_bytes": 7100 * 10, "records": 10},
            "jpeg": {"records_per_s": 1000.0 * j, "input_bytes": 3100 * 10, "records": 10},
            "raw_over_engine": r,
            "jpeg_over_engine": j,
        }
        for r, j in zip(raw, jpeg, strict=True)
    ]
    import statistics

    return {
        "status": "ran",
        "records": 10,
        "streams": 2,
        "rounds": rounds,
        "raw_over_engine": statistics.median(raw),
        "jpeg_over_engine": statistics.median(jpeg),
        "decode": [{"encoding": "jpeg", "record_bytes": 3100.0, "decode_us_per_frame": 120.0}],
    }


def test_frames_kafka_goal_takes_the_lower_of_raw_and_jpeg() -> None:
    from processor.bench.kafka_verdicts import frames_kafka as frames_kafka_verdict
    from processor.bench.markdown_kafka import frames_kafka_lines

    ok = frames_kafka_verdict(_frames_kafka([0.9, 0.8], [0.6, 0.5]))
    assert ok["status"] == "PASS" and ok["measured"] == "55%"
    miss = frames_kafka_verdict(_frames_kafka([0.9], [0.49]))
    assert miss["status"] == "MISS"
    not_run = frames_kafka_verdict({"status": "not_run", "reason": "--quick"})
    assert not_run["status"] == "NOT RUN" and not_run["detail"] == "--quick"
    text = "\n".join(frames_kafka_lines(_frames_kafka([0.9], [0.6])))
    assert "| jpeg | 3,100 | 120.0 |" in text
    assert "900 (90%)" in text and "600 (60%)" in text and "7,100 / 3,100" in text
