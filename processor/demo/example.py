"""The sensor example model: next-value forecasting of noisy periodic sensor signals.

A one-layer LSTM that reads one sample of a multi-channel sensor per step and predicts the
stream's next sample, trained in a few seconds on a small CPU on
:class:`~processor.demo.signals.SignalBank` streams. The signal makes kept state matter:
from one sample alone the next one cannot be told (the same value occurs on the rising and
the falling edge of a sine), while a few samples of history pin down each stream's
frequencies and phases.

:func:`build_example_model` builds it, :func:`train_example_model` trains it and measures it
on held-out streams (model vs. the naive baseline vs. the same model without state),
:func:`format_metrics` reports that. ``lstm-stream example-model``
(:mod:`processor.demo.example_command`) saves one; the demo trains one when given no model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.demo.signals import TRAIN_SALT, VALIDATION_SALT, SignalBank

import keras  # isort: skip

__all__ = [
    "WARMUP_STEPS",
    "TrainConfig",
    "TrainMetrics",
    "build_example_model",
    "call_batched",
    "evaluate",
    "format_metrics",
    "train_example_model",
]


def build_example_model(channels: int = 4, units: int = 64, layers: int = 1) -> Any:
    """``Input((None, channels)) -> LSTM(units, return_sequences=True) x layers ->
    Dense(channels)``: per step, the predicted next sample. Steppable by
    :class:`processor.model.keras_step.KerasStepModel` (a linear chain, per-step head)."""
    if layers < 1 or units < 1:
        raise ValueError(f"need layers >= 1 and units >= 1, got {layers}, {units}")
    stack: list[Any] = [keras.Input((None, channels), name="samples")]
    stack += [
        keras.layers.LSTM(units, return_sequences=True, name=f"lstm_{i}") for i in range(layers)
    ]
    stack.append(keras.layers.Dense(channels, name="next_sample"))
    return keras.Sequential(stack, name="example_forecaster")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of the sensor model (the ``example-model`` flags)."""

    streams: int = 1024
    steps: int = 100
    epochs: int = 25
    channels: int = 4
    units: int = 64
    layers: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    seed: int = 0
    val_streams: int = 256
    val_steps: int = 400


@dataclass(frozen=True)
class TrainMetrics:
    """Held-out results of a training run (validation streams the model never saw, run for
    ``val_steps`` steps from a zero state, longer than the training windows).

    ``val_mse``: the model with its state kept; ``val_mse_after_warmup``: the same from step
    20 on (the first steps, before the state has seen a cycle, are worse); ``naive_mse``:
    predicting that the next sample equals the current one; ``reset_mse``: the model with its
    state reset before every sample (what a stateless server would compute);
    ``noise_floor``: the noise variance, the best any forecaster can do.
    """

    train_loss: float
    val_mse: float
    val_mse_after_warmup: float
    naive_mse: float
    reset_mse: float
    noise_floor: float
    fit_seconds: float
    total_seconds: float
    epochs: int
    parameters: int


WARMUP_STEPS = 20


def call_batched(model: Any, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """``model(x)`` over ``x``'s first axis in batches of ``batch``, concatenated. Not
    ``predict``: Keras 3.15's predict can return a single time step for some models once it
    has traced a longer sequence."""
    return np.concatenate(
        [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    )


def evaluate(model: Any, seq: np.ndarray) -> dict[str, float]:
    """Forecast errors of ``model`` on ``seq`` ``[n, T, C]`` (input ``seq[:, :-1]``, target
    ``seq[:, 1:]``): stateful, stateful after warm-up, naive, and state reset every step."""
    x, y = seq[:, :-1], seq[:, 1:]
    n, t, c = x.shape
    pred = call_batched(model, x)
    err = ((pred - y) ** 2).mean(axis=(0, 2))
    # Each sample as its own one-step sequence: the LSTM starts from zeros every time.
    single = call_batched(model, x.reshape(n * t, 1, c)).reshape(n, t, c)
    return {
        "val_mse": float(err.mean()),
        "val_mse_after_warmup": float(err[WARMUP_STEPS:].mean()),
        "naive_mse": float(((x - y) ** 2).mean()),
        "reset_mse": float(((single - y) ** 2).mean()),
    }


def train_example_model(config: TrainConfig | None = None) -> tuple[Any, TrainMetrics]:
    """Build and train the example model on fresh SignalBank streams; return it with its
    held-out metrics. Deterministic for a given config up to TensorFlow's thread scheduling."""
    cfg = config or TrainConfig()
    t_start = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    bank = SignalBank(cfg.streams, cfg.channels, cfg.seed, salt=TRAIN_SALT)
    data = bank.sequences(cfg.steps + 1)
    model = build_example_model(cfg.channels, cfg.units, cfg.layers)
    updates = cfg.epochs * -(-cfg.streams // cfg.batch_size)
    # Cosine decay: a high rate finds the periodic structure fast, the low tail settles it;
    # measured to beat a constant rate at the same number of epochs.
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, updates, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    t_fit = time.perf_counter()
    history = model.fit(
        data[:, :-1], data[:, 1:], epochs=cfg.epochs, batch_size=cfg.batch_size, verbose=0
    )
    fit_seconds = time.perf_counter() - t_fit
    val = SignalBank(cfg.val_streams, cfg.channels, cfg.seed, salt=VALIDATION_SALT)
    scores = evaluate(model, val.sequences(cfg.val_steps + 1))
    metrics = TrainMetrics(
        train_loss=float(history.history["loss"][-1]),
        noise_floor=bank.noise**2,
        fit_seconds=fit_seconds,
        total_seconds=time.perf_counter() - t_start,
        epochs=cfg.epochs,
        parameters=int(model.count_params()),
        **scores,
    )
    return model, metrics


def format_metrics(cfg: TrainConfig, m: TrainMetrics) -> str:
    """A human-readable training summary (several lines, no trailing newline)."""
    return "\n".join(
        [
            f"example model: {cfg.layers}x LSTM({cfg.units}) -> Dense({cfg.channels}), "
            f"{m.parameters:,} parameters",
            f"trained on {cfg.streams} streams x {cfg.steps} steps, {m.epochs} epochs in "
            f"{m.fit_seconds:.1f} s ({m.total_seconds:.1f} s with data and evaluation); "
            f"final train loss {m.train_loss:.5f}",
            f"held-out forecast MSE over {cfg.val_streams} new streams x {cfg.val_steps} steps:",
            f"  model, state kept        {m.val_mse:.5f}  (after {WARMUP_STEPS} steps: "
            f"{m.val_mse_after_warmup:.5f})",
            f"  model, state reset       {m.reset_mse:.5f}",
            f"  naive next = current     {m.naive_mse:.5f}",
            f"  noise floor              {m.noise_floor:.5f}",
        ]
    )
