"""The host table on its own: LRU order, overflow handed back oldest first, reads that
change nothing."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from processor.model import StateSpec
from processor.state.host import HostTable
from processor.state.rows import Rows

SPEC = (StateSpec("h", (2,)),)


def rows(*streams: str) -> Rows:
    values = np.array([[float(s[1:])] * 2 for s in streams], np.float32)
    return Rows(list(streams), np.array([int(s[1:]) for s in streams], np.int64), [values])


def test_put_hands_back_what_does_not_fit_oldest_first() -> None:
    index: OrderedDict[str, int] = OrderedDict()
    table = HostTable(SPEC, 3, np.dtype(np.float32), index)
    assert table.put(rows("s0", "s1")) == []
    out = table.put(rows("s2", "s3"))  # one row free: s0, the LRU one, makes room
    assert [r.streams for r in out] == [["s0"]]
    out = table.put(rows("s4", "s5", "s6", "s7"))  # more than the table holds
    assert [r.streams for r in out] == [["s4"], ["s1", "s2", "s3"]]
    np.testing.assert_array_equal(out[1].arrays[0][:, 0], [1.0, 2.0, 3.0])
    assert list(index) == ["s5", "s6", "s7"] and len(table) == 3
    assert table.seq_of("s6") == 6 and table.seq_of("s0") is None


def test_read_changes_nothing_and_take_removes() -> None:
    index: OrderedDict[str, int] = OrderedDict()
    table = HostTable(SPEC, 4, np.dtype(np.float32), index)
    table.put(rows("s0", "s1", "s2"))
    found, rest = table.read(["s2", "x", "s0"])
    assert found is not None and found.streams == ["s2", "s0"] and rest == ["x"]
    np.testing.assert_array_equal(found.seqs, [2, 0])
    assert list(index) == ["s0", "s1", "s2"]
    taken, rest = table.take(["s1", "y"])
    assert taken is not None and taken.streams == ["s1"] and rest == ["y"]
    assert list(index) == ["s0", "s2"] and table.take(["y"]) == (None, ["y"])
    assert table.discard(["s0", "z"]) == ["z"] and list(index) == ["s2"]
    assert table.put(rows("s3", "s4", "s5")) == []  # the freed rows are reused
