"""The state cache's tiers: device table -> host table -> disk store and back, exactness in
every storage dtype, load(), forget/release across tiers, close(), and lost states."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rocksdict
import tensorflow as tf

from processor.model import StateSpec
from processor.state.cache import StateCache, StreamState
from processor.state.disk import DiskStore
from processor.state.stats import Tier

SPEC = (StateSpec("l/h", (4,)), StateSpec("l/c", (2, 3)))
DTYPES = ("float32", "float16", "bfloat16")
LOST_LOG = "processor.state.disk_tier"


def representable(rng: np.random.Generator, n: int, dtype: str) -> list[StreamState]:
    """``n`` random states whose values the storage ``dtype`` holds exactly (so that every
    tier must give them back bit for bit)."""
    out = []
    for i in range(n):
        arrays = tuple(
            tf.cast(tf.cast(rng.normal(0, 3, s.shape).astype(np.float32), dtype), tf.float32)
            .numpy()
            .astype(np.float32)
            for s in SPEC
        )
        out.append(StreamState(arrays, 10 * i + 1))
    return out


def assert_same(got: StreamState, want: StreamState) -> None:
    assert got.seq == want.seq
    for g, w in zip(got.arrays, want.arrays, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w)


def put_on_device(cache: StateCache, states: Mapping[str, StreamState]) -> None:
    """Make ``states`` device-resident the way a run does: loaded, then acquired."""
    cache.load(states)
    assert not cache.acquire(list(states)).fresh.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_states_move_device_host_disk_device_exactly(
    dtype: str, rng: np.random.Generator, tmp_path: Path
) -> None:
    cache = StateCache(SPEC, 4, spill_capacity=4, storage_dtype=dtype, state_dir=str(tmp_path))
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 12, dtype))}
    first = dict(list(states.items())[:4])
    put_on_device(cache, first)
    assert [cache.tier_of(s) for s in first] == [Tier.DEVICE] * 4
    cache.acquire([f"new{i}" for i in range(4)])  # the 4 move to the host table
    assert [cache.tier_of(s) for s in first] == [Tier.HOST] * 4
    cache.acquire([f"newer{i}" for i in range(4)])  # new* to host, the 4 to disk
    assert [cache.tier_of(s) for s in first] == [Tier.DISK] * 4
    assert cache.stats.spilled == 8 and cache.stats.spilled_to_disk == 4
    for stream, want in first.items():
        assert_same(cache.snapshot([stream])[stream], want)  # read in place
        assert cache.tier_of(stream) == Tier.DISK
    acq = cache.acquire(list(first))
    assert not acq.fresh.any() and acq.seqs.tolist() == [st.seq for st in first.values()]
    assert [cache.tier_of(s) for s in first] == [Tier.DEVICE] * 4
    assert cache.stats.disk_reads == 4 and cache.disk_count == 4  # newer* went to disk
    snap = cache.snapshot(first)
    for stream, want in first.items():
        assert_same(snap[stream], want)
    assert cache.tier_of("unknown") is None
    cache.close()


def test_a_batch_returning_from_both_lower_tiers_keeps_each_state_with_its_stream(
    rng: np.random.Generator,
) -> None:
    cache = StateCache(SPEC, 6, spill_capacity=3)
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 6, "float32"))}
    cache.load(states)  # s0..s2 overflow to disk, s3..s5 in the host table
    assert [cache.tier_of(s) for s in states] == [Tier.DISK] * 3 + [Tier.HOST] * 3
    order = ["s4", "s0", "s5", "x", "s2", "s3"]
    acq = cache.acquire(order)
    assert acq.fresh.tolist() == [False, False, False, True, False, False]
    assert acq.seqs.tolist() == [states[s].seq if s in states else -1 for s in order]
    snap = cache.snapshot(order)
    for stream in order:
        if stream in states:
            assert_same(snap[stream], states[stream])
    cache.close()


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_more_streams_than_device_and_host_hold_reads_every_one_back(
    dtype: str, rng: np.random.Generator
) -> None:
    cache = StateCache(SPEC, 8, spill_capacity=16, storage_dtype=dtype)
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 100, dtype))}
    cache.load(states)
    assert len(cache) == 0  # nothing admitted to the device
    assert cache.host_count == 16 and cache.disk_count == 84 and cache.stats.loaded == 100
    snap = cache.snapshot(states)
    assert set(snap) == set(states)
    for stream, want in states.items():
        assert_same(snap[stream], want)
        assert cache.last_seq(stream) == want.seq
    for start in range(0, 100, 8):  # and through the device
        streams = [f"s{i}" for i in range(start, min(start + 8, 100))]
        acq = cache.acquire(streams)
        assert not acq.fresh.any()
        for stream, got in cache.snapshot(streams).items():
            assert_same(got, states[stream])
    assert cache.stats.state_lost == 0 and cache.spilled_count + len(cache) == 100
    cache.close()


def test_load_rows_takes_arrays_of_many_streams(rng: np.random.Generator) -> None:
    cache = StateCache(SPEC, 2, spill_capacity=2)
    states = representable(rng, 3, "float32")
    cache.load_rows(
        ["a", "b", "c"],
        np.array([st.seq for st in states], np.int64),
        [np.stack([st.arrays[k] for st in states]) for k in range(len(SPEC))],
    )
    assert [cache.tier_of(s) for s in "abc"] == [Tier.DISK, Tier.HOST, Tier.HOST]
    snap = cache.snapshot("abc")
    for stream, want in zip("abc", states, strict=True):
        assert_same(snap[stream], want)
    cache.close()


def test_load_replaces_the_copy_in_every_tier(rng: np.random.Generator) -> None:
    cache = StateCache(SPEC, 2, spill_capacity=2)
    old = representable(rng, 6, "float32")
    put_on_device(cache, {"v": old[4]})  # device
    cache.load({f"d{i}": old[i] for i in range(2)})  # d0, d1 -> host
    cache.load({f"h{i}": old[2 + i] for i in range(2)})  # d* -> disk, h* -> host
    assert [cache.tier_of(s) for s in ("d0", "h0", "v")] == [Tier.DISK, Tier.HOST, Tier.DEVICE]
    new = {s: st for s, st in zip(("d0", "h0", "v"), representable(rng, 3, "float32"), strict=True)}
    cache.load(new)
    assert "v" not in cache and len(cache) == 0
    snap = cache.snapshot([*new, "d1", "h1"])
    for stream, want in new.items():
        assert_same(snap[stream], want)
    assert_same(snap["d1"], old[1])
    assert cache.spilled_count == 5  # d0, d1, h0, h1, v: one copy each
    cache.close()


def test_load_and_load_rows_check_shapes_before_changing_anything() -> None:
    cache = StateCache(SPEC, 4, spill_capacity=4)
    good = StreamState((np.zeros(4, np.float32), np.zeros((2, 3), np.float32)), 1)
    bad = StreamState((np.zeros(4, np.float32), np.zeros((3, 2), np.float32)), 1)
    with pytest.raises(ValueError, match=r"stream 'b'.*expected shape \(2, 3\), got \(3, 2\)"):
        cache.load({"a": good, "b": bad})
    assert cache.last_seq("a") == -1
    seqs = np.array([1, 1], np.int64)
    with pytest.raises(ValueError, match=r"l/c: expected shape \(2, 2, 3\), got \(2, 3, 2\)"):
        cache.load_rows(["a", "b"], seqs, [np.zeros((2, 4)), np.zeros((2, 3, 2))])
    assert cache.last_seq("a") == -1
    with pytest.raises(ValueError, match="expected 2 state arrays and 2 seqs, got 1 and 2"):
        cache.load_rows(["a", "b"], seqs, [np.zeros((2, 4))])
    with pytest.raises(ValueError, match="has 1 tensors, expected 2"):
        cache.load({"a": StreamState((np.zeros(4, np.float32),), 0)})


@pytest.mark.parametrize("how", ["forget", "release"])
def test_forget_and_release_reach_every_tier(how: str, rng: np.random.Generator) -> None:
    cache = StateCache(SPEC, 2, spill_capacity=2)
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 4, "float32"))}
    put_on_device(cache, {"d": states["s0"]})
    cache.load(states)  # s0, s1 on disk; s2, s3 in the host table
    gone = ["s0", "s2", "d"]
    getattr(cache, how)(gone)
    for stream in gone:
        assert cache.last_seq(stream) == -1
        assert stream not in cache.snapshot([stream])
    assert cache.stats.ended == (1 if how == "release" else 0)  # the device-resident one
    assert cache.host_count == 1 and cache.disk_count == 1 and len(cache) == 0
    assert cache.acquire(["s0"]).fresh.tolist() == [True]
    assert cache.acquire(["s1"]).fresh.tolist() == [False]
    cache.close()


def test_snapshot_changes_neither_tier_nor_lru_order(rng: np.random.Generator) -> None:
    indexes: list[OrderedDict[str, int]] = []  # the device's, then the host table's

    def new_index() -> OrderedDict[str, int]:
        indexes.append(OrderedDict())
        return indexes[-1]

    cache = StateCache(SPEC, 2, spill_capacity=1, new_index=new_index)
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 2, "float32"))}
    put_on_device(cache, states)  # s0 is the device's least recently used
    cache.load({"h": representable(rng, 1, "float32")[0]})
    cache.load({"k": representable(rng, 1, "float32")[0]})  # h -> disk
    before = ([list(index) for index in indexes], cache.disk_count)
    assert before[0] == [["s0", "s1"], ["k"]]
    assert set(cache.snapshot(["s1", "s0", "h", "k", "unknown"])) == {"s0", "s1", "h", "k"}
    assert ([list(index) for index in indexes], cache.disk_count) == before
    cache.acquire(["x"])
    assert "s0" not in cache and "s1" in cache  # still the LRU one
    cache.close()


def test_close_removes_the_private_directory_and_is_idempotent(tmp_path: Path) -> None:
    cache = StateCache(SPEC, 1, spill_capacity=0)
    assert cache.disk_path is None  # created lazily
    cache.acquire(["a"])
    cache.acquire(["b"])  # a -> disk straight away (no host rows)
    path = cache.disk_path
    assert path is not None and os.path.isdir(path) and cache.disk_count == 1
    cache.close()
    cache.close()
    assert not os.path.exists(path) and cache.disk_path is None

    given = tmp_path / "states"
    cache = StateCache(SPEC, 1, spill_capacity=0, state_dir=str(given))
    cache.acquire(["a"])
    cache.acquire(["b"])
    path = cache.disk_path
    assert path is not None and Path(path).parent == given and os.listdir(path)
    cache.close()
    assert not os.path.exists(path) and given.is_dir()  # the given directory itself stays


class FlakyDb:
    """A store's RocksDB handle whose writes fail while ``failing`` is set (a full or
    broken disk)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.failing = False

    def write(self, batch: Any) -> None:
        if self.failing:
            raise OSError("IO error: No space left on device")
        self.real.write(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Disk:
    """Opens the cache's disk store over a :class:`FlakyDb`, and keeps both at hand."""

    def __init__(self) -> None:
        self.store: DiskStore | None = None
        self.db: FlakyDb | None = None

    def open_store(self, parent: str | None) -> DiskStore:
        self.store = DiskStore(parent, open_db=self._open_db)
        return self.store

    def _open_db(self, path: str, options: rocksdict.Options) -> FlakyDb:
        self.db = FlakyDb(rocksdict.Rdict(path, options))
        return self.db


def test_a_failing_disk_write_counts_the_lost_states_and_logs_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    disk = Disk()
    cache = StateCache(SPEC, 1, spill_capacity=0, open_store=disk.open_store)
    acq = cache.acquire(["a"])
    cache.commit_seqs(acq.slots, [3])
    cache.acquire(["b"])  # a -> disk: opens the store
    assert disk.db is not None
    disk.db.failing = True
    with caplog.at_level(logging.ERROR, logger=LOST_LOG):
        cache.acquire(["c"])  # b -> disk fails
    assert cache.stats.state_lost == 1 and cache.stats.spilled_to_disk == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "lost the state of stream 'b'" in errors[0].getMessage()
    assert "No space left on device" in errors[0].getMessage()
    assert cache.last_seq("b") == -1 and cache.disk_count == 1
    disk.db.failing = False  # the disk works again: what was written is intact
    back = cache.acquire(["a"])
    assert back.fresh.tolist() == [False] and back.seqs.tolist() == [3]
    cache.close()


def test_an_unreadable_stored_value_counts_as_lost(caplog: pytest.LogCaptureFixture) -> None:
    disk = Disk()
    cache = StateCache(SPEC, 1, spill_capacity=0, open_store=disk.open_store)
    cache.acquire(["a"])
    cache.acquire(["b"])  # a -> disk
    assert disk.store is not None
    disk.store.put_many(["a"], np.frombuffer(b"truncated", np.uint8).reshape(1, -1))
    with caplog.at_level(logging.ERROR, logger=LOST_LOG):
        acq = cache.acquire(["a"])
    assert acq.fresh.tolist() == [True]  # restarts from the initial state
    assert cache.stats.state_lost == 1 and cache.stats.disk_reads == 0
    assert "lost the state of stream 'a'" in caplog.text and "bytes long" in caplog.text
    cache.close()


def test_lost_state_errors_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    disk = Disk()
    cache = StateCache(SPEC, 1, spill_capacity=0, clock=lambda: now[0], open_store=disk.open_store)
    cache.acquire(["s0"])
    cache.acquire(["s1"])
    assert disk.db is not None
    disk.db.failing = True
    with caplog.at_level(logging.ERROR, logger=LOST_LOG):
        for i in range(2, 6):
            cache.acquire([f"s{i}"])
        now[0] = 11.0
        cache.acquire(["s6"])
    assert cache.stats.state_lost == 5
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 2 and "'s1'" in lines[0]
    assert "'s5'" in lines[1] and "3 more like it" in lines[1]
    cache.close()
