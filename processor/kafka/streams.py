"""Which partition each cached stream's records come from, so that the streams of a
partition that moved to another member can be forgotten.

Touched on the engine thread only (through :meth:`processor.pipeline.Pipeline.step`'s
``then`` hook and :meth:`~processor.pipeline.Pipeline.call`), like the cache it indexes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from processor.engine import Engine
from processor.records import Record

__all__ = ["PartitionIndex"]


class PartitionIndex:
    """stream id -> partition of its latest record; bounded by about the cache's capacity
    plus its spill store (entries of streams the cache no longer knows are pruned)."""

    def __init__(self) -> None:
        self._partition_of: dict[str, Hashable] = {}
        self._prune_at = 0

    def note(
        self, engine: Engine, records: Sequence[Record], partitions: Sequence[Hashable]
    ) -> None:
        """Record that ``records[i]`` came from ``partitions[i]`` (after they were applied)."""
        index = self._partition_of
        for r, tp in zip(records, partitions, strict=True):
            index[r.stream] = tp
        if not self._prune_at:
            cache = engine.cache
            self._prune_at = 2 * (cache.capacity + cache.spill_capacity) + engine.max_batch
        if len(index) > self._prune_at:
            cache = engine.cache
            self._partition_of = {s: tp for s, tp in index.items() if cache.last_seq(s) != -1}

    def forget(self, engine: Engine, match: Callable[[Hashable], bool]) -> int:
        """Forget the cached state of every stream whose partition ``match``es; returns how
        many streams were forgotten."""
        streams = [s for s, tp in self._partition_of.items() if match(tp)]
        engine.cache.forget(streams)
        for s in streams:
            del self._partition_of[s]
        return len(streams)
