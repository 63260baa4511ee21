"""SavedModelStep: a TensorFlow SavedModel that exports its own ``step`` signature with
explicit state tensors (see :class:`SavedModelStep` for the contract, checked at load time).

Load a SavedModel directory with :func:`processor.model.load.load_step_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.errors import ModelLoadError
from processor.model.facts import (
    StateSpec,
    Tensor,
    _check_input_dtype,
    _file_digest,
    _StepModelFacts,
)

import tensorflow as tf  # isort: skip


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
