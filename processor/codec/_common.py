"""Private helpers shared by the codec's modules: bounded msgpack unpacking, and value names
and clipped text for error details (no I/O)."""

from __future__ import annotations

from typing import Any, Final

import msgpack
import numpy as np

from processor.codec.reasons import UNDECODABLE
from processor.dtypes import WIRE_DTYPES
from processor.errors import BadRecord

#: The dtype of every output ``y`` on the wire, and its little-endian numpy dtype.
OUTPUT_DTYPE: Final = "float32"
LE_FLOAT32: Final[np.dtype[Any]] = WIRE_DTYPES["float32"]


def type_name(value: object) -> str:
    """A short name for an unpacked msgpack value, for error details."""
    if value is None:
        return "nil"
    if isinstance(value, bytes):
        return "bin"
    return type(value).__name__


def unpack(value: bytes) -> object:
    """Unpack exactly one msgpack object with size limits derived from ``len(value)``.

    No string, bin, array, map or ext inside a buffer of n bytes can legitimately be longer
    than n (a map entry takes at least 2 bytes), so these limits reject a lying length header
    before msgpack allocates for it. Raises ``ValueError``/``msgpack.UnpackException``
    (invalid data, trailing bytes, limits, invalid UTF-8, non-string map keys, nesting too
    deep).
    """
    n = len(value)
    return msgpack.unpackb(
        value,
        raw=False,
        strict_map_key=True,
        max_bin_len=n,
        max_str_len=n,
        max_array_len=n,
        max_map_len=n // 2,
        max_ext_len=n,
    )


#: What :func:`unpack` raises for a value that is not one valid msgpack object.
UNPACK_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)


def unpack_error(exc: Exception) -> BadRecord:
    """``BadRecord(UNDECODABLE, ...)`` for ``exc``, one of :data:`UNPACK_ERRORS`."""
    if isinstance(exc, msgpack.ExtraData):
        return BadRecord(
            UNDECODABLE, f"{len(exc.extra)} trailing bytes after a complete msgpack object"
        )
    return BadRecord(UNDECODABLE, f"invalid msgpack: {exc}")


def unpack_or_bad_record(value: bytes) -> object:
    """:func:`unpack`, raising ``BadRecord(UNDECODABLE, ...)`` on any parse failure."""
    try:
        return unpack(value)
    except UNPACK_ERRORS as exc:
        raise unpack_error(exc) from None


def le_bytes(arr: np.ndarray, dtype: np.dtype[Any]) -> bytes:
    """C-order little-endian bytes of ``arr`` converted to ``dtype``."""
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, so a hostile value cannot flood logs."""
    return text if len(text) <= limit else text[:limit] + "..."
