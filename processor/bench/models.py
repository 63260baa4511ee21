"""The benchmark's models: Keras builders (plain and stateful twin) and their inputs.

Every model is built twice from the same layer recipe: once as the ordinary sequence model
the processor steps (:class:`~processor.model.keras_step.KerasStepModel`), once as a
``stateful=True`` twin with ``batch_size=1`` for the naive baseline (B0), with the weights
copied across, so that every method computes the same function. Weights are random
(seeded): speed does not depend on what the weights are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

import processor  # noqa: F401  (TF/Keras environment defaults before the import below)
from processor.model import KerasStepModel


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: per-step input shape and dtype, and a layer recipe.

    ``layers(stateful)`` returns fresh layer instances in chain order (recurrent layers get
    ``stateful`` passed through); :func:`build` wires them behind an input.
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    input_dtype: str
    layers: Callable[[bool], list[Any]]
    # Matmul-like FLOPs per step that KerasStepModel.flops_per_step does not count
    # (convolutions inside TimeDistributed); reported separately, never mixed in silently.
    extra_flops: int = 0


def _lstm_stack(units: int, n: int, head: int) -> Callable[[bool], list[Any]]:
    def layers(stateful: bool) -> list[Any]:
        out: list[Any] = [
            keras.layers.LSTM(units, return_sequences=True, stateful=stateful) for _ in range(n)
        ]
        out.append(keras.layers.Dense(head))
        return out

    return layers


def _cnn_lstm(stateful: bool) -> list[Any]:
    # A DQN-style frame encoder (84x84 grey frames) feeding a 2x512 LSTM.
    td = keras.layers.TimeDistributed
    return [
        keras.layers.Rescaling(1.0 / 255.0),
        td(keras.layers.Conv2D(16, 8, strides=4, activation="relu")),
        td(keras.layers.Conv2D(32, 4, strides=2, activation="relu")),
        td(keras.layers.Flatten()),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.LSTM(512, return_sequences=True, stateful=stateful),
        keras.layers.LSTM(512, return_sequences=True, stateful=stateful),
        keras.layers.Dense(8),
    ]


# Conv FLOPs of _cnn_lstm: 2 * out_h * out_w * out_c * (k * k * in_c) per conv.
_CNN_CONV_FLOPS = 2 * 20 * 20 * 16 * (8 * 8 * 1) + 2 * 9 * 9 * 32 * (4 * 4 * 16)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "lstm2x256",
            "2x256 LSTM on 32 sensor features, Dense(8) head",
            (32,),
            "float32",
            _lstm_stack(256, 2, 8),
        ),
        ModelSpec(
            "lstm2x512",
            "2x512 LSTM on 32 sensor features, Dense(8) head",
            (32,),
            "float32",
            _lstm_stack(512, 2, 8),
        ),
        ModelSpec(
            "cnn_lstm",
            "84x84x1 uint8 frames -> Conv2D(16,8/4) -> Conv2D(32,4/2) -> Dense(256) -> "
            "2x512 LSTM -> Dense(8)",
            (84, 84, 1),
            "uint8",
            _cnn_lstm,
            extra_flops=_CNN_CONV_FLOPS,
        ),
        # Almost no arithmetic: a step costs what the host path around it costs (records,
        # codec, Kafka). The host-path sections run it; not part of the default set.
        ModelSpec(
            "free",
            "LSTM(4) on 32 features, Dense(8) head (host-path benchmarks)",
            (32,),
            "float32",
            _lstm_stack(4, 1, 8),
        ),
        # Small enough for smoke tests and the agreement check; not part of the default set.
        ModelSpec(
            "tiny",
            "2x16 LSTM on 4 features, Dense(3) head (smoke tests)",
            (4,),
            "float32",
            _lstm_stack(16, 2, 3),
        ),
    )
}

DEFAULT_MODELS = ("lstm2x256", "lstm2x512", "cnn_lstm")


def build(spec: ModelSpec, *, stateful: bool = False) -> Any:
    """The Keras model of ``spec``: ``[batch, time, *input_shape]`` in, per-step outputs out.

    ``stateful=True`` gives the B0 twin: batch size fixed at 1, recurrent layers stateful.
    """
    if stateful:
        inp = keras.Input(batch_shape=(1, None, *spec.input_shape), dtype=spec.input_dtype)
    else:
        inp = keras.Input((None, *spec.input_shape), dtype=spec.input_dtype)
    h = inp
    for layer in spec.layers(stateful):
        h = layer(h)
    return keras.Model(inp, h, name=spec.name + ("_stateful" if stateful else ""))


@dataclass
class BenchModel:
    """One model in all the forms the methods need (same weights everywhere)."""

    spec: ModelSpec
    keras_model: Any
    step_model: KerasStepModel

    def new_stateful(self) -> Any:
        """A new stateful batch-1 twin for B0 (weights copied). Each B0 instance gets its
        own, so that B0 variants measured in alternation never see each other's state."""
        twin = build(self.spec, stateful=True)
        twin.set_weights(self.keras_model.get_weights())
        return twin

    @property
    def flops_per_step(self) -> int:
        """FLOPs per message as the engine's model reports them (LSTM and Dense matmuls)."""
        return int(self.step_model.flops_per_step)


def load(name: str, seed: int = 0) -> BenchModel:
    """Build model ``name`` (a key of :data:`MODELS`) with seeded random weights."""
    spec = MODELS[name]
    keras.utils.set_random_seed(seed)
    km = build(spec)
    return BenchModel(spec, km, KerasStepModel.from_model(km))


def input_pool(spec: ModelSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random per-step inputs ``[n, *input_shape]`` in the model's input dtype.

    Records reference rows of this pool (views, no copies), so that large frame inputs do
    not cost memory per message.
    """
    rng = np.random.default_rng(seed)
    shape = (n, *spec.input_shape)
    if spec.input_dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(spec.input_dtype)
