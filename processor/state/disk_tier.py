"""The disk tier as the cache uses it: a :class:`DiskStore` opened on the first state it
keeps, rows encoded by a :class:`RecordLayout`, every call chunked, and lost states reported.

:class:`DiskTier` takes and gives :class:`Rows` in the host representation. A failing write
or read, or a stored value of the wrong length, loses the states concerned: they are counted
in ``stats.state_lost`` and logged as an ERROR naming the streams (rate-limited, since a
failing disk fails at message rate); the streams then start again from their initial state.
Nothing else is ever dropped: the store has no size limit of its own.

Threading: used by one thread (the engine's worker).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from processor.obs.ratelimit import RateLimitedLog
from processor.state.disk import DiskStore, RecordLayout, StoreError
from processor.state.rows import MAX_ROWS_PER_CALL, Rows
from processor.state.stats import CacheStats

__all__ = ["DiskTier"]

log = logging.getLogger(__name__)


class DiskTier:
    """States on disk, in a store of their own under ``parent`` (``None``: the system's
    temporary directory), opened by ``open_store(parent)`` on the first write.

    Counts ``spilled_to_disk`` and ``state_lost`` in ``stats`` (the cache's counters);
    ``clock`` (monotonic seconds) paces the lost-state log.
    """

    def __init__(
        self,
        layout: RecordLayout,
        stats: CacheStats,
        *,
        parent: str | None = None,
        open_store: Callable[[str | None], DiskStore] = DiskStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._layout = layout
        self._stats = stats
        self._parent = parent
        self._open_store = open_store
        self._store: DiskStore | None = None
        self._lost_log = RateLimitedLog(log, 10.0, clock=clock, level=logging.ERROR)

    def __len__(self) -> int:
        return len(self._store) if self._store is not None else 0

    def __contains__(self, stream: str) -> bool:
        return self._store is not None and stream in self._store

    @property
    def path(self) -> str | None:
        """The store's directory while it exists."""
        store = self._store
        return store.path if store is not None and not store.closed else None

    def put(self, rows: Rows) -> None:
        """Store ``rows`` (replacing any stored state of their streams), chunked; a failing
        chunk's states are lost."""
        for chunk in rows.chunks():
            try:
                self._opened().put_many(
                    chunk.streams, self._layout.encode(chunk.seqs, chunk.arrays)
                )
            except StoreError as exc:
                self._lost(chunk.streams, str(exc))
                continue
            self._stats.spilled_to_disk += len(chunk)

    def get(self, streams: Sequence[str], *, pop: bool) -> Rows:
        """The states of ``streams`` found here, in the order of ``streams``; with ``pop``,
        removed from the store. A failing read or an unreadable value loses the states
        concerned; unreadable values are deleted, and so, with ``pop``, are the states a
        failing read did not return (so that they cannot come back later as stale ones)."""
        store = self._store
        if store is None or not streams or not len(store):
            return self._empty()
        found: list[str] = []
        values: list[bytes] = []
        for start in range(0, len(streams), MAX_ROWS_PER_CALL):
            chunk = streams[start : start + MAX_ROWS_PER_CALL]
            try:
                got = store.pop_many(chunk) if pop else store.get_many(chunk)
            except StoreError as exc:
                self._lost(chunk, str(exc))
                if pop:
                    with contextlib.suppress(StoreError):
                        store.delete_many(chunk)
                continue
            bad: list[str] = []
            for stream, value in zip(chunk, got, strict=True):
                if value is None:
                    continue
                if self._layout.valid(value):
                    found.append(stream)
                    values.append(value)
                else:
                    bad.append(stream)
            if bad:
                if not pop:
                    with contextlib.suppress(StoreError):
                        store.delete_many(bad)
                self._lost(bad, f"stored value is not {self._layout.nbytes} bytes long")
        if not found:
            return self._empty()
        seqs, arrays = self._layout.decode(values)
        return Rows(found, seqs, arrays)

    def delete(self, streams: Sequence[str]) -> None:
        """Drop the stored states of ``streams`` (absent ones are ignored)."""
        store = self._store
        if store is None or not streams or not len(store):
            return
        for start in range(0, len(streams), MAX_ROWS_PER_CALL):
            chunk = streams[start : start + MAX_ROWS_PER_CALL]
            try:
                store.delete_many(chunk)
            except StoreError as exc:
                # A stale copy may stay on disk; it can only shadow a stream that is in no
                # other tier, so report it as a loss of that stream's state.
                self._lost(chunk, str(exc))

    def close(self) -> None:
        """Close the store and delete its directory (idempotent). A later :meth:`put`
        opens a new, empty store."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def _opened(self) -> DiskStore:
        if self._store is None or self._store.closed:
            self._store = self._open_store(self._parent)
            log.info("state cache: disk tier opened in %s", self._store.path)
        return self._store

    def _empty(self) -> Rows:
        return Rows.empty(self._layout.shapes, self._layout.dtype.newbyteorder("="))

    def _lost(self, streams: Sequence[str], why: str) -> None:
        self._stats.state_lost += len(streams)
        shown = ", ".join(repr(s) for s in streams[:5])
        more = f" and {len(streams) - 5} more" if len(streams) > 5 else ""
        self._lost_log.warning(
            "state cache: lost the state of stream %s%s (%s); such streams restart from "
            "their initial state (%d states lost so far)",
            shown,
            more,
            why,
            self._stats.state_lost,
        )
