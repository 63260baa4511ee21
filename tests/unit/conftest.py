"""Shared fixtures for the unit tests: deterministic seeds and small random Keras models.

* Every test is seeded from its own node id (autouse ``_seed_everything``), so a test gives
  the same numbers whether it runs alone or in the whole suite; ``rng`` is a NumPy
  ``Generator`` seeded the same way.
* ``make_model(**fields)`` builds a small random recurrent model from :class:`ModelSpec`
  fields (encoder, 1-3 LSTM/GRU/SimpleRNN layers, head; Sequential or functional; float
  sensor vectors or uint8 frames) with deliberately large, non-trivial weights (biases,
  BatchNormalization moving statistics...) so that a wrong step cannot hide behind near-zero
  activations. It returns a :class:`RandomModel` (the Keras model, random inputs for it, its
  oracle, saving).
* The offline oracle (:func:`reference_outputs`, fixture ``oracle`` for any callable) is the
  Keras model called on whole sequences with ``model(x, training=False)`` (not ``predict``,
  see below). For a model whose last recurrent layer has ``return_sequences=False`` the
  output for step ``t`` is the model over the prefix ``x[:, : t + 1]``.
* ``build_chain`` / ``random_weights``: hand-made layer lists as a Sequential or functional
  model, and the same non-trivial weights for them.
* ``lstm_step_module``: a ``tf.Module`` around ``keras.layers.LSTMCell`` that exports the
  SavedModel step contract (``step`` / ``initial_state`` signatures).

Test modules take these as fixtures rather than importing this file (``conftest`` is not an
importable module name once several test folders have one).

Why not ``model.predict``: Keras 3.15's ``predict`` on a model with ``TimeDistributed`` layers
returns a single time step once it has seen a longer sequence, so it is not a usable oracle.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import processor  # noqa: F401  (TF/Keras environment defaults before the imports below)

import keras  # isort: skip
import tensorflow as tf  # isort: skip

L = keras.layers


def _node_seed(nodeid: str) -> int:
    return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> Iterator[None]:
    """Seed Python, NumPy, TensorFlow and Keras from the test's node id.

    Keras layer initialisers draw from the global seed, so model weights are reproducible.
    """
    keras.utils.set_random_seed(_node_seed(request.node.nodeid))
    yield


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy generator seeded from the test's node id (stable across runs and orders)."""
    return np.random.default_rng(_node_seed(request.node.nodeid))


# --------------------------------------------------------------------------------------------
# Random models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a random test model.

    ``cells``: the recurrent stack, each ``"lstm"``, ``"gru"`` or ``"rnn"`` (SimpleRNN).
    ``last_sequences``: ``return_sequences`` of the last recurrent layer (the ones before it
    always return sequences). ``encoder``: ``None``; ``"dense"`` (Dense on 3-D input with
    BatchNormalization, Activation, Dropout, LayerNormalization); ``"conv"`` (uint8 frames of
    ``frame`` shape: Rescaling, TimeDistributed Conv2D/MaxPooling2D/Flatten, BatchNormalization
    on the 5-D tensor, Dense, Dropout). ``head``: ``None``; ``"dense"`` (Dense, Activation and,
    after ``return_sequences=False``, LayerNormalization); ``"td_dense"`` (TimeDistributed
    Dense; only with ``last_sequences``). ``functional``: functional API instead of
    Sequential.
    """

    cells: tuple[str, ...] = ("lstm",)
    last_sequences: bool = True
    encoder: str | None = None
    head: str | None = None
    functional: bool = False
    features: int = 5
    frame: tuple[int, int, int] = (12, 12, 1)
    units: int = 6

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.frame if self.encoder == "conv" else (self.features,)

    @property
    def input_dtype(self) -> str:
        return "uint8" if self.encoder == "conv" else "float32"

    def label(self) -> str:
        parts = [
            "-".join(self.cells),
            "seq" if self.last_sequences else "last",
            f"enc={self.encoder}",
            f"head={self.head}",
            "fn" if self.functional else "seqntl",
        ]
        if self.encoder == "conv":
            parts.append("x".join(map(str, self.frame)))
        return ",".join(parts)


def _recurrent(kind: str, units: int, return_sequences: bool, rng: np.random.Generator) -> Any:
    # Dropout settings must be inert at inference; GRU also in its reset_after=False variant.
    if kind == "lstm":
        return L.LSTM(units, return_sequences=return_sequences, dropout=0.3)
    if kind == "gru":
        return L.GRU(
            units,
            return_sequences=return_sequences,
            reset_after=bool(rng.integers(2)),
            recurrent_dropout=0.2,
        )
    if kind == "rnn":
        return L.SimpleRNN(units, return_sequences=return_sequences)
    raise ValueError(f"unknown recurrent kind {kind!r}")


def model_layers(spec: ModelSpec, rng: np.random.Generator) -> list[Any]:
    """Fresh (unbuilt) layers for ``spec``, in order."""
    if spec.head == "td_dense" and not spec.last_sequences:
        raise ValueError("a TimeDistributed head needs return_sequences=True")
    layers: list[Any] = []
    if spec.encoder == "dense":
        layers += [
            L.Dense(8),
            L.BatchNormalization(),
            L.Activation("tanh"),
            L.Dropout(0.5),
            L.LayerNormalization(),
        ]
    elif spec.encoder == "conv":
        layers += [
            L.Rescaling(1.0 / 255),
            L.TimeDistributed(L.Conv2D(4, 3, activation="relu")),
            L.TimeDistributed(L.MaxPooling2D(2)),
            L.BatchNormalization(),
            L.TimeDistributed(L.Flatten()),
            L.Dense(10, activation="relu"),
            L.Dropout(0.25),
        ]
    elif spec.encoder is not None:
        raise ValueError(f"unknown encoder {spec.encoder!r}")
    for i, kind in enumerate(spec.cells):
        last = i == len(spec.cells) - 1
        layers.append(_recurrent(kind, spec.units - i, spec.last_sequences or not last, rng))
    if spec.head == "dense":
        layers.append(L.Dense(3))
        if not spec.last_sequences:
            layers.append(L.LayerNormalization())
        layers.append(L.Activation("sigmoid"))
    elif spec.head == "td_dense":
        layers += [L.TimeDistributed(L.Dense(3)), L.Activation("relu")]
    elif spec.head is not None:
        raise ValueError(f"unknown head {spec.head!r}")
    return layers


def chain_model(
    layers: Sequence[Any],
    input_shape: tuple[int, ...],
    input_dtype: str = "float32",
    *,
    functional: bool = False,
    time_steps: int | None = None,
) -> Any:
    """A Sequential or functional model ``Input([time_steps, *input_shape]) -> layers``."""
    inp = keras.Input((time_steps, *input_shape), dtype=input_dtype)
    if not functional:
        return keras.Sequential([inp, *layers])
    h = inp
    for layer in layers:
        h = layer(h)
    return keras.Model(inp, h)


def randomize_weights(model: Any, rng: np.random.Generator, scale: float = 1.5) -> None:
    """Give every weight a random, deliberately non-trivial value.

    Kernels get ``scale / sqrt(fan_in)`` normal noise (larger than Glorot, so recurrent
    contributions matter), biases and LayerNorm/BatchNorm affine terms ``N(0, 0.5)`` (so an
    LSTM's forget gate is not simply ~1), BatchNormalization moving means ``N(0, 0.5)`` and
    variances in ``[0.3, 3]`` (so the training and inference paths differ visibly).
    """
    for w in model.weights:
        shape = tuple(w.shape)
        name = w.name
        if name == "moving_variance":
            value = rng.uniform(0.3, 3.0, shape)
        elif name in ("moving_mean", "bias", "beta"):
            value = rng.normal(0.0, 0.5, shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.normal(0.0, scale / np.sqrt(max(fan_in, 1)), shape)
        w.assign(value.astype(w.dtype))


def random_inputs(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random inputs of ``shape``: uint8 frames over the full 0..255 range, else N(0, 1)."""
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.normal(0.0, 1.0, shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# The offline oracle
# --------------------------------------------------------------------------------------------


def _pad(segments: Sequence[np.ndarray]) -> np.ndarray:
    t_max = max(len(s) for s in segments)
    first = segments[0]
    x = np.zeros((len(segments), t_max, *first.shape[1:]), first.dtype)
    for i, s in enumerate(segments):
        x[i, : len(s)] = s
    return x


def reference_outputs(
    model: Any, segments: Sequence[np.ndarray], *, sequences: bool
) -> list[np.ndarray]:
    """Offline outputs of ``model`` for each segment (``[T_i, *input_shape]``), from its
    initial (zero) state: ``[T_i, *output_shape]`` float32 each.

    ``sequences``: the model outputs one value per time step (last recurrent layer with
    ``return_sequences=True``); otherwise step ``t`` is the model over ``segment[: t + 1]``.
    Segments are batched together, zero-padded at the end (the model is causal, so padding
    after a step cannot change that step's output).
    """
    return reference_outputs_fn(lambda x: model(x, training=False), segments, sequences)


def reference_outputs_fn(
    fn: Callable[[np.ndarray], Any], segments: Sequence[np.ndarray], sequences: bool
) -> list[np.ndarray]:
    """:func:`reference_outputs` for any callable ``fn(x [N, T, ...]) -> outputs``."""
    if not segments:
        return []
    lengths = [len(s) for s in segments]
    x = _pad(segments)
    if sequences:
        y = np.asarray(fn(x), np.float32)
        return [y[i, :n] for i, n in enumerate(lengths)]
    per_step: list[list[np.ndarray]] = [[] for _ in segments]
    for t in range(x.shape[1]):
        alive = [i for i, n in enumerate(lengths) if n > t]
        y = np.asarray(fn(x[alive, : t + 1]), np.float32)
        for k, i in enumerate(alive):
            per_step[i].append(y[k])
    return [np.stack(p) for p in per_step]


@dataclass
class RandomModel:
    """A test model with what the tests need to drive it and check it."""

    spec: ModelSpec
    model: Any
    rng: np.random.Generator

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input_shape

    @property
    def input_dtype(self) -> str:
        return self.spec.input_dtype

    @property
    def sequences(self) -> bool:
        return self.spec.last_sequences

    def inputs(self, *lead: int) -> np.ndarray:
        """Random inputs ``[*lead, *input_shape]`` in the model's input dtype."""
        return random_inputs(self.rng, (*lead, *self.input_shape), self.input_dtype)

    def reference(self, segments: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The offline oracle for this model (see :func:`reference_outputs`)."""
        return reference_outputs(self.model, segments, sequences=self.sequences)

    def save(self, path: Any) -> Any:
        """Save to ``path`` (a ``.keras`` file) and return the path."""
        self.model.save(path)
        return path


@pytest.fixture
def make_model(rng: np.random.Generator) -> Callable[..., RandomModel]:
    """Factory: ``make_model(**ModelSpec fields)`` -> a :class:`RandomModel` whose Keras model
    is built with random non-trivial weights (:func:`randomize_weights`)."""

    def make(**fields: Any) -> RandomModel:
        spec = ModelSpec(**fields)
        model = chain_model(
            model_layers(spec, rng),
            spec.input_shape,
            spec.input_dtype,
            functional=spec.functional,
        )
        randomize_weights(model, rng)
        return RandomModel(spec, model, rng)

    return make


@pytest.fixture
def oracle() -> Callable[..., list[np.ndarray]]:
    """:func:`reference_outputs_fn`: ``oracle(fn, segments, sequences)`` for any callable
    ``fn(x [N, T, ...])`` (e.g. a model run with an initial state)."""
    return reference_outputs_fn


@pytest.fixture
def build_chain() -> Callable[..., Any]:
    """:func:`chain_model`: ``build_chain(layers, input_shape, dtype, functional=...)``."""
    return chain_model


@pytest.fixture
def random_weights() -> Callable[..., None]:
    """:func:`randomize_weights`: ``random_weights(model, rng)``."""
    return randomize_weights


# --------------------------------------------------------------------------------------------
# A SavedModel that follows the StepModel contract
# --------------------------------------------------------------------------------------------


class LstmStepModule(tf.Module):
    """A SavedModel-exportable step: ``keras.layers.LSTMCell`` plus a Dense head, with an
    optional ``initial_state`` (a tanh Dense of ``x``). ``step_fn``/``init_fn`` are the plain
    Python functions the tests also call directly as the reference."""

    def __init__(
        self,
        features: int,
        units: int,
        outputs: int,
        rng: np.random.Generator,
        *,
        with_init: bool = False,
    ) -> None:
        super().__init__()
        self.features, self.units = features, units
        self.cell = L.LSTMCell(units)
        self.cell.build((None, features))
        self.head = L.Dense(outputs)
        self.head.build((None, units))
        self.init = L.Dense(2 * units, activation="tanh") if with_init else None
        if self.init is not None:
            self.init.build((None, features))
        for layer in (self.cell, self.head, self.init):
            if layer is not None:
                for w in layer.weights:
                    w.assign(rng.normal(0.0, 0.7, tuple(w.shape)).astype("float32"))

    def step_fn(self, x: Any, state_0: Any, state_1: Any) -> dict[str, Any]:
        h, (h2, c2) = self.cell(x, [state_0, state_1], training=False)
        return {"y": self.head(h), "state_0": h2, "state_1": c2}

    def init_fn(self, x: Any) -> dict[str, Any]:
        assert self.init is not None
        s = self.init(x)
        return {"state_0": s[:, : self.units], "state_1": s[:, self.units :]}

    def export(self, path: Any) -> Any:
        """``tf.saved_model.save`` with a ``step`` (and, with an init, ``initial_state``)
        signature; returns ``path``."""
        x = tf.TensorSpec([None, self.features], tf.float32, name="x")
        s = tf.TensorSpec([None, self.units], tf.float32)
        signatures = {
            "step": tf.function(self.step_fn).get_concrete_function(x=x, state_0=s, state_1=s)
        }
        if self.init is not None:
            signatures["initial_state"] = tf.function(self.init_fn).get_concrete_function(x=x)
        tf.saved_model.save(self, str(path), signatures=signatures)
        return path


@pytest.fixture
def lstm_step_module(rng: np.random.Generator) -> Callable[..., LstmStepModule]:
    """Factory: ``lstm_step_module(with_init=False, features=4, units=6, outputs=3)``."""

    def make(
        *, with_init: bool = False, features: int = 4, units: int = 6, outputs: int = 3
    ) -> LstmStepModule:
        return LstmStepModule(features, units, outputs, rng, with_init=with_init)

    return make
