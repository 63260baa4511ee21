"""StateCache: per-stream states in three tiers -- device table, host table, disk store.

1. **Device**: one pre-allocated table per state tensor, ``[capacity + 1, *shape]`` in the
   storage dtype, on one device; the last row is a scratch slot that padded batch rows read
   and write. The compiled step gathers from and scatters to it.
2. **Host**: one pre-allocated NumPy array per state tensor, ``[spill_capacity, *shape]`` in
   the storage dtype (bfloat16 as its raw uint16 bits), plus a seq array. The least recently
   used device rows move here when the device is full (or idle).
3. **Disk**: an embedded RocksDB store (:class:`processor.state.disk.DiskStore`) in a private
   directory, bounded by the disk only. The least recently used host rows move here when
   the host table is full. Nothing is ever evicted from it: an entry leaves only when its
   stream is forgotten or released, or returns to a higher tier.

A stream's state is in exactly one tier. A stream that returns is taken from the host table
or the disk and written back into a device slot. No state is dropped for lack of room; a
state lost anyway (a failing disk write, an unreadable stored value) is counted in
``stats.state_lost`` and logged as an ERROR naming the stream.

Each tier keeps an ``OrderedDict`` stream id -> row in least-recently-used order (the disk
needs none); last applied seqs and last-seen times live in NumPy arrays indexed by row (set
per batch in one vectorised operation, and invisible to Python's garbage collector, which
would otherwise walk one object per cached stream on every full collection). There is no
per-stream Python object besides those index entries.

Every per-step operation is O(batch): admission takes a free slot or evicts the least
recently used streams (device -> host -> disk, each move chunked and vectorised); idle
eviction pops from the LRU end. Nothing here walks a whole table or map per step.

Threading: a StateCache belongs to one thread (the engine's worker); it is not thread-safe.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.errors import CapacityError, ConfigError
from processor.model.protocol import StateSpec
from processor.obs.ratelimit import RateLimitedLog
from processor.state.disk import DiskStore, RecordLayout, StoreError

log = logging.getLogger(__name__)

# Rows moved between tiers in one helper call (evictions, restores, snapshots, loads);
# larger requests are chunked, so the device helpers have at most log2(this) + 1 traced
# shapes and a move's temporary host memory stays bounded.
MAX_ROWS_PER_CALL = 4096

STORAGE_DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}

# Host-side representation of each storage dtype: NumPy has no bfloat16, so its values are
# kept as their raw bits (the upper 16 bits of the float32 with the same value).
HOST_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
}


def to_host(values: np.ndarray, storage_dtype: str) -> np.ndarray:
    """float32 ``values`` in the host representation of ``storage_dtype`` (see
    :data:`HOST_DTYPES`), rounded to nearest-even like TensorFlow's cast: exact for values
    read from a table of that dtype."""
    values = np.ascontiguousarray(values, np.float32)
    if storage_dtype != "bfloat16":
        return values.astype(HOST_DTYPES[storage_dtype])
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():  # rounding could carry a NaN's payload into the exponent: keep it a NaN
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def from_host(values: np.ndarray, storage_dtype: str) -> np.ndarray:
    """The float32 values of host-representation ``values`` (exact: float32 holds every
    float16 and bfloat16 value)."""
    if storage_dtype != "bfloat16":
        return values.astype(np.float32)
    return (values.astype(np.uint32) << 16).view(np.float32)


@dataclass(slots=True)
class StreamState:
    """A stream's state on the host: one float32 array per state tensor, and its last seq."""

    arrays: tuple[np.ndarray, ...]
    seq: int


@dataclass(frozen=True, slots=True)
class Acquired:
    """Slots for a batch of distinct streams, in the order they were asked for.

    ``fresh[i]`` is True when stream i has no state (new, forgotten, or its state was lost)
    and must start from the initial state; ``seqs[i]`` is its last applied seq (-1: none).
    After applying records, the caller records the new last seqs with
    :meth:`StateCache.commit_seqs`.
    """

    slots: np.ndarray
    fresh: np.ndarray
    seqs: np.ndarray


@dataclass
class CacheStats:
    """Monotonic counters (read by the metrics layer).

    ``spilled``: states moved from the device to the host table (LRU or idle eviction).
    ``spilled_to_disk``: states moved from the host table to the disk store.
    ``restored_from_spill``: states of returning streams written back to the device, from
    the host table or the disk; ``disk_reads`` counts those that came from the disk.
    ``loaded``: states put into the lower tiers by :meth:`StateCache.load`.
    ``state_lost``: states lost although the cache had kept them (a failing disk write or
    read, an unreadable stored value); each is also logged as an ERROR. Nothing is ever
    dropped for lack of room.
    """

    admitted: int = 0
    evicted_lru: int = 0
    evicted_idle: int = 0
    ended: int = 0
    spilled: int = 0
    spilled_to_disk: int = 0
    restored_from_spill: int = 0
    disk_reads: int = 0
    loaded: int = 0
    state_lost: int = 0


def pow2(n: int) -> int:
    """The smallest power of two >= n (padding sizes keep the traced shapes few)."""
    return 1 << max(0, (n - 1).bit_length())


class _ErrorLevel(logging.LoggerAdapter[logging.Logger]):
    """Turns :class:`RateLimitedLog`'s warnings into ERROR lines: a lost state is an
    error, and it deserves the same flood protection."""

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.error(msg, *args, **kwargs)


@dataclass(slots=True)
class _Rows:
    """States of some streams moving between tiers: ``seqs [n]`` and, per state tensor,
    ``[n, *shape]`` in the host storage representation."""

    streams: list[str]
    seqs: np.ndarray
    arrays: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.streams)

    def take(self, index: slice) -> _Rows:
        return _Rows(self.streams[index], self.seqs[index], [a[index] for a in self.arrays])


class StateCache:
    """Per-stream states in a device table, a host table and a disk store. See the module
    docstring.

    Args:
        spec: the model's state tensors.
        capacity: streams held on the device at once.
        device: TensorFlow device name (see :func:`resolve_device`).
        storage_dtype: ``float32`` (default), ``float16`` or ``bfloat16``, in every tier;
            computation is always float32 (the engine casts on gather and scatter).
        spill_capacity: rows of the host table (streams whose state is kept in host memory
            once evicted from the device); it takes ``spill_capacity * bytes_per_stream``
            bytes of RAM, committed as rows fill. Beyond it, states go to the disk store.
        idle_timeout_s: streams not seen for this long are evicted (to the host table) by
            :meth:`evict_idle`; ``None`` disables idle eviction.
        clock: monotonic seconds; injectable for tests.
        state_dir: directory in which the disk store creates its own subdirectory (``None``:
            the system's temporary directory). The subdirectory is created on the first
            state written to disk and deleted by :meth:`close`: the store is a cache, never
            reused across runs, so a given directory only says which disk to use.
    """

    def __init__(
        self,
        spec: Sequence[StateSpec],
        capacity: int,
        *,
        device: str = "/CPU:0",
        storage_dtype: str = "float32",
        spill_capacity: int = 100_000,
        idle_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        state_dir: str | None = None,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"cache capacity must be >= 1, got {capacity}")
        if storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"state dtype {storage_dtype!r} not supported; choose one of "
                f"{sorted(STORAGE_DTYPES)}"
            )
        if spill_capacity < 0:
            raise ConfigError(f"spill capacity must be >= 0, got {spill_capacity}")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ConfigError(f"idle timeout must be > 0 seconds, got {idle_timeout_s}")
        self.spec = tuple(spec)
        self.capacity = capacity
        self.device = device
        self.storage_dtype = STORAGE_DTYPES[storage_dtype]
        self._dtype_name = storage_dtype
        self.spill_capacity = spill_capacity
        self.idle_timeout_s = idle_timeout_s
        self.state_dir = state_dir
        self._clock = clock
        self.scratch_slot = capacity
        with tf.device(device):
            self.tables = [
                tf.Variable(
                    tf.zeros((capacity + 1, *s.shape), dtype=self.storage_dtype),
                    trainable=False,
                    name=f"state_{i}",
                )
                for i, s in enumerate(self.spec)
            ]
        # Tier 1 index: stream -> device slot, LRU first.
        self._map: OrderedDict[str, int] = OrderedDict()
        self._seq = np.full(capacity + 1, -1, np.int64)
        self._last_seen = np.zeros(capacity + 1, np.float64)
        # Pop from the end: slots are handed out in increasing order at first.
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        # Tier 2: np.zeros maps untouched pages lazily, so RAM follows the rows in use.
        host_dtype = HOST_DTYPES[storage_dtype]
        self._host = [np.zeros((spill_capacity, *s.shape), host_dtype) for s in self.spec]
        self._host_seq = np.full(spill_capacity, -1, np.int64)
        self._host_map: OrderedDict[str, int] = OrderedDict()
        self._host_free: list[int] = list(range(spill_capacity - 1, -1, -1))
        # Tier 3, opened on first use.
        self._layout = RecordLayout([s.shape for s in self.spec], host_dtype)
        self._disk: DiskStore | None = None
        self._closed = False
        self.stats = CacheStats()
        self._lost_log = RateLimitedLog(cast(logging.Logger, _ErrorLevel(log)), 10.0, clock=clock)
        self._gather_fn = tf.function(self.gather)
        self._write_fn = tf.function(self.scatter)

    # ---- sizes ------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Streams resident on the device."""
        return len(self._map)

    def __contains__(self, stream: str) -> bool:
        """Whether ``stream`` is resident on the device (see :meth:`last_seq` for any tier)."""
        return stream in self._map

    @property
    def spilled_count(self) -> int:
        """Streams whose state is in the host table or the disk store."""
        return len(self._host_map) + self._disk_count()

    @property
    def host_count(self) -> int:
        """Streams whose state is in the host table."""
        return len(self._host_map)

    @property
    def disk_count(self) -> int:
        """Streams whose state is in the disk store."""
        return self._disk_count()

    def _disk_count(self) -> int:
        return len(self._disk) if self._disk is not None else 0

    @property
    def bytes_per_stream(self) -> int:
        """Bytes of one stream's state in the storage dtype (a device or host table row)."""
        item = self.storage_dtype.size
        return sum(int(np.prod(s.shape)) * item for s in self.spec)

    @property
    def disk_path(self) -> str | None:
        """The disk store's directory while it exists (it is created on first use)."""
        return self._disk.path if self._disk is not None and not self._disk.closed else None

    def last_seq(self, stream: str) -> int:
        """Last applied seq of a stream in any tier, -1 for an unknown one. Reads the disk
        (one lookup) for a stream in neither table."""
        slot = self._map.get(stream)
        if slot is not None:
            return int(self._seq[slot])
        row = self._host_map.get(stream)
        if row is not None:
            return int(self._host_seq[row])
        if not self._disk_count():
            return -1
        found = self._disk_get([stream], pop=False)
        return int(found.seqs[0]) if len(found) else -1

    # ---- per-step path ----------------------------------------------------------------------

    def acquire(self, streams: Sequence[str]) -> Acquired:
        """Slots for ``streams`` (distinct ids, at most ``capacity``), admitting new ones.

        Cached streams are marked most recently used. A new stream takes a free slot, or the
        slot of the least recently used stream not in ``streams`` (whose state moves to the
        host table, pushing the host table's least recently used states to disk when it is
        full). A stream found in the host table or on disk gets its state written back into
        its new slot; any other new stream is returned with ``fresh`` True.
        Cost: O(len(streams)).
        """
        n = len(streams)
        if n > self.capacity:
            raise CapacityError(
                f"a step needs {n} distinct streams but the cache holds {self.capacity}; "
                "raise --cache-capacity or lower --max-batch"
            )
        now = self._clock()
        cached = self._map
        slot_list = list(map(cached.get, streams))
        missing = [i for i, slot in enumerate(slot_list) if slot is None]
        # Touch the cached ones first, so that they all sit at the MRU end and the eviction
        # below can only pick streams outside this batch.
        touch = cached.move_to_end
        if missing:
            for stream, slot in zip(streams, slot_list, strict=True):
                if slot is not None:
                    touch(stream)
        else:
            for stream in streams:
                touch(stream)
        fresh = np.zeros(n, dtype=bool)
        if missing:
            # Take the returning streams' states out of the lower tiers before evicting:
            # the eviction below pushes other states down, and must find room for them.
            returning = self._take_lower([streams[i] for i in missing])
            need = len(missing) - len(self._free)
            if need > 0:
                self._evict_lru(need)
            seq_of = {s: int(q) for s, q in zip(returning.streams, returning.seqs, strict=True)}
            restore_slots: list[int] = []
            for i in missing:
                slot = self._free.pop()
                stream = streams[i]
                cached[stream] = slot
                slot_list[i] = slot
                seq = seq_of.get(stream)
                if seq is None:
                    fresh[i] = True
                    self._seq[slot] = -1
                else:
                    self._seq[slot] = seq
                    restore_slots.append(slot)
            self.stats.admitted += len(missing)
            if restore_slots:
                # returning.streams is in the order of `missing`, as are restore_slots.
                self._write_rows(restore_slots, returning.arrays)
                self.stats.restored_from_spill += len(restore_slots)
        slots = np.array(slot_list, dtype=np.int32)
        self._last_seen[slots] = now
        return Acquired(slots, fresh, self._seq[slots])

    def commit_seqs(self, slots: np.ndarray, seqs: np.ndarray | Sequence[int]) -> None:
        """Record the last applied seq of the streams in ``slots`` (from :meth:`acquire`)."""
        self._seq[slots] = seqs

    def release(self, streams: Iterable[str]) -> None:
        """Forget ``streams`` entirely after their ``end`` record was applied (counted in
        ``stats.ended`` for those on the device): free the slot, drop any copy in the host
        table or on disk, and the last seq."""
        self._drop(streams, ended=True)

    def note_ended(self, count: int) -> None:
        """Count ``count`` stream lives that ended without a :meth:`release`: the engine
        calls it when a stream's ``end`` record is followed, in the same batch, by a new
        life of the same id, which carries on in the same slot. ``stats.ended`` then counts
        every applied ``end`` record, released or not."""
        self.stats.ended += count

    def evict_idle(self, max_evictions: int = 4096) -> int:
        """Move streams not seen for ``idle_timeout_s`` from the device to the host table;
        at most ``max_evictions`` per call (so one call's cost stays bounded). Returns how
        many were evicted."""
        if self.idle_timeout_s is None or not self._map:
            return 0
        deadline = self._clock() - self.idle_timeout_s
        victims: list[tuple[str, int]] = []
        last_seen = self._last_seen
        # The map is in last-seen order, so idle streams are all at the front.
        for stream, slot in self._map.items():
            if last_seen[slot] >= deadline or len(victims) >= max_evictions:
                break
            victims.append((stream, slot))
        if victims:
            self._spill_out(victims)
            self.stats.evicted_idle += len(victims)
        return len(victims)

    def _evict_lru(self, count: int) -> None:
        victims: list[tuple[str, int]] = []
        for stream, slot in self._map.items():
            if len(victims) >= count:
                break
            victims.append((stream, slot))
        self._spill_out(victims)
        self.stats.evicted_lru += len(victims)

    def _spill_out(self, victims: list[tuple[str, int]]) -> None:
        """Move the victims' states from the device to the host table; free their slots."""
        slots = [slot for _, slot in victims]
        values = self._read_rows(slots)
        rows = _Rows(
            [stream for stream, _ in victims],
            self._seq[slots],
            [to_host(v, self._dtype_name) for v in values],
        )
        for stream, slot in victims:
            del self._map[stream]
            self._free.append(slot)
        self._seq[slots] = -1
        self._host_put(rows)
        self.stats.spilled += len(victims)

    # ---- lower tiers ------------------------------------------------------------------------

    def _take_lower(self, streams: Sequence[str]) -> _Rows:
        """Remove ``streams``' states from the host table and the disk and return those
        found, in the order of ``streams``, as float32 (ready for the device)."""
        host_map = self._host_map
        rows = list(map(host_map.pop, streams, itertools.repeat(None)))
        found_rows = [r for r in rows if r is not None]
        rest = [s for s, r in zip(streams, rows, strict=True) if r is None]
        from_host_rows: _Rows | None = None
        if found_rows:
            idx = np.array(found_rows, np.int64)
            from_host_rows = _Rows(
                [s for s, r in zip(streams, rows, strict=True) if r is not None],
                self._host_seq[idx],
                [t[idx] for t in self._host],  # fancy indexing copies
            )
            self._host_seq[idx] = -1
            self._host_free.extend(found_rows)
        from_disk = self._disk_get(rest, pop=True) if rest and self._disk_count() else None
        if from_disk is not None and len(from_disk):
            self.stats.disk_reads += len(from_disk)
        parts = [p for p in (from_host_rows, from_disk) if p is not None and len(p)]
        if not parts:
            return self._empty_rows()
        merged = parts[0] if len(parts) == 1 else _concat(parts)
        if len(parts) > 1:
            # Back into the order of `streams` (acquire writes them to slots in that order).
            order = {s: i for i, s in enumerate(streams)}
            perm = np.argsort([order[s] for s in merged.streams], kind="stable")
            merged = _Rows(
                [merged.streams[i] for i in perm],
                merged.seqs[perm],
                [a[perm] for a in merged.arrays],
            )
        return _Rows(
            merged.streams,
            merged.seqs,
            [from_host(a, self._dtype_name) for a in merged.arrays],
        )

    def _empty_rows(self) -> _Rows:
        dtype = HOST_DTYPES[self._dtype_name]
        return _Rows([], np.zeros(0, np.int64), [np.zeros((0, *s.shape), dtype) for s in self.spec])

    def _host_put(self, rows: _Rows) -> None:
        """Put ``rows`` (streams in no table, oldest first) at the MRU end of the host
        table; the host table's least recently used states, or the oldest of ``rows``
        when they alone exceed it, move to disk."""
        overflow = len(rows) - self.spill_capacity
        if overflow > 0:
            self._to_disk(rows.take(slice(0, overflow)))
            rows = rows.take(slice(overflow, None))
        need = len(rows) - len(self._host_free)
        if need > 0:
            self._host_evict(need)
        if not len(rows):
            return
        host_map = self._host_map
        free = self._host_free
        taken = free[len(free) - len(rows) :]
        del free[len(free) - len(rows) :]
        taken.reverse()  # rows are handed out in increasing order at first
        for stream, row in zip(rows.streams, taken, strict=True):
            host_map[stream] = row
        idx = np.array(taken, np.int64)
        self._host_seq[idx] = rows.seqs
        for table, values in zip(self._host, rows.arrays, strict=True):
            table[idx] = values

    def _host_evict(self, count: int) -> None:
        """Move the ``count`` least recently used host states to disk."""
        host_map = self._host_map
        victims = list(itertools.islice(host_map.items(), count))
        for stream, _ in victims:
            del host_map[stream]
        idx = np.array([row for _, row in victims], np.int64)
        rows = _Rows(
            [stream for stream, _ in victims],
            self._host_seq[idx],
            [t[idx] for t in self._host],
        )
        self._host_seq[idx] = -1
        self._host_free.extend(idx.tolist())
        self._to_disk(rows)

    def _store(self) -> DiskStore:
        if self._disk is None or self._disk.closed:
            self._disk = DiskStore(self.state_dir)
            log.info("state cache: disk tier opened in %s", self._disk.path)
        return self._disk

    def _to_disk(self, rows: _Rows) -> None:
        """Write ``rows`` to the disk store, chunked; a failing chunk's states are lost."""
        for start in range(0, len(rows), MAX_ROWS_PER_CALL):
            chunk = rows.take(slice(start, start + MAX_ROWS_PER_CALL))
            try:
                self._store().put_many(chunk.streams, self._layout.encode(chunk.seqs, chunk.arrays))
            except StoreError as exc:
                self._lost(chunk.streams, str(exc))
                continue
            self.stats.spilled_to_disk += len(chunk)

    def _disk_get(self, streams: Sequence[str], *, pop: bool) -> _Rows:
        """The states of ``streams`` found on disk, in the order of ``streams``, in the
        host representation; with ``pop``, removed from the disk. A failing read or an
        unreadable value loses the states concerned (counted and logged)."""
        disk = self._disk
        if disk is None or not streams:
            return self._empty_rows()
        found: list[str] = []
        values: list[bytes] = []
        for start in range(0, len(streams), MAX_ROWS_PER_CALL):
            chunk = streams[start : start + MAX_ROWS_PER_CALL]
            try:
                got = disk.pop_many(chunk) if pop else disk.get_many(chunk)
            except StoreError as exc:
                self._lost(chunk, str(exc))
                if pop:  # do not let the unread states come back later as stale ones
                    with contextlib.suppress(StoreError):
                        disk.delete_many(chunk)
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
                        disk.delete_many(bad)
                self._lost(bad, f"stored value is not {self._layout.nbytes} bytes long")
        if not found:
            return self._empty_rows()
        seqs, arrays = self._layout.decode(values)
        return _Rows(found, seqs, arrays)

    def _lost(self, streams: Sequence[str], why: str) -> None:
        self.stats.state_lost += len(streams)
        shown = ", ".join(repr(s) for s in streams[:5])
        more = f" and {len(streams) - 5} more" if len(streams) > 5 else ""
        # Rate-limited: a failing disk fails at message rate.
        self._lost_log.warning(
            "state cache: lost the state of stream %s%s (%s); such streams restart from "
            "their initial state (%d states lost so far)",
            shown,
            more,
            why,
            self.stats.state_lost,
        )

    # ---- snapshot / load (durability layer) -------------------------------------------------

    def snapshot(self, streams: Iterable[str]) -> dict[str, StreamState]:
        """Current states of the given streams from whichever tier holds them, as float32
        host arrays (unknown streams are left out). Does not change LRU order or move
        anything between tiers.

        Called by the durability layer with tens of thousands of streams at once: the
        device-resident ones are read in one chunked device read, the host ones by one
        fancy index, the rest by batched disk reads; cost O(len(streams)).
        """
        out: dict[str, StreamState] = {}
        on_device: list[tuple[str, int]] = []
        on_host: list[tuple[str, int]] = []
        rest: list[str] = []
        for stream in streams:
            slot = self._map.get(stream)
            if slot is not None:
                on_device.append((stream, slot))
                continue
            row = self._host_map.get(stream)
            if row is not None:
                on_host.append((stream, row))
            else:
                rest.append(stream)
        if on_device:
            slots = [slot for _, slot in on_device]
            values = self._read_rows(slots)
            seqs = self._seq[slots]
            for i, (stream, _) in enumerate(on_device):
                out[stream] = StreamState(tuple(v[i] for v in values), int(seqs[i]))
        if on_host:
            idx = np.array([row for _, row in on_host], np.int64)
            self._emit(
                out, [s for s, _ in on_host], self._host_seq[idx], [t[idx] for t in self._host]
            )
        if rest and self._disk_count():
            found = self._disk_get(rest, pop=False)
            self._emit(out, found.streams, found.seqs, found.arrays)
        return out

    def _emit(
        self,
        out: dict[str, StreamState],
        streams: Sequence[str],
        seqs: np.ndarray,
        arrays: Sequence[np.ndarray],
    ) -> None:
        values = [from_host(a, self._dtype_name) for a in arrays]
        for i, stream in enumerate(streams):
            out[stream] = StreamState(tuple(v[i] for v in values), int(seqs[i]))

    def load(self, states: Mapping[str, StreamState]) -> None:
        """Make ``states`` the streams' current states without admitting them to the
        device: they go to the MRU end of the host table, whose least recently used states
        overflow to disk (and, when ``states`` alone exceed the host table, its first
        entries go straight to disk). A copy of such a stream in any tier is replaced.

        Called by the durability layer to restore a partition's streams (100k+) from its
        state topic. Every state's shapes are checked first (ValueError naming the stream,
        expected and got shapes; nothing is changed then). Values are converted to the
        storage dtype (rounded to nearest). Cost O(len(states)), vectorised in chunks of
        :data:`MAX_ROWS_PER_CALL` streams, so temporary memory stays bounded.
        """
        items = list(states.items())
        for stream, state in items:
            self._check_state(stream, state)
        for start in range(0, len(items), MAX_ROWS_PER_CALL):  # stacked a chunk at a time
            chunk = items[start : start + MAX_ROWS_PER_CALL]
            self.load_rows(
                [stream for stream, _ in chunk],
                np.array([state.seq for _, state in chunk], np.int64),
                [np.stack([state.arrays[k] for _, state in chunk]) for k in range(len(self.spec))],
            )

    def load_rows(
        self, streams: Sequence[str], seqs: np.ndarray, arrays: Sequence[np.ndarray]
    ) -> None:
        """:meth:`load` for states given as one float32 array per state tensor,
        ``[len(streams), *shape]`` (row ``i`` is ``streams[i]``, whose last seq is
        ``seqs[i]``; the streams are distinct): no per-stream object on the way. Raises
        ValueError (nothing changed) when a shape is not the spec's."""
        n = len(streams)
        if len(arrays) != len(self.spec) or len(seqs) != n:
            raise ValueError(
                f"expected {len(self.spec)} state arrays and {n} seqs, got {len(arrays)} and "
                f"{len(seqs)}"
            )
        for a, s in zip(arrays, self.spec, strict=True):
            if tuple(a.shape) != (n, *s.shape):
                raise ValueError(
                    f"state {s.name}: expected shape {(n, *s.shape)}, got {tuple(a.shape)}"
                )
        for start in range(0, n, MAX_ROWS_PER_CALL):
            part = slice(start, start + MAX_ROWS_PER_CALL)
            names = list(streams[part])
            self._discard(names)
            self._host_put(
                _Rows(
                    names,
                    np.asarray(seqs[part], np.int64),
                    [to_host(a[part], self._dtype_name) for a in arrays],
                )
            )
            self.stats.loaded += len(names)

    def restore(self, states: Mapping[str, StreamState]) -> None:
        """Make ``states`` the streams' current states AND admit them to the device (which
        may evict others to the host table); shapes are checked as in :meth:`load`. For a
        large number of streams prefer :meth:`load`, which does not displace the device's
        working set."""
        items = list(states.items())
        for stream, state in items:
            self._check_state(stream, state)
        for start in range(0, len(items), self.capacity):
            chunk = items[start : start + self.capacity]
            streams = [stream for stream, _ in chunk]
            # Their lower-tier copies are superseded: drop them first, so that acquire()
            # does not write old states to the device only for them to be overwritten.
            self._discard_lower(streams)
            acquired = self.acquire(streams)
            self.commit_seqs(acquired.slots, [state.seq for _, state in chunk])
            for k0 in range(0, len(chunk), MAX_ROWS_PER_CALL):
                part = chunk[k0 : k0 + MAX_ROWS_PER_CALL]
                values = [
                    np.stack([np.asarray(state.arrays[k], np.float32) for _, state in part])
                    for k in range(len(self.spec))
                ]
                self._write_rows([int(s) for s in acquired.slots[k0 : k0 + len(part)]], values)

    def forget(self, streams: Iterable[str]) -> None:
        """Drop streams from every tier without counting them as ended (e.g. their partition
        moved away)."""
        self._drop(streams, ended=False)

    def _drop(self, streams: Iterable[str], *, ended: bool) -> None:
        streams = list(streams)
        for stream in streams:
            slot = self._map.pop(stream, None)
            if slot is not None:
                self._free.append(slot)
                self._seq[slot] = -1
                self.stats.ended += ended
        self._discard_lower(streams)

    def _discard(self, streams: Sequence[str]) -> None:
        """Drop ``streams``' copies in every tier (their states are being replaced)."""
        for stream in streams:
            slot = self._map.pop(stream, None)
            if slot is not None:
                self._free.append(slot)
                self._seq[slot] = -1
        self._discard_lower(streams)

    def _discard_lower(self, streams: Sequence[str]) -> None:
        """Drop ``streams``' copies in the host table and on disk."""
        rest: list[str] = []
        for stream in streams:
            row = self._host_map.pop(stream, None)
            if row is None:
                rest.append(stream)
            else:
                self._host_seq[row] = -1
                self._host_free.append(row)
        if rest and self._disk is not None and self._disk_count():
            for start in range(0, len(rest), MAX_ROWS_PER_CALL):
                chunk = rest[start : start + MAX_ROWS_PER_CALL]
                try:
                    self._disk.delete_many(chunk)
                except StoreError as exc:
                    # A stale copy may stay on disk; it can only shadow a stream that is in
                    # no other tier, so report it as a loss of that stream's state.
                    self._lost(chunk, str(exc))

    def _check_state(self, stream: str, state: StreamState) -> None:
        if len(state.arrays) != len(self.spec):
            raise ValueError(
                f"state of stream {stream!r} has {len(state.arrays)} tensors, expected "
                f"{len(self.spec)}"
            )
        for a, s in zip(state.arrays, self.spec, strict=True):
            if tuple(a.shape) != s.shape:
                raise ValueError(
                    f"state {s.name} of stream {stream!r}: expected shape {s.shape}, got "
                    f"{tuple(a.shape)}"
                )

    def close(self) -> None:
        """Close the disk store and delete its directory (the private subdirectory it made,
        also under a given ``state_dir``). Idempotent. Called by whoever owns the cache at
        shutdown; states that were on disk are gone afterwards, so the cache should not be
        used after it (a later disk write would open a new, empty store)."""
        if self._disk is not None:
            self._disk.close()
            self._disk = None
        self._closed = True

    # ---- device helpers (bucketed so their traces stay few) ---------------------------------

    def gather(self, slots: Any) -> list[Any]:
        """The states in ``slots`` as float32 tensors (traceable: the engine's compiled step
        calls it, and so do the cache's own helpers)."""
        return [tf.cast(tf.gather(t, slots), tf.float32) for t in self.tables]

    def scatter(self, slots: Any, values: Sequence[Any]) -> None:
        """Write float32 ``values`` into ``slots`` in the storage dtype (traceable)."""
        idx = tf.expand_dims(slots, 1)
        for t, v in zip(self.tables, values, strict=True):
            t.scatter_nd_update(idx, tf.cast(v, t.dtype))

    def _padded_slots(self, slots: Sequence[int]) -> np.ndarray:
        padded = np.full(pow2(len(slots)), self.scratch_slot, dtype=np.int32)
        padded[: len(slots)] = slots
        return padded

    def warmup(self) -> None:
        """Trace the row helpers for every bucket (1 … MAX_ROWS_PER_CALL rows), so that the
        first evictions and restores under traffic do not stall on tracing. Touches only
        the scratch slot."""
        n = 1
        while n <= MAX_ROWS_PER_CALL:
            slots = tf.constant(np.full(n, self.scratch_slot, np.int32))
            with tf.device(self.device):
                self._write_fn(slots, self._gather_fn(slots))
            n *= 2

    def _read_rows(self, slots: Sequence[int]) -> list[np.ndarray]:
        """float32 ``[len(slots), *shape]`` per state tensor, read in chunks."""
        parts: list[list[np.ndarray]] = [[] for _ in self.spec]
        for start in range(0, len(slots), MAX_ROWS_PER_CALL):
            chunk = slots[start : start + MAX_ROWS_PER_CALL]
            with tf.device(self.device):
                rows = self._gather_fn(tf.constant(self._padded_slots(chunk)))
            for k, r in enumerate(rows):
                parts[k].append(r.numpy()[: len(chunk)])
        return [
            np.concatenate(p) if p else np.zeros((0, *s.shape), np.float32)
            for p, s in zip(parts, self.spec, strict=True)
        ]

    def _write_rows(self, slots: Sequence[int], values: Sequence[np.ndarray]) -> None:
        """Write float32 ``values`` (``[len(slots), *shape]`` per state tensor) into
        ``slots``, in chunks."""
        for start in range(0, len(slots), MAX_ROWS_PER_CALL):
            chunk = slots[start : start + MAX_ROWS_PER_CALL]
            padded = self._padded_slots(chunk)
            parts = []
            for v, s in zip(values, self.spec, strict=True):
                part = np.zeros((len(padded), *s.shape), np.float32)
                part[: len(chunk)] = v[start : start + len(chunk)]
                parts.append(tf.constant(part))
            with tf.device(self.device):
                self._write_fn(tf.constant(padded), parts)


def _concat(parts: Sequence[_Rows]) -> _Rows:
    return _Rows(
        [s for p in parts for s in p.streams],
        np.concatenate([p.seqs for p in parts]),
        [np.concatenate(a) for a in zip(*(p.arrays for p in parts), strict=True)],
    )
