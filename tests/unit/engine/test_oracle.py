"""The correctness oracle: stepping each stream message by message through the real Engine and
StateCache gives the offline Keras model's outputs over the whole sequence.

The oracle is ``model(x, training=False)`` on whole sequences (``conftest.reference_outputs``);
for a model whose last recurrent layer has ``return_sequences=False`` the output for step
``t`` is the model over the prefix ``x[:, : t + 1]``. A fresh stream, a ``reset`` record, a
new life after ``end`` and a stream whose spilled state was dropped all start a new
*segment*: the expected outputs of a segment are the model over that segment alone.

Tolerance: ``rtol=1e-4, atol=1e-5`` for float32 state storage (the step and the offline model
do the same float32 arithmetic in different batch shapes); looser, stated tolerances for
float16/bfloat16 storage.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from processor.engine.engine import Engine
from processor.model import KerasStepModel, StepModel, load_step_model
from processor.records import Output, Record
from processor.state.cache import StateCache

import keras  # isort: skip
import tensorflow as tf  # isort: skip

RTOL = 1e-4
ATOL = 1e-5

MakeModel = Callable[..., Any]  # conftest.make_model -> conftest.RandomModel

# --------------------------------------------------------------------------------------------
# Helpers: scripted streams, interleaving, feeding the engine
# --------------------------------------------------------------------------------------------


@dataclass
class Script:
    """One stream's records in order, and where its fresh segments start.

    ``starts`` holds record indices at which the stream starts from its initial state: 0, a
    ``reset`` record, the record after an ``end``.
    """

    stream: str
    x: np.ndarray
    records: list[Record]
    starts: list[int] = field(default_factory=lambda: [0])

    def segments(self, extra_starts: Sequence[int] = ()) -> list[tuple[int, int]]:
        cuts = sorted({*self.starts, *extra_starts})
        ends = [*cuts[1:], len(self.records)]
        return list(zip(cuts, ends, strict=True))


def make_scripts(
    rm: Any,
    rng: np.random.Generator,
    n_streams: int,
    lengths: tuple[int, int],
    *,
    reset_p: float = 0.0,
    end_p: float = 0.0,
    prefix: str = "s",
) -> list[Script]:
    """Random streams of random lengths with gaps in ``seq``, optional resets and ends.

    A stream with an ``end`` in the middle continues with a new life whose ``seq`` restarts
    low (it would be a duplicate if the engine had not forgotten the stream). ``ts`` is set
    to a distinct value per record so its pass-through can be checked.
    """
    scripts = []
    for j in range(n_streams):
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        x = rm.inputs(n)
        stream = f"{prefix}{j}"
        records: list[Record] = []
        starts = [0]
        seq = int(rng.integers(0, 5))
        for i in range(n):
            reset = bool(i > 0 and i not in starts and rng.random() < reset_p)
            end = bool(rng.random() < end_p)
            if reset:
                starts.append(i)
            records.append(Record(stream, seq, x[i], ts=1000 * j + i, reset=reset, end=end))
            if end and i + 1 < n:
                starts.append(i + 1)
                seq = int(rng.integers(0, 3))
            else:
                seq += int(rng.integers(1, 4))
        scripts.append(Script(stream, x, records, sorted(set(starts))))
    return scripts


def interleave_lists(lists: Sequence[Sequence[Record]], rng: np.random.Generator) -> list[Record]:
    """All records shuffled across the lists, kept in order within each list."""
    owner = np.repeat(np.arange(len(lists)), [len(records) for records in lists])
    rng.shuffle(owner)
    pos = [0] * len(lists)
    out = []
    for i in owner.tolist():
        out.append(lists[i][pos[i]])
        pos[i] += 1
    return out


def interleave(scripts: Sequence[Script], rng: np.random.Generator) -> list[Record]:
    """All records of the scripts shuffled across streams, in order within each stream."""
    return interleave_lists([s.records for s in scripts], rng)


def chunked(records: Sequence[Record], rng: np.random.Generator, big: int) -> list[list[Record]]:
    """Random chunk sizes: mostly small (1..16), sometimes up to ``big`` (backlogs)."""
    chunks = []
    i = 0
    while i < len(records):
        n = int(rng.integers(1, 17)) if rng.random() < 0.6 else int(rng.integers(17, big + 1))
        chunks.append(list(records[i : i + n]))
        i += n
    return chunks


def make_engine(
    sm: StepModel,
    *,
    capacity: int = 128,
    max_batch: int = 16,
    scan_min_steps: int = 0,
    max_scan_steps: int = 4,
    storage_dtype: str = "float32",
    spill_capacity: int = 100_000,
    idle_timeout_s: float | None = None,
    clock: Callable[[], float] | None = None,
    jit_compile: bool = False,
) -> Engine:
    cache = StateCache(
        sm.state_spec,
        capacity,
        storage_dtype=storage_dtype,
        spill_capacity=spill_capacity,
        idle_timeout_s=idle_timeout_s,
        clock=clock if clock is not None else time.monotonic,
    )
    return Engine(
        sm,
        cache,
        max_batch=max_batch,
        scan_min_steps=scan_min_steps,
        max_scan_steps=max_scan_steps,
        jit_compile=jit_compile,
    )


def feed(
    engine: Engine,
    chunks: Sequence[Sequence[Record]],
    before_call: Callable[[Sequence[Record]], None] | None = None,
) -> tuple[dict[str, list[Output]], list[Record]]:
    """Feed ``chunks`` to ``engine.process``; outputs per stream (arrival order) and all
    stale records (duplicates and out-of-order ones). Checks the per-call contract: each
    record applied once or stale, a duplicate's seq equal to its stream's last applied seq
    and an out-of-order one below it."""
    got: dict[str, list[Output]] = defaultdict(list)
    stale: list[Record] = []
    for chunk in chunks:
        if before_call is not None:
            before_call(chunk)
        res = engine.process(chunk)
        assert len(res.outputs) + len(res.duplicates) + len(res.out_of_order) == len(chunk)
        for o in res.outputs:
            got[o.stream].append(o)
        for r, last in res.out_of_order:
            assert r.seq < last, (r, last)
        stale.extend(res.duplicates)
        stale.extend(r for r, _ in res.out_of_order)
    return got, stale


def expected_outputs(
    rm: Any,
    scripts: Sequence[Script],
    extra_starts: dict[str, list[int]] | None = None,
    reference: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Oracle outputs for every record of every script: the offline model over each fresh
    segment (all segments in one batched reference call)."""
    extra_starts = extra_starts or {}
    pieces: list[tuple[str, int, int]] = []
    for s in scripts:
        for a, b in s.segments(extra_starts.get(s.stream, ())):
            pieces.append((s.stream, a, b))
    by_stream = {s.stream: s for s in scripts}
    segs = [by_stream[st].x[a:b] for st, a, b in pieces]
    ref = (reference or rm.reference)(segs)
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for (st, _, _), y in zip(pieces, ref, strict=True):
        out[st].append(y)
    return {st: np.concatenate(ys) for st, ys in out.items()}


def assert_matches(
    scripts: Sequence[Script],
    got: dict[str, list[Output]],
    want: dict[str, np.ndarray],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    output_shape: tuple[int, ...] | None = None,
) -> None:
    """Every record of every script has exactly one output, in arrival order, equal to the
    oracle; ``ts`` passes through; outputs are float32 of the model's output shape."""
    assert set(got) <= {s.stream for s in scripts}
    for s in scripts:
        outs = got.get(s.stream, [])
        assert [o.seq for o in outs] == [r.seq for r in s.records], s.stream
        assert [o.ts for o in outs] == [r.ts for r in s.records], s.stream
        y = np.stack([o.y for o in outs])
        assert y.dtype == np.float32
        if output_shape is not None:
            assert y.shape[1:] == output_shape
        np.testing.assert_allclose(y, want[s.stream], rtol=rtol, atol=atol, err_msg=s.stream)


def max_backlog(chunks: Sequence[Sequence[Record]]) -> int:
    """The most records one stream has in one chunk."""
    most = 0
    for chunk in chunks:
        counts: dict[str, int] = defaultdict(int)
        for r in chunk:
            counts[r.stream] += 1
        most = max([most, *counts.values()])
    return most


def outputs_by_key(got: dict[str, list[Output]]) -> dict[tuple[str, int, int], np.ndarray]:
    """(stream, position in stream, seq) -> y, to compare two runs with each other."""
    return {(st, i, o.seq): o.y for st, outs in got.items() for i, o in enumerate(outs)}


def step_offline(sm: StepModel, x: np.ndarray) -> np.ndarray:
    """Step ``sm`` directly (no engine) over ``x`` ``[N, T, ...]`` from its initial state."""
    states = sm.initial_state(tf.constant(x[:, 0]))
    ys = []
    for t in range(x.shape[1]):
        y, states = sm.step(tf.constant(x[:, t]), states)
        ys.append(np.asarray(y))
    return np.stack(ys, axis=1)


# --------------------------------------------------------------------------------------------
# The StepModel alone (no engine) against the offline model
# --------------------------------------------------------------------------------------------

# A spread of architectures: 1-3 recurrent layers of each kind, with and without encoder and
# head, Sequential and functional, vectors and uint8 frames (12x12x1 and 16x16x3).
STEP_SPECS: list[dict[str, Any]] = [
    {"cells": ("lstm",)},
    {"cells": ("gru",), "last_sequences": False},
    {"cells": ("rnn",), "functional": True},
    {"cells": ("lstm", "lstm"), "encoder": "dense", "head": "dense", "functional": True},
    {"cells": ("gru", "gru"), "last_sequences": False, "head": "dense"},
    {"cells": ("lstm", "gru", "rnn"), "encoder": "dense", "head": "td_dense"},
    {"cells": ("rnn", "lstm", "gru"), "last_sequences": False, "functional": True},
    {"cells": ("lstm",), "encoder": "conv", "head": "td_dense"},
    {"cells": ("gru", "lstm"), "encoder": "conv", "frame": (16, 16, 3), "functional": True},
    {
        "cells": ("lstm", "rnn"),
        "encoder": "conv",
        "frame": (16, 16, 3),
        "last_sequences": False,
        "head": "dense",
    },
]


def _spec_id(spec: dict[str, Any]) -> str:
    parts = ["-".join(spec["cells"]), "last" if spec.get("last_sequences") is False else "seq"]
    for key in ("encoder", "head"):
        if spec.get(key):
            parts.append(f"{key}={spec[key]}")
    if "frame" in spec:
        parts.append("x".join(map(str, spec["frame"])))
    parts.append("fn" if spec.get("functional") else "sequential")
    return ",".join(parts)


@pytest.mark.parametrize("spec", STEP_SPECS, ids=_spec_id)
def test_step_model_loaded_from_file_matches_offline_model(
    spec: dict[str, Any], make_model: MakeModel, tmp_path: Any
) -> None:
    """The .keras file path (safe mode) gives a StepModel whose steps equal the model."""
    rm = make_model(**spec)
    sm = load_step_model(rm.save(tmp_path / "model.keras"))
    assert sm.input_shape == rm.input_shape
    assert sm.input_dtype == rm.input_dtype
    n_states = {"lstm": 2, "gru": 1, "rnn": 1}
    assert len(sm.state_spec) == sum(n_states[c] for c in spec["cells"])
    x = rm.inputs(5, 9)
    want = np.stack(rm.reference(list(x)))
    got = step_offline(sm, x)
    assert got.shape[2:] == sm.output_shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_oracle_detects_a_lost_state(make_model: MakeModel) -> None:
    """The tolerance has teeth: a step that forgets its state after every step (or a model
    run in training mode) is far outside it, so a real bug cannot pass unnoticed."""
    rm = make_model(cells=("lstm", "gru"), encoder="dense", head="dense")
    sm = KerasStepModel.from_model(rm.model)
    x = rm.inputs(4, 8)
    want = np.stack(rm.reference(list(x)))
    forgetful = np.stack(
        [step_offline(sm, x[:, t : t + 1])[:, 0] for t in range(x.shape[1])], axis=1
    )
    assert not np.allclose(forgetful[:, 1:], want[:, 1:], rtol=RTOL * 100, atol=ATOL * 100)
    np.testing.assert_allclose(forgetful[:, 0], want[:, 0], rtol=RTOL, atol=ATOL)
    training = np.asarray(rm.model(x, training=True))
    assert not np.allclose(training, want, rtol=RTOL * 100, atol=ATOL * 100)


def test_embedding_model_with_scalar_integer_steps(
    build_chain: Callable[..., Any], rng: np.random.Generator
) -> None:
    """A per-step input with no feature axis (token ids through an Embedding) steps too."""
    layers = [keras.layers.Embedding(20, 4), keras.layers.LSTM(5), keras.layers.Dense(2)]
    model = build_chain(layers, (), "int32")
    sm = KerasStepModel.from_model(model)
    assert sm.input_shape == ()
    assert sm.input_dtype == "int32"
    x = rng.integers(0, 20, (3, 7)).astype(np.int32)
    want = np.stack([np.asarray(model(x[:, : t + 1], training=False)) for t in range(7)], axis=1)
    np.testing.assert_allclose(step_offline(sm, x), want, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Through the engine: random interleavings, waves and scans
# --------------------------------------------------------------------------------------------

ENGINE_SPECS: list[dict[str, Any]] = [
    {"cells": ("lstm",)},
    {"cells": ("gru", "lstm"), "encoder": "dense", "last_sequences": False, "head": "dense"},
    {"cells": ("lstm", "gru", "rnn"), "functional": True, "head": "td_dense"},
    {"cells": ("lstm",), "encoder": "conv", "last_sequences": False, "head": "dense"},
]

# (scan_min_steps, max_scan_steps): waves only, then scans with backlogs longer than
# max_scan_steps (several scan calls per backlog, the last one partly padded).
ENGINE_MODES = [(0, 4), (2, 4), (3, 5), (4, 8)]
WARMED_UP_MODE = (2, 4)  # this engine is warmed up first: warm-up must not touch any stream


@pytest.mark.slow
@pytest.mark.parametrize("spec", ENGINE_SPECS, ids=_spec_id)
def test_engine_random_interleavings_match_offline_model(
    spec: dict[str, Any], make_model: MakeModel, rng: np.random.Generator, tmp_path: Any
) -> None:
    """40 streams of 1..20 records with resets, ends and new lives, shuffled across streams
    and fed in random chunks: waves and scans both equal the oracle and each other."""
    rm = make_model(**spec)
    sm = load_step_model(rm.save(tmp_path / "model.keras"))
    scripts = make_scripts(rm, rng, 40, (1, 20), reset_p=0.05, end_p=0.04)
    assert any(len(s.starts) > 1 for s in scripts)  # resets / new lives are exercised
    chunks = chunked(interleave(scripts, rng), rng, big=250)
    chunks.append([])  # an empty call is fine too
    want = expected_outputs(rm, scripts)
    runs = []
    for scan_min, scan_max in ENGINE_MODES:
        engine = make_engine(sm, scan_min_steps=scan_min, max_scan_steps=scan_max)
        if (scan_min, scan_max) == WARMED_UP_MODE:
            engine.warmup(scan=True)
        got, dups = feed(engine, chunks)
        assert dups == []
        assert_matches(scripts, got, want, output_shape=sm.output_shape)
        assert engine.stats.records_applied == sum(len(s.records) for s in scripts)
        if scan_min:
            assert engine.stats.scan_calls > 0
            assert max_backlog(chunks) > scan_max  # multi-call scans happened
        else:
            assert engine.stats.scan_calls == 0
        runs.append(outputs_by_key(got))
    # Waves and scans run different kernels, so they agree to float32 rounding, not to the
    # bit: up to 2.8e-6 apart on an AVX2-only CPU for the 3-layer stack below. Still ten
    # times tighter than the agreement with the offline model asserted above.
    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for key, y in runs[0].items():
            np.testing.assert_allclose(other[key], y, rtol=1e-5, atol=1e-5, err_msg=str(key))


def test_many_small_streams_single_records(make_model: MakeModel, rng: np.random.Generator) -> None:
    """60 streams, one record per call at a time (the live steady state): every output
    equals the oracle, streams never see each other's state."""
    rm = make_model(cells=("lstm", "lstm"), encoder="dense")
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 60, (1, 6))
    records = interleave(scripts, rng)
    engine = make_engine(sm, max_batch=64, scan_min_steps=2)
    got, _ = feed(engine, [[r] for r in records[:40]] + [records[40:]])
    assert_matches(scripts, got, expected_outputs(rm, scripts))


# --------------------------------------------------------------------------------------------
# Stream life cycle: reset, end, duplicates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan_min_steps", [0, 2])
def test_reset_mid_stream_equals_model_on_the_suffix(
    scan_min_steps: int, make_model: MakeModel
) -> None:
    """A reset at step k: outputs from k on are the model over ``x[k:]`` alone."""
    rm = make_model(cells=("lstm", "gru"), head="dense")
    sm = KerasStepModel.from_model(rm.model)
    x = rm.inputs(12)
    k = 5
    records = [Record("a", i, x[i], reset=(i == k)) for i in range(12)]
    engine = make_engine(sm, scan_min_steps=scan_min_steps)
    got, _ = feed(engine, [records[:3], records[3:]])  # the reset arrives inside a backlog
    y = np.stack([o.y for o in got["a"]])
    before, after = rm.reference([x[:k], x[k:]])
    np.testing.assert_allclose(y[:k], before, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(y[k:], after, rtol=RTOL, atol=ATOL)
    # And the reset really mattered: the un-reset model differs after k.
    (whole,) = rm.reference([x])
    assert not np.allclose(y[k:], whole[k:], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("scan_min_steps", [0, 3])
def test_end_then_same_stream_starts_a_new_life(scan_min_steps: int, make_model: MakeModel) -> None:
    """After ``end`` the stream is forgotten: the same id restarts from the initial state,
    and its ``seq`` may start over (below the old life's last seq)."""
    rm = make_model(cells=("gru",))
    sm = KerasStepModel.from_model(rm.model)
    x1, x2 = rm.inputs(6), rm.inputs(7)
    life1 = [Record("a", 10 + i, x1[i], end=(i == 5)) for i in range(6)]
    life2 = [Record("a", i, x2[i]) for i in range(7)]
    engine = make_engine(sm, scan_min_steps=scan_min_steps)
    got, dups = feed(engine, [life1[:2], life1[2:] + life2[:3], life2[3:]])
    assert dups == []
    y = np.stack([o.y for o in got["a"]])
    want1, want2 = rm.reference([x1, x2])
    np.testing.assert_allclose(y[:6], want1, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(y[6:], want2, rtol=RTOL, atol=ATOL)
    # An end as the last record of a call frees the stream entirely.
    engine.process([Record("b", 0, x1[0], end=True)])
    assert engine.cache.last_seq("b") == -1
    assert "b" not in engine.cache


@pytest.mark.parametrize("scan_min_steps", [0, 2])
def test_duplicates_are_skipped_and_do_not_change_outputs(
    scan_min_steps: int, make_model: MakeModel, rng: np.random.Generator
) -> None:
    """Records whose seq is not greater than the stream's last applied seq are returned as
    duplicates (equal seq) or out of order (lower seq) -- the same objects -- and never
    applied: replays right after the original
    (within a call), older seqs, and a redelivery of earlier records (as after a consumer
    restart) mixed into later calls. Each duplicate carries a different ``x``, so applying
    one would change that stream's later outputs."""
    rm = make_model(cells=("lstm",), encoder="dense", head="dense")
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 20, (4, 14))
    records = interleave(scripts, rng)
    split = len(records) // 2
    injected: list[Record] = []

    def duplicate_of(r: Record) -> Record:
        dup = Record(r.stream, r.seq, rm.inputs() + 1, ts=-1)
        injected.append(dup)
        return dup

    seen: dict[str, list[Record]] = defaultdict(list)
    phase1: list[Record] = []
    for r in records[:split]:
        phase1.append(r)
        seen[r.stream].append(r)
        if rng.random() < 0.2:
            phase1.append(duplicate_of(seen[r.stream][int(rng.integers(len(seen[r.stream])))]))
    # Redelivery: a random half of phase 1's records again, in their original order, mixed
    # into phase 2 (any position after phase 1 is after the originals).
    again = [duplicate_of(r) for r in records[:split] if rng.random() < 0.5]
    phase2 = list(records[split:])
    for k, dup in enumerate(again):
        phase2.insert(int(rng.integers(0, len(phase2) + 1)) if k else 0, dup)
    assert len(injected) > 30
    engine = make_engine(sm, scan_min_steps=scan_min_steps)
    chunks = chunked(phase1, rng, big=80) + chunked(phase2, rng, big=80)
    got, dups = feed(engine, chunks)
    assert {id(d) for d in dups} == {id(d) for d in injected}
    assert len(dups) == len(injected)
    assert engine.stats.duplicates + engine.stats.out_of_order == len(injected)
    assert engine.stats.duplicates > 0 and engine.stats.out_of_order > 0
    assert engine.stats.records_applied == len(records)
    assert_matches(scripts, got, expected_outputs(rm, scripts))


# --------------------------------------------------------------------------------------------
# Cache pressure: eviction and spill
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scan_min_steps", [0, 2])
def test_cache_smaller_than_stream_count_gives_the_same_results(
    scan_min_steps: int, make_model: MakeModel, rng: np.random.Generator
) -> None:
    """48 streams through a 16-slot cache: LRU evictions spill states to the host and
    returning streams are restored; the outputs do not change."""
    rm = make_model(cells=("lstm", "gru"), encoder="dense", head="dense", functional=True)
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 48, (2, 14), reset_p=0.05, end_p=0.03)
    chunks = chunked(interleave(scripts, rng), rng, big=80)
    engine = make_engine(sm, capacity=16, max_batch=8, scan_min_steps=scan_min_steps)
    got, _ = feed(engine, chunks)
    stats = engine.cache.stats
    assert stats.evicted_lru > 0
    assert stats.restored_from_spill > 0
    assert stats.state_lost == 0
    assert_matches(scripts, got, expected_outputs(rm, scripts))


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("scan_min_steps", [0, 2])
def test_idle_eviction_and_return_give_the_same_results(
    scan_min_steps: int, make_model: MakeModel, rng: np.random.Generator
) -> None:
    """Streams idle for longer than the timeout are spilled after a call and restored when
    they come back; their outputs do not change."""
    rm = make_model(cells=("gru", "lstm"), head="dense")
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 30, (2, 12), reset_p=0.05)
    clock = FakeClock()
    engine = make_engine(sm, idle_timeout_s=5.0, clock=clock, scan_min_steps=scan_min_steps)
    got: dict[str, list[Output]] = defaultdict(list)
    for chunk in chunked(interleave(scripts, rng), rng, big=40):
        clock.now += float(rng.uniform(0.0, 4.0))
        for o in engine.process(chunk).outputs:
            got[o.stream].append(o)
    assert engine.cache.stats.evicted_idle > 0
    assert engine.cache.stats.restored_from_spill > 0
    assert_matches(scripts, got, expected_outputs(rm, scripts))


@pytest.mark.parametrize("storage_dtype", ["float32", "bfloat16"])
def test_states_handed_over_to_another_engine_continue_exactly(
    storage_dtype: str, make_model: MakeModel, rng: np.random.Generator
) -> None:
    """Snapshot every stream's state from one engine midway, restore it into a fresh
    engine (as when a partition moves to another process), continue there: the states
    arrive bit-exact, and the outputs are those of one uninterrupted run (and the oracle)."""
    rm = make_model(cells=("lstm", "gru"), encoder="dense", head="dense")
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 25, (4, 14), reset_p=0.05, end_p=0.03)
    records = interleave(scripts, rng)
    half = len(records) // 2
    first = make_engine(sm, capacity=16, max_batch=8, storage_dtype=storage_dtype)
    got, _ = feed(first, chunked(records[:half], rng, big=40))
    streams = sorted({r.stream for r in records[:half]})
    moved = first.cache.snapshot(streams)
    # Every stream seen and not ended is there (also those spilled out of the 16 slots).
    last: dict[str, Record] = {}
    for r in records[:half]:
        last[r.stream] = r
    alive = {st: r.seq for st, r in last.items() if not r.end}
    assert {st: state.seq for st, state in moved.items()} == alive
    second = make_engine(
        sm, capacity=16, max_batch=8, scan_min_steps=2, storage_dtype=storage_dtype
    )
    second.cache.load(moved)
    arrived = second.cache.snapshot(list(moved))
    for stream, state in moved.items():
        assert arrived[stream].seq == state.seq
        for a, b in zip(arrived[stream].arrays, state.arrays, strict=True):
            np.testing.assert_array_equal(a, b)
    more, _ = feed(second, chunked(records[half:], rng, big=40))
    for stream, outs in more.items():
        got[stream].extend(outs)
    # The same run without the hand-over, for comparison at the storage precision.
    whole, _ = feed(
        make_engine(sm, capacity=16, max_batch=8, storage_dtype=storage_dtype),
        chunked(records, rng, big=40),
    )
    tol = 1e-5 if storage_dtype == "float32" else STORAGE_TOLERANCE[storage_dtype]
    if storage_dtype == "float32":
        assert_matches(scripts, got, expected_outputs(rm, scripts))
    for s in scripts:
        np.testing.assert_allclose(
            np.stack([o.y for o in got[s.stream]]),
            np.stack([o.y for o in whole[s.stream]]),
            rtol=tol,
            atol=tol,
            err_msg=s.stream,
        )


@pytest.mark.slow
def test_xla_compiled_engine_matches_offline_model(
    make_model: MakeModel, rng: np.random.Generator
) -> None:
    """``jit_compile=True`` (XLA) gives the oracle's outputs on waves and scans."""
    rm = make_model(cells=("lstm", "gru"), encoder="dense", head="dense")
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 16, (1, 10), reset_p=0.05, end_p=0.05)
    engine = make_engine(
        sm, capacity=16, max_batch=8, scan_min_steps=3, max_scan_steps=4, jit_compile=True
    )
    got, _ = feed(engine, chunked(interleave(scripts, rng), rng, big=60))
    assert engine.stats.scan_calls > 0 and engine.stats.wave_calls > 0
    assert_matches(scripts, got, expected_outputs(rm, scripts))


def chunked_distinct(
    records: Sequence[Record], rng: np.random.Generator, max_streams: int
) -> list[list[Record]]:
    """Random chunks of at most ``max_streams`` distinct streams each."""
    chunks: list[list[Record]] = []
    i = 0
    while i < len(records):
        limit = int(rng.integers(1, max_streams + 1))
        chunk: list[Record] = []
        streams: set[str] = set()
        while i < len(records) and (records[i].stream in streams or len(streams) < limit):
            streams.add(records[i].stream)
            chunk.append(records[i])
            i += 1
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("scan_min_steps", [0, 3])
def test_host_table_too_small_moves_states_to_disk_and_none_is_lost(
    scan_min_steps: int, make_model: MakeModel, rng: np.random.Generator
) -> None:
    """30 streams, 8 device slots, room for 4 states in the host table: older states move on
    to the disk store and come back from it; no stream restarts, so every output is the
    model over the stream's whole script."""
    rm = make_model(cells=("lstm",), encoder="dense", head="dense")
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 30, (3, 15), end_p=0.03)
    chunks = chunked_distinct(interleave(scripts, rng), rng, max_streams=8)
    engine = make_engine(
        sm, capacity=8, max_batch=8, spill_capacity=4, scan_min_steps=scan_min_steps
    )
    try:
        got, _ = feed(engine, chunks)
        stats = engine.cache.stats
        assert stats.spilled_to_disk > 0 and stats.disk_reads > 0  # the disk tier was used
        assert stats.state_lost == 0
        assert engine.cache.host_count <= 4
        assert_matches(scripts, got, expected_outputs(rm, scripts))
    finally:
        engine.cache.close()


# --------------------------------------------------------------------------------------------
# Reduced-precision state storage
# --------------------------------------------------------------------------------------------

# Each step rounds the stored state to the storage dtype (unit roundoff 2**-11 for float16,
# 2**-8 for bfloat16) and the error is carried forward through the recurrence; over 16 steps
# of these models it stays well inside these bounds (measured: about a fifth of them).
STORAGE_TOLERANCE = {"float16": 5e-3, "bfloat16": 4e-2}


@pytest.mark.parametrize("storage_dtype", sorted(STORAGE_TOLERANCE))
def test_reduced_precision_storage_stays_close_to_the_oracle(
    storage_dtype: str, make_model: MakeModel, rng: np.random.Generator
) -> None:
    tol = STORAGE_TOLERANCE[storage_dtype]
    rm = make_model(cells=("lstm", "gru"), encoder="dense")
    sm = KerasStepModel.from_model(rm.model)
    scripts = make_scripts(rm, rng, 24, (8, 16), reset_p=0.05)
    chunks = chunked(interleave(scripts, rng), rng, big=60)
    want = expected_outputs(rm, scripts)
    for scan_min in (0, 2):
        engine = make_engine(sm, storage_dtype=storage_dtype, scan_min_steps=scan_min)
        got, _ = feed(engine, chunks)
        assert_matches(scripts, got, want, rtol=tol, atol=tol)
        # The states really were stored rounded: float32 results would match to 1e-5.
        err = max(
            np.abs(np.stack([o.y for o in got[s.stream]]) - want[s.stream]).max() for s in scripts
        )
        assert err > ATOL


# --------------------------------------------------------------------------------------------
# Initial states from an init model
# --------------------------------------------------------------------------------------------


def _init_model(rm: Any, sm: StepModel, rng: np.random.Generator) -> Any:
    """Maps x_0 (``[B, *input_shape]``) to one tensor per state, in state_spec order."""
    inp = keras.Input(rm.input_shape)
    h = keras.layers.Dense(8, activation="tanh")(inp)
    outs = [keras.layers.Dense(spec.shape[0], activation="tanh")(h) for spec in sm.state_spec]
    model = keras.Model(inp, outs if len(outs) > 1 else outs[0])
    for w in model.weights:
        w.assign(rng.normal(0.0, 1.0, tuple(w.shape)).astype("float32"))
    return model


def _with_initial_state(model: Any, init_model: Any) -> Any:
    """The offline reference with an init model: a functional model that runs clones of
    ``model``'s layers (same weights) with ``initial_state=`` given by ``init_model`` on the
    sequence's first input."""
    inp = keras.Input(model.input_shape[1:], dtype=model.inputs[0].dtype)
    states = init_model(inp[:, 0])
    states = list(states) if isinstance(states, list | tuple) else [states]
    h = inp
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        clone = type(layer).from_config(layer.get_config())
        if isinstance(layer, keras.layers.LSTM | keras.layers.GRU | keras.layers.SimpleRNN):
            n = 2 if isinstance(layer, keras.layers.LSTM) else 1
            h = clone(h, initial_state=states[:n])
            states = states[n:]
        else:
            h = clone(h)
        pairs.append((layer, clone))
    assert states == []
    ref = keras.Model(inp, h)
    for layer, clone in pairs:
        clone.set_weights(layer.get_weights())
    return ref


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        {"cells": ("lstm", "gru"), "encoder": "dense", "head": "dense"},
        {"cells": ("gru",), "last_sequences": False, "head": "dense", "functional": True},
    ],
    ids=_spec_id,
)
def test_init_model_matches_keras_model_run_with_initial_state(
    spec: dict[str, Any],
    make_model: MakeModel,
    oracle: Callable[..., list[np.ndarray]],
    rng: np.random.Generator,
    tmp_path: Any,
) -> None:
    """``--init-model``: a fresh stream (new, reset, new life) starts from
    ``init_model(x_first)``; equal to the Keras layers run with that ``initial_state``."""
    rm = make_model(**spec)
    plain = KerasStepModel.from_model(rm.model)
    init = _init_model(rm, plain, rng)
    init_path = tmp_path / "init.keras"
    init.save(init_path)
    sm = load_step_model(rm.save(tmp_path / "model.keras"), init_model=str(init_path))
    assert sm.has_init_model
    assert sm.identity != load_step_model(tmp_path / "model.keras").identity
    ref_model = _with_initial_state(rm.model, init)

    def reference(segs: list[np.ndarray]) -> list[np.ndarray]:
        return oracle(lambda x: ref_model(x, training=False), segs, rm.sequences)

    scripts = make_scripts(rm, rng, 30, (1, 14), reset_p=0.08, end_p=0.05)
    want = expected_outputs(rm, scripts, reference=reference)
    # The init model matters: zero initial states give other outputs.
    zero_want = expected_outputs(rm, scripts)
    assert not all(np.allclose(want[s], zero_want[s], atol=1e-3) for s in want)
    chunks = chunked(interleave(scripts, rng), rng, big=120)
    for scan_min in (0, 2):
        engine = make_engine(sm, scan_min_steps=scan_min)
        got, _ = feed(engine, chunks)
        assert_matches(scripts, got, want)


# --------------------------------------------------------------------------------------------
# A SavedModel exporting its own step
# --------------------------------------------------------------------------------------------


def _stepwise_reference(module: Any) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Reference for a step module: its Python step function run directly, segment by
    segment (batched, zero-padded at the end), from ``init_fn(x_0)`` or zeros."""

    def reference(segs: list[np.ndarray]) -> list[np.ndarray]:
        t_max = max(len(s) for s in segs)
        x = np.zeros((len(segs), t_max, *segs[0].shape[1:]), np.float32)
        for i, seg in enumerate(segs):
            x[i, : len(seg)] = seg
        if module.init is not None:
            init = module.init_fn(tf.constant(x[:, 0]))
            states = [init["state_0"], init["state_1"]]
        else:
            states = [tf.zeros((len(segs), module.units))] * 2
        ys = []
        for t in range(t_max):
            out = module.step_fn(tf.constant(x[:, t]), *states)
            states = [out["state_0"], out["state_1"]]
            ys.append(np.asarray(out["y"]))
        y = np.stack(ys, axis=1)
        return [y[i, : len(seg)] for i, seg in enumerate(segs)]

    return reference


@pytest.mark.parametrize("with_init", [False, True], ids=["zeros", "initial_state"])
def test_saved_model_through_engine_matches_the_cell_run_directly(
    with_init: bool, lstm_step_module: Callable[..., Any], rng: np.random.Generator, tmp_path: Any
) -> None:
    """A SavedModel with a ``step`` (and ``initial_state``) signature, served through the
    engine with interleaved streams, resets and new lives, equals its LSTMCell run directly."""
    module = lstm_step_module(with_init=with_init)
    sm = load_step_model(module.export(tmp_path / "saved"))
    assert sm.has_init_model is with_init
    source = SimpleNamespace(
        inputs=lambda *lead: rng.normal(0.0, 1.0, (*lead, 4)).astype(np.float32)
    )
    scripts = make_scripts(source, rng, 30, (1, 14), reset_p=0.08, end_p=0.05)
    want = expected_outputs(source, scripts, reference=_stepwise_reference(module))
    chunks = chunked(interleave(scripts, rng), rng, big=100)
    for scan_min in (0, 3):
        engine = make_engine(sm, scan_min_steps=scan_min)
        got, _ = feed(engine, chunks)
        assert_matches(scripts, got, want, output_shape=(3,))


# --------------------------------------------------------------------------------------------
# Retracing
# --------------------------------------------------------------------------------------------


def _random_batches(
    rm: Any, rng: np.random.Generator, n_batches: int, n_streams: int, max_depth: int
) -> list[list[Record]]:
    """Batches of 1..n_streams streams from a pool of 3*n_streams, 1..max_depth records
    each (so both waves and scans of every length occur), some resets and ends."""
    seq: dict[str, int] = defaultdict(int)
    batches = []
    for _ in range(n_batches):
        k = int(rng.integers(1, n_streams + 1))
        chosen = rng.choice(3 * n_streams, k, replace=False)
        per_stream = []
        for j in chosen.tolist():
            stream = f"p{j}"
            records = []
            for _ in range(int(rng.integers(1, max_depth + 1))):
                seq[stream] += 1
                records.append(
                    Record(
                        stream,
                        seq[stream],
                        rm.inputs(),
                        reset=bool(rng.random() < 0.05),
                        end=bool(rng.random() < 0.02),
                    )
                )
            per_stream.append(records)
        batches.append(interleave_lists(per_stream, rng))
    return batches


@pytest.mark.parametrize("with_init", [False, True], ids=["zeros", "init_model"])
def test_no_retracing_after_warmup(
    with_init: bool, make_model: MakeModel, rng: np.random.Generator
) -> None:
    """After ``warmup(scan=True)`` no batch size, backlog depth or mix of fresh rows traces
    the compiled functions again."""
    rm = make_model(cells=("lstm",), head="dense")
    plain = KerasStepModel.from_model(rm.model)
    init = _init_model(rm, plain, rng) if with_init else None
    sm = KerasStepModel.from_model(rm.model, init)
    engine = make_engine(sm, capacity=64, max_batch=32, scan_min_steps=2, max_scan_steps=4)
    engine.warmup(scan=True)
    warm = engine.trace_count
    assert warm > 0
    sizes = set()
    for batch in _random_batches(rm, rng, 30, 40, 7):
        engine.process(batch)
        sizes.update(engine.stats.batch_sizes)
    assert engine.trace_count == warm
    assert engine.stats.scan_calls > 0 and engine.stats.wave_calls > 0
    assert max(sizes) > 16 and min(sizes) < 8  # every wave bucket (8, 16, 32) was used


def test_trace_count_stops_growing_without_warmup(
    make_model: MakeModel, rng: np.random.Generator
) -> None:
    """Without warm-up, traces happen only while new buckets are first seen: once every
    bucket has been used, many more batches of varying sizes trace nothing."""
    rm = make_model(cells=("gru", "lstm"), encoder="dense")
    sm = KerasStepModel.from_model(rm.model)
    engine = make_engine(sm, capacity=64, max_batch=32, scan_min_steps=3, max_scan_steps=4)
    for batch in _random_batches(rm, rng, 25, 40, 6):
        engine.process(batch)
    seen = engine.trace_count
    # At most one trace per wave bucket and per (scan length, bucket) pair.
    assert 0 < seen <= len(engine.buckets) * (1 + len(engine.scan_buckets))
    for batch in _random_batches(rm, rng, 25, 40, 6):
        engine.process(batch)
    assert engine.trace_count == seen
