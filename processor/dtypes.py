"""Tensor element types lstm-stream carries (no I/O, no TensorFlow).

A neutral table shared by the model loader (:mod:`processor.model.facts` refuses a model whose
input dtype is not listed, since no record could feed it) and the wire format
(:mod:`processor.codec` accepts exactly these ``dtype`` names), so that neither depends on
the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import numpy as np

__all__ = ["DTYPES", "STATE_DTYPES", "WIRE_DTYPES"]

#: Supported dtype names and their little-endian numpy dtypes (tensor bytes on the wire are
#: always little-endian, whatever the host).
WIRE_DTYPES: Final[Mapping[str, np.dtype[Any]]] = MappingProxyType(
    {
        name: np.dtype(name).newbyteorder("<")
        for name in ("float32", "float16", "float64", "uint8", "int8", "int16", "int32")
    }
)

#: The supported dtype names, in a stable order (the input schema's ``dtype`` enum).
DTYPES: Final[tuple[str, ...]] = tuple(WIRE_DTYPES)

#: Storage dtypes of cached states (compute is always float32).
STATE_DTYPES: Final[tuple[str, ...]] = ("float32", "float16", "bfloat16")
