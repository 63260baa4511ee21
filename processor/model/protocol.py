"""StepModel: what the engine needs of a trained recurrent model, reduced to
``step(x_t, states) -> (y_t, new_states)``.

Two sources are supported:

* A Keras 3 model file (``.keras``, loaded with ``safe_mode=True``) whose input is
  ``[batch, time, *features]``: a linear chain of per-time-step layers (the encoder), one or
  more LSTM/GRU/SimpleRNN layers, and per-time-step layers after them (the head). Anything
  that mixes time steps is refused at load time with an error naming the layer.
* A TensorFlow SavedModel directory exporting a ``step`` signature with explicit state
  tensors (see :class:`SavedModelStep` for the contract).

The step is pure: it owns no state, has no Python side effects and is safe to trace inside
``tf.function`` (the engine compiles it together with the cache's gather and scatter).

The implementations: :class:`~processor.model.keras_step.KerasStepModel` (with the layer
checks in :mod:`processor.model.keras_chain`) and
:class:`~processor.model.saved_step.SavedModelStep`, their shared base in
:mod:`processor.model.facts`; :func:`processor.model.load.load_step_model` picks one for a
path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from processor.model.facts import StateSpec, Tensor

__all__ = ["StepModel"]


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
