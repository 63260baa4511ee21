"""The disk store on its own: its private directory, its entry count, failing writes, and
the layout of a stored state."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rocksdict

from processor.state.disk import DiskStore, RecordLayout, StoreError


def test_an_unclosed_store_is_deleted_when_collected(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path))
    store.put_many(["a"], np.zeros((1, 16), np.uint8))
    path = store.path
    assert os.path.isdir(path)
    del store
    gc.collect()
    assert not os.path.exists(path)


def test_the_count_follows_puts_pops_and_deletes(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path))
    rows = np.arange(3 * 4, dtype=np.uint8).reshape(3, 4)
    store.put_many(["a", "b", "c"], rows)
    store.put_many(["a"], rows[:1])  # a replacement, not a new entry
    assert len(store) == 3 and sorted(store) == ["a", "b", "c"] and "b" in store
    assert store.pop_many(["b", "x"]) == [rows[1].tobytes(), None]
    assert store.delete_many(["a", "x"]) == 1
    assert len(store) == 1 and store.get_many(["c", "a"]) == [rows[2].tobytes(), None]
    store.close()
    store.close()
    assert store.closed and len(store) == 0


class FailingWrites:
    """A RocksDB handle whose writes fail (a full or broken disk)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, batch: Any) -> None:
        raise OSError("IO error: No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_failing_write_raises_store_error_and_stores_nothing(tmp_path: Path) -> None:
    def open_db(path: str, options: rocksdict.Options) -> FailingWrites:
        return FailingWrites(rocksdict.Rdict(path, options))

    store = DiskStore(str(tmp_path), open_db=open_db)
    with pytest.raises(StoreError, match=r"writing 2 states .* No space left on device"):
        store.put_many(["a", "b"], np.zeros((2, 4), np.uint8))
    assert len(store) == 0 and store.get_many(["a", "b"]) == [None, None]
    store.close()


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
    assert layout.valid(rows[0].tobytes()) and not layout.valid(b"short")
