"""StateCache: per-stream states in three tiers, and which streams hold a device slot.

1. **Device** (:mod:`processor.state.device`): one pre-allocated table per state tensor on
   one device, which the engine's compiled step gathers from and scatters to.
2. **Host** (:mod:`processor.state.host`): pre-allocated NumPy rows. The least recently used
   device states move here when the device is full (or idle).
3. **Disk** (:mod:`processor.state.disk_tier`): an embedded RocksDB store in a private
   directory, bounded by the disk only. The least recently used host states move here when
   the host table is full (:mod:`processor.state.spill` orders the two lower tiers). Nothing
   is ever evicted from it: an entry leaves only when its stream is forgotten or released,
   or returns to a higher tier.

A stream's state is in exactly one tier (:meth:`StateCache.tier_of`). A stream that returns
is taken from the host table or the disk and written back into a device slot. No state is
dropped for lack of room; a state lost anyway (a failing disk, an unreadable stored value)
is counted in ``stats.state_lost`` and logged as an ERROR naming the stream.

The cache keeps the device's index: stream -> slot in an ``OrderedDict``, least recently used
first, and the slots' last applied seqs and last-seen times in NumPy arrays (set per batch in
one vectorised operation, and invisible to Python's garbage collector, which would otherwise
walk one object per cached stream on every full collection). There is no per-stream Python
object besides the tiers' index entries.

Every per-step operation is O(batch): admission takes a free slot or evicts the least
recently used streams (device -> host -> disk, each move chunked and vectorised); idle
eviction pops from the LRU end. Nothing here walks a whole table or map per step.

Threading: a StateCache belongs to one thread (the engine's worker); it is not thread-safe.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from processor.errors import CapacityError, ConfigError
from processor.model import StateSpec
from processor.state.convert import HOST_DTYPES, check_storage_dtype
from processor.state.device import DeviceTable
from processor.state.disk import DiskStore, RecordLayout
from processor.state.disk_tier import DiskTier
from processor.state.host import HostTable
from processor.state.rows import MAX_ROWS_PER_CALL, Rows, check_rows, check_state
from processor.state.spill import Spill
from processor.state.stats import CacheStats, Tier

__all__ = ["Acquired", "StateCache", "StreamState"]


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


class StateCache:
    """Per-stream states in a device table, a host table and a disk store. See the module
    docstring.

    Args:
        spec: the model's state tensors.
        capacity: streams held on the device at once.
        device: TensorFlow device name (see :func:`processor.engine.device.resolve_device`).
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
        open_store: opens the disk store in a directory (:class:`DiskStore`; a test passes
            one over a failing disk).
        new_index: makes the (empty) ``OrderedDict`` each of the device and host tiers keeps
            its streams in, LRU first (a test passes one that counts the entries touched).

    For the engine's compiled step: :meth:`gather` and :meth:`scatter` (traceable: the
    device table's), ``tables`` (its variables, ``[capacity + 1, *shape]`` each),
    ``scratch_slot`` (the row padded batch rows read and write), ``device`` and
    ``storage_dtype`` (a TensorFlow dtype).
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
        open_store: Callable[[str | None], DiskStore] = DiskStore,
        new_index: Callable[[], OrderedDict[str, int]] = OrderedDict,
    ) -> None:
        if capacity < 1:
            raise ConfigError(f"cache capacity must be >= 1, got {capacity}")
        check_storage_dtype(storage_dtype)
        if spill_capacity < 0:
            raise ConfigError(f"spill capacity must be >= 0, got {spill_capacity}")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ConfigError(f"idle timeout must be > 0 seconds, got {idle_timeout_s}")
        self.spec = tuple(spec)
        self.capacity = capacity
        self.spill_capacity = spill_capacity
        self.idle_timeout_s = idle_timeout_s
        self.state_dir = state_dir
        self.stats = CacheStats()
        self._clock = clock
        self._device = DeviceTable(self.spec, capacity, device=device, storage_dtype=storage_dtype)
        self.device = device
        self.storage_dtype: tf.DType = self._device.dtype
        self.scratch_slot = self._device.scratch_slot
        self.tables: list[tf.Variable] = self._device.tables
        self.gather: Callable[[Any], list[Any]] = self._device.gather
        self.scatter: Callable[[Any, Sequence[Any]], None] = self._device.scatter
        # The device's index: stream -> slot, LRU first.
        self._map = new_index()
        self._seq = np.full(capacity + 1, -1, np.int64)
        self._last_seen = np.zeros(capacity + 1, np.float64)
        # Pop from the end: slots are handed out in increasing order at first.
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        host_dtype = HOST_DTYPES[storage_dtype]
        self._spill = Spill(
            self.spec,
            storage_dtype,
            HostTable(self.spec, spill_capacity, host_dtype, new_index()),
            DiskTier(
                RecordLayout([s.shape for s in self.spec], host_dtype),
                self.stats,
                parent=state_dir,
                open_store=open_store,
                clock=clock,
            ),
            self.stats,
        )

    def warmup(self) -> None:
        """Trace the device table's row helpers for every size a move may take, so that the
        first evictions and returns under traffic do not stall on tracing. Touches only the
        scratch slot."""
        self._device.warmup()

    # ---- sizes ------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Streams resident on the device."""
        return len(self._map)

    def __contains__(self, stream: str) -> bool:
        """Whether ``stream`` is resident on the device (see :meth:`tier_of` for any tier)."""
        return stream in self._map

    @property
    def spilled_count(self) -> int:
        """Streams whose state is in the host table or the disk store."""
        return len(self._spill)

    @property
    def host_count(self) -> int:
        """Streams whose state is in the host table."""
        return self._spill.host_count

    @property
    def disk_count(self) -> int:
        """Streams whose state is in the disk store."""
        return self._spill.disk_count

    @property
    def bytes_per_stream(self) -> int:
        """Bytes of one stream's state in the storage dtype (a device or host table row)."""
        item = self.storage_dtype.size
        return sum(int(np.prod(s.shape)) * item for s in self.spec)

    @property
    def disk_path(self) -> str | None:
        """The disk store's directory while it exists (it is created on first use)."""
        return self._spill.disk_path

    def tier_of(self, stream: str) -> Tier | None:
        """The tier holding ``stream``'s state (``None``: no tier does). Reads the disk (one
        lookup) for a stream in neither table."""
        return Tier.DEVICE if stream in self._map else self._spill.tier_of(stream)

    def last_seq(self, stream: str) -> int:
        """Last applied seq of a stream in any tier, -1 for an unknown one. Reads the disk
        (one lookup) for a stream in neither table."""
        slot = self._map.get(stream)
        return int(self._seq[slot]) if slot is not None else self._spill.seq_of(stream)

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
            returning = self._spill.take([streams[i] for i in missing])
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
                self._device.write(restore_slots, returning.arrays)
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
        values = self._device.read(slots)
        rows = Rows([stream for stream, _ in victims], self._seq[slots], values)
        for stream, slot in victims:
            del self._map[stream]
            self._free.append(slot)
        self._seq[slots] = -1
        self._spill.put(rows)
        self.stats.spilled += len(victims)

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
        rest: list[str] = []
        get = self._map.get
        for stream in streams:
            slot = get(stream)
            if slot is None:
                rest.append(stream)
            else:
                on_device.append((stream, slot))
        if on_device:
            slots = [slot for _, slot in on_device]
            values = self._device.read(slots)
            seqs = self._seq[slots]
            for i, (stream, _) in enumerate(on_device):
                out[stream] = StreamState(tuple(v[i] for v in values), int(seqs[i]))
        for rows in self._spill.read(rest) if rest else ():
            for i, stream in enumerate(rows.streams):
                out[stream] = StreamState(tuple(v[i] for v in rows.arrays), int(rows.seqs[i]))
        return out

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
            check_state(self.spec, stream, state.arrays)
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
        check_rows(self.spec, n, seqs, arrays)
        for start in range(0, n, MAX_ROWS_PER_CALL):
            part = slice(start, start + MAX_ROWS_PER_CALL)
            names = list(streams[part])
            self._drop(names, ended=False)  # the copies in every tier are being replaced
            self._spill.put(
                Rows(names, np.asarray(seqs[part], np.int64), [a[part] for a in arrays])
            )
            self.stats.loaded += len(names)

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
        self._spill.discard(streams)

    def close(self) -> None:
        """Close the disk store and delete its directory (the private subdirectory it made,
        also under a given ``state_dir``). Idempotent. Called by whoever owns the cache at
        shutdown; states that were on disk are gone afterwards, so the cache should not be
        used after it (a later disk write would open a new, empty store)."""
        self._spill.close()
