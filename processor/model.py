"""StepModel: a trained recurrent model reduced to ``step(x_t, states) -> (y_t, new_states)``.

Two sources are supported:

* A Keras 3 model file (``.keras``, loaded with ``safe_mode=True``) whose input is
  ``[batch, time, *features]``: a linear chain of per-time-step layers (the encoder), one or
  more LSTM/GRU/SimpleRNN layers, and per-time-step layers after them (the head). Anything
  that mixes time steps is refused at load time with an error naming the layer.
* A TensorFlow SavedModel directory exporting a ``step`` signature with explicit state
  tensors (see :class:`SavedModelStep` for the contract).

The step is pure: it owns no state, has no Python side effects and is safe to trace inside
``tf.function`` (the engine compiles it together with the cache's gather and scatter).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.codec import DTYPES
from processor.errors import ModelLoadError

import keras  # isort: skip
import tensorflow as tf  # isort: skip

Tensor = Any  # a tf.Tensor; TensorFlow ships no usable static types


@dataclass(frozen=True)
class StateSpec:
    """One state tensor per stream: ``name`` (e.g. ``lstm/h``) and per-stream ``shape``."""

    name: str
    shape: tuple[int, ...]


class StepModel(Protocol):
    """What the engine needs from a model. Implementations must be traceable and pure."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-step input shape (no batch, no time axis)."""
        ...

    @property
    def input_dtype(self) -> str:
        """Dtype the step takes ``x`` in (the model's input dtype, e.g. ``float32``)."""
        ...

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-step output shape (no batch axis)."""
        ...

    @property
    def state_spec(self) -> tuple[StateSpec, ...]:
        """The state tensors, in the order ``step`` takes and returns them."""
        ...

    @property
    def identity(self) -> str:
        """A digest of the model (and init model) files: states of one model must not be
        continued by another."""
        ...

    @property
    def flops_per_step(self) -> int:
        """Approximate multiply-add FLOPs per stream per step (matmuls only)."""
        ...

    @property
    def has_init_model(self) -> bool:
        """True when initial states are computed from a stream's first input (not zeros)."""
        ...

    def step(self, x: Tensor, states: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """One time step for a batch: ``x`` is ``[B, *input_shape]``, each state
        ``[B, *spec.shape]`` float32. Returns ``y`` ``[B, *output_shape]`` float32 and the
        new states (float32, same order and shapes)."""
        ...

    def initial_state(self, x: Tensor) -> list[Tensor]:
        """Initial states for streams whose first input is ``x`` (``[B, *input_shape]``)."""
        ...


# --------------------------------------------------------------------------------------------
# Keras models
# --------------------------------------------------------------------------------------------

_RECURRENT = (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)

# Layers that act on each time step independently (their weights are shared over time and
# no value flows between time steps). In inference mode the dropout/noise layers are the
# identity. Layers with an ``axis`` are checked further: normalising over time mixes steps.
_PER_STEP = (
    keras.layers.InputLayer,
    keras.layers.Dense,
    keras.layers.EinsumDense,
    keras.layers.TimeDistributed,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
    keras.layers.LayerNormalization,
    keras.layers.BatchNormalization,
    keras.layers.UnitNormalization,
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.Embedding,
    keras.layers.Conv1D,
)

# Layers that would mix time steps, with the reason given to the user.
_TIME_MIXING: dict[type, str] = {
    keras.layers.Bidirectional: "it runs a recurrent layer backwards over the whole sequence",
    keras.layers.Attention: "attention looks at every time step",
    keras.layers.MultiHeadAttention: "attention looks at every time step",
    keras.layers.AdditiveAttention: "attention looks at every time step",
    keras.layers.GlobalAveragePooling1D: "it pools over the time axis",
    keras.layers.GlobalMaxPooling1D: "it pools over the time axis",
    keras.layers.AveragePooling1D: "it pools over neighbouring time steps",
    keras.layers.MaxPooling1D: "it pools over neighbouring time steps",
    keras.layers.Conv3D: "its kernel spans the time axis",
    keras.layers.ConvLSTM2D: "convolutional recurrent layers are not supported",
    keras.layers.Masking: "masking changes which steps the recurrent layers apply",
    keras.layers.RepeatVector: "it creates a new time axis",
    keras.layers.Cropping1D: "it drops time steps",
    keras.layers.ZeroPadding1D: "it inserts time steps",
    keras.layers.UpSampling1D: "it repeats time steps",
}


@dataclass(frozen=True)
class _Stage:
    layer: Any
    recurrent: bool
    # True while the tensor still has its time axis at this layer: per-step layers are then
    # called on [B, 1, ...] so that their axis conventions are exactly those of the model.
    has_time: bool
    n_states: int = 0


def _axes_of(layer: Any) -> tuple[int, ...]:
    axis = getattr(layer, "axis", None)
    if axis is None:
        return ()
    if isinstance(axis, int):
        return (axis,)
    return tuple(int(a) for a in axis)


def _check_per_step(layer: Any, in_rank: int, has_time: bool) -> None:
    """Raise ModelLoadError if ``layer`` (seen with an input of rank ``in_rank``) mixes steps."""
    name = f"layer '{layer.name}' ({type(layer).__name__})"
    if not has_time:
        return
    time_axis = 1
    for axis in _axes_of(layer):
        if axis % in_rank in (0, time_axis):
            raise ModelLoadError(
                f"{name} normalises over axis {axis}, which includes the batch or time axis "
                f"of its {in_rank}-D input: that mixes time steps and cannot be stepped"
            )
    if isinstance(layer, keras.layers.Conv1D):
        if layer.data_format == "channels_first":
            raise ModelLoadError(
                f"{name} has data_format='channels_first': on [batch, time, features] its "
                "channel axis is the time axis, so it mixes time steps"
            )
        if tuple(layer.kernel_size) != (1,) or tuple(layer.strides) != (1,):
            raise ModelLoadError(
                f"{name} is a convolution over time with kernel {tuple(layer.kernel_size)} and "
                f"strides {tuple(layer.strides)}: it mixes time steps (only kernel 1, stride 1 "
                "can be stepped)"
            )
    if isinstance(layer, keras.layers.EinsumDense) and not _einsum_keeps_time(layer.equation):
        raise ModelLoadError(
            f"{name} has equation {layer.equation!r}: it does not keep the batch and time "
            "axes (the first two input axes, or a leading '...') as the first two output axes "
            "untouched by the kernel, so it may mix time steps"
        )
    if isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
        raise ModelLoadError(f"{name} has mask_zero=True: masks change which steps are applied")
    if isinstance(layer, keras.layers.TimeDistributed) and in_rank < 3:
        raise ModelLoadError(f"{name} needs an input with a time axis")


def _einsum_keeps_time(equation: str) -> bool:
    """True if an EinsumDense ``equation`` maps input axes 0 and 1 (batch, time) straight to
    output axes 0 and 1 without touching the kernel (or both start with ``...``)."""
    try:
        lhs, out = equation.replace(" ", "").split("->")
        inp, kernel = lhs.split(",")
    except ValueError:
        return False
    if inp.startswith("..."):
        return out.startswith("...")
    if len(inp) < 2 or "." in inp[:2]:
        return False
    return out[:2] == inp[:2] and not set(inp[:2]) & set(kernel)


def _check_recurrent(layer: Any, is_last_chain_rnn: bool) -> None:
    name = f"layer '{layer.name}' ({type(layer).__name__})"
    if layer.go_backwards:
        raise ModelLoadError(f"{name} has go_backwards=True: it reads the sequence backwards")
    if layer.return_state:
        raise ModelLoadError(f"{name} has return_state=True: the model must have one output")
    if not layer.return_sequences and not is_last_chain_rnn:
        raise ModelLoadError(
            f"{name} has return_sequences=False but more recurrent layers follow it"
        )


def _check_single_io(model: Any) -> None:
    """ModelLoadError unless ``model`` is built with exactly one input and one output."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError) as exc:  # an unbuilt Sequential has neither
        raise ModelLoadError(
            f"model {getattr(model, 'name', model)!r} is not built (give it an Input): {exc}"
        ) from exc
    if len(inputs) != 1 or len(outputs) != 1:
        producers = ", ".join(
            dict.fromkeys(
                f"'{t._keras_history.operation.name}'"
                for t in outputs
                if hasattr(t, "_keras_history")
            )
        )
        raise ModelLoadError(
            f"model has {len(inputs)} inputs and {len(outputs)} outputs (outputs from "
            f"layers {producers}); lstm-stream steps models with exactly one input and one "
            "output (a recurrent layer with return_state=True must not feed the outputs)"
        )


def _layer_chain(model: Any) -> list[Any]:
    """The model's layers as a linear chain, or ModelLoadError if it is not one."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    _check_single_io(model)
    # Only this model's nodes count: a layer shared with another in-memory model (e.g. a
    # training model) has inbound nodes there too.
    own = {id(n) for nodes in model._nodes_by_depth.values() for n in nodes}
    inbound = {
        id(layer): [n for n in layer._inbound_nodes if id(n) in own] for layer in model.layers
    }
    for layer in model.layers:
        nodes = inbound[id(layer)]
        if len(nodes) > 1:
            raise ModelLoadError(
                f"layer '{layer.name}' ({type(layer).__name__}) is used {len(nodes)} times; "
                "only a linear chain of layers can be stepped"
            )
        # A layer fed the same tensor twice (self-attention's query and value) still has one
        # parent; it is then refused for what it does, not for its wiring.
        parents = list(dict.fromkeys(p.operation for p in nodes[0].parent_nodes))
        if len(parents) > 1:
            names = ", ".join(f"'{p.name}'" for p in parents)
            raise ModelLoadError(
                f"layer '{layer.name}' ({type(layer).__name__}) merges the outputs of layers "
                f"{names}: only a linear chain of layers (no branches or merges) can be stepped"
            )
    chain: list[Any] = []
    previous = None
    for layer in model.layers:
        parents = list(dict.fromkeys(p.operation for p in inbound[id(layer)][0].parent_nodes))
        expected: list[Any] = [] if previous is None else [previous]
        if parents != expected:
            got = ", ".join(p.name for p in parents) or "the model input"
            want = previous.name if previous is not None else "the model input"
            raise ModelLoadError(
                f"layer '{layer.name}' takes its input from {got}, expected {want}: only a "
                "linear chain of layers (no branches or merges) can be stepped"
            )
        chain.append(layer)
        previous = layer
    return chain


def _matmul_flops(layer: Any, in_dim: int) -> int:
    """Multiply-add FLOPs per step of the big matmuls of ``layer`` (0 if unknown/small)."""
    if isinstance(layer, keras.layers.LSTM):
        return 2 * (in_dim + layer.units) * 4 * layer.units
    if isinstance(layer, keras.layers.GRU):
        return 2 * (in_dim + layer.units) * 3 * layer.units
    if isinstance(layer, keras.layers.SimpleRNN):
        return 2 * (in_dim + layer.units) * layer.units
    if isinstance(layer, keras.layers.Dense):
        return 2 * in_dim * layer.units
    return 0


def _check_input_dtype(dtype: str) -> str:
    """A model whose input dtype the wire format cannot carry could never be fed."""
    if dtype not in DTYPES:
        raise ModelLoadError(
            f"model input dtype {dtype} is not one the wire format carries ({', '.join(DTYPES)})"
        )
    return dtype


def _file_digest(*paths: str | os.PathLike[str] | None) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        path = Path(p)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file():
                h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


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


class _StepModelFacts:
    """The StepModel facts both model kinds fix at load time, and zero initial states.
    Subclasses set the underscored attributes in their constructor."""

    _input_shape: tuple[int, ...]
    _input_dtype: str
    _output_shape: tuple[int, ...]
    _state_spec: tuple[StateSpec, ...]
    _identity: str
    _flops: int = 0  # unknown unless the subclass counts them

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def input_dtype(self) -> str:
        return self._input_dtype

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self._output_shape

    @property
    def state_spec(self) -> tuple[StateSpec, ...]:
        return self._state_spec

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def flops_per_step(self) -> int:
        return self._flops

    def _zero_states(self, x: Tensor) -> list[Tensor]:
        batch = tf.shape(x)[0]
        return [tf.zeros(tf.concat([[batch], spec.shape], 0)) for spec in self._state_spec]


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


# --------------------------------------------------------------------------------------------
# SavedModel
# --------------------------------------------------------------------------------------------


def _per_stream_shape(what: str, spec: Any) -> tuple[int, ...]:
    """The shape after the batch axis of a signature TensorSpec; ModelLoadError unless it is
    fully defined."""
    shape = spec.shape
    if shape.rank is None or shape.rank < 1 or any(d is None for d in shape[1:]):
        raise ModelLoadError(
            f"{what} has shape {shape}; expected [batch, ...] with a fully defined per-stream shape"
        )
    return tuple(int(d) for d in shape[1:])


def _expect_state(what: str, spec: Any, state: StateSpec) -> None:
    shape = _per_stream_shape(what, spec)
    if shape != state.shape or not spec.dtype.is_floating:
        raise ModelLoadError(
            f"{what} is {spec.dtype.name}{list(shape)}; expected a float tensor of "
            f"per-stream shape {list(state.shape)} like input {state.name}"
        )


class SavedModelStep(_StepModelFacts):
    """A TensorFlow SavedModel that exports its own step function.

    Contract (checked at load time):

    * signature ``step`` with inputs ``x`` (``[B, *input_shape]``, any dtype) and
      ``state_0`` … ``state_{n-1}`` (float32, ``[B, *shape_i]``, fully defined per-stream
      shapes), and outputs ``y`` (``[B, *output_shape]``) and ``state_0`` … ``state_{n-1}``
      (the new states, same shapes);
    * optionally a signature ``initial_state`` with input ``x`` and outputs
      ``state_0`` … ``state_{n-1}``; without it initial states are zeros.

    ``state_i`` order is the ``state_spec`` order. The step must be pure: it reads only its
    inputs (the engine keeps the states).
    """

    def __init__(self, path: str, identity: str = "") -> None:
        try:
            obj = tf.saved_model.load(path)
        except Exception as exc:  # TF raises many unrelated types for a bad directory
            raise ModelLoadError(f"cannot load SavedModel {path!r}: {exc}") from exc
        if "step" not in obj.signatures:
            raise ModelLoadError(
                f"SavedModel {path!r} has signatures {sorted(obj.signatures)}; it must export "
                "a 'step' signature (see the SavedModel contract in the README)"
            )
        self._obj = obj  # keep the trackable alive: its variables back the signatures
        self._step_fn = obj.signatures["step"]
        _, kwargs = self._step_fn.structured_input_signature
        if "x" not in kwargs:
            raise ModelLoadError(f"'step' signature inputs {sorted(kwargs)} lack 'x'")
        n = sum(1 for k in kwargs if k.startswith("state_"))
        want = {"x"} | {f"state_{i}" for i in range(n)}
        if set(kwargs) != want or n == 0:
            raise ModelLoadError(
                f"'step' signature inputs are {sorted(kwargs)}; expected 'x' and "
                "'state_0'..'state_<n-1>'"
            )
        x_spec = kwargs["x"]
        self._input_shape = _per_stream_shape("'step' input x", x_spec)
        self._input_dtype = _check_input_dtype(x_spec.dtype.name)
        specs = []
        for i in range(n):
            s = kwargs[f"state_{i}"]
            if s.dtype != tf.float32:
                raise ModelLoadError(
                    f"'step' input state_{i} is {s.dtype.name}; states must be float32"
                )
            shape = _per_stream_shape(f"'step' input state_{i}", s)
            specs.append(StateSpec(f"state_{i}", shape))
        self._state_spec = tuple(specs)
        outs = self._step_fn.structured_outputs
        if not isinstance(outs, dict) or set(outs) != {"y"} | {f"state_{i}" for i in range(n)}:
            got = sorted(outs) if isinstance(outs, dict) else type(outs).__name__
            raise ModelLoadError(
                f"'step' signature outputs are {got}; expected 'y' and the same "
                "'state_i' as its inputs"
            )
        self._output_shape = _per_stream_shape("'step' output y", outs["y"])
        for spec in specs:
            # A new state of another shape would only fail (or be broadcast) at the scatter.
            _expect_state(f"'step' output {spec.name}", outs[spec.name], spec)
        self._init_fn = obj.signatures.get("initial_state")
        if self._init_fn is not None:
            self._check_init_signature(self._init_fn, x_spec)
        self._identity = identity or _file_digest(path)

    def _check_init_signature(self, fn: Any, x_spec: Any) -> None:
        """The optional ``initial_state`` signature: input ``x`` like ``step``'s, outputs
        ``state_0``..``state_{n-1}`` with the state shapes (checked now, not at the first
        fresh stream inside the compiled step)."""
        _, kwargs = fn.structured_input_signature
        if set(kwargs) != {"x"}:
            raise ModelLoadError(
                f"'initial_state' signature inputs are {sorted(kwargs)}; expected only 'x'"
            )
        got = _per_stream_shape("'initial_state' input x", kwargs["x"])
        if got != self._input_shape or kwargs["x"].dtype != x_spec.dtype:
            raise ModelLoadError(
                f"'initial_state' input x is {kwargs['x'].dtype.name}{list(got)}; expected "
                f"{x_spec.dtype.name}{list(self._input_shape)} like the 'step' input x"
            )
        outs = fn.structured_outputs
        want = {spec.name for spec in self._state_spec}
        if not isinstance(outs, dict) or set(outs) != want:
            names = sorted(outs) if isinstance(outs, dict) else type(outs).__name__
            raise ModelLoadError(
                f"'initial_state' signature outputs are {names}; expected {sorted(want)}"
            )
        for spec in self._state_spec:
            _expect_state(f"'initial_state' output {spec.name}", outs[spec.name], spec)

    @property
    def has_init_model(self) -> bool:
        return self._init_fn is not None

    def step(self, x: Tensor, states: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        kwargs = {f"state_{i}": s for i, s in enumerate(states)}
        out = self._step_fn(x=x, **kwargs)
        new = [tf.cast(out[f"state_{i}"], tf.float32) for i in range(len(states))]
        return tf.cast(out["y"], tf.float32), new

    def initial_state(self, x: Tensor) -> list[Tensor]:
        if self._init_fn is None:
            return self._zero_states(x)
        out = self._init_fn(x=x)
        return [tf.cast(out[f"state_{i}"], tf.float32) for i in range(len(self._state_spec))]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_keras(path: Path) -> Any:
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError... for bad files
        hint = ""
        if "safe_mode" in str(exc):
            # Keras suggests safe_mode=False; lstm-stream never loads untrusted code.
            hint = (
                " (lstm-stream loads models in Keras safe mode only: replace Lambda layers "
                "with built-in or registered layers)"
            )
        raise ModelLoadError(
            f"cannot load Keras model {str(path)!r}: {_short_keras_error(exc)}{hint}"
        ) from exc


def _short_keras_error(exc: Exception, limit: int = 1000) -> str:
    """Keras deserialization errors embed whole model configs (tens of KB); keep the
    sentences that say what failed."""
    parts = [p for p in str(exc).split("\n\n") if not p.startswith("config=")]
    text = " ".join(p.split(" Full object config:")[0].strip() for p in parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_step_model(path: str | os.PathLike[str], init_model: str | None = None) -> StepModel:
    """Load ``path`` (a ``.keras`` file or a SavedModel directory) as a StepModel.

    ``init_model`` (``.keras``) maps a stream's first input to its initial states; only for
    Keras models (a SavedModel brings its own ``initial_state`` signature). Raises
    :class:`ModelLoadError` with the reason when the model cannot be stepped.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model path {str(p)!r} does not exist")
    if p.is_dir():
        if not (p / "saved_model.pb").exists():
            raise ModelLoadError(f"directory {str(p)!r} is not a SavedModel (no saved_model.pb)")
        if init_model is not None:
            raise ModelLoadError(
                "--init-model applies to Keras models; a SavedModel exports its own "
                "'initial_state' signature"
            )
        return SavedModelStep(str(p))
    if p.suffix != ".keras":
        raise ModelLoadError(
            f"model file {str(p)!r} is not a Keras 3 '.keras' file (or a SavedModel directory)"
        )
    model = _load_keras(p)
    init = None
    if init_model is not None:
        ip = Path(init_model)
        if ip.suffix != ".keras" or not ip.is_file():
            raise ModelLoadError(f"init model {init_model!r} must be an existing '.keras' file")
        init = _load_keras(ip)
    return KerasStepModel(model, init, identity=_file_digest(p, init_model))
