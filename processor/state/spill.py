"""The tiers below the device: a host table that overflows to the disk tier.

A state evicted from the device (or loaded) goes to the MRU end of the
:class:`~processor.state.host.HostTable`; the host table's least recently used states, or the
oldest of a batch larger than the whole table, go on to the
:class:`~processor.state.disk_tier.DiskTier`. A state taken back is looked for in the host table
first, then on disk. :class:`Spill` takes and gives float32 :class:`Rows` and converts to and
from the storage dtype's host representation on the way (:mod:`processor.state.convert`).

Threading: used by one thread (the engine's worker).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from processor.model import StateSpec
from processor.state.convert import from_host, to_host
from processor.state.disk_tier import DiskTier
from processor.state.host import HostTable
from processor.state.rows import Rows
from processor.state.stats import CacheStats, Tier

__all__ = ["Spill"]


class Spill:
    """``host`` overflowing to ``disk``, states of ``spec`` stored in ``storage_dtype``.

    Counts ``disk_reads`` in ``stats`` (the cache's counters; ``disk`` counts its own).
    """

    def __init__(
        self,
        spec: Sequence[StateSpec],
        storage_dtype: str,
        host: HostTable,
        disk: DiskTier,
        stats: CacheStats,
    ) -> None:
        self._shapes = [s.shape for s in spec]
        self._dtype_name = storage_dtype
        self._host = host
        self._disk = disk
        self._stats = stats

    def __len__(self) -> int:
        return len(self._host) + len(self._disk)

    @property
    def host_count(self) -> int:
        """States in the host table."""
        return len(self._host)

    @property
    def disk_count(self) -> int:
        """States on disk."""
        return len(self._disk)

    @property
    def disk_path(self) -> str | None:
        """The disk store's directory while it exists."""
        return self._disk.path

    def tier_of(self, stream: str) -> Tier | None:
        """:attr:`Tier.HOST` or :attr:`Tier.DISK` if ``stream``'s state is there, else
        ``None`` (one disk lookup for a stream not in the host table)."""
        if stream in self._host:
            return Tier.HOST
        return Tier.DISK if stream in self._disk else None

    def seq_of(self, stream: str) -> int:
        """The last seq of ``stream``'s state here, -1 if it is not here."""
        seq = self._host.seq_of(stream)
        if seq is not None:
            return seq
        found = self._disk.get([stream], pop=False)
        return int(found.seqs[0]) if len(found) else -1

    def put(self, rows: Rows) -> None:
        """Keep float32 ``rows`` (streams in neither tier, oldest first): at the host
        table's MRU end, what it cannot hold on disk."""
        name = self._dtype_name
        for overflow in self._host.put(
            Rows(rows.streams, rows.seqs, [to_host(a, name) for a in rows.arrays])
        ):
            self._disk.put(overflow)

    def take(self, streams: Sequence[str]) -> Rows:
        """Remove ``streams``' states from both tiers and return those found, as float32,
        in the order of ``streams``."""
        from_host_rows, rest = self._host.take(streams)
        from_disk = self._disk.get(rest, pop=True) if rest else None
        if from_disk is not None and len(from_disk):
            self._stats.disk_reads += len(from_disk)
        parts = [p for p in (from_host_rows, from_disk) if p is not None and len(p)]
        if not parts:
            return Rows.empty(self._shapes, np.dtype(np.float32))
        # From both: back into the order of `streams`.
        merged = parts[0] if len(parts) == 1 else Rows.concat(parts).ordered_as(streams)
        return self._float32(merged)

    def read(self, streams: Sequence[str]) -> list[Rows]:
        """Copies of the states of ``streams`` found here, as float32 (the host table's,
        then the disk's). Changes nothing, LRU order included."""
        on_host, rest = self._host.read(streams)
        out = [] if on_host is None else [self._float32(on_host)]
        if rest and len(self._disk):
            out.append(self._float32(self._disk.get(rest, pop=False)))
        return out

    def discard(self, streams: Sequence[str]) -> None:
        """Drop the states of ``streams`` from both tiers (absent ones are ignored)."""
        self._disk.delete(self._host.discard(streams))

    def close(self) -> None:
        """Close the disk tier (its states are gone; see :meth:`DiskTier.close`)."""
        self._disk.close()

    def _float32(self, rows: Rows) -> Rows:
        name = self._dtype_name
        return Rows(rows.streams, rows.seqs, [from_host(a, name) for a in rows.arrays])
