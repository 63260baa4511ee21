"""The frames example model (`lstm-stream example-model --kind frames`): its clip generator,
its training (kept state is what tells a velocity), its init model served by the engine, and
the command.

A small model is trained once for the module (to check what it learns), and a tiny one with
its init model through the command (to check the files and the engine's use of them). No
timing is asserted: only error ratios, equalities and files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from processor.config.engine_options import EngineOptions
from processor.demo import example_command
from processor.demo.example import TrainConfig
from processor.demo.frames_example import (
    FramesMetrics,
    FramesTrainConfig,
    train_frames_model,
    with_initial_state,
)
from processor.demo.signals import FEED_SALT, FRAME_SHAPE, FrameClips
from processor.engine.build import build_engine
from processor.model import load_step_model
from processor.records import Output, Record

import keras  # isort: skip

SMALL = FramesTrainConfig(
    streams=512,
    steps=8,
    epochs=4,
    units=32,
    filters=8,
    features=32,
    batch_size=8,
    learning_rate=0.005,
    val_streams=32,
    val_steps=16,
)

INIT_PAIR = FramesTrainConfig(
    streams=8, steps=4, epochs=1, units=8, val_streams=4, val_steps=4, init_model=True
)
TINY_FLAGS = ["--epochs", "1", "--streams", "8", "--steps", "4", "--units", "8"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    example_command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def metrics() -> FramesMetrics:
    """The metrics of the small frames model."""
    _, init, m = train_frames_model(SMALL)
    assert init is None
    return m


@pytest.fixture(scope="module")
def init_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny frames model trained jointly with its init model, both saved."""
    model, init, _ = train_frames_model(INIT_PAIR)
    assert init is not None
    tmp = tmp_path_factory.mktemp("pair")
    return (
        example_command.save_model(model, tmp / "frames.keras"),
        example_command.save_model(init, tmp / "init.keras"),
    )


@pytest.fixture(scope="module")
def command_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """``example-model --kind frames --init-out`` with a tiny config: the model file, the
    init model file and what the command printed."""
    tmp = tmp_path_factory.mktemp("frames")
    out, init_out = tmp / "m" / "frames.keras", tmp / "i" / "init.keras"
    args = _parse(["--kind", "frames", "--out", str(out), "--init-out", str(init_out), *TINY_FLAGS])
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert example_command.main(args) == 0
    return out, init_out, stdout.getvalue()


# --------------------------------------------------------------------------------------------
# FrameClips
# --------------------------------------------------------------------------------------------


def test_frame_clips_are_seeded_shaped_and_streams_keep_their_own_time() -> None:
    a, b = FrameClips(5, seed=3), FrameClips(5, seed=3)
    fa, ta = a.next([0, 4])
    fb, tb = b.next([0, 4])
    assert fa.shape == (2, *FRAME_SHAPE) and fa.dtype == np.uint8
    assert ta.shape == (2, 2) and ta.dtype == np.float32
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(ta, tb)
    assert not np.array_equal(fa, FrameClips(5, seed=3, salt=FEED_SALT).next([0, 4])[0])
    a.next([4])
    assert a.steps.tolist() == [1, 0, 0, 0, 2]  # stream 0 paused while stream 4 moved on
    with pytest.raises(IndexError):
        a.next([5])
    with pytest.raises(ValueError, match="distinct"):
        a.next([1, 1])


def test_frame_clips_move_bounce_and_occlude() -> None:
    clips = FrameClips(64, seed=1, occlusion_p=0.2)
    frames, targets = clips.clips(40)
    speed = np.abs(targets)
    assert ((speed >= 1.0) & (speed <= 4.0)).all()
    # The speed of a clip is constant; its direction flips at bounces, which do happen.
    np.testing.assert_allclose(speed, np.broadcast_to(speed[:, :1], speed.shape))
    assert (np.sign(targets[:, 1:]) != np.sign(targets[:, :-1])).any()
    bright = frames >= 150  # the object only (background noise <= 40, bars 100)
    bar = (frames == 100).any(axis=(2, 3, 4))
    assert 0.1 < bar.mean() < 0.9  # occlusion bars are drawn, and not always
    # Every frame shows the object, unless a bar is there to hide it.
    assert (bright.any(axis=(2, 3, 4)) | bar).all()
    # The object moves as its velocity says: the bright centroid of consecutive visible
    # frames (away from bounces) shifts by about the velocity.
    ys, xs = np.mgrid[: FRAME_SHAPE[0], : FRAME_SHAPE[1]]
    shifts, wanted = [], []
    for s in range(8):
        for t in range(1, 40):
            m0, m1 = bright[s, t - 1, ..., 0], bright[s, t, ..., 0]
            if m0.sum() > 20 and m1.sum() > 20 and (targets[s, t] == targets[s, t - 1]).all():
                c0 = np.array([xs[m0].mean(), ys[m0].mean()])
                c1 = np.array([xs[m1].mean(), ys[m1].mean()])
                shifts.append(c1 - c0)
                wanted.append(targets[s, t])
    assert len(shifts) > 50
    assert np.abs(np.array(shifts) - np.array(wanted)).mean() < 0.6


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def test_kept_state_tells_the_velocity_and_a_single_frame_cannot(metrics: FramesMetrics) -> None:
    m = metrics
    assert m.val_mse_after_warmup < 0.8 * m.mean_mse
    assert m.val_mse < 0.85 * m.mean_mse
    assert m.reset_mse > 1.2 * m.val_mse_after_warmup  # one frame at a time: no velocity
    assert m.reset_mse > 0.9 * m.mean_mse  # ... no better than the constant guess
    assert m.epochs == SMALL.epochs and m.parameters > 0 and m.init_parameters == 0


# --------------------------------------------------------------------------------------------
# The engine with the init model
# --------------------------------------------------------------------------------------------


def test_engine_with_the_init_model_matches_the_offline_model(
    init_pair: tuple[Path, Path],
) -> None:
    """Streams stepped frame by frame, interleaved, through the engine with ``--init-model``
    give the Keras model run over the whole clips from the init model's states."""
    model_path, init_path = init_pair
    options = EngineOptions(
        model=str(model_path),
        init_model=str(init_path),
        cache_capacity=64,
        max_batch=8,
        scan_min_steps=4,
        max_scan_steps=8,
        threads=0,
    )
    engine = build_engine(options)
    assert engine.model.has_init_model
    n, steps = 6, 10
    frames, _ = FrameClips(n, seed=9, salt=FEED_SALT).clips(steps)
    rng = np.random.default_rng(0)
    # Arrival order: every stream in frame order, streams shuffled together; uneven chunks
    # so that single steps and multi-step scans both run.
    owner = np.repeat(np.arange(n), steps)
    rng.shuffle(owner)
    pos = [0] * n
    records = []
    for s in owner.tolist():
        records.append(Record(f"cam{s}", pos[s], frames[s, pos[s]]))
        pos[s] += 1
    got: dict[str, list[Output]] = {}
    i = 0
    while i < len(records):
        size = int(rng.integers(1, 20))
        result = engine.process(records[i : i + size])
        assert not result.duplicates and not result.out_of_order
        for o in result.outputs:
            got.setdefault(o.stream, []).append(o)
        i += size

    loaded = keras.models.load_model(model_path, compile=False)
    init = keras.models.load_model(init_path, compile=False)
    want = np.asarray(with_initial_state(loaded, init)(frames, training=False))
    zero_start = np.asarray(loaded(frames, training=False))
    for s in range(n):
        outs = got[f"cam{s}"]
        assert [o.seq for o in outs] == list(range(steps))
        y = np.stack([o.y for o in outs])
        np.testing.assert_allclose(y, want[s], rtol=1e-4, atol=1e-4)
    # The init model matters: zero initial states give other velocities.
    assert not np.allclose(want, zero_start, atol=1e-3)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_example_model_kind_frames_writes_the_model_and_the_init_model(
    command_run: tuple[Path, Path, str],
) -> None:
    out, init_out, text = command_run
    args = _parse(["--kind", "frames", "--out", "x.keras", "--init-out", "y.keras", *TINY_FLAGS])
    cfg = example_command.frames_config_from_args(args)
    assert (cfg.epochs, cfg.streams, cfg.steps, cfg.units, cfg.init_model) == (1, 8, 4, 8, True)
    assert cfg.batch_size == FramesTrainConfig().batch_size  # not given: the frames default
    assert f"saved {out}" in text and f"saved {init_out}" in text
    assert "state reset" in text and "mean velocity" in text
    sm = load_step_model(out, init_model=str(init_out))
    assert sm.has_init_model and sm.input_shape == FRAME_SHAPE and sm.input_dtype == "uint8"
    assert sm.output_shape == (2,)
    assert [s.shape for s in sm.state_spec] == [(8,)] * 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "a.keras", "--init-out", "b.keras"], "--kind frames"),
        (["--kind", "frames", "--out", "a.keras", "--channels", "2"], "--channels"),
        (["--kind", "frames", "--out", "a.keras", "--init-out", "b.h5"], "'.keras'"),
        (["--kind", "frames", "--out", "a.keras", "--init-out", "a.keras"], "differ"),
        (["--kind", "frames", "--out", "a.keras", "--epochs", "0"], ">= 1"),
    ],
    ids=["init-out-sensor", "sensor-flag", "init-suffix", "same-file", "epochs"],
)
def test_example_model_refuses_bad_frames_flags(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    args = _parse(argv)
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.chdir(tmp_path):
        assert example_command.main(args) == 2
    assert message in err.getvalue()
    assert not list(tmp_path.iterdir())


def test_sensor_kind_keeps_its_defaults() -> None:
    cfg = example_command.config_from_args(_parse(["--out", "a.keras"]))
    assert cfg == TrainConfig()
