"""The example model (`lstm-stream example-model`) and the embedded demo (`lstm-stream demo`).

Everything runs with tiny settings (a 32-unit model trained for ~2 s, demos of a few seconds
over a few hundred streams, or until enough has happened). No timing is asserted: only
counts, identities and errors.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processor.config.engine_options import EngineOptions
from processor.demo import command as demo
from processor.demo import example_command
from processor.demo.config import IDLE_TIMEOUT_S, DemoConfig
from processor.demo.evaluate import offline_diff
from processor.demo.example import TrainConfig, TrainMetrics, train_example_model
from processor.demo.example_command import save_model
from processor.demo.live import LiveRun
from processor.demo.meter import LatencyHistogram
from processor.demo.report import DemoSummary, format_summary, write_summary_json
from processor.demo.run import run_demo
from processor.demo.signals import FEED_SALT, SignalBank
from processor.model import StepModel, load_step_model

# ~2 s of training on this machine; over seeds 0-2 the held-out MSE was 0.36-0.41 of the
# naive baseline's and 3.8-5.3x below the stateless model's.
TINY = TrainConfig(
    streams=256, steps=50, epochs=8, units=32, batch_size=16, val_streams=64, val_steps=100
)
# Just enough to exercise the plumbing (well under a second of training).
PLUMBING = TrainConfig(streams=32, steps=20, epochs=1, units=8, val_streams=8, val_steps=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, TrainMetrics, Path]:
    """The tiny example model, its metrics, and the ``.keras`` file it was saved to."""
    model, metrics = train_example_model(TINY)
    path = save_model(model, tmp_path_factory.mktemp("example") / "tiny.keras")
    return model, metrics, path


@pytest.fixture(scope="module")
def step_model(trained: tuple[Any, TrainMetrics, Path]) -> StepModel:
    """The saved tiny model loaded back the way the CLI loads it."""
    return load_step_model(trained[2])


def _parse(module: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    module.add_arguments(parser)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# SignalBank
# --------------------------------------------------------------------------------------------


def test_signal_bank_streams_continue_their_own_time() -> None:
    # Without noise the values are a function of (stream, step) only, so sample-by-sample
    # generation in any interleaving must equal the block generation of a twin bank.
    a = SignalBank(5, 3, seed=7, noise=0.0)
    b = SignalBank(5, 3, seed=7, noise=0.0)
    block = b.sequences(4)  # [5, 4, 3]
    got: dict[int, list[np.ndarray]] = {s: [] for s in range(5)}
    for streams in ([0, 2], [2], [0, 1, 2, 3, 4], [2, 0], [0], [1, 3, 4], [1, 3, 4], [1, 4]):
        for s, v in zip(streams, a.next(streams), strict=True):
            got[s].append(v)
    for s in range(5):
        n = len(got[s])
        assert n == a.steps[s]
        np.testing.assert_array_equal(np.stack(got[s]), block[s, :n])
    assert a.next([1]).shape == (1, 3) and a.next([1]).dtype == np.float32


def test_signal_bank_is_seeded_and_salted() -> None:
    x = SignalBank(4, 2, seed=1).sequences(10)
    np.testing.assert_array_equal(x, SignalBank(4, 2, seed=1).sequences(10))
    assert not np.allclose(x, SignalBank(4, 2, seed=2).sequences(10))
    assert not np.allclose(x, SignalBank(4, 2, seed=1, salt=FEED_SALT).sequences(10))
    noise = x - SignalBank(4, 2, seed=1, noise=0.0).sequences(10)
    assert 0.02 < float(noise.std()) < 0.08  # the documented noise level (0.05)
    with pytest.raises(IndexError):
        SignalBank(4, 2).next([4])


# --------------------------------------------------------------------------------------------
# The example model
# --------------------------------------------------------------------------------------------


def test_example_model_beats_the_naive_and_the_stateless_forecast(
    trained: tuple[Any, TrainMetrics, Path],
) -> None:
    _, m, _ = trained
    assert m.noise_floor == pytest.approx(0.05**2)
    assert m.noise_floor < m.val_mse < 0.6 * m.naive_mse
    assert m.val_mse_after_warmup < m.val_mse  # the first steps, before a cycle, are worse
    assert m.reset_mse > 2 * m.val_mse  # the state is what makes the forecast
    assert m.epochs == TINY.epochs and m.parameters > 0


def test_saved_example_model_loads_as_the_same_step_model(
    trained: tuple[Any, TrainMetrics, Path], step_model: StepModel
) -> None:
    model, _, _ = trained
    assert step_model.input_shape == (4,) and step_model.output_shape == (4,)
    assert [s.shape for s in step_model.state_spec] == [(32,), (32,)]
    x = SignalBank(3, 4, seed=5).sequences(12)
    loaded = step_model.keras_model  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-6
    )


def test_example_main_trains_saves_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "m.keras"
    args = _parse(
        example_command,
        ["--out", str(out), "--epochs", "1", "--streams", "32", "--steps", "20", "--units", "8"],
    )
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert example_command.main(args) == 0
    text = stdout.getvalue()
    assert out.is_file() and f"saved {out}" in text
    assert "naive next = current" in text and "final train loss" in text
    assert load_step_model(out).state_spec[0].shape == (8,)
    bad = _parse(example_command, ["--out", str(tmp_path / "m.h5")])
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert example_command.main(bad) == 2
    assert ".keras" in err.getvalue()


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


def _config(**overrides: Any) -> DemoConfig:
    # 300 streams over a 128-stream cache: LRU and idle eviction, spill and restore happen.
    engine = EngineOptions(cache_capacity=128, max_batch=64, idle_timeout=0.5, threads=0)
    fields: dict[str, Any] = {
        "engine": engine,
        "streams": 300,
        "duration": 3.0,
        "sample_streams": 60,
        "redeliver": 0.01,
        "progress": False,
    }
    fields.update(overrides)
    return DemoConfig(**fields)


def _check_counters(s: DemoSummary) -> None:
    assert s.inputs == s.generated + s.redelivered
    assert s.bad_records == 0 and s.decoded == s.inputs
    assert s.outputs == s.generated  # every generated message produced exactly one output
    assert s.duplicates == s.redelivered  # and every redelivered copy was dropped
    assert s.outputs + s.duplicates == s.decoded
    # Each stream's first message has no earlier forecast to score.
    assert s.all_streams.pairs == s.generated - s.streams_seen
    assert s.all_streams.streams == s.streams_seen


class _StopWhenEnough:
    """Ends a demo run (as its ``stop_when``) once it has done enough to be judged: so many
    messages, re-deliveries, more streams than the cache holds, LRU or idle evictions,
    restores from the spill store and a progress line; the run's ``duration`` is then only
    a deadline."""

    GENERATED = 5000

    def __init__(self, progress: io.StringIO) -> None:
        self.progress = progress

    def enough(self, run: LiveRun) -> bool:
        m, st = run.meter, run.engine.cache.stats
        return bool(
            m.generated >= self.GENERATED
            and m.redelivered > 0
            and m.seen.sum() > run.engine.cache.capacity
            and st.evicted_lru + st.evicted_idle > 0
            and st.restored_from_spill > 0
            and "msg/s" in self.progress.getvalue()
        )


def test_demo_run_answers_every_message_and_kept_state_wins(step_model: StepModel) -> None:
    progress = io.StringIO()
    watch = _StopWhenEnough(progress)
    # The run lasts until it has done enough (counts, not a time window); 120 s is the limit.
    config = _config(progress=True, duration=120.0)
    s = run_demo(config, step_model, out=progress, stop_when=watch.enough)
    assert s.stopped_early, f"not enough happened within the limit: {s}"
    _check_counters(s)
    assert s.generated >= _StopWhenEnough.GENERATED and s.redelivered > 0
    assert s.streams_seen > 128  # more streams than the cache holds...
    assert s.evicted_lru + s.evicted_idle > 0 and s.restored_from_spill > 0  # ...so it spilled
    assert s.state_lost == 0 and s.cached <= s.cache_capacity == 128
    assert 0 < s.mean_batch <= 64 and s.compiled_calls >= s.ticks
    assert s.latency_p50_ms <= s.latency_p99_ms <= s.latency_max_ms
    sm = s.sample
    assert 0 < sm.streams <= 60 and sm.pairs > 0  # sample streams that sent at all
    assert sm.stateful is not None and sm.reset is not None and sm.naive is not None
    assert sm.stateful < sm.naive and sm.stateful < sm.reset
    # Evicted, spilled and restored states continued exactly where they left off.
    assert s.offline_max_abs_diff is not None and s.offline_max_abs_diff < 1e-4
    assert "msg/s" in progress.getvalue()  # at least one progress line (non-TTY: one per line)
    text = format_summary(s)
    assert "every generated message answered once: yes" in text
    assert "state kept" in text and "state reset" in text and "naive" in text


def test_demo_rate_limited_run_keeps_the_rate_and_the_identities(step_model: StepModel) -> None:
    s = run_demo(_config(rate=2000.0, duration=1.5, redeliver=0.0), step_model)
    _check_counters(s)
    assert s.redelivered == 0 and s.duplicates == 0
    # The scheduler never sends ahead of the schedule: at most rate x duration messages.
    assert 0 < s.generated <= 2000 * 1.5
    assert "target 2,000 msg/s" in format_summary(s)


def test_demo_stop_event_ends_the_run_with_a_summary(step_model: StepModel, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    s = run_demo(_config(duration=60.0), step_model, stop=stop)
    assert s.stopped_early and s.generated == s.outputs == 0
    assert s.sample.pairs == 0 and s.sample.stateful is None
    assert "stopped early" in format_summary(s)
    # Without messages there are no latencies or errors: JSON null, never NaN.
    j = json.loads(write_summary_json(s, tmp_path / "s.json").read_text())
    assert j["stopped_early"] is True and j["messages"]["generated"] == 0
    assert j["latency_ms"] == {"p50": None, "p99": None, "max": None}
    assert j["errors"]["sample"]["kept"] is None and j["errors"]["kept_vs_reset"] is None


def test_demo_trains_the_example_model_when_none_is_given() -> None:
    notes = io.StringIO()
    s = run_demo(_config(duration=0.5, sample_streams=10), train=PLUMBING, out=notes)
    _check_counters(s)
    assert s.training is not None and "held-out forecast MSE" in s.training
    assert "training the example model" in notes.getvalue()
    assert s.model.startswith("example model trained in this run")


def test_demo_main_runs_from_flags(trained: tuple[Any, TrainMetrics, Path], tmp_path: Path) -> None:
    json_path = tmp_path / "out" / "summary.json"
    argv = ["--model", str(trained[2]), "--duration", "1", "--streams", "100"]
    argv += ["--summary-json", str(json_path)]
    argv += ["--no-progress", "--threads", "0", "--max-batch", "32", "--sample-streams", "10"]
    args = _parse(demo, argv)
    config = demo.config_from_args(args)
    assert config.engine.cache_capacity == 56  # 9/16 of the streams...
    assert config.engine.idle_timeout == IDLE_TIMEOUT_S and not config.progress
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert demo.main(args) == 0
    assert "=== lstm-stream demo summary ===" in stdout.getvalue()
    _check_json_matches_text(json.loads(json_path.read_text()), stdout.getvalue())
    # ...but never below --max-batch; and an impossible setting is an error, not a crash.
    assert demo.config_from_args(_parse(demo, ["--streams", "10"])).engine.cache_capacity == 1024
    bad = _parse(demo, ["--cache-capacity", "16", "--max-batch", "32"])
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert demo.main(bad) == 2
    assert "exceeds --cache-capacity" in err.getvalue()


def _check_json_matches_text(j: dict[str, Any], text: str) -> None:
    """The --summary-json object holds the numbers the text summary printed."""
    m, e, lat = j["messages"], j["errors"], j["latency_ms"]
    assert m["generated"] > 0 and m["answered_once"] is True
    assert f"{m['generated']:,} generated + {m['redelivered']:,} redelivered" in text
    assert f"{j['throughput']['messages_per_s']:,.0f} messages/s" in text
    assert f"{j['throughput']['input_mb_per_s']:,.1f} MB/s in" in text
    assert f"{j['batches']['compiled_calls']:,} compiled steps" in text
    assert f"mean batch {j['batches']['mean_batch']:,.1f}" in text
    assert f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms" in text
    sm = e["sample"]
    assert sm["pairs"] > 0 and None not in (sm["kept"], sm["reset"], sm["baseline"])
    row = f"{sm['kept']:.5f}{sm['reset']:>13.5f}{sm['baseline']:>16.5f}{sm['pairs']:>10,}"
    assert row in text
    assert f"{e['kept_vs_reset']:.1f}x better than resetting" in text
    assert e["all_streams"]["reset"] is None  # not measured over all streams
    assert f"max abs difference {j['offline_max_abs_diff']:.2e}" in text


def test_latency_histogram_percentiles_are_within_two_percent() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(np.log(0.02), 1.0, 20_000)
    h = LatencyHistogram()
    h.add(values[:10_000])
    for v in values[10_000:12_000]:
        h.add(float(v))
    h.add(values[12_000:])
    for q in (50, 90, 99):
        assert h.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.021)
    assert h.max == values.max() and h.percentile(100) == values.max()
    before = h.counts()
    h.add(5.0, count=10)
    assert h.percentile(50, h.counts() - before) == pytest.approx(5.0, rel=0.021)
    assert np.isnan(LatencyHistogram().percentile(50))


def test_offline_check_detects_a_wrong_live_output(step_model: StepModel) -> None:
    # The demo's "live vs offline" figure must be able to fail: feed it the model's own
    # outputs for sequences of different lengths, then the same with one value off by 0.1.
    keras_model = step_model.keras_model  # type: ignore[attr-defined]
    bank = SignalBank(3, 4, seed=9)
    hist = {}
    for s, n in enumerate((5, 17, 11)):
        xs = bank.sequences(n)[s]
        hist[s] = (xs, np.array(keras_model(xs[None], training=False))[0])
    exact = offline_diff(step_model, hist)
    assert exact is not None and exact < 1e-6
    hist[1][1][16, 2] += 0.1
    assert offline_diff(step_model, hist) == pytest.approx(0.1, abs=1e-5)
