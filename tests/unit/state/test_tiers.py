"""The state cache's tiers: device table -> host table -> disk store and back, exactness in
every storage dtype, load(), forget/release across tiers, close(), and lost states."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from processor.model.protocol import StateSpec
from processor.state.cache import StateCache, StreamState, from_host, to_host
from processor.state.disk import DiskStore, RecordLayout

SPEC = (StateSpec("l/h", (4,)), StateSpec("l/c", (2, 3)))
DTYPES = ("float32", "float16", "bfloat16")


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


def tier_of(cache: StateCache, stream: str) -> str:
    if stream in cache:
        return "device"
    if stream in cache._host_map:
        return "host"
    assert cache._disk is not None and stream in cache._disk
    return "disk"


@pytest.mark.parametrize("dtype", DTYPES)
def test_states_move_device_host_disk_device_exactly(
    dtype: str, rng: np.random.Generator, tmp_path: Path
) -> None:
    cache = StateCache(SPEC, 4, spill_capacity=4, storage_dtype=dtype, state_dir=str(tmp_path))
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 12, dtype))}
    first = dict(list(states.items())[:4])
    cache.restore(first)
    assert [tier_of(cache, s) for s in first] == ["device"] * 4
    cache.acquire([f"new{i}" for i in range(4)])  # the 4 move to the host table
    assert [tier_of(cache, s) for s in first] == ["host"] * 4
    cache.acquire([f"newer{i}" for i in range(4)])  # new* to host, the 4 to disk
    assert [tier_of(cache, s) for s in first] == ["disk"] * 4
    assert cache.stats.spilled == 8 and cache.stats.spilled_to_disk == 4
    for stream, want in first.items():
        assert_same(cache.snapshot([stream])[stream], want)  # read in place
        assert tier_of(cache, stream) == "disk"
    acq = cache.acquire(list(first))
    assert not acq.fresh.any() and acq.seqs.tolist() == [st.seq for st in first.values()]
    assert [tier_of(cache, s) for s in first] == ["device"] * 4
    assert cache.stats.disk_reads == 4 and cache.disk_count == 4  # newer* went to disk
    snap = cache.snapshot(first)
    for stream, want in first.items():
        assert_same(snap[stream], want)
    cache.close()


def test_a_batch_returning_from_both_lower_tiers_keeps_each_state_with_its_stream(
    rng: np.random.Generator,
) -> None:
    cache = StateCache(SPEC, 6, spill_capacity=3)
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 6, "float32"))}
    cache.load(states)  # s0..s2 overflow to disk, s3..s5 in the host table
    assert [tier_of(cache, s) for s in states] == ["disk"] * 3 + ["host"] * 3
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


def test_load_rounds_like_the_device_table(rng: np.random.Generator) -> None:
    # Arbitrary float32 values: load() stores them rounded as TensorFlow's cast rounds.
    x = rng.normal(0, 5, 4096).astype(np.float32)
    x[:4] = [np.inf, -np.inf, 0.0, -0.0]
    for dtype in ("float16", "bfloat16"):
        want = tf.cast(tf.cast(x, dtype), tf.float32).numpy()
        np.testing.assert_array_equal(from_host(to_host(x, dtype), dtype), want)
    nan = from_host(to_host(np.array([np.nan], np.float32), "bfloat16"), "bfloat16")
    assert np.isnan(nan).all()


def test_load_replaces_the_copy_in_every_tier(rng: np.random.Generator) -> None:
    cache = StateCache(SPEC, 2, spill_capacity=2)
    old = representable(rng, 6, "float32")
    cache.load({f"d{i}": old[i] for i in range(2)})  # d0, d1 -> host
    cache.load({f"h{i}": old[2 + i] for i in range(2)})  # d* -> disk, h* -> host
    cache.restore({"v": old[4]})  # device
    assert [tier_of(cache, s) for s in ("d0", "h0", "v")] == ["disk", "host", "device"]
    new = {s: st for s, st in zip(("d0", "h0", "v"), representable(rng, 3, "float32"), strict=True)}
    cache.load(new)
    assert "v" not in cache and len(cache) == 0
    snap = cache.snapshot([*new, "d1", "h1"])
    for stream, want in new.items():
        assert_same(snap[stream], want)
    assert_same(snap["d1"], old[1])
    assert cache.spilled_count == 5  # d0, d1, h0, h1, v: one copy each
    cache.close()


def test_load_and_restore_check_shapes_before_changing_anything() -> None:
    cache = StateCache(SPEC, 4, spill_capacity=4)
    good = StreamState((np.zeros(4, np.float32), np.zeros((2, 3), np.float32)), 1)
    bad = StreamState((np.zeros(4, np.float32), np.zeros((3, 2), np.float32)), 1)
    for method in (cache.load, cache.restore):
        with pytest.raises(ValueError, match=r"stream 'b'.*expected shape \(2, 3\), got \(3, 2\)"):
            method({"a": good, "b": bad})
        assert cache.last_seq("a") == -1
    with pytest.raises(ValueError, match="has 1 tensors, expected 2"):
        cache.load({"a": StreamState((np.zeros(4, np.float32),), 0)})


@pytest.mark.parametrize("how", ["forget", "release"])
def test_forget_and_release_reach_every_tier(how: str, rng: np.random.Generator) -> None:
    cache = StateCache(SPEC, 2, spill_capacity=2)
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 4, "float32"))}
    cache.load(states)  # s0, s1 on disk; s2, s3 in the host table
    cache.restore({"d": states["s0"]})
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
    cache = StateCache(SPEC, 2, spill_capacity=1)
    states = {f"s{i}": st for i, st in enumerate(representable(rng, 2, "float32"))}
    cache.restore(states)  # s0 is the device's least recently used
    cache.load({"h": representable(rng, 1, "float32")[0]})
    cache.load({"k": representable(rng, 1, "float32")[0]})  # h -> disk
    before = (list(cache._map), list(cache._host_map), cache.disk_count)
    assert set(cache.snapshot(["s1", "s0", "h", "k", "unknown"])) == {"s0", "s1", "h", "k"}
    assert (list(cache._map), list(cache._host_map), cache.disk_count) == before
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


def test_an_unclosed_store_is_deleted_when_collected(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path))
    store.put_many(["a"], np.zeros((1, 16), np.uint8))
    path = store.path
    assert os.path.isdir(path)
    del store
    gc.collect()
    assert not os.path.exists(path)


class FailingDb:
    """The store's RocksDB handle with failing writes (a full or broken disk)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, batch: Any) -> None:
        raise OSError("IO error: No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_failing_disk_write_counts_the_lost_states_and_logs_an_error(
    caplog: pytest.LogCaptureFixture, rng: np.random.Generator
) -> None:
    cache = StateCache(SPEC, 1, spill_capacity=0)
    cache.restore({"a": representable(rng, 1, "float32")[0]})
    cache.acquire(["b"])  # a -> disk: opens the store
    store = cache._disk
    assert store is not None
    store._db = FailingDb(store._db)
    with caplog.at_level(logging.ERROR, logger="processor.state.cache"):
        cache.acquire(["c"])  # b -> disk fails
    assert cache.stats.state_lost == 1 and cache.stats.spilled_to_disk == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "lost the state of stream 'b'" in errors[0].getMessage()
    assert "No space left on device" in errors[0].getMessage()
    assert cache.last_seq("b") == -1 and cache.disk_count == 1
    store._db = store._db.real  # the disk works again: what was written is intact
    assert cache.acquire(["a"]).fresh.tolist() == [False]
    cache.close()


def test_an_unreadable_stored_value_counts_as_lost(
    caplog: pytest.LogCaptureFixture, rng: np.random.Generator
) -> None:
    cache = StateCache(SPEC, 1, spill_capacity=0)
    cache.restore({"a": representable(rng, 1, "float32")[0]})
    cache.acquire(["b"])
    store = cache._disk
    assert store is not None
    store._db.put(b"a", b"truncated")
    with caplog.at_level(logging.ERROR, logger="processor.state.cache"):
        acq = cache.acquire(["a"])
    assert acq.fresh.tolist() == [True]  # restarts from the initial state
    assert cache.stats.state_lost == 1 and cache.stats.disk_reads == 0
    assert "lost the state of stream 'a'" in caplog.text and "bytes long" in caplog.text
    cache.close()


def test_lost_state_errors_are_rate_limited(
    caplog: pytest.LogCaptureFixture, rng: np.random.Generator
) -> None:
    now = [0.0]
    cache = StateCache(SPEC, 1, spill_capacity=0, clock=lambda: now[0])
    cache.acquire(["s0"])
    cache.acquire(["s1"])
    store = cache._disk
    assert store is not None
    store._db = FailingDb(store._db)
    with caplog.at_level(logging.ERROR, logger="processor.state.cache"):
        for i in range(2, 6):
            cache.acquire([f"s{i}"])
        now[0] = 11.0
        cache.acquire(["s6"])
    assert cache.stats.state_lost == 5
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 2 and "'s1'" in lines[0]
    assert "'s5'" in lines[1] and "3 more like it" in lines[1]
    cache.close()


def test_record_layout_round_trip() -> None:
    layout = RecordLayout([(2,), (1, 3)], np.dtype(np.float16))
    assert layout.nbytes == 8 + 2 * 2 + 3 * 2
    seqs = np.array([-1, 2**40], np.int64)
    arrays = [
        np.arange(4, dtype=np.float16).reshape(2, 2),
        np.arange(6, dtype=np.float16).reshape(2, 1, 3),
    ]
    rows = layout.encode(seqs, arrays)
    got_seqs, got = layout.decode([r.tobytes() for r in rows])
    np.testing.assert_array_equal(got_seqs, seqs)
    for g, a in zip(got, arrays, strict=True):
        assert g.dtype == np.float16
        np.testing.assert_array_equal(g, a)
