"""Storage dtypes of cached states and their host representation (NumPy only).

Every tier stores a state in its storage dtype (one of :data:`processor.dtypes.STATE_DTYPES`);
computation is always float32. NumPy has no bfloat16, so the host table and the disk store
keep bfloat16 values as their raw bits (the upper 16 bits of the float32 with the same value):
:data:`HOST_DTYPES` gives each storage dtype's host dtype, :func:`to_host` and
:func:`from_host` convert float32 arrays to and from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from processor.dtypes import STATE_DTYPES
from processor.errors import ConfigError

__all__ = ["HOST_DTYPES", "check_storage_dtype", "from_host", "to_host"]

#: The host representation of each storage dtype (bfloat16: its bits as uint16).
HOST_DTYPES: Final[Mapping[str, np.dtype[Any]]] = MappingProxyType(
    {name: np.dtype(np.uint16 if name == "bfloat16" else name) for name in STATE_DTYPES}
)


def check_storage_dtype(name: str) -> None:
    """Raise ConfigError unless ``name`` is a storage dtype."""
    if name not in HOST_DTYPES:
        raise ConfigError(
            f"state dtype {name!r} not supported; choose one of {sorted(STATE_DTYPES)}"
        )


def to_host(values: np.ndarray, storage_dtype: str) -> np.ndarray:
    """float32 ``values`` in the host representation of ``storage_dtype``, rounded to
    nearest-even like TensorFlow's cast: exact for values read from a table of that dtype."""
    values = np.ascontiguousarray(values, np.float32)
    if storage_dtype != "bfloat16":
        return values.astype(HOST_DTYPES[storage_dtype])
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():  # rounding could carry a NaN's payload into the exponent: keep it a NaN
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def from_host(values: np.ndarray, storage_dtype: str) -> np.ndarray:
    """The float32 values of host-representation ``values`` (exact: float32 holds every
    float16 and bfloat16 value)."""
    if storage_dtype != "bfloat16":
        return values.astype(np.float32)
    return (values.astype(np.uint32) << 16).view(np.float32)
