"""StateCache: device-resident per-stream state tables with a host map stream id -> slot.

One pre-allocated table per state tensor, ``[capacity + 1, *shape]`` in the storage dtype, on
one device; the last row is a scratch slot that padded batch rows read and write. The host
side keeps an ``OrderedDict`` stream id -> slot in least-recently-used order, and the last
applied ``seq`` and last-seen time of each slot in NumPy arrays indexed by slot (updated per
batch in one vectorised operation, and invisible to Python's garbage collector, which would
otherwise walk one object per cached stream on every full collection).

Every per-step operation is O(batch): admission takes a free slot or evicts the least
recently used stream (whose state is copied to a bounded host-side spill store, never
silently lost); idle eviction pops from the LRU end. Nothing here walks the whole table or
the whole map per step.

Threading: a StateCache belongs to one thread (the engine's worker); it is not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor.errors import CapacityError, ConfigError
from processor.model import StateSpec
from processor.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

# Rows moved host <-> device in one helper call (evictions, restores, snapshots); larger
# requests are chunked, so the helpers have at most log2(this) + 1 traced shapes.
MAX_ROWS_PER_CALL = 4096

STORAGE_DTYPES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}


def resolve_device(device: str | None) -> str:
    """Map ``--device`` to a TensorFlow device name.

    ``None``/``"auto"``: the first GPU TensorFlow sees, else the CPU. ``"cpu"``/``"gpu"``
    (optionally ``gpu:N``) or a full name such as ``/GPU:1``. Raises ConfigError for a device
    TensorFlow does not have. The first time a process resolves to a given device, logs it
    at INFO level (``device: /CPU:0 (no GPU visible)``, see :func:`describe_device`), so a
    command that runs the model says once where it runs.
    """
    if device is None or device == "auto":
        name = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
    else:
        name = device if device.startswith("/") else "/" + device.upper()
        if ":" not in name:
            name += ":0"
        kind, _, index = name[1:].partition(":")
        available = [d.name for d in tf.config.list_logical_devices()]
        if not any(d.endswith(f"device:{kind.upper()}:{index}") for d in available):
            raise ConfigError(f"device {device!r} not found; TensorFlow sees {available}")
        name = f"/{kind.upper()}:{index}"
    if name not in _announced_devices:
        _announced_devices.add(name)
        log.info("device: %s", describe_device(name))
    return name


# Devices already named in the log by resolve_device (several engines of one process, as in
# the demo and the benchmarks, share the line).
_announced_devices: set[str] = set()


def describe_device(device: str) -> str:
    """``device`` (a name returned by :func:`resolve_device`) with what TensorFlow says about
    it and the GPUs it sees, e.g. ``/CPU:0 (no GPU visible)``, ``/CPU:0 (1 GPU visible, not
    used)`` or ``/GPU:0 (NVIDIA A100-SXM4-40GB, 2 GPUs visible)``. Best effort: a detail
    TensorFlow cannot give is left out."""
    gpus = tf.config.list_physical_devices("GPU")
    seen = f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} visible"
    kind, _, index = device.lstrip("/").partition(":")
    if kind.upper() != "GPU":
        return f"{device} ({seen}, not used)" if gpus else f"{device} (no GPU visible)"
    parts = [seen]
    try:
        details = tf.config.experimental.get_device_details(gpus[int(index or 0)])
    except (IndexError, ValueError, RuntimeError):
        details = {}
    if details.get("device_name"):
        parts.insert(0, str(details["device_name"]))
    return f"{device} ({', '.join(parts)})"


@dataclass(slots=True)
class StreamState:
    """A stream's state on the host: one float32 array per state tensor, and its last seq."""

    arrays: tuple[np.ndarray, ...]
    seq: int


@dataclass(frozen=True, slots=True)
class Acquired:
    """Slots for a batch of distinct streams, in the order they were asked for.

    ``fresh[i]`` is True when stream i has no state (new, or its spilled state was dropped)
    and must start from the initial state; ``seqs[i]`` is its last applied seq (-1: none).
    After applying records, the caller records the new last seqs with
    :meth:`StateCache.commit_seqs`.
    """

    slots: np.ndarray
    fresh: np.ndarray
    seqs: np.ndarray


@dataclass
class CacheStats:
    """Monotonic counters (read by the metrics layer) and current sizes."""

    admitted: int = 0
    evicted_lru: int = 0
    evicted_idle: int = 0
    ended: int = 0
    spilled: int = 0
    restored_from_spill: int = 0
    spill_dropped: int = 0


def pow2(n: int) -> int:
    """The smallest power of two >= n (padding sizes keep the traced shapes few)."""
    return 1 << max(0, (n - 1).bit_length())


class StateCache:
    """Resident state tables plus the host map. See the module docstring.

    Args:
        spec: the model's state tensors.
        capacity: streams held on the device at once.
        device: TensorFlow device name (see :func:`resolve_device`).
        storage_dtype: ``float32`` (default), ``float16`` or ``bfloat16``; computation is
            always float32 (the engine casts on gather and scatter).
        spill_capacity: streams whose evicted state is kept on the host; beyond it the oldest
            spilled state is dropped (logged and counted in ``stats.spill_dropped``).
        idle_timeout_s: streams not seen for this long are evicted (to the spill store) by
            :meth:`evict_idle`; ``None`` disables idle eviction.
        clock: monotonic seconds; injectable for tests.
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
        self.spill_capacity = spill_capacity
        self.idle_timeout_s = idle_timeout_s
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
        self._map: OrderedDict[str, int] = OrderedDict()
        self._seq = np.full(capacity + 1, -1, np.int64)
        self._last_seen = np.zeros(capacity + 1, np.float64)
        # Pop from the end: slots are handed out in increasing order at first.
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._spill: OrderedDict[str, StreamState] = OrderedDict()
        self.stats = CacheStats()
        self._drop_log = RateLimitedLog(log, 10.0, clock=clock)
        self._gather_fn = tf.function(self.gather)
        self._write_fn = tf.function(self.scatter)

    # ---- sizes ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, stream: str) -> bool:
        return stream in self._map

    @property
    def spilled_count(self) -> int:
        return len(self._spill)

    @property
    def bytes_per_stream(self) -> int:
        item = self.storage_dtype.size
        return sum(int(np.prod(s.shape)) * item for s in self.spec)

    def last_seq(self, stream: str) -> int:
        """Last applied seq of a cached or spilled stream, -1 for an unknown one."""
        slot = self._map.get(stream)
        if slot is not None:
            return int(self._seq[slot])
        spilled = self._spill.get(stream)
        return spilled.seq if spilled is not None else -1

    # ---- per-step path ----------------------------------------------------------------------

    def acquire(self, streams: Sequence[str]) -> Acquired:
        """Slots for ``streams`` (distinct ids, at most ``capacity``), admitting new ones.

        Cached streams are marked most recently used. A new stream takes a free slot, or the
        slot of the least recently used stream not in ``streams`` (its state is spilled to the
        host first). A stream found in the spill store gets its state written back into its
        new slot; any other new stream is returned with ``fresh`` True. Cost: O(len(streams)).
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
            # Take the returning streams' states out of the spill store before evicting:
            # the eviction below may overflow the store and drop its oldest entries.
            returning = [self._spill.pop(streams[i], None) for i in missing]
            need = len(missing) - len(self._free)
            if need > 0:
                self._evict_lru(need)
            restore_slots: list[int] = []
            restore_states: list[StreamState] = []
            for i, spilled in zip(missing, returning, strict=True):
                slot = self._free.pop()
                cached[streams[i]] = slot
                slot_list[i] = slot
                self.stats.admitted += 1
                if spilled is None:
                    fresh[i] = True
                    self._seq[slot] = -1
                else:
                    self._seq[slot] = spilled.seq
                    restore_slots.append(slot)
                    restore_states.append(spilled)
            if restore_slots:
                self._write_rows(restore_slots, restore_states)
                self.stats.restored_from_spill += len(restore_slots)
        slots = np.array(slot_list, dtype=np.int32)
        self._last_seen[slots] = now
        return Acquired(slots, fresh, self._seq[slots])

    def commit_seqs(self, slots: np.ndarray, seqs: np.ndarray | Sequence[int]) -> None:
        """Record the last applied seq of the streams in ``slots`` (from :meth:`acquire`)."""
        self._seq[slots] = seqs

    def release(self, streams: Iterable[str]) -> None:
        """Forget ``streams`` entirely after their ``end`` record was applied (counted in
        ``stats.ended``): free the slot, drop any spilled copy and the last seq."""
        self._drop(streams, ended=True)

    def note_ended(self, count: int) -> None:
        """Count ``count`` stream lives that ended without a :meth:`release`: the engine
        calls it when a stream's ``end`` record is followed, in the same batch, by a new
        life of the same id, which carries on in the same slot. ``stats.ended`` then counts
        every applied ``end`` record, released or not."""
        self.stats.ended += count

    def evict_idle(self, max_evictions: int = 4096) -> int:
        """Spill streams not seen for ``idle_timeout_s``; at most ``max_evictions`` per call
        (so one call's cost stays bounded). Returns how many were evicted."""
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
        """Copy the victims' states to the spill store and free their slots."""
        rows = self._read_rows([slot for _, slot in victims])
        for i, (stream, slot) in enumerate(victims):
            del self._map[stream]
            self._free.append(slot)
            # Copies: a view would keep the whole eviction batch's rows alive.
            arrays = tuple(r[i].copy() for r in rows)
            self._spill_put(stream, StreamState(arrays, int(self._seq[slot])))
        self.stats.spilled += len(victims)

    def _spill_put(self, stream: str, state: StreamState) -> None:
        self._spill[stream] = state
        self._spill.move_to_end(stream)
        while len(self._spill) > self.spill_capacity:
            dropped, _ = self._spill.popitem(last=False)
            self.stats.spill_dropped += 1
            # Rate-limited: under churn this happens at message rate.
            self._drop_log.warning(
                "spill store full (%d streams): dropped the state of stream %r (%d dropped "
                "so far); such streams restart from their initial state if they return "
                "(raise --spill-capacity)",
                self.spill_capacity,
                dropped,
                self.stats.spill_dropped,
            )

    # ---- snapshot / restore (durability layer) ----------------------------------------------

    def snapshot(self, streams: Iterable[str]) -> dict[str, StreamState]:
        """Current states of the given streams (cached or spilled; unknown ones are left
        out), as float32 host arrays. Does not change LRU order."""
        out: dict[str, StreamState] = {}
        cached: list[tuple[str, int]] = []
        for stream in streams:
            slot = self._map.get(stream)
            if slot is not None:
                cached.append((stream, slot))
            elif stream in self._spill:
                s = self._spill[stream]
                out[stream] = StreamState(tuple(a.astype(np.float32) for a in s.arrays), s.seq)
        if cached:
            rows = self._read_rows([slot for _, slot in cached])
            for i, (stream, slot) in enumerate(cached):
                out[stream] = StreamState(tuple(r[i] for r in rows), int(self._seq[slot]))
        return out

    def restore(self, states: Mapping[str, StreamState]) -> None:
        """Make ``states`` the streams' current states (admitting them, which may evict
        others to the spill store). Shapes are checked against the spec."""
        items = list(states.items())
        for stream, state in items:
            self._check_state(stream, state)
        for start in range(0, len(items), self.capacity):
            chunk = items[start : start + self.capacity]
            # Their spilled copies are superseded: drop them first, so that acquire() does
            # not write old states to the device only for them to be overwritten below.
            for stream, _ in chunk:
                self._spill.pop(stream, None)
            acquired = self.acquire([s for s, _ in chunk])
            self.commit_seqs(acquired.slots, [state.seq for _, state in chunk])
            self._write_rows([int(s) for s in acquired.slots], [st for _, st in chunk])

    def forget(self, streams: Iterable[str]) -> None:
        """Drop streams without counting them as ended (e.g. their partition moved away)."""
        self._drop(streams, ended=False)

    def _drop(self, streams: Iterable[str], *, ended: bool) -> None:
        for stream in streams:
            slot = self._map.pop(stream, None)
            if slot is not None:
                self._free.append(slot)
                self._seq[slot] = -1
                self.stats.ended += ended
            self._spill.pop(stream, None)

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

    def _write_rows(self, slots: Sequence[int], states: Sequence[StreamState]) -> None:
        for start in range(0, len(slots), MAX_ROWS_PER_CALL):
            chunk = slots[start : start + MAX_ROWS_PER_CALL]
            padded = self._padded_slots(chunk)
            values = []
            for k, s in enumerate(self.spec):
                v = np.zeros((len(padded), *s.shape), np.float32)
                for i, st in enumerate(states[start : start + len(chunk)]):
                    v[i] = st.arrays[k]
                values.append(tf.constant(v))
            with tf.device(self.device):
                self._write_fn(tf.constant(padded), values)
