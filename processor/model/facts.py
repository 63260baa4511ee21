"""What both kinds of step model share: :class:`StateSpec`, the load-time facts base class
(with zero initial states), the input dtype check and the digest of model files.

:mod:`processor.model.keras_step` and :mod:`processor.model.saved_step` build on this module;
other code imports these names from :mod:`processor.model.protocol`, the public front.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import processor  # noqa: F401  (sets TF/Keras environment defaults before the import below)
from processor.dtypes import DTYPES
from processor.errors import ModelLoadError

import tensorflow as tf  # isort: skip

Tensor = Any  # a tf.Tensor; TensorFlow ships no usable static types


@dataclass(frozen=True)
class StateSpec:
    """One state tensor per stream: ``name`` (e.g. ``lstm/h``) and per-stream ``shape``."""

    name: str
    shape: tuple[int, ...]


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
