"""States of a batch of streams on their way between tiers, and the size of one move.

A :class:`Rows` carries no per-stream object: one seq array and one array per state tensor,
row ``i`` belonging to ``streams[i]``. Every move between tiers (eviction, return to the
device, snapshot, load) goes :data:`MAX_ROWS_PER_CALL` rows at a time. :func:`check_rows`
and :func:`check_state` check states given to the cache against its state spec.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from processor.model import StateSpec

__all__ = ["MAX_ROWS_PER_CALL", "Rows", "check_rows", "check_state"]

#: Rows moved between tiers in one call (evictions, returns, snapshots, loads); larger
#: requests are chunked, so the device table's helpers have at most log2(this) + 1 traced
#: shapes and a move's temporary memory stays bounded.
MAX_ROWS_PER_CALL = 4096


@dataclass(slots=True)
class Rows:
    """The states of ``streams``: ``seqs [n]`` and, per state tensor, ``[n, *shape]`` (in
    the host representation, or float32 where a docstring says so)."""

    streams: list[str]
    seqs: np.ndarray
    arrays: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.streams)

    @classmethod
    def empty(cls, shapes: Sequence[tuple[int, ...]], dtype: np.dtype[Any]) -> Rows:
        """No rows, with arrays of the given state shapes and dtype."""
        return cls([], np.zeros(0, np.int64), [np.zeros((0, *s), dtype) for s in shapes])

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        """The rows of ``parts``, one after another."""
        return cls(
            [s for p in parts for s in p.streams],
            np.concatenate([p.seqs for p in parts]),
            [np.concatenate(a) for a in zip(*(p.arrays for p in parts), strict=True)],
        )

    def take(self, index: slice) -> Rows:
        """The rows in ``index`` (views, not copies)."""
        return Rows(self.streams[index], self.seqs[index], [a[index] for a in self.arrays])

    def chunks(self) -> Iterator[Rows]:
        """The rows, :data:`MAX_ROWS_PER_CALL` at a time."""
        for start in range(0, len(self), MAX_ROWS_PER_CALL):
            yield self.take(slice(start, start + MAX_ROWS_PER_CALL))

    def ordered_as(self, streams: Sequence[str]) -> Rows:
        """The rows in the order their streams have in ``streams`` (which holds them all)."""
        order = {s: i for i, s in enumerate(streams)}
        perm = np.argsort([order[s] for s in self.streams], kind="stable")
        return Rows(
            [self.streams[i] for i in perm], self.seqs[perm], [a[perm] for a in self.arrays]
        )


def check_rows(
    spec: Sequence[StateSpec], n: int, seqs: np.ndarray, arrays: Sequence[np.ndarray]
) -> None:
    """Raise ValueError unless ``seqs`` has ``n`` entries and ``arrays`` is ``[n, *shape]``
    per state tensor of ``spec``."""
    if len(arrays) != len(spec) or len(seqs) != n:
        raise ValueError(
            f"expected {len(spec)} state arrays and {n} seqs, got {len(arrays)} and {len(seqs)}"
        )
    for a, s in zip(arrays, spec, strict=True):
        if tuple(a.shape) != (n, *s.shape):
            raise ValueError(f"state {s.name}: expected shape {(n, *s.shape)}, got {a.shape}")


def check_state(spec: Sequence[StateSpec], stream: str, arrays: Sequence[np.ndarray]) -> None:
    """Raise ValueError, naming ``stream``, unless ``arrays`` has one array of each shape of
    ``spec``."""
    if len(arrays) != len(spec):
        raise ValueError(
            f"state of stream {stream!r} has {len(arrays)} tensors, expected {len(spec)}"
        )
    for a, s in zip(arrays, spec, strict=True):
        if tuple(a.shape) != s.shape:
            raise ValueError(
                f"state {s.name} of stream {stream!r}: expected shape {s.shape}, got "
                f"{tuple(a.shape)}"
            )
