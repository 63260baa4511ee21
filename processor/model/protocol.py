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

This module is the public front: the :class:`StepModel` protocol the engine codes against and
:func:`load_step_model`, which picks the implementation for a path. The implementations live
in :mod:`processor.model.keras_step` (with the layer checks in
:mod:`processor.model.keras_chain`) and :mod:`processor.model.saved_step`, their shared base
in :mod:`processor.model.facts`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.errors import ModelLoadError
from processor.model.facts import StateSpec, Tensor, _file_digest
from processor.model.keras_step import KerasStepModel
from processor.model.saved_step import SavedModelStep

import keras  # isort: skip

__all__ = [
    "KerasStepModel",
    "SavedModelStep",
    "StateSpec",
    "StepModel",
    "Tensor",
    "load_step_model",
]


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
