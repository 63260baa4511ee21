"""``lstm-stream demo --kind frames``: synthetic camera clips through the demo's pipeline.

The model here is the frames example model's architecture, tiny and untrained: these tests
check the plumbing (every frame answered once, clips that end, idle eviction with spill
and restore, live outputs equal to the offline model on whole clips, the summary and its
JSON), not the model's accuracy, which the frames example model's own tests judge. No
timing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from processor.config.engine_options import EngineOptions
from processor.demo import command as demo
from processor.demo.config import KIND_DEFAULTS, DemoConfig
from processor.demo.example import build_example_model
from processor.demo.frames_example import FramesMetrics, FramesTrainConfig, build_frames_model
from processor.demo.live import LiveRun
from processor.demo.prepare import Trainers, prepare_model
from processor.demo.report import format_summary, summary_record
from processor.demo.run import run_demo
from processor.errors import ConfigError
from processor.model import KerasStepModel, StepModel


def _tiny_frames_model() -> Any:
    return build_frames_model(units=8, filters=4, features=8)


@pytest.fixture(scope="module")
def frames_model() -> StepModel:
    return KerasStepModel.from_model(_tiny_frames_model())


def _config(**overrides: Any) -> DemoConfig:
    # 60 cameras over a 24-stream cache, short clips, short active and quiet periods: clips
    # end, streams fall idle and are evicted to the spill store and restored.
    fields: dict[str, Any] = {
        "engine": EngineOptions(cache_capacity=24, max_batch=16, idle_timeout=0.5, threads=0),
        "kind": "frames",
        "streams": 60,
        "duration": 120.0,
        "sample_streams": 8,
        "redeliver": 0.01,
        "progress": False,
        "clip_frames": (5, 20),
        "start_spread_s": 0.5,
        "mean_active_s": 1.0,
        "quiet_s": (0.5, 1.5),
    }
    fields.update(overrides)
    return DemoConfig(**fields)


GENERATED = 600


def _enough(run: LiveRun) -> bool:
    """The run's ``stop_when``: it has done enough to be judged once so many frames,
    redeliveries, a sample camera's first clip ended, idle evictions and restores from the
    spill store happened (LRU eviction depends on how many cameras are active at once, which
    the sensor demo's test covers). The run's ``duration`` is then only a deadline."""
    m, st = run.meter, run.engine.cache.stats
    return bool(
        m.generated >= GENERATED
        and m.redelivered > 0
        and (m.in_sample & ~m.recording).any()  # a sample camera's first clip ended
        and st.evicted_idle > 0
        and st.restored_from_spill > 0
    )


def test_frames_demo_answers_every_frame_and_matches_the_offline_model(
    frames_model: StepModel,
) -> None:
    s = run_demo(_config(), frames_model, stop_when=_enough)
    assert s.stopped_early, f"not enough happened within the limit: {s}"
    assert s.kind == "frames"
    assert s.inputs == s.generated + s.redelivered and s.decoded == s.inputs
    assert s.outputs == s.generated and s.duplicates == s.redelivered > 0
    assert s.evicted_idle > 0 and s.restored_from_spill > 0
    assert s.state_lost == 0
    # Every frame has its own target: each output is scored.
    assert s.all_streams.pairs == s.generated and s.all_streams.streams == s.streams_seen
    sm = s.sample
    assert 0 < sm.streams <= 8 and sm.pairs > 0
    assert None not in (sm.stateful, sm.reset, sm.naive)
    # Clips that ended, states evicted, spilled and restored: the live outputs are still the
    # offline model's over each sample camera's whole first clip.
    assert s.offline_max_abs_diff is not None and s.offline_max_abs_diff < 1e-4
    # 84x84x1 frames: ~7 KB in per frame, a few bytes out.
    assert s.input_bytes > 84 * 84 * s.inputs > s.output_bytes
    text = format_summary(s)
    assert "every generated frame answered once: yes" in text
    assert "frames/s" in text and "whole clips" in text and "zero (1 frame)" in text
    j = summary_record(s)
    assert j["kind"] == "frames" and "velocity" in j["errors"]["metric"]
    assert j["errors"]["sample"]["kept"] == sm.stateful
    assert j["throughput"]["input_mb_per_s"] == pytest.approx(s.input_bytes / 1e6 / s.seconds)


def test_frames_demo_from_flags_trains_the_frames_model_without_one(tmp_path: Path) -> None:
    # Training is the frames example's own business (and takes a while): stand in for it,
    # to check that `demo --kind frames` without --model trains and uses that model.
    calls: list[FramesTrainConfig] = []

    def fake_train(cfg: FramesTrainConfig) -> tuple[Any, None, FramesMetrics]:
        calls.append(cfg)
        metrics = FramesMetrics(
            train_loss=0.1,
            val_mse=0.2,
            val_mse_after_warmup=0.2,
            reset_mse=0.3,
            mean_mse=0.4,
            fit_seconds=1.0,
            total_seconds=1.0,
            epochs=1,
            parameters=1,
            init_parameters=0,
        )
        return _tiny_frames_model(), None, metrics

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    defaults = demo.config_from_args(parser.parse_args(["--kind", "frames"]))
    assert defaults.kind == "frames"
    for name, value in KIND_DEFAULTS["frames"].items():
        assert getattr(defaults, name) == value
    json_path = tmp_path / "frames.json"
    argv = ["--kind", "frames", "--duration", "1", "--streams", "40", "--seed", "3"]
    argv += ["--no-progress", "--threads", "0", "--max-batch", "16", "--sample-streams", "4"]
    argv += ["--summary-json", str(json_path)]
    args = parser.parse_args(argv)
    config = demo.config_from_args(args)
    assert config.kind == "frames" and config.streams == 40 and config.sample_streams == 4
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert demo.main(args, trainers=Trainers(frames=fake_train)) == 0
    assert [c.seed for c in calls] == [3]
    assert "training the frames example model" in stderr.getvalue()
    j = json.loads(json_path.read_text())
    assert j["kind"] == "frames" and j["streams"] == 40
    assert j["model"].startswith("example model trained in this run: input [84, 84, 1]")
    assert f"{j['messages']['generated']:,} generated" in stdout.getvalue()


def test_frames_demo_rejects_a_model_of_the_other_kind(frames_model: StepModel) -> None:
    sensor_model = KerasStepModel.from_model(build_example_model(4, 8))
    with pytest.raises(ConfigError, match="frames demo feeds"):
        run_demo(_config(duration=1.0), sensor_model)
    with pytest.raises(ConfigError, match="sensor vectors"):
        run_demo(_config(kind="sensor", duration=1.0), frames_model)
    with pytest.raises(ConfigError, match="--kind"):
        run_demo(_config(kind="audio"), frames_model)
    with pytest.raises(ConfigError, match="init-model"):
        prepare_model(_config(engine=EngineOptions(init_model="init.keras")))
