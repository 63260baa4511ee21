"""The host tier: pre-allocated NumPy rows for states evicted from the device.

A :class:`HostTable` holds ``[rows, *shape]`` per state tensor in the host representation of
the storage dtype (:mod:`processor.state.convert`), a seq array, and an index stream -> row
in least-recently-used order. Rows are allocated once (``np.zeros`` maps untouched pages
lazily, so RAM follows the rows in use) and never per stream; every operation is vectorised
over a batch of rows and costs O(batch). When the table is full, :meth:`HostTable.put` hands
back its least recently used rows for the next tier down.

Threading: used by one thread (the engine's worker).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from processor.model import StateSpec
from processor.state.rows import Rows

__all__ = ["HostTable"]


class HostTable:
    """``rows`` rows per state tensor of ``spec``, in host dtype ``dtype``.

    ``index``: the (empty) stream -> row map to keep in LRU order, oldest first; any
    ``OrderedDict`` will do (a test passes one that counts the entries touched).
    """

    def __init__(
        self,
        spec: Sequence[StateSpec],
        rows: int,
        dtype: np.dtype[Any],
        index: OrderedDict[str, int],
    ) -> None:
        self.capacity = rows
        self._tables = [np.zeros((rows, *s.shape), dtype) for s in spec]
        self._seq = np.full(rows, -1, np.int64)
        self._index = index
        # Pop from the end: rows are handed out in increasing order at first.
        self._free: list[int] = list(range(rows - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, stream: str) -> bool:
        return stream in self._index

    def seq_of(self, stream: str) -> int | None:
        """The last seq of ``stream``'s state here, ``None`` if it is not here."""
        row = self._index.get(stream)
        return None if row is None else int(self._seq[row])

    def read(self, streams: Sequence[str]) -> tuple[Rows | None, list[str]]:
        """Copies of the states of ``streams`` found here (in the order of ``streams``;
        ``None`` if none is), and the streams not found. Changes nothing, LRU order
        included."""
        get = self._index.get
        found: list[str] = []
        idx: list[int] = []
        rest: list[str] = []
        for stream in streams:
            row = get(stream)
            if row is None:
                rest.append(stream)
            else:
                found.append(stream)
                idx.append(row)
        return (self._rows(found, np.array(idx, np.int64)) if found else None), rest

    def take(self, streams: Sequence[str]) -> tuple[Rows | None, list[str]]:
        """:meth:`read`, removing the states found."""
        rows = list(map(self._index.pop, streams, itertools.repeat(None)))
        found_rows = [r for r in rows if r is not None]
        rest = [s for s, r in zip(streams, rows, strict=True) if r is None]
        if not found_rows:
            return None, rest
        idx = np.array(found_rows, np.int64)
        taken = self._rows([s for s, r in zip(streams, rows, strict=True) if r is not None], idx)
        self._seq[idx] = -1
        self._free.extend(found_rows)
        return taken, rest

    def put(self, rows: Rows) -> list[Rows]:
        """Put ``rows`` (streams not here, oldest first) at the MRU end. Returns what no
        longer fits, for the next tier: the oldest of ``rows`` when they alone exceed the
        table, then the table's least recently used states that made room."""
        out: list[Rows] = []
        overflow = len(rows) - self.capacity
        if overflow > 0:
            out.append(rows.take(slice(0, overflow)))
            rows = rows.take(slice(overflow, None))
        need = len(rows) - len(self._free)
        if need > 0:
            out.append(self._evict(need))
        if not len(rows):
            return out
        index = self._index
        free = self._free
        taken = free[len(free) - len(rows) :]
        del free[len(free) - len(rows) :]
        taken.reverse()  # rows are handed out in increasing order at first
        for stream, row in zip(rows.streams, taken, strict=True):
            index[stream] = row
        idx = np.array(taken, np.int64)
        self._seq[idx] = rows.seqs
        for table, values in zip(self._tables, rows.arrays, strict=True):
            table[idx] = values
        return out

    def discard(self, streams: Sequence[str]) -> list[str]:
        """Drop the states of ``streams`` found here; returns the streams not found."""
        rest: list[str] = []
        for stream in streams:
            row = self._index.pop(stream, None)
            if row is None:
                rest.append(stream)
            else:
                self._seq[row] = -1
                self._free.append(row)
        return rest

    def _evict(self, count: int) -> Rows:
        """Remove the ``count`` least recently used states and return them."""
        index = self._index
        victims = list(itertools.islice(index.items(), count))
        for stream, _ in victims:
            del index[stream]
        idx = np.array([row for _, row in victims], np.int64)
        rows = self._rows([stream for stream, _ in victims], idx)
        self._seq[idx] = -1
        self._free.extend(idx.tolist())
        return rows

    def _rows(self, streams: list[str], idx: np.ndarray) -> Rows:
        # Fancy indexing copies: the rows stay valid once the table reuses them.
        return Rows(streams, self._seq[idx], [t[idx] for t in self._tables])
