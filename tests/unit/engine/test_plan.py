"""The engine's planning step, without TensorFlow: grouping by stream, per-stream order,
duplicates and out-of-order records, ``reset``/``end``, waves vs scan."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from processor.engine.plan import StepPlan, group_streams, plan_group
from processor.records import Record

X = np.zeros(1, np.float32)


def rec(stream: str, seq: int, *, reset: bool = False, end: bool = False) -> Record:
    return Record(stream, seq, X, reset=reset, end=end)


def plan_one(
    records: Sequence[Record],
    last: Mapping[str, int] | None = None,
    *,
    scan_min_steps: int = 0,
    max_scan_steps: int = 64,
) -> StepPlan:
    """Plan ``records`` as one group; a stream in ``last`` has that last applied seq and a
    state, any other is new (no state, last seq -1)."""
    last = last or {}
    [group] = group_streams(records, max_batch=1024)
    return plan_group(
        group,
        [last.get(s, -1) for s in group.streams],
        [s not in last for s in group.streams],
        scan_min_steps=scan_min_steps,
        max_scan_steps=max_scan_steps,
    )


def seqs(records: Sequence[Record]) -> list[tuple[str, int]]:
    return [(r.stream, r.seq) for r in records]


def test_group_streams_keeps_first_arrival_and_per_stream_order() -> None:
    records = [rec("b", 1), rec("a", 5), rec("b", 0), rec("c", 2), rec("a", 6)]
    [group] = group_streams(records, max_batch=8)
    assert list(group.streams) == ["b", "a", "c"]
    assert [[r.seq for r in recs] for recs in group.records] == [[1, 0], [5, 6], [2]]
    # The caller's objects, not copies.
    assert group.records[0][0] is records[0]


def test_group_streams_splits_at_max_batch_streams() -> None:
    records = [rec(f"s{i % 5}", i // 5) for i in range(15)]
    groups = group_streams(records, max_batch=2)
    assert [list(g.streams) for g in groups] == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    assert all(len(recs) == 3 for g in groups for recs in g.records)
    assert group_streams([], max_batch=2) == []


def test_steady_state_one_record_per_stream_is_one_wave() -> None:
    plan = plan_one([rec("a", 3), rec("b", 0), rec("c", 9, reset=True)], {"a": 2, "c": 8})
    assert list(plan.rows) == [0, 1, 2]
    assert plan.applied == 3 and list(plan.last_seqs) == [3, 0, 9]
    [wave] = plan.waves
    assert list(wave.rows) == [0, 1, 2]
    assert seqs(wave.records) == [("a", 3), ("b", 0), ("c", 9)]
    # b is new, c resets; a carries on from its state.
    assert list(wave.fresh) == [False, True, True]
    assert plan.scans == () and plan.duplicates == [] and plan.out_of_order == []
    assert plan.ended == [] and plan.restarted == 0


def test_interleaved_streams_go_through_waves_in_order() -> None:
    records = [rec("a", 0), rec("b", 0), rec("a", 1), rec("c", 0), rec("a", 2), rec("b", 1)]
    plan = plan_one(records)
    assert [[r.seq for r in recs] for recs in plan.records] == [[0, 1, 2], [0, 1], [0]]
    assert [seqs(w.records) for w in plan.waves] == [
        [("a", 0), ("b", 0), ("c", 0)],
        [("a", 1), ("b", 1)],
        [("a", 2)],
    ]
    assert [list(w.rows) for w in plan.waves] == [[0, 1, 2], [0, 1], [0]]
    # Only each new stream's first record starts from the initial state.
    assert [list(w.fresh) for w in plan.waves] == [[True, True, True], [False, False], [False]]


def test_equal_seq_is_a_duplicate_and_lower_is_out_of_order() -> None:
    late = rec("a", 1)
    dup = rec("a", 3)
    plan = plan_one([dup, late, rec("a", 4), rec("b", 7), rec("c", 2)], {"a": 3, "b": 7, "c": 5})
    assert seqs(plan.records[0]) == [("a", 4)]
    assert list(plan.rows) == [0]  # b and c have nothing to apply
    assert plan.duplicates[0] is dup
    assert seqs(plan.duplicates) == [("a", 3), ("b", 7)]
    assert [(r.stream, r.seq, last) for r, last in plan.out_of_order] == [
        ("a", 1, 3),
        ("c", 2, 5),
    ]
    assert plan.out_of_order[0][0] is late
    assert plan.applied == 1 and list(plan.last_seqs) == [4]


def test_the_last_applied_seq_moves_within_the_batch() -> None:
    plan = plan_one(
        [rec("a", 4), rec("a", 5), rec("a", 2), rec("a", 5), rec("a", 6), rec("a", 4)], {"a": 3}
    )
    assert seqs(plan.records[0]) == [("a", 4), ("a", 5), ("a", 6)]
    assert seqs(plan.duplicates) == [("a", 5)]
    assert [(r.seq, last) for r, last in plan.out_of_order] == [(2, 5), (4, 6)]


def test_everything_stale_plans_nothing_to_run() -> None:
    plan = plan_one([rec("a", 1), rec("b", 0), rec("b", 0)], {"a": 1, "b": 0})
    assert plan.rows == () and plan.waves == () and plan.scans == () and plan.applied == 0
    assert seqs(plan.duplicates) == [("a", 1), ("b", 0), ("b", 0)]


def test_reset_starts_from_the_initial_state_mid_stream() -> None:
    plan = plan_one([rec("a", 1), rec("a", 2, reset=True), rec("a", 3)], {"a": 0})
    assert [list(w.fresh) for w in plan.waves] == [[False], [True], [False]]


def test_end_releases_the_stream_and_a_new_life_may_follow_in_the_batch() -> None:
    ends = plan_one([rec("a", 1), rec("a", 2, end=True), rec("b", 0, end=True)], {"a": 0})
    assert list(ends.ended) == ["a", "b"] and ends.restarted == 0
    again = plan_one(
        [
            rec("a", 7),
            rec("a", 8, end=True),
            rec("a", 2),  # a new life: any seq
            rec("a", 2),  # a duplicate within the new life
            rec("a", 1),  # below the new life's last seq
            rec("a", 3),
        ],
        {"a": 6},
    )
    assert seqs(again.records[0]) == [("a", 7), ("a", 8), ("a", 2), ("a", 3)]
    assert [list(w.fresh) for w in again.waves] == [[False], [False], [True], [False]]
    assert seqs(again.duplicates) == [("a", 2)]
    assert [(r.seq, last) for r, last in again.out_of_order] == [(1, 2)]
    # The new life carries on in the slot: nothing to release, one life ended.
    assert again.ended == [] and again.restarted == 1
    assert list(again.last_seqs) == [3]


@pytest.mark.parametrize(
    ("scan_min_steps", "scanned", "waved"),
    [
        (0, [], ["a", "b", "c"]),
        (3, ["a", "b"], ["c"]),
        (4, ["a"], ["b", "c"]),
        (6, [], ["a", "b", "c"]),
    ],
)
def test_streams_with_scan_min_steps_records_go_through_the_scan(
    scan_min_steps: int, scanned: list[str], waved: list[str]
) -> None:
    records = [rec("a", t) for t in range(5)] + [rec("b", t) for t in range(3)] + [rec("c", 0)]
    plan = plan_one(records, scan_min_steps=scan_min_steps)
    streams = ["a", "b", "c"]
    in_scans = {streams[plan.rows[j]] for chunk in plan.scans for j in chunk.rows}
    in_waves = {streams[plan.rows[j]] for wave in plan.waves for j in wave.rows}
    assert sorted(in_scans) == scanned and sorted(in_waves) == waved
    # Every applied record is stepped exactly once, by a wave or a scan chunk.
    stepped = [r for w in plan.waves for r in w.records]
    stepped += [r for chunk in plan.scans for recs in chunk.records for r in recs]
    assert sorted(seqs(stepped)) == sorted(seqs(records))


def test_a_backlog_longer_than_max_scan_steps_takes_several_chunks() -> None:
    records = [rec("a", t) for t in range(10)] + [rec("b", t, reset=t == 5) for t in range(6)]
    plan = plan_one(records, {"a": -1, "b": -1}, scan_min_steps=2, max_scan_steps=4)
    assert plan.waves == ()
    assert [chunk.steps for chunk in plan.scans] == [4, 4, 2]
    assert [list(chunk.rows) for chunk in plan.scans] == [[0, 1], [0, 1], [0]]
    assert [[[r.seq for r in recs] for recs in chunk.records] for chunk in plan.scans] == [
        [[0, 1, 2, 3], [0, 1, 2, 3]],
        [[4, 5, 6, 7], [4, 5]],
        [[8, 9]],
    ]
    assert [list(map(list, chunk.fresh)) for chunk in plan.scans] == [
        [[False] * 4, [False] * 4],
        [[False] * 4, [False, True]],
        [[False, False]],
    ]


def test_the_planner_imports_no_tensorflow_transport_or_state() -> None:
    code = (
        "import sys, processor.engine.plan; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'asyncio', 'aiokafka') "
        "or m.startswith(('processor.state', 'processor.kafka', 'processor.model'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
