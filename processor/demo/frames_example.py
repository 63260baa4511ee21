"""The frames example model: the velocity of a bouncing object in a stream of video frames.

A model that reads one 84x84x1 uint8 frame per step (a per-frame CNN, two LSTM layers) and
gives the velocity ``(vx, vy)`` (pixels per frame) of the object moving in it, trained in
about a minute on two CPU cores on :class:`~processor.demo.signals.FrameClips`. One frame
cannot tell a velocity: only the object's position is in it, so kept state is what makes
the answer. Noise and occasional occlusions (a bar hides the object for a few frames) make
the model carry its estimate through frames where nothing can be seen.

With ``init_model`` a second model is trained jointly: it maps a stream's first frame to the
initial ``(h, c)`` of every LSTM layer (the engine's ``--init-model``), instead of zeros.

* :func:`build_frames_model`, :func:`build_init_model`, :func:`train_frames_model`,
  :func:`format_frames_metrics` -- the Keras models, their training with held-out metrics
  (state kept vs. state reset every frame vs. the best constant guess) and its report.
* :func:`with_initial_state` -- the offline reference: the frames model run over whole
  sequences from the init model's states (what the engine must reproduce step by step).

``lstm-stream example-model --kind frames`` (:mod:`processor.demo.example_command`) saves
them; ``demo --kind frames`` trains them when given no model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.demo.example import call_batched
from processor.demo.signals import FRAME_SHAPE, TRAIN_SALT, VALIDATION_SALT, FrameClips

import keras  # isort: skip

__all__ = [
    "WARMUP_FRAMES",
    "XLA_MIN_FRAMES",
    "FramesMetrics",
    "FramesTrainConfig",
    "build_frames_model",
    "build_init_model",
    "evaluate",
    "format_frames_metrics",
    "train_frames_model",
    "with_initial_state",
]

#: Frames after a stream's first that the "after warm-up" error skips (a velocity needs two
#: frames; the third removes most of the first estimate's noise).
WARMUP_FRAMES = 2
#: Training frames (clips x frames x epochs) from which XLA pays for its compile time.
XLA_MIN_FRAMES = 20_000


def build_frames_model(units: int = 64, filters: int = 16, features: int = 64) -> Any:
    """``Input((None, 84, 84, 1), uint8)`` -> per frame ``Rescaling(1/255) ->
    Conv2D(filters, 4, stride 4) -> Conv2D(filters, 3, stride 2) -> Flatten ->
    Dense(features) -> LayerNormalization`` -> ``LSTM(units) x 2`` -> ``Dense(2)``: per
    frame, the velocity.

    A linear chain of per-frame layers (TimeDistributed, or acting on the last axis),
    steppable by :class:`processor.model.keras_step.KerasStepModel`; its state is ``lstm_0/h,
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


def evaluate(
    model: Any, frames: np.ndarray, targets: np.ndarray, mean_velocity: np.ndarray
) -> dict[str, float]:
    """Velocity errors of ``model`` (a sequence model: the frames model, or
    :func:`with_initial_state` of it) on clips ``frames`` ``[n, T, 84, 84, 1]`` with
    ``targets`` ``[n, T, 2]``: state kept, after warm-up, reset every frame, and the
    constant ``mean_velocity``."""
    n, t = frames.shape[:2]
    err = ((call_batched(model, frames, 256) - targets) ** 2).mean(axis=(0, 2))
    # Each frame as its own one-frame sequence: the state starts afresh every frame.
    single = call_batched(model, frames.reshape(n * t, 1, *FRAME_SHAPE), 256).reshape(n, t, 2)
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
    :func:`processor.model.load.load_step_model`. Deterministic for a given config up to
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
