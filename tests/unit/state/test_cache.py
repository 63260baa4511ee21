"""StateCache: admission, LRU and idle eviction, spilling to the lower tiers and back,
snapshot/load, O(batch). The tiers themselves: test_tiers.py and the tests of each tier."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processor.engine.device import resolve_device
from processor.errors import CapacityError, ConfigError
from processor.model import StateSpec
from processor.state.cache import StateCache, StreamState

SPEC = (StateSpec("l/h", (3,)), StateSpec("l/c", (3,)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(value: float, seq: int = 0) -> StreamState:
    return StreamState((np.full(3, value, np.float32), np.full(3, -value, np.float32)), seq)


def put_on_device(cache: StateCache, states: Mapping[str, StreamState]) -> None:
    """Make ``states`` device-resident the way a run does: loaded (as from a state topic),
    then acquired by a batch of those streams (in that order: the first is the LRU one)."""
    cache.load(states)
    acq = cache.acquire(list(states))
    assert not acq.fresh.any()


def test_admission_marks_new_streams_fresh_and_reuses_slots() -> None:
    cache = StateCache(SPEC, 4)
    a = cache.acquire(["a", "b"])
    assert a.fresh.tolist() == [True, True]
    assert len(set(a.slots.tolist())) == 2
    b = cache.acquire(["b", "c"])
    assert b.fresh.tolist() == [False, True]
    assert b.slots[0] == a.slots[1]
    assert len(cache) == 3
    assert cache.stats.admitted == 3


def test_batch_larger_than_capacity_is_refused() -> None:
    cache = StateCache(SPEC, 2)
    with pytest.raises(CapacityError, match="3 distinct streams but the cache holds 2"):
        cache.acquire(["a", "b", "c"])


def test_lru_eviction_spills_and_restores_state() -> None:
    cache = StateCache(SPEC, 2)
    put_on_device(cache, {"a": state(1.0, seq=5), "b": state(2.0, seq=7)})
    cache.acquire(["b"])  # a is now least recently used
    acq = cache.acquire(["c"])
    assert acq.fresh.tolist() == [True]
    assert "a" not in cache and "b" in cache
    assert cache.stats.evicted_lru == 1 and cache.spilled_count == 1
    assert cache.last_seq("a") == 5  # the spilled stream keeps its seq
    restored = cache.stats.restored_from_spill
    back = cache.acquire(["a"])  # evicts b (LRU), restores a
    assert back.fresh.tolist() == [False]
    assert cache.stats.restored_from_spill == restored + 1
    snap = cache.snapshot(["a", "b"])
    np.testing.assert_array_equal(snap["a"].arrays[0], np.full(3, 1.0))
    np.testing.assert_array_equal(snap["a"].arrays[1], np.full(3, -1.0))
    assert snap["a"].seq == 5
    np.testing.assert_array_equal(snap["b"].arrays[0], np.full(3, 2.0))  # from the host table
    assert snap["b"].seq == 7


def test_eviction_never_picks_a_stream_of_the_same_batch() -> None:
    cache = StateCache(SPEC, 3)
    cache.acquire(["a", "b", "c"])
    # a and b are the two LRU streams but are in this batch: only c may be evicted.
    acq = cache.acquire(["a", "b", "d"])
    assert "c" not in cache
    assert all(s in cache for s in ("a", "b", "d"))
    assert acq.fresh.tolist() == [False, False, True]


def test_full_host_table_moves_states_to_disk_and_nothing_is_dropped(
    tmp_path: Path,
) -> None:
    cache = StateCache(SPEC, 1, spill_capacity=1, state_dir=str(tmp_path))
    put_on_device(cache, {"a": state(1.0, seq=4)})
    cache.acquire(["b"])  # a -> host table
    cache.acquire(["c"])  # b -> host table, which is full: a -> disk
    assert cache.host_count == 1 and cache.disk_count == 1 and cache.spilled_count == 2
    assert cache.stats.spilled == 2 and cache.stats.spilled_to_disk == 1
    assert cache.last_seq("a") == 4
    back = cache.acquire(["a"])  # from disk
    assert back.fresh.tolist() == [False] and back.seqs.tolist() == [4]
    assert cache.stats.disk_reads == 1 and cache.stats.state_lost == 0
    np.testing.assert_array_equal(cache.snapshot(["a"])["a"].arrays[1], np.full(3, -1.0))
    cache.close()


def test_returning_stream_is_taken_out_before_its_own_eviction() -> None:
    # The host table is full with "a"; admitting "a" evicts "b" into the host table. "a"
    # leaves the host table first, so "b" takes its row and nothing goes to disk.
    cache = StateCache(SPEC, 1, spill_capacity=1)
    cache.load({"a": state(1.0, seq=3)})
    cache.acquire(["b"])
    acq = cache.acquire(["a"])
    assert acq.fresh.tolist() == [False]
    assert cache.stats.spilled_to_disk == 0 and cache.disk_path is None
    assert cache.snapshot(["a"])["a"].seq == 3
    assert cache.host_count == 1 and "b" not in cache


def test_idle_eviction_only_touches_idle_streams() -> None:
    clock = FakeClock()
    cache = StateCache(SPEC, 8, idle_timeout_s=10.0, clock=clock)
    cache.acquire(["a", "b"])
    clock.now = 5.0
    cache.acquire(["c"])
    clock.now = 12.0
    cache.acquire(["b"])
    assert cache.evict_idle() == 1  # only a: last seen at 0 < 12 - 10
    assert "a" not in cache
    assert "b" in cache and "c" in cache
    assert cache.stats.evicted_idle == 1 and cache.spilled_count == 1
    clock.now = 100.0
    assert cache.evict_idle(max_evictions=1) == 1  # bounded per call
    assert cache.evict_idle() == 1


def test_release_forgets_stream_and_frees_slot() -> None:
    cache = StateCache(SPEC, 1)
    put_on_device(cache, {"a": state(1.0, seq=9)})
    cache.release(["a"])
    assert len(cache) == 0 and cache.last_seq("a") == -1
    assert cache.stats.ended == 1
    assert cache.acquire(["b"]).fresh.tolist() == [True]
    assert cache.stats.evicted_lru == 0  # the freed slot was reused, nothing evicted


def test_note_ended_counts_lives_that_end_without_release() -> None:
    cache = StateCache(SPEC, 2)
    cache.acquire(["a"])
    cache.note_ended(2)
    assert cache.stats.ended == 2
    assert "a" in cache and len(cache) == 1  # counting frees nothing


def test_snapshot_load_round_trip_through_the_device_in_reduced_precision() -> None:
    for dtype, tol in (("float16", 1e-3), ("bfloat16", 1e-2)):
        cache = StateCache(SPEC, 4, storage_dtype=dtype)
        put_on_device(cache, {"a": state(0.123456, seq=1)})
        got = cache.snapshot(["a"])["a"]
        assert got.arrays[0].dtype == np.float32
        np.testing.assert_allclose(got.arrays[0], 0.123456, rtol=tol)


def test_load_checks_shapes() -> None:
    cache = StateCache(SPEC, 4)
    bad = StreamState((np.zeros(3, np.float32), np.zeros(4, np.float32)), 0)
    with pytest.raises(ValueError, match=r"expected shape \(3,\), got \(4,\)"):
        cache.load({"a": bad})


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        StateCache(SPEC, 0)
    with pytest.raises(ConfigError, match="state dtype 'int8'"):
        StateCache(SPEC, 4, storage_dtype="int8")
    with pytest.raises(ConfigError, match="not found"):
        resolve_device("gpu:7")
    assert resolve_device("cpu") == "/CPU:0"
    assert resolve_device("auto") in ("/CPU:0", "/GPU:0")


class CountingIndex(OrderedDict[str, int]):
    """A tier's stream index that counts the entries it is asked about (lookups, moves,
    insertions, deletions, and every entry an iteration yields)."""

    ops = 0

    def get(self, *args: Any) -> Any:
        self.ops += 1
        return super().get(*args)

    def pop(self, *args: Any) -> Any:
        self.ops += 1
        return super().pop(*args)

    def move_to_end(self, key: str, last: bool = True) -> None:
        self.ops += 1
        super().move_to_end(key, last)

    def items(self) -> Any:
        for item in super().items():
            self.ops += 1
            yield item

    def __setitem__(self, key: str, value: int) -> None:
        self.ops += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.ops += 1
        super().__delitem__(key)


def test_per_step_host_work_does_not_grow_with_cached_streams() -> None:
    # Count the entries of the device and host indexes one acquire() touches -- with a full
    # device and a full host table, so that it evicts down both tiers and reads back from
    # both -- and one idle eviction: they must not depend on how many streams are cached.
    # A proxy for O(batch) that timing noise cannot fool.
    ops = {}
    for cached in (100, 20_000):
        clock = FakeClock()
        indexes: list[CountingIndex] = []

        def new_index(indexes: list[CountingIndex] = indexes) -> CountingIndex:
            indexes.append(CountingIndex())
            return indexes[-1]

        cache = StateCache(
            SPEC,
            cached,
            spill_capacity=cached,
            idle_timeout_s=10.0,
            clock=clock,
            new_index=new_index,
        )
        put_on_device(cache, {f"s{i}": state(0.0) for i in range(cached)})
        cache.load({f"h{i}": state(1.0) for i in range(cached + 64)})  # host full, 64 on disk
        clock.now = 5.0
        cache.acquire([f"s{i}" for i in range(32, cached)])  # all but 32 seen again at t=5
        for index in indexes:
            index.ops = 0
        returning = ["h0", f"h{cached + 1}"]  # one from disk, one from the host table
        batch = [f"s{i}" for i in range(32, 64)] + [f"new{i}" for i in range(30)] + returning
        acq = cache.acquire(batch)
        assert acq.fresh.tolist() == [False] * 32 + [True] * 30 + [False, False]
        assert cache.stats.evicted_lru == 32 and cache.stats.disk_reads == 1
        assert cache.stats.spilled_to_disk == 64 + 31
        clock.now = 12.0  # nothing idle for 10 s: the scan must stop at the first entry
        assert cache.evict_idle() == 0
        assert len(indexes) == 2  # the device's and the host table's
        ops[cached] = sum(index.ops for index in indexes)
        cache.close()
    assert ops[100] == ops[20_000] > 0
