"""Which source each known stream's records come from, and which streams changed since the
last checkpoint.

A *source* is an opaque hashable a transport gives each record (Kafka: its input
partition). The index lets a transport forget the streams of a source it no longer owns,
load a source's states read back from durable storage, and take a checkpoint: the latest
state of every stream changed since the previous one, grouped by source, with a tombstone
for a stream whose life ended (its ``end`` record was applied and no new life began).

Touched on the engine thread only, through the :class:`~processor.engine.pipeline.Pipeline`'s
named operations, like the cache it indexes: a checkpoint queued right after batch ``k``
sees exactly the states after batch ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from processor.records import Record
from processor.state.cache import StateCache, StreamState

__all__ = ["Changes", "Loaded", "SourceIndex"]

#: Encodes a changed stream's state for a checkpoint, given the stream's source.
StateEncoder = Callable[[StreamState, Hashable], bytes]


@dataclass(frozen=True, slots=True)
class Changes:
    """A checkpoint's state records: per source, ``(stream id, encoded value)`` pairs, the
    value None for a tombstone. ``streams`` are the streams taken and ``ended`` the
    tombstoned ones with their sources (to take them again if the checkpoint cannot be
    written)."""

    records: dict[Hashable, list[tuple[str, bytes | None]]]
    streams: list[str]
    ended: dict[str, Hashable]

    @property
    def count(self) -> int:
        """State records and tombstones in all."""
        return sum(map(len, self.records.values()))


@dataclass(frozen=True, slots=True)
class Loaded:
    """States of one source to load into the cache: ``streams`` (distinct) with their last
    ``seqs`` and one float32 array per state tensor (rows in ``streams`` order, see
    :meth:`processor.state.cache.StateCache.load_rows`), and the streams whose lives
    ``ended`` (forgotten). ``positions``: the caller's own per-stream marks, carried through
    untouched (Kafka: the input offset of the checkpoint each stream's state comes from)."""

    streams: Sequence[str]
    seqs: np.ndarray
    arrays: Sequence[np.ndarray]
    ended: Sequence[str] = ()
    positions: dict[str, int] = field(default_factory=dict)


class SourceIndex:
    """stream id -> source of its latest record, plus the set of streams changed since the
    last :meth:`take_changes` (kept only with ``track_changes``).

    Entries leave on :meth:`forget` and when a checkpoint writes a stream's tombstone. Without
    ``track_changes`` (no checkpoints) the index is pruned instead: entries of streams the
    cache no longer knows go when it grows past twice the streams the cache held then.
    """

    def __init__(self, *, track_changes: bool = False) -> None:
        self._source_of: dict[str, Hashable] = {}
        self._track = track_changes
        self._changed: set[str] = set()
        self._prune_at = 1 << 16

    def __len__(self) -> int:
        return len(self._source_of)

    @property
    def changed_count(self) -> int:
        """Streams changed since the last checkpoint."""
        return len(self._changed)

    def note(
        self, cache: StateCache, records: Sequence[Record], sources: Sequence[Hashable]
    ) -> None:
        """Record that ``records[i]`` came from ``sources[i]`` (after they were applied or
        skipped) and, when tracking, that their streams changed."""
        index = self._source_of
        for r, source in zip(records, sources, strict=True):
            index[r.stream] = source
        if self._track:
            self._changed.update(r.stream for r in records)
        elif len(index) > self._prune_at:
            self._source_of = {s: src for s, src in index.items() if cache.last_seq(s) != -1}
            self._prune_at = max(1 << 16, 2 * len(self._source_of))

    def take_changes(self, cache: StateCache, encode: StateEncoder) -> Changes:
        """The checkpoint's records (see :class:`Changes`): each changed stream's current
        state encoded by ``encode(state, source)``, or a tombstone when the cache no longer
        knows it (its life ended). Clears the changed set; tombstoned streams leave the
        index."""
        changed, self._changed = self._changed, set()
        streams = list(changed)
        states = cache.snapshot(streams)
        records: dict[Hashable, list[tuple[str, bytes | None]]] = {}
        ended: dict[str, Hashable] = {}
        index = self._source_of
        for stream in streams:
            source = index.get(stream)
            if source is None:
                continue  # forgotten since it changed: its source is not ours any more
            state = states.get(stream)
            if state is None:
                records.setdefault(source, []).append((stream, None))
                ended[stream] = source
                del index[stream]
            else:
                records.setdefault(source, []).append((stream, encode(state, source)))
        return Changes(records, streams, ended)

    def mark_changed(self, changes: Changes, owned: Collection[Hashable]) -> None:
        """The checkpoint that took ``changes`` failed: take its streams again at the next
        one (a stream whose source was forgotten meanwhile is left out; an ended one gets
        its tombstone if its source is still ``owned``, or its new life's state if it was
        reborn meanwhile)."""
        if not self._track:
            return
        index = self._source_of
        for stream, source in changes.ended.items():
            if source in owned:
                index.setdefault(stream, source)
        self._changed.update(s for s in changes.streams if s in index)

    def load(self, cache: StateCache, source: Hashable, loaded: Loaded) -> None:
        """Load ``loaded`` (states of ``source``) into the cache: its streams' states become
        current, the ended ones are forgotten."""
        if loaded.streams:
            cache.load_rows(loaded.streams, loaded.seqs, loaded.arrays)
        if loaded.ended:
            cache.forget(loaded.ended)
        index = self._source_of
        for s in loaded.streams:
            index[s] = source
        for s in loaded.ended:
            index.pop(s, None)

    def forget(self, cache: StateCache, match: Callable[[Hashable], bool]) -> int:
        """Forget the cached state of every stream whose source ``match``es; returns how
        many streams were forgotten."""
        streams = [s for s, source in self._source_of.items() if match(source)]
        cache.forget(streams)
        for s in streams:
            del self._source_of[s]
        self._changed.difference_update(streams)
        return len(streams)
