"""The device tier's storage: one pre-allocated table per state tensor on one device.

A :class:`DeviceTable` holds ``[capacity + 1, *shape]`` per state tensor in the storage dtype
(a ``tf.Variable`` each); row ``capacity`` is the scratch slot, which padded batch rows read
and write. :meth:`DeviceTable.gather` and :meth:`DeviceTable.scatter` are traceable: the
engine's compiled step calls them. :meth:`DeviceTable.read` and :meth:`DeviceTable.write` move
rows between the table and float32 NumPy arrays, :data:`MAX_ROWS_PER_CALL` at a time, padded
to a power of two (the padding reads and writes the scratch slot), so their traced shapes stay
few; :meth:`DeviceTable.warmup` traces them all up front.

Which stream holds which slot is the cache's business (:mod:`processor.state.cache`); the
table only stores rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import tensorflow as tf

from processor.dtypes import STATE_DTYPES
from processor.model import StateSpec
from processor.state.rows import MAX_ROWS_PER_CALL

__all__ = ["STORAGE_DTYPES", "DeviceTable", "pow2"]

#: TensorFlow dtype of each storage dtype name.
STORAGE_DTYPES: Final[Mapping[str, tf.DType]] = MappingProxyType(
    {name: tf.as_dtype(name) for name in STATE_DTYPES}
)


def pow2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1 (padding sizes keep the traced shapes
    few)."""
    return 1 << max(0, (n - 1).bit_length())


class DeviceTable:
    """``capacity`` rows (plus the scratch slot) per state tensor of ``spec``, in
    ``storage_dtype`` (a :data:`STORAGE_DTYPES` name), on TensorFlow device ``device``.

    Threading: used by one thread (the engine's worker)."""

    def __init__(
        self, spec: Sequence[StateSpec], capacity: int, *, device: str, storage_dtype: str
    ) -> None:
        self.spec = tuple(spec)
        self.device = device
        self.dtype = STORAGE_DTYPES[storage_dtype]
        self.scratch_slot = capacity
        with tf.device(device):
            self.tables = [
                tf.Variable(
                    tf.zeros((capacity + 1, *s.shape), dtype=self.dtype),
                    trainable=False,
                    name=f"state_{i}",
                )
                for i, s in enumerate(self.spec)
            ]
        self._gather_fn = tf.function(self.gather)
        self._scatter_fn = tf.function(self.scatter)

    def gather(self, slots: Any) -> list[Any]:
        """The states in ``slots`` as float32 tensors (traceable)."""
        return [tf.cast(tf.gather(t, slots), tf.float32) for t in self.tables]

    def scatter(self, slots: Any, values: Sequence[Any]) -> None:
        """Write float32 ``values`` into ``slots`` in the storage dtype (traceable)."""
        idx = tf.expand_dims(slots, 1)
        for t, v in zip(self.tables, values, strict=True):
            t.scatter_nd_update(idx, tf.cast(v, t.dtype))

    def warmup(self) -> None:
        """Trace :meth:`read` and :meth:`write` for every padded size (1 ...
        :data:`MAX_ROWS_PER_CALL` rows), so that the first evictions and returns under
        traffic do not stall on tracing. Touches only the scratch slot."""
        n = 1
        while n <= MAX_ROWS_PER_CALL:
            slots = tf.constant(np.full(n, self.scratch_slot, np.int32))
            with tf.device(self.device):
                self._scatter_fn(slots, self._gather_fn(slots))
            n *= 2

    def read(self, slots: Sequence[int]) -> list[np.ndarray]:
        """float32 ``[len(slots), *shape]`` per state tensor, read in chunks."""
        parts: list[list[np.ndarray]] = [[] for _ in self.spec]
        for start in range(0, len(slots), MAX_ROWS_PER_CALL):
            chunk = slots[start : start + MAX_ROWS_PER_CALL]
            with tf.device(self.device):
                rows = self._gather_fn(tf.constant(self._padded(chunk)))
            for k, r in enumerate(rows):
                parts[k].append(r.numpy()[: len(chunk)])
        return [
            np.concatenate(p) if p else np.zeros((0, *s.shape), np.float32)
            for p, s in zip(parts, self.spec, strict=True)
        ]

    def write(self, slots: Sequence[int], values: Sequence[np.ndarray]) -> None:
        """Write float32 ``values`` (``[len(slots), *shape]`` per state tensor) into
        ``slots``, in chunks."""
        for start in range(0, len(slots), MAX_ROWS_PER_CALL):
            chunk = slots[start : start + MAX_ROWS_PER_CALL]
            padded = self._padded(chunk)
            parts = []
            for v, s in zip(values, self.spec, strict=True):
                part = np.zeros((len(padded), *s.shape), np.float32)
                part[: len(chunk)] = v[start : start + len(chunk)]
                parts.append(tf.constant(part))
            with tf.device(self.device):
                self._scatter_fn(tf.constant(padded), parts)

    def _padded(self, slots: Sequence[int]) -> np.ndarray:
        padded = np.full(pow2(len(slots)), self.scratch_slot, dtype=np.int32)
        padded[: len(slots)] = slots
        return padded
