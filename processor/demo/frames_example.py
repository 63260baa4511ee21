"""The frames example model: the velocity of a bouncing object in a stream of video frames.

``lstm-stream example-model --kind frames --out build/frames-model.keras`` trains, in about a
minute on two CPU cores, a model that reads one 84x84x1 uint8 frame per step and predicts the
velocity ``(vx, vy)`` (pixels per frame) of the object moving in it. One frame cannot tell
a velocity: only the object's position is in it, so kept state is what makes the answer.
Noise and occasional occlusions (a bar hides the object for a few frames) make the model
carry its estimate through frames where nothing can be seen.

With ``--init-out`` a second model is trained jointly: it maps a stream's first frame to the
initial ``(h, c)`` of every LSTM layer (the engine's ``--init-model``), instead of zeros.

Pieces reused by the demo, the benchmarks and the tests:

* :class:`FrameClips` -- a seeded generator of many independent clips; each call to
  :meth:`FrameClips.next` yields the next frame and velocity of the given streams.
* :func:`build_frames_model`, :func:`build_init_model`, :func:`train_frames_model` -- the
  Keras models and their training, with held-out metrics (state kept vs. state reset every
  frame vs. the best constant guess).
* :func:`with_initial_state` -- the offline reference: the frames model run over whole
  sequences from the init model's states (what the engine must reproduce step by step).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)

import keras  # isort: skip

# Salts of the seed, as in processor.demo.example: training, validation and live feeds draw
# different clips from the same seed.
TRAIN_SALT = 0
VALIDATION_SALT = 1
FEED_SALT = 2

FRAME_SIZE = 84
FRAME_SHAPE = (FRAME_SIZE, FRAME_SIZE, 1)
#: Frames after a stream's first that the "after warm-up" error skips (a velocity needs two
#: frames; the third removes most of the first estimate's noise).
WARMUP_FRAMES = 2
#: Training frames (clips x frames x epochs) from which XLA pays for its compile time.
XLA_MIN_FRAMES = 20_000


class FrameClips:
    """``n_streams`` synthetic clips of 84x84x1 uint8 frames, reproducible by seed and salt.

    Each clip has one object (a filled square or disc, 6 to 10 pixels in radius, brightness
    150 to 255) at its own random position, moving with its own constant speed: each
    velocity component is uniform in ``[min_speed, max_speed]`` pixels per frame with a
    random sign, and flips when the object bounces off an edge. The background is uniform
    noise in ``[0, noise]``. With probability ``occlusion_p`` per frame an occlusion starts:
    a grey bar (vertical or horizontal, ``bar_width`` pixels wide, placed over the object)
    hides it for 2 to 4 frames, while the object keeps moving.

    The target of a frame is the velocity the object moves with at that frame (after any
    bounce that brought it there), float32 ``(vx, vy)`` in pixels per frame (x: columns,
    y: rows).

    Not thread-safe. Given the same seed, salt and sequence of calls the output is identical.
    """

    def __init__(
        self,
        n_streams: int,
        seed: int = 0,
        *,
        salt: int = TRAIN_SALT,
        min_speed: float = 1.0,
        max_speed: float = 4.0,
        noise: int = 40,
        occlusion_p: float = 0.05,
        bar_width: int = 24,
    ) -> None:
        if n_streams < 1:
            raise ValueError(f"need n_streams >= 1, got {n_streams}")
        if not 0.0 <= min_speed <= max_speed <= 8.0:
            raise ValueError(f"need 0 <= min_speed <= max_speed <= 8, got {min_speed}, {max_speed}")
        if not 0 <= noise <= 120:
            raise ValueError(f"noise must be in [0, 120] (below the object), got {noise}")
        if not 0.0 <= occlusion_p <= 1.0 or not 1 <= bar_width <= FRAME_SIZE:
            raise ValueError(
                f"need occlusion_p in [0, 1] and bar_width in [1, {FRAME_SIZE}], got "
                f"{occlusion_p}, {bar_width}"
            )
        self.n_streams = n_streams
        self.noise = int(noise)
        self.occlusion_p = float(occlusion_p)
        self.bar_width = int(bar_width)
        self._rng = np.random.default_rng([seed, salt, 84])
        rng = self._rng
        self._radius = rng.uniform(6.0, 10.0, n_streams)
        self._disc = rng.random(n_streams) < 0.5
        self._level = rng.integers(150, 256, n_streams)
        lo, hi = self._radius, FRAME_SIZE - 1 - self._radius
        self._pos = rng.uniform(lo[:, None], hi[:, None], (n_streams, 2))  # (x, y)
        speed = rng.uniform(min_speed, max_speed, (n_streams, 2))
        self._vel = speed * rng.choice([-1.0, 1.0], (n_streams, 2))
        self._occluded = np.zeros(n_streams, np.int64)  # frames of occlusion left
        self._bar_vertical = np.zeros(n_streams, bool)
        self._bar_at = np.zeros(n_streams)  # the bar's centre column (vertical) or row
        self._t = np.zeros(n_streams, np.int64)
        grid = np.arange(FRAME_SIZE, dtype=np.float64)
        self._cols = grid[None, None, :]
        self._rows = grid[None, :, None]

    @property
    def steps(self) -> np.ndarray:
        """Frames produced so far per stream (a copy)."""
        return self._t.copy()

    def next(self, streams: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The next frame ``[n, 84, 84, 1]`` uint8 and its velocity ``[n, 2]`` float32 of
        each given stream, and advance those streams by one frame (a stream not asked for
        is paused). ``streams`` must be distinct indices in ``[0, n_streams)``."""
        idx = np.asarray(streams, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_streams):
            raise IndexError(f"stream index out of range [0, {self.n_streams})")
        if len(np.unique(idx)) != len(idx):
            raise ValueError("stream indices must be distinct")
        rng = self._rng
        n = len(idx)
        # Occlusions start over the object, then stay put while it moves on.
        start = (self._occluded[idx] == 0) & (rng.random(n) < self.occlusion_p)
        s = idx[start]
        self._occluded[s] = rng.integers(2, 5, len(s))
        self._bar_vertical[s] = rng.random(len(s)) < 0.5
        self._bar_at[s] = np.where(self._bar_vertical[s], self._pos[s, 0], self._pos[s, 1])

        frames = rng.integers(0, self.noise + 1, (n, FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
        dx = self._cols - self._pos[idx, 0, None, None]
        dy = self._rows - self._pos[idx, 1, None, None]
        r = self._radius[idx, None, None]
        disc = (dx * dx + dy * dy) <= r * r
        square = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        inside = np.where(self._disc[idx, None, None], disc, square)
        frames[inside] = np.broadcast_to(self._level[idx, None, None], inside.shape)[inside]
        hidden = self._occluded[idx] > 0
        if hidden.any():
            half = self.bar_width / 2.0
            at = self._bar_at[idx, None, None]
            bar = (
                np.where(
                    self._bar_vertical[idx, None, None],
                    np.abs(self._cols - at) <= half,
                    np.abs(self._rows - at) <= half,
                )
                & hidden[:, None, None]
            )
            frames[bar] = 100
        targets = self._vel[idx].astype(np.float32)

        self._occluded[idx] = np.maximum(self._occluded[idx] - 1, 0)
        self._advance(idx)
        self._t[idx] += 1
        return frames[..., None], targets

    def _advance(self, idx: np.ndarray) -> None:
        """Move streams ``idx`` by their velocity, reflecting off the edges (the velocity
        component flips at a bounce)."""
        lo = self._radius[idx, None]
        hi = FRAME_SIZE - 1 - lo
        pos = self._pos[idx] + self._vel[idx]
        vel = self._vel[idx].copy()
        below, above = pos < lo, pos > hi
        pos = np.where(below, 2 * lo - pos, pos)
        pos = np.where(above, 2 * hi - pos, pos)
        vel = np.where(below | above, -vel, vel)
        self._pos[idx] = np.clip(pos, lo, hi)
        self._vel[idx] = vel

    def clips(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``steps`` frames and velocities of every stream: ``[n_streams, steps,
        84, 84, 1]`` uint8 and ``[n_streams, steps, 2]`` float32 (for training and
        evaluation)."""
        idx = np.arange(self.n_streams)
        frames = np.empty((self.n_streams, steps, *FRAME_SHAPE), np.uint8)
        targets = np.empty((self.n_streams, steps, 2), np.float32)
        for t in range(steps):
            frames[:, t], targets[:, t] = self.next(idx)
        return frames, targets


def build_frames_model(units: int = 64, filters: int = 16, features: int = 64) -> Any:
    """``Input((None, 84, 84, 1), uint8)`` -> per frame ``Rescaling(1/255) ->
    Conv2D(filters, 4, stride 4) -> Conv2D(filters, 3, stride 2) -> Flatten ->
    Dense(features) -> LayerNormalization`` -> ``LSTM(units) x 2`` -> ``Dense(2)``: per
    frame, the velocity.

    A linear chain of per-frame layers (TimeDistributed, or acting on the last axis),
    steppable by :class:`processor.model.protocol.KerasStepModel`; its state is ``lstm_0/h,
    lstm_0/c, lstm_1/h, lstm_1/c``, each ``[units]``. The flattened 10x10 map keeps where
    the object is, which the dense layer can read out linearly (no pooling over the frame:
    a velocity is a change of position)."""
    if min(units, filters, features) < 1:
        raise ValueError(f"need units, filters, features >= 1, got {units}, {filters}, {features}")
    td = keras.layers.TimeDistributed
    inp = keras.Input((None, *FRAME_SHAPE), dtype="uint8", name="frames")
    h = td(keras.layers.Rescaling(1.0 / 255.0), name="scale")(inp)
    h = td(keras.layers.Conv2D(filters, 4, strides=4, activation="relu"), name="conv_0")(h)
    h = td(keras.layers.Conv2D(filters, 3, strides=2, activation="relu"), name="conv_1")(h)
    h = td(keras.layers.Flatten(), name="flatten")(h)
    h = keras.layers.Dense(features, activation="relu", name="features")(h)
    # Normalised features: the LSTM gates see inputs of a steady scale from the first update.
    h = keras.layers.LayerNormalization(name="features_norm")(h)
    h = keras.layers.LSTM(units, return_sequences=True, name="lstm_0")(h)
    h = keras.layers.LSTM(units, return_sequences=True, name="lstm_1")(h)
    out = keras.layers.Dense(2, name="velocity")(h)
    return keras.Model(inp, out, name="frames_velocity")


def build_init_model(units: int = 64, filters: int = 8) -> Any:
    """``Input((84, 84, 1), uint8)`` -> a small CNN -> four ``Dense(units, tanh)`` outputs:
    a stream's first frame to the initial ``[lstm_0/h, lstm_0/c, lstm_1/h, lstm_1/c]`` of
    :func:`build_frames_model` (the order and shapes of its state spec, as the engine's
    init model must give them)."""
    inp = keras.Input(FRAME_SHAPE, dtype="uint8", name="first_frame")
    h = keras.layers.Rescaling(1.0 / 255.0)(inp)
    h = keras.layers.Conv2D(filters, 4, strides=4, activation="relu")(h)
    h = keras.layers.Conv2D(filters, 3, strides=3, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(units, activation="relu")(h)
    outs = [
        keras.layers.Dense(units, activation="tanh", name=f"init_{name}")(h)
        for name in ("lstm_0_h", "lstm_0_c", "lstm_1_h", "lstm_1_c")
    ]
    return keras.Model(inp, outs, name="frames_initial_state")


def with_initial_state(model: Any, init_model: Any) -> Any:
    """A model over whole sequences ``[B, T, 84, 84, 1]`` that runs ``model``'s own layers
    (shared: training it trains ``model``) with each LSTM layer's ``initial_state`` given
    by ``init_model`` on the sequence's first frame. The offline reference of what the
    engine computes with ``--init-model``, and the joint training model."""
    inp = keras.Input((None, *FRAME_SHAPE), dtype="uint8", name="clip")
    states = list(init_model(inp[:, 0]))
    h = inp
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.LSTM):
            h = layer(h, initial_state=states[:2])
            states = states[2:]
        else:
            h = layer(h)
    if states:
        raise ValueError(f"init model has {len(states)} outputs more than the model's states")
    return keras.Model(inp, h, name="frames_velocity_from_first_frame")


@dataclass(frozen=True)
class FramesTrainConfig:
    """Training settings of the frames model (the ``example-model --kind frames`` flags).

    The defaults train in about a minute on two CPU cores."""

    streams: int = 1024
    steps: int = 12
    epochs: int = 4
    units: int = 64
    filters: int = 16
    features: int = 64
    batch_size: int = 16
    learning_rate: float = 0.005
    seed: int = 0
    val_streams: int = 64
    val_steps: int = 24
    init_model: bool = False
    #: Compile training with XLA: None = only for runs of at least XLA_MIN_FRAMES training
    #: frames (XLA's compile costs ~15 s on a small CPU, then trains 2-3x faster).
    jit_compile: bool | None = None


@dataclass(frozen=True)
class FramesMetrics:
    """Held-out velocity errors (mean squared, (pixels/frame)^2) on ``val_streams`` new
    clips of ``val_steps`` frames, longer than the training clips.

    ``val_mse``: the model with its state kept from the stream's first frame (zeros, or the
    init model's states); ``val_mse_after_warmup``: the same from frame ``WARMUP_FRAMES``
    on; ``reset_mse``: the model with its state reset before every frame (it sees one
    frame); ``mean_mse``: the best constant guess, the mean training velocity -- what any
    predictor that cannot tell a velocity from one frame is held to.
    """

    train_loss: float
    val_mse: float
    val_mse_after_warmup: float
    reset_mse: float
    mean_mse: float
    fit_seconds: float
    total_seconds: float
    epochs: int
    parameters: int
    init_parameters: int


def _call(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """``model(x)`` in batches (see processor.demo.example._call on why not ``predict``)."""
    return np.concatenate(
        [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    )


def evaluate(
    model: Any, frames: np.ndarray, targets: np.ndarray, mean_velocity: np.ndarray
) -> dict[str, float]:
    """Velocity errors of ``model`` (a sequence model: the frames model, or
    :func:`with_initial_state` of it) on clips ``frames`` ``[n, T, 84, 84, 1]`` with
    ``targets`` ``[n, T, 2]``: state kept, after warm-up, reset every frame, and the
    constant ``mean_velocity``."""
    n, t = frames.shape[:2]
    err = ((_call(model, frames) - targets) ** 2).mean(axis=(0, 2))
    # Each frame as its own one-frame sequence: the state starts afresh every frame.
    single = _call(model, frames.reshape(n * t, 1, *FRAME_SHAPE)).reshape(n, t, 2)
    return {
        "val_mse": float(err.mean()),
        "val_mse_after_warmup": float(err[WARMUP_FRAMES:].mean()),
        "reset_mse": float(((single - targets) ** 2).mean()),
        "mean_mse": float(((targets - mean_velocity) ** 2).mean()),
    }


def train_frames_model(
    config: FramesTrainConfig | None = None,
) -> tuple[Any, Any | None, FramesMetrics]:
    """Build and train the frames model (and, with ``config.init_model``, its init model
    jointly) on fresh FrameClips; return ``(model, init_model or None, metrics)``.

    Both models are ready to save and to load with
    :func:`processor.model.protocol.load_step_model`. Deterministic for a given config up to
    TensorFlow's thread scheduling."""
    cfg = config or FramesTrainConfig()
    if min(cfg.streams, cfg.steps, cfg.epochs, cfg.batch_size, cfg.val_streams) < 1:
        raise ValueError("streams, steps, epochs, batch_size and val_streams must be >= 1")
    if cfg.val_steps <= WARMUP_FRAMES:
        raise ValueError(f"val_steps must exceed {WARMUP_FRAMES}, got {cfg.val_steps}")
    t_start = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    frames, targets = FrameClips(cfg.streams, cfg.seed, salt=TRAIN_SALT).clips(cfg.steps)
    model = build_frames_model(cfg.units, cfg.filters, cfg.features)
    init = build_init_model(cfg.units) if cfg.init_model else None
    trainer = model if init is None else with_initial_state(model, init)
    updates = cfg.epochs * -(-cfg.streams // cfg.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, updates, alpha=0.05)
    jit = cfg.jit_compile
    if jit is None:
        jit = cfg.streams * cfg.steps * cfg.epochs >= XLA_MIN_FRAMES
    # XLA: measured 2-3x faster training steps on CPU for this model (many small ops).
    trainer.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse", jit_compile=jit)
    t_fit = time.perf_counter()
    history = trainer.fit(frames, targets, epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0)
    fit_seconds = time.perf_counter() - t_fit
    val_frames, val_targets = FrameClips(cfg.val_streams, cfg.seed, salt=VALIDATION_SALT).clips(
        cfg.val_steps
    )
    scores = evaluate(trainer, val_frames, val_targets, targets.mean(axis=(0, 1)))
    metrics = FramesMetrics(
        train_loss=float(history.history["loss"][-1]),
        fit_seconds=fit_seconds,
        total_seconds=time.perf_counter() - t_start,
        epochs=cfg.epochs,
        parameters=int(model.count_params()),
        init_parameters=int(init.count_params()) if init is not None else 0,
        **scores,
    )
    return model, init, metrics


def format_frames_metrics(cfg: FramesTrainConfig, m: FramesMetrics) -> str:
    """A human-readable training summary (several lines, no trailing newline)."""
    init = (
        f"; init model (first frame -> 4 states) {m.init_parameters:,} parameters"
        if cfg.init_model
        else "; zero initial states"
    )
    return "\n".join(
        [
            f"frames model: per-frame CNN -> 2x LSTM({cfg.units}) -> Dense(2) velocity, "
            f"{m.parameters:,} parameters{init}",
            f"trained on {cfg.streams} clips x {cfg.steps} frames, {m.epochs} epochs in "
            f"{m.fit_seconds:.1f} s ({m.total_seconds:.1f} s with data and evaluation); "
            f"final train loss {m.train_loss:.4f}",
            f"held-out velocity MSE ((px/frame)^2) over {cfg.val_streams} new clips x "
            f"{cfg.val_steps} frames:",
            f"  model, state kept        {m.val_mse:.4f}  (from frame {WARMUP_FRAMES}: "
            f"{m.val_mse_after_warmup:.4f})",
            f"  model, state reset       {m.reset_mse:.4f}",
            f"  mean velocity (1 frame)  {m.mean_mse:.4f}",
        ]
    )
