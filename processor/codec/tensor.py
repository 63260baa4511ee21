"""Reading a raw ``x`` into the model's array: :class:`TensorReader` (no I/O).

``x`` comes as bin (little-endian tensor bytes in C order) or as an array of numbers, flat in
C order or nested like the shape; the reader checks its size, nesting and values, converts it
to the model's dtype and refuses non-finite values for float models.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from processor.codec._common import type_name
from processor.codec.reasons import BAD_VALUE, NON_FINITE, SHAPE_MISMATCH, SIZE_MISMATCH
from processor.errors import BadRecord

__all__ = ["TensorReader"]


class TensorReader:
    """Reads raw ``x`` values for one model input signature (stateless: safe to share)."""

    __slots__ = ("_float_model", "_input_dtype", "_input_shape", "_size")

    def __init__(self, input_shape: tuple[int, ...], input_dtype: np.dtype[Any]) -> None:
        """``input_dtype`` in the native byte order: the dtype of every array read."""
        self._input_shape = input_shape
        self._input_dtype = input_dtype
        self._size = math.prod(input_shape)
        self._float_model = input_dtype.kind == "f"

    def read(self, x: bytes | list[Any], wire: np.dtype[Any]) -> np.ndarray:
        """``x`` (bin or an array, in ``wire`` dtype) as a C-contiguous array of the input
        shape and dtype, or ``BadRecord`` (``size_mismatch``, ``shape_mismatch``,
        ``bad_value``, ``non_finite``). A bin already in the model's dtype gives a read-only
        view of ``x``; anything else a fresh, writable, owned array."""
        arr = self._from_bin(x, wire) if isinstance(x, bytes) else self._from_list(x, wire)
        # A finite sum of squares proves every value finite (inf/NaN would propagate; all
        # terms are >= 0 so there is no inf - inf); only when it is not do we pay for the
        # element-wise check, which also tells an overflowing sum from a real inf/NaN.
        if (
            self._float_model
            and not math.isfinite(np.vdot(arr, arr))
            and not np.isfinite(arr).all()
        ):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            model = self._input_dtype.name
            after = "" if wire.name == model else f" after conversion from {wire.name} to {model}"
            raise BadRecord(
                NON_FINITE, f"'x' has {bad} NaN/infinite values out of {arr.size}{after}"
            )
        return arr

    def _from_bin(self, data: bytes, wire: np.dtype[Any]) -> np.ndarray:
        expected = self._size * wire.itemsize
        if len(data) != expected:
            raise BadRecord(
                SIZE_MISMATCH,
                f"'x' has {len(data)} bytes, expected {expected} "
                f"({self._size} x {wire.name} for shape {list(self._input_shape)})",
            )
        arr = np.frombuffer(data, dtype=wire)
        if len(self._input_shape) != 1:  # frombuffer is already 1-D; reshape costs ~0.15 us
            arr = arr.reshape(self._input_shape)
        return self._convert(arr)

    def _from_list(self, x: list[Any], wire: np.dtype[Any]) -> np.ndarray:
        shape = self._input_shape
        if len(shape) > 1 and x and type(x[0]) is list:
            flat = self._flatten_nested(x)
        elif len(x) != self._size:
            raise BadRecord(
                SIZE_MISMATCH,
                f"'x' has {len(x)} elements, expected {self._size} for shape {list(shape)}",
            )
        else:
            flat = x
        integral = wire.kind in "iu"
        for i, v in enumerate(flat):
            t = type(v)
            if t is int or (t is float and not integral):
                continue
            where = self._index(i, nested=flat is not x)
            if t is float:
                raise BadRecord(BAD_VALUE, f"'x{where}' is a float, dtype {wire.name} needs ints")
            if t is list:
                raise BadRecord(
                    SHAPE_MISMATCH, f"'x{where}' is nested deeper than shape {list(shape)}"
                )
            raise BadRecord(BAD_VALUE, f"'x{where}' must be a number, got {type_name(v)}")
        try:
            with np.errstate(over="ignore"):  # float overflow becomes inf: reported non_finite
                arr = np.array(flat, dtype=wire).reshape(shape)
        except OverflowError as exc:  # an int out of range for an integer dtype
            raise BadRecord(BAD_VALUE, f"'x' value out of range for {wire.name}: {exc}") from None
        return self._convert(arr)

    def _flatten_nested(self, x: list[Any]) -> list[Any]:
        """Check that ``x`` nests exactly like the input shape; return its leaves in C order."""
        level: list[Any] = [x]
        for depth, n in enumerate(self._input_shape):
            nxt: list[Any] = []
            for item in level:
                if type(item) is not list:
                    raise BadRecord(
                        SHAPE_MISMATCH,
                        f"'x' is nested {depth} deep, expected {len(self._input_shape)} "
                        f"for shape {list(self._input_shape)}",
                    )
                if len(item) != n:
                    raise BadRecord(
                        SHAPE_MISMATCH,
                        f"'x' has {len(item)} elements at depth {depth}, expected {n} "
                        f"for shape {list(self._input_shape)}",
                    )
                nxt.extend(item)
            level = nxt
        return level

    def _index(self, flat_index: int, *, nested: bool) -> str:
        if not nested:
            return f"[{flat_index}]"
        idx = np.unravel_index(flat_index, self._input_shape)
        return "".join(f"[{int(i)}]" for i in idx)

    def _convert(self, arr: np.ndarray) -> np.ndarray:
        """Return ``arr`` as the model dtype: itself if it already is, else an owned copy."""
        if arr.dtype == self._input_dtype:
            return arr
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf -> non_finite
            return arr.astype(self._input_dtype)
