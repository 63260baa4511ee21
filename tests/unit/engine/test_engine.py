"""Engine mechanics: ordering, duplicates and out-of-order records, waves vs scan, groups,
and retracing."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from processor.engine.engine import Engine
from processor.errors import ConfigError
from processor.model import KerasStepModel
from processor.records import Output, Record
from processor.state.cache import StateCache

FEATURES = 5


@pytest.fixture(scope="module")
def model() -> KerasStepModel:
    keras.utils.set_random_seed(7)
    inp = keras.Input((None, FEATURES))
    h = keras.layers.LSTM(12, return_sequences=True)(inp)
    h = keras.layers.GRU(6, return_sequences=True)(h)
    out = keras.layers.Dense(2)(h)
    return KerasStepModel.from_model(keras.Model(inp, out))


def make_engine(model: KerasStepModel, capacity: int = 256, **kw: Any) -> Engine:
    kw.setdefault("max_batch", 64)
    return Engine(model, StateCache(model.state_spec, capacity), **kw)


def sequences(n_streams: int, steps: int, seed: int = 0) -> np.ndarray:
    return (
        np.random.default_rng(seed).standard_normal((n_streams, steps, FEATURES)).astype(np.float32)
    )


def reference(model: KerasStepModel, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.keras_model(x, training=False))


def collect(outputs: list[Output], n_streams: int, steps: int) -> np.ndarray:
    got = np.full((n_streams, steps, 2), np.nan, np.float32)
    for o in outputs:
        got[int(o.stream[1:]), o.seq] = o.y
    return got


def test_max_batch_above_capacity_is_a_config_error(model: KerasStepModel) -> None:
    with pytest.raises(ConfigError, match="exceeds the cache capacity"):
        make_engine(model, capacity=16, max_batch=32)


@pytest.mark.parametrize("scan_min_steps", [0, 2])
def test_interleaved_streams_match_the_offline_model(
    model: KerasStepModel, scan_min_steps: int
) -> None:
    n, steps = 40, 9
    x = sequences(n, steps)
    engine = make_engine(model, max_batch=16, scan_min_steps=scan_min_steps, max_scan_steps=4)
    rng = np.random.default_rng(1)
    # Random interleaving that keeps each stream's order, fed in random chunk sizes.
    order = [s for s in rng.permutation(np.repeat(np.arange(n), steps))]
    cursor = [0] * n
    records = []
    for s in order:
        records.append(Record(f"s{s}", cursor[s], x[s, cursor[s]]))
        cursor[s] += 1
    outputs = []
    i = 0
    while i < len(records):
        k = int(rng.integers(1, 120))
        result = engine.process(records[i : i + k])
        assert result.duplicates == [] and result.out_of_order == []
        outputs.extend(result.outputs)
        i += k
    assert len(outputs) == n * steps
    # Per stream, outputs come out in seq order.
    last: dict[str, int] = {}
    for o in outputs:
        assert o.seq > last.get(o.stream, -1)
        last[o.stream] = o.seq
    np.testing.assert_allclose(
        collect(outputs, n, steps), reference(model, x), rtol=1e-4, atol=1e-5
    )
    if scan_min_steps:
        assert engine.stats.scan_calls > 0
    else:
        assert engine.stats.scan_calls == 0


def test_waves_and_scan_give_identical_results(model: KerasStepModel) -> None:
    n, steps = 20, 33
    x = sequences(n, steps, seed=3)
    records = [Record(f"s{s}", t, x[s, t]) for s in range(n) for t in range(steps)]
    waves = make_engine(model, max_batch=32, scan_min_steps=0).process(records)
    scan = make_engine(model, max_batch=32, scan_min_steps=2, max_scan_steps=8).process(records)
    a = collect(waves.outputs, n, steps)
    b = collect(scan.outputs, n, steps)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_duplicates_are_skipped_and_reported(model: KerasStepModel) -> None:
    x = sequences(1, 4)
    engine = make_engine(model)
    first = engine.process([Record("s0", 0, x[0, 0]), Record("s0", 1, x[0, 1])])
    assert [o.seq for o in first.outputs] == [0, 1]
    again = engine.process(
        [Record("s0", 1, x[0, 1]), Record("s0", 2, x[0, 2]), Record("s0", 2, x[0, 3])]
    )
    assert [o.seq for o in again.outputs] == [2]
    assert [r.seq for r in again.duplicates] == [1, 2]
    assert again.out_of_order == []
    assert engine.stats.duplicates == 2 and engine.stats.out_of_order == 0
    np.testing.assert_allclose(
        again.outputs[0].y, reference(model, x[:, :3])[0, 2], rtol=1e-4, atol=1e-5
    )


def other_x(x: np.ndarray) -> np.ndarray:
    """An input that would visibly change a stream's later outputs if it were applied."""
    return (x + 3.0).astype(np.float32)


@pytest.mark.parametrize("scan_min_steps", [0, 2])
def test_equal_seq_is_a_duplicate_and_lower_seq_is_out_of_order(
    model: KerasStepModel, scan_min_steps: int
) -> None:
    """Across calls and within one call: a seq equal to the last applied one is returned in
    ``duplicates``, a lower one in ``out_of_order`` with the last applied seq at that moment
    (which moves as the call applies records); neither is applied."""
    x = sequences(1, 7, seed=4)
    engine = make_engine(model, scan_min_steps=scan_min_steps)
    first = engine.process([Record("s0", t, x[0, t]) for t in range(4)])
    assert [o.seq for o in first.outputs] == [0, 1, 2, 3]
    dup3 = Record("s0", 3, other_x(x[0, 3]))
    late1 = Record("s0", 1, other_x(x[0, 1]))
    late2 = Record("s0", 2, other_x(x[0, 2]))
    dup5 = Record("s0", 5, other_x(x[0, 5]))
    second = engine.process(
        [
            dup3,
            late1,
            Record("s0", 4, x[0, 4]),
            Record("s0", 5, x[0, 5]),
            late2,
            dup5,
            Record("s0", 6, x[0, 6]),
        ]
    )
    assert [o.seq for o in second.outputs] == [4, 5, 6]
    assert [id(r) for r in second.duplicates] == [id(dup3), id(dup5)]
    assert [(id(r), last) for r, last in second.out_of_order] == [(id(late1), 3), (id(late2), 5)]
    assert engine.stats.duplicates == 2 and engine.stats.out_of_order == 2
    assert engine.stats.records_applied == 7
    assert engine.cache.last_seq("s0") == 6
    # The skipped records were not applied: outputs are the model over the in-order inputs.
    np.testing.assert_allclose(
        [o.y for o in second.outputs], reference(model, x)[0, 4:], rtol=1e-4, atol=1e-5
    )
    if scan_min_steps:
        assert engine.stats.scan_calls > 0  # the second call's 3 records went through a scan
    else:
        assert engine.stats.scan_calls == 0


def test_single_record_per_stream_path_tells_duplicates_from_out_of_order(
    model: KerasStepModel,
) -> None:
    """The steady-state path (one record per stream per call), several streams at once."""
    x = sequences(3, 3, seed=8)
    engine = make_engine(model)
    engine.process([Record(f"s{s}", 5, x[s, 0]) for s in range(3)])
    again = engine.process(
        [
            Record("s0", 5, other_x(x[0, 1])),  # equal: duplicate
            Record("s1", 3, other_x(x[1, 1])),  # below: out of order
            Record("s2", 6, x[2, 1]),  # above: applied
        ]
    )
    assert [o.stream for o in again.outputs] == ["s2"]
    assert [(r.stream, r.seq) for r in again.duplicates] == [("s0", 5)]
    assert [(r.stream, r.seq, last) for r, last in again.out_of_order] == [("s1", 3, 5)]
    assert (engine.stats.duplicates, engine.stats.out_of_order) == (1, 1)
    # s0 and s1 go on from their last applied state as if nothing had been skipped.
    nxt = engine.process([Record("s0", 6, x[0, 1]), Record("s1", 6, x[1, 1])]).outputs
    want = reference(model, x[:, :2])[:, 1]
    np.testing.assert_allclose([o.y for o in nxt], want[:2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scan_min_steps", [0, 2])
def test_any_seq_starts_a_new_life_after_end(model: KerasStepModel, scan_min_steps: int) -> None:
    """After ``end``, a lower seq is a new life, not out of order: in a later call and
    within the same call; within the new life, equal and lower seqs are skipped again."""
    x = sequences(2, 6, seed=12)
    engine = make_engine(model, scan_min_steps=scan_min_steps)
    engine.process([Record("a", 10 + t, x[0, t], end=(t == 2)) for t in range(3)])
    later = engine.process([Record("a", 0, x[0, 3]), Record("a", 1, x[0, 4])])
    assert [o.seq for o in later.outputs] == [0, 1]
    assert later.duplicates == [] and later.out_of_order == []
    np.testing.assert_allclose(
        [o.y for o in later.outputs], reference(model, x[:1, 3:5])[0], rtol=1e-4, atol=1e-5
    )
    same_call = engine.process(
        [
            Record("b", 7, x[1, 0]),
            Record("b", 8, x[1, 1], end=True),
            Record("b", 2, x[1, 2]),  # new life
            Record("b", 3, x[1, 3]),
            Record("b", 3, other_x(x[1, 4])),  # duplicate within the new life
            Record("b", 1, other_x(x[1, 4])),  # below the new life's last seq
            Record("b", 4, x[1, 4]),
        ]
    )
    assert [o.seq for o in same_call.outputs] == [7, 8, 2, 3, 4]
    assert [r.seq for r in same_call.duplicates] == [3]
    assert [(r.seq, last) for r, last in same_call.out_of_order] == [(1, 3)]
    np.testing.assert_allclose(
        [o.y for o in same_call.outputs[2:]],
        reference(model, x[1:, 2:5])[0],
        rtol=1e-4,
        atol=1e-5,
    )
    if scan_min_steps:
        assert engine.stats.scan_calls > 0


def test_reset_and_end(model: KerasStepModel) -> None:
    x = sequences(1, 6, seed=5)
    engine = make_engine(model)
    recs = [Record("s0", t, x[0, t]) for t in range(3)]
    recs.append(Record("s0", 3, x[0, 3], reset=True))
    recs.append(Record("s0", 4, x[0, 4], end=True))
    out = engine.process(recs).outputs
    ref_prefix = reference(model, x[:, :3])[0]
    ref_suffix = reference(model, x[:, 3:5])[0]
    np.testing.assert_allclose([o.y for o in out[:3]], ref_prefix, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([o.y for o in out[3:]], ref_suffix, rtol=1e-4, atol=1e-5)
    assert "s0" not in engine.cache and engine.cache.stats.ended == 1
    # A new life of the same id starts from the initial state, whatever its seq.
    again = engine.process([Record("s0", 0, x[0, 5])]).outputs
    np.testing.assert_allclose(again[0].y, reference(model, x[:, 5:6])[0, 0], rtol=1e-4, atol=1e-5)


def test_end_then_more_records_in_the_same_call(model: KerasStepModel) -> None:
    x = sequences(1, 4, seed=6)
    for scan in (0, 2):
        engine = make_engine(model, scan_min_steps=scan)
        recs = [
            Record("s0", 0, x[0, 0]),
            Record("s0", 1, x[0, 1], end=True),
            Record("s0", 0, x[0, 2]),  # new life: seq may start again
            Record("s0", 1, x[0, 3]),
        ]
        out = engine.process(recs).outputs
        assert len(out) == 4
        np.testing.assert_allclose(
            [o.y for o in out[2:]], reference(model, x[:, 2:4])[0], rtol=1e-4, atol=1e-5
        )
        assert "s0" in engine.cache
        assert engine.cache.stats.ended == 1


def test_more_streams_than_max_batch_and_than_capacity(model: KerasStepModel) -> None:
    n, steps = 100, 3
    x = sequences(n, steps, seed=9)
    engine = make_engine(model, capacity=24, max_batch=16)
    outputs = []
    for t in range(steps):
        outputs += engine.process([Record(f"s{s}", t, x[s, t]) for s in range(n)]).outputs
    assert engine.cache.stats.evicted_lru > 0 and engine.cache.stats.restored_from_spill > 0
    np.testing.assert_allclose(
        collect(outputs, n, steps), reference(model, x), rtol=1e-4, atol=1e-5
    )
    assert max(engine.stats.batch_sizes) <= 16


def test_no_retracing_in_steady_state(model: KerasStepModel) -> None:
    engine = make_engine(model, max_batch=64, scan_min_steps=4, max_scan_steps=8)
    engine.warmup(scan=True)
    traced = engine.trace_count
    assert traced == len(engine.buckets) + 1  # waves + one shape-polymorphic scan
    rng = np.random.default_rng(2)
    seq: dict[int, int] = {}
    for _ in range(30):
        n = int(rng.integers(1, 64))
        depth = int(rng.integers(1, 10))
        recs = []
        for s in rng.choice(500, n, replace=False):
            for _ in range(depth):
                seq[s] = seq.get(s, -1) + 1
                recs.append(
                    Record(f"s{s}", seq[s], rng.standard_normal(FEATURES).astype(np.float32))
                )
        engine.process(recs)
    assert engine.stats.scan_calls > 0 and engine.stats.wave_calls > 0
    assert engine.trace_count == traced
