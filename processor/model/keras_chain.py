"""Which Keras layers a step model can be made of: the tables of recurrent, per-step and
time-mixing layers, the checks that refuse what cannot be stepped (each error names the
layer), the walk of a functional model's graph into a linear chain, and the matmul FLOPs
count.

Pure analysis of an in-memory model; :class:`processor.model.keras_step.KerasStepModel` calls it
at load time.
"""

from __future__ import annotations

from typing import Any

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.errors import ModelLoadError

import keras  # isort: skip

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
