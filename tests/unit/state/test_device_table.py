"""The device table on its own: rows in and out in chunks, padding confined to the scratch
slot, and the storage dtype's rounding."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from processor.model import StateSpec
from processor.state.device import DeviceTable, pow2
from processor.state.rows import MAX_ROWS_PER_CALL

SPEC = (StateSpec("h", (2,)), StateSpec("c", (1, 3)))


def test_rows_round_trip_in_chunks_and_padding_touches_only_the_scratch_slot(
    rng: np.random.Generator,
) -> None:
    n = MAX_ROWS_PER_CALL + 5  # two chunks, the second padded from 5 to 8 rows
    table = DeviceTable(SPEC, n, device="/CPU:0", storage_dtype="float32")
    slots = rng.permutation(n).tolist()
    values = [rng.normal(size=(n, *s.shape)).astype(np.float32) for s in SPEC]
    table.write(slots, values)
    table.warmup()  # reads and writes the scratch slot only
    got = table.read(slots)
    for g, v in zip(got, values, strict=True):
        np.testing.assert_array_equal(g, v)
    assert [g.shape for g in table.read([])] == [(0, 2), (0, 1, 3)]
    assert table.scratch_slot == n and [t.shape[0] for t in table.tables] == [n + 1] * 2


def test_tables_hold_the_storage_dtype_and_compute_is_float32() -> None:
    table = DeviceTable(SPEC, 2, device="/CPU:0", storage_dtype="bfloat16")
    assert table.dtype == tf.bfloat16 and all(t.dtype == tf.bfloat16 for t in table.tables)
    table.write([1], [np.full((1, 2), 0.1, np.float32), np.full((1, 1, 3), 1 / 3, np.float32)])
    h, c = table.read([1])
    assert h.dtype == np.float32
    np.testing.assert_array_equal(h, tf.cast(tf.cast(np.float32(0.1), tf.bfloat16), tf.float32))
    assert c.shape == (1, 1, 3)


def test_pow2() -> None:
    assert [pow2(n) for n in (1, 2, 3, 4, 5, 4096, 4097)] == [1, 2, 4, 4, 8, 4096, 8192]
