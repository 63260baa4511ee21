"""Which partition each known stream's records come from, and which streams changed since
the last checkpoint.

The index lets the runtime forget the streams of a partition that moved to another member,
load a partition's restored streams, and take a checkpoint: the latest state of every stream
changed since the previous one, grouped by partition, with a tombstone for a stream whose
life ended (its ``end`` record was applied and no new life began).

Touched on the engine thread only (through :meth:`processor.engine.pipeline.Pipeline.step`'s
``then`` hook and :meth:`~processor.engine.pipeline.Pipeline.call`), like the cache it indexes, so a
checkpoint submitted right after batch ``k`` sees exactly the states after batch ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from processor.engine.engine import Engine
from processor.records import Record
from processor.state.cache import StreamState

__all__ = ["Changes", "PartitionIndex"]


@dataclass(frozen=True, slots=True)
class Changes:
    """A checkpoint's state records: per partition, ``(stream id, encoded value)`` pairs, the
    value None for a tombstone. ``streams`` are the streams taken and ``ended`` the
    tombstoned ones with their partitions (to take them again if the checkpoint cannot be
    written)."""

    records: dict[Hashable, list[tuple[str, bytes | None]]]
    streams: list[str]
    ended: dict[str, Hashable]

    @property
    def count(self) -> int:
        return sum(map(len, self.records.values()))


class PartitionIndex:
    """stream id -> partition of its latest record, plus the set of streams changed since
    the last :meth:`take_changes` (kept only with ``track_changes``).

    Entries leave on :meth:`forget` and when a checkpoint writes a stream's tombstone. Without
    ``track_changes`` (no state topic) the index is pruned instead: entries of streams the
    cache no longer knows go when it grows past twice the streams the cache held then.
    """

    def __init__(self, *, track_changes: bool = False) -> None:
        self._partition_of: dict[str, Hashable] = {}
        self._track = track_changes
        self._changed: set[str] = set()
        self._prune_at = 1 << 16

    def __len__(self) -> int:
        return len(self._partition_of)

    @property
    def changed_count(self) -> int:
        """Streams changed since the last checkpoint."""
        return len(self._changed)

    def note(
        self, engine: Engine, records: Sequence[Record], partitions: Sequence[Hashable]
    ) -> None:
        """Record that ``records[i]`` came from ``partitions[i]`` (after they were applied or
        skipped) and, when tracking, that their streams changed."""
        index = self._partition_of
        for r, tp in zip(records, partitions, strict=True):
            index[r.stream] = tp
        if self._track:
            self._changed.update(r.stream for r in records)
        elif len(index) > self._prune_at:
            cache = engine.cache
            self._partition_of = {s: tp for s, tp in index.items() if cache.last_seq(s) != -1}
            self._prune_at = max(1 << 16, 2 * len(self._partition_of))

    def take_changes(
        self, engine: Engine, encode: Callable[[StreamState, Hashable], bytes]
    ) -> Changes:
        """The checkpoint's records (see :class:`Changes`): each changed stream's current
        state encoded by ``encode(state, partition)``, or a tombstone when the cache no longer
        knows it (its life ended). Clears the changed set; tombstoned streams leave the
        index."""
        changed, self._changed = self._changed, set()
        streams = list(changed)
        states = engine.cache.snapshot(streams)
        records: dict[Hashable, list[tuple[str, bytes | None]]] = {}
        ended: dict[str, Hashable] = {}
        index = self._partition_of
        for stream in streams:
            tp = index.get(stream)
            if tp is None:
                continue  # forgotten since it changed: its partition is not ours any more
            state = states.get(stream)
            if state is None:
                records.setdefault(tp, []).append((stream, None))
                ended[stream] = tp
                del index[stream]
            else:
                records.setdefault(tp, []).append((stream, encode(state, tp)))
        return Changes(records, streams, ended)

    def mark_changed(self, changes: Changes, owned: Collection[Hashable]) -> None:
        """The checkpoint that took ``changes`` failed: take its streams again at the next
        one (a stream whose partition was forgotten meanwhile is left out; an ended one gets
        its tombstone if its partition is still ``owned``, or its new life's state if it
        was reborn meanwhile)."""
        if not self._track:
            return
        index = self._partition_of
        for stream, tp in changes.ended.items():
            if tp in owned:
                index.setdefault(stream, tp)
        self._changed.update(s for s in changes.streams if s in index)

    def load(
        self,
        engine: Engine,
        tp: Hashable,
        streams: Sequence[str],
        seqs: np.ndarray,
        arrays: Sequence[np.ndarray],
        ended: Sequence[str],
    ) -> None:
        """Make restored states of partition ``tp`` current: ``streams`` (distinct) with
        their last ``seqs`` and one float32 array per state tensor (see
        :meth:`processor.state.cache.StateCache.load_rows`), and forget the streams whose lives
        ``ended``."""
        cache = engine.cache
        if streams:
            cache.load_rows(streams, seqs, arrays)
        if ended:
            cache.forget(ended)
        index = self._partition_of
        for s in streams:
            index[s] = tp
        for s in ended:
            index.pop(s, None)

    def forget(self, engine: Engine, match: Callable[[Hashable], bool]) -> int:
        """Forget the cached state of every stream whose partition ``match``es; returns how
        many streams were forgotten."""
        streams = [s for s, tp in self._partition_of.items() if match(tp)]
        engine.cache.forget(streams)
        for s in streams:
            del self._partition_of[s]
        self._changed.difference_update(streams)
        return len(streams)
