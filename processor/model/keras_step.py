"""KerasStepModel: a Keras 3 model reduced to ``step(x_t, states) -> (y_t, new_states)``.

The model's input is ``[batch, time, *features]``: a linear chain of per-time-step layers
(the encoder), one or more LSTM/GRU/SimpleRNN layers, and per-time-step layers after them
(the head). :mod:`processor.model.keras_chain` refuses, at load time, anything that mixes time
steps; this module turns the accepted chain into stages and steps them one time step at a
time. Load a model file with :func:`processor.model.load.load_step_model`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.errors import ModelLoadError
from processor.model.facts import StateSpec, Tensor, _check_input_dtype, _StepModelFacts
from processor.model.keras_chain import (
    _PER_STEP,
    _RECURRENT,
    _TIME_MIXING,
    _check_per_step,
    _check_recurrent,
    _check_single_io,
    _layer_chain,
    _matmul_flops,
)

import keras  # isort: skip
import tensorflow as tf  # isort: skip


@dataclass(frozen=True)
class _Stage:
    layer: Any
    recurrent: bool
    # True while the tensor still has its time axis at this layer: per-step layers are then
    # called on [B, 1, ...] so that their axis conventions are exactly those of the model.
    has_time: bool
    n_states: int = 0


def _model_digest(*models: Any) -> str:
    """Digest of in-memory Keras models: architecture *and* weights (two models with the same
    layers but different weights must not continue each other's states)."""
    h = hashlib.sha256()
    for model in models:
        if model is None:
            continue
        h.update(model.to_json().encode())
        for w in model.weights:
            h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()[:16]


class KerasStepModel(_StepModelFacts):
    """A Keras model stepped one time step at a time (see the module docstring).

    Construct with :func:`load_step_model` or :meth:`from_model`. ``init_model``, if given,
    maps a stream's first input ``x_0`` (``[B, *input_shape]``) to its initial states, one
    output per state tensor in ``state_spec`` order; otherwise initial states are zeros.
    """

    def __init__(self, model: Any, init_model: Any = None, identity: str = "") -> None:
        _check_single_io(model)
        input_shape = tuple(model.input_shape)
        if len(input_shape) < 2:
            raise ModelLoadError(
                f"model input shape {input_shape} has no time axis; expected [batch, time, ...]"
            )
        features = input_shape[2:]
        if any(d is None for d in features):
            raise ModelLoadError(
                f"model per-step input shape {features} must be fully defined (got None)"
            )
        self._model = model
        self._input_shape: tuple[int, ...] = tuple(int(d) for d in features)
        self._input_dtype = _check_input_dtype(str(model.inputs[0].dtype))
        self._stages, specs, self._flops, out_has_time = self._analyse(model)
        self._state_spec = tuple(specs)
        y_shape = tuple(model.output_shape)
        # The time axis is gone after a return_sequences=False recurrent layer (whether or
        # not a head follows it).
        per_step = y_shape[2:] if out_has_time else y_shape[1:]
        if any(d is None for d in per_step):
            raise ModelLoadError(f"model per-step output shape {per_step} must be fully defined")
        self._output_shape: tuple[int, ...] = tuple(int(d) for d in per_step)
        self._init_model = init_model
        if init_model is not None:
            self._check_init_model(init_model)
        self._identity = identity or _model_digest(model, init_model)

    @classmethod
    def from_model(cls, model: Any, init_model: Any = None) -> KerasStepModel:
        """Wrap an in-memory Keras model (tests, the example model)."""
        return cls(model, init_model)

    # ---- analysis ---------------------------------------------------------------------------

    def _analyse(self, model: Any) -> tuple[list[_Stage], list[StateSpec], int, bool]:
        """Stages, state specs, FLOPs per step and whether the model's output still has
        its time axis (False when the last recurrent layer has return_sequences=False)."""
        chain = _layer_chain(model)
        rnn_positions = [i for i, layer in enumerate(chain) if isinstance(layer, _RECURRENT)]
        last_rnn = rnn_positions[-1] if rnn_positions else -1
        stages: list[_Stage] = []
        specs: list[StateSpec] = []
        flops = 0
        has_time = True
        # Every layer is checked before "no recurrent layer" is reported, so that a model
        # built around e.g. Bidirectional or a generic RNN gets an error naming that layer.
        for i, layer in enumerate(chain):
            name = f"layer '{layer.name}' ({type(layer).__name__})"
            in_shape = self._layer_input_shape(layer)
            in_rank = len(in_shape)
            in_dim = int(in_shape[-1]) if in_shape and in_shape[-1] is not None else 0
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, _RECURRENT):
                if not has_time:
                    raise ModelLoadError(
                        f"{name} comes after a recurrent layer with return_sequences=False: "
                        "there is no time axis left to step"
                    )
                _check_recurrent(layer, i == last_rnn)
                sizes = layer.cell.state_size
                sizes = list(sizes) if isinstance(sizes, list | tuple) else [sizes]
                kinds = ["h", "c"] if len(sizes) == 2 else ["h"]
                for kind, size in zip(kinds, sizes, strict=True):
                    specs.append(StateSpec(f"{layer.name}/{kind}", (int(size),)))
                stages.append(_Stage(layer, True, True, len(sizes)))
                flops += _matmul_flops(layer, in_dim)
                has_time = bool(layer.return_sequences)
                continue
            mixing = next((r for t, r in _TIME_MIXING.items() if isinstance(layer, t)), None)
            if has_time and mixing is not None:
                raise ModelLoadError(f"{name} mixes time steps: {mixing}")
            if isinstance(layer, keras.layers.RNN):
                # A generic RNN wrapper (custom or stacked cells): its cell API and state
                # layout are not known well enough to step it.
                raise ModelLoadError(
                    f"{name} is a recurrent layer lstm-stream cannot step: only LSTM, GRU and "
                    "SimpleRNN layers are supported (not RNN wrappers around other cells)"
                )
            if has_time and not isinstance(layer, _PER_STEP):
                raise ModelLoadError(
                    f"{name} is not a layer lstm-stream knows to act on each time step "
                    "independently; wrap per-frame layers in TimeDistributed"
                )
            if not has_time and not isinstance(
                layer, (*_PER_STEP, keras.layers.Reshape, keras.layers.Flatten)
            ):
                raise ModelLoadError(f"{name} is not supported after the recurrent stack")
            _check_per_step(layer, in_rank, has_time)
            stages.append(_Stage(layer, False, has_time))
            flops += _matmul_flops(layer, in_dim)
        if not rnn_positions:
            raise ModelLoadError(
                "model has no LSTM, GRU or SimpleRNN layer: nothing carries state between steps"
            )
        return stages, specs, flops, has_time

    @staticmethod
    def _layer_input_shape(layer: Any) -> tuple[Any, ...]:
        if isinstance(layer, keras.layers.InputLayer):
            return tuple(layer.batch_shape)
        try:
            shape = layer.input.shape
        except (AttributeError, ValueError):
            return ()
        return tuple(shape)

    def _check_init_model(self, init_model: Any) -> None:
        in_shape = tuple(init_model.input_shape)[1:]
        if tuple(in_shape) != self._input_shape:
            raise ModelLoadError(
                f"init model input shape {in_shape} does not match the model's per-step "
                f"input shape {self._input_shape}"
            )
        out_shapes = init_model.output_shape
        if not isinstance(out_shapes, list):
            out_shapes = [out_shapes]
        got = [tuple(s)[1:] for s in out_shapes]
        want = [spec.shape for spec in self._state_spec]
        if got != want:
            names = [spec.name for spec in self._state_spec]
            raise ModelLoadError(
                f"init model outputs have shapes {got}; expected one output per state "
                f"{names} with shapes {want}"
            )

    # ---- StepModel --------------------------------------------------------------------------

    @property
    def keras_model(self) -> Any:
        return self._model

    def step(self, x: Tensor, states: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h = x
        new_states: list[Tensor] = []
        i = 0
        for stage in self._stages:
            layer = stage.layer
            if stage.recurrent:
                own = list(states[i : i + stage.n_states])
                i += stage.n_states
                h, new = layer.cell(h, own, training=False)
                new_states.extend(new if isinstance(new, list | tuple) else [new])
            elif stage.has_time:
                # [B, 1, ...] keeps the layer's axis conventions identical to the full model.
                h = layer(tf.expand_dims(h, 1), training=False)[:, 0]
            else:
                h = layer(h, training=False)
        return tf.cast(h, tf.float32), [tf.cast(s, tf.float32) for s in new_states]

    def initial_state(self, x: Tensor) -> list[Tensor]:
        if self._init_model is None:
            return self._zero_states(x)
        out = self._init_model(x, training=False)
        out = out if isinstance(out, list | tuple) else [out]
        return [tf.cast(t, tf.float32) for t in out]

    @property
    def has_init_model(self) -> bool:
        return self._init_model is not None
