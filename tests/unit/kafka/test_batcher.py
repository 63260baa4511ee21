"""Pure logic of the Kafka runtime: batching, backpressure, offset ledger, ownership, and
how the fetch shares a fetch among partitions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.group.ownership import Ownership
from processor.kafka.stages.batcher import Batcher, FlowChange, FlowControl


@dataclass
class It:
    tp: str
    offset: int
    arrived: float


def items(tp: str, offsets: range, arrived: float = 0.0) -> list[It]:
    return [It(tp, o, arrived) for o in offsets]


# ---- Batcher ------------------------------------------------------------------------------


def test_batch_is_due_when_full_or_when_the_oldest_waited_max_delay() -> None:
    b: Batcher[It] = Batcher(max_batch=4, max_delay_s=0.010)
    assert not b.due(100.0) and b.time_until_due(100.0) is None
    b.add(items("a", range(2), arrived=100.0))
    assert not b.due(100.005)
    assert b.time_until_due(100.004) == pytest.approx(0.006)
    assert b.due(100.010)  # deadline reached with a partial batch
    b.add(items("b", range(2), arrived=100.006))
    assert b.due(100.006)  # full before the deadline
    assert b.time_until_due(100.006) == 0.0


def test_take_shares_the_batch_across_partitions_and_keeps_each_partition_in_order() -> None:
    b: Batcher[It] = Batcher(max_batch=6, max_delay_s=0.0)
    b.add(items("a", range(0, 8), arrived=1.0))
    b.add(items("b", range(10, 12), arrived=2.0))
    b.add(items("c", range(20, 25), arrived=3.0))
    # 6 over 3 partitions: 2 each, oldest partition first.
    assert [(i.tp, i.offset) for i in b.take()] == [
        ("a", 0), ("a", 1), ("b", 10), ("b", 11), ("c", 20), ("c", 21),
    ]  # fmt: skip
    # b is empty now: a and c share the next batch.
    assert [(i.tp, i.offset) for i in b.take()] == [
        ("a", 2), ("a", 3), ("a", 4), ("c", 22), ("c", 23), ("c", 24),
    ]  # fmt: skip
    assert [(i.tp, i.offset) for i in b.take()] == [("a", 5), ("a", 6), ("a", 7)]
    assert b.take() == [] and len(b) == 0


def test_a_partition_with_fewer_items_than_its_share_leaves_the_rest_to_the_others() -> None:
    b: Batcher[It] = Batcher(max_batch=5, max_delay_s=0.0)
    b.add(items("a", range(10)))
    b.add(items("b", range(1)))
    batch = b.take()
    assert len(batch) == 5  # still a full batch
    assert [i.offset for i in batch if i.tp == "a"] == [0, 1, 2, 3]  # a prefix, in order
    assert [i.offset for i in batch if i.tp == "b"] == [0]
    assert len(b) == 6


def test_more_partitions_than_max_batch_serves_the_oldest_first() -> None:
    """Every partition gets a turn: the batch takes the partitions whose head waited
    longest, so a partial batch cut at the deadline always holds the oldest item."""
    b: Batcher[It] = Batcher(max_batch=2, max_delay_s=0.010)
    for n, tp in enumerate("wxyz"):
        b.add(items(tp, range(1), arrived=10.0 - n))  # z is the oldest, w the newest
    assert b.due(10.0)  # full
    assert [i.tp for i in b.take()] == ["z", "y"]
    assert [i.tp for i in b.take()] == ["x", "w"]


def test_the_deadline_follows_the_oldest_head_of_any_partition() -> None:
    b: Batcher[It] = Batcher(max_batch=100, max_delay_s=0.010)
    b.add(items("a", range(2), arrived=5.000))
    b.add(items("b", range(2), arrived=4.995))  # fetched later, but older
    assert b.time_until_due(5.0) == pytest.approx(0.005)
    b.drop({"b"})
    assert b.time_until_due(5.0) == pytest.approx(0.010)
    assert len(b) == 2


def test_drop_removes_only_revoked_partitions_and_keeps_order() -> None:
    b: Batcher[It] = Batcher(max_batch=100, max_delay_s=1.0)
    b.add(items("a", range(3)))
    b.add(items("b", range(3)))
    b.add(items("a", range(3, 5)))
    dropped = b.drop({"a"})
    assert [i.offset for i in dropped] == [0, 1, 2, 3, 4]
    assert [(i.tp, i.offset) for i in b.take()] == [("b", 0), ("b", 1), ("b", 2)]
    assert b.drop({"a"}) == []


def test_batcher_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        Batcher(0, 0.0)
    with pytest.raises(ValueError):
        Batcher(1, -1.0)


# ---- FlowControl --------------------------------------------------------------------------


def test_flow_control_pauses_at_high_and_resumes_at_low_with_hysteresis() -> None:
    f = FlowControl(high=10, low=4)
    f.acquire(9)
    assert f.decide() is None and f.headroom == 1
    f.acquire(1)
    assert f.decide() is FlowChange.PAUSE and f.paused and f.headroom == 0
    assert f.decide() is None  # decided once
    f.release(5)  # 5 in flight: below high but above low -> still paused
    assert f.decide() is None and f.paused
    f.release(1)
    assert f.decide() is FlowChange.RESUME and not f.paused
    assert f.decide() is None


def test_flow_control_never_releases_more_than_in_flight() -> None:
    f = FlowControl(high=4, low=1)
    f.acquire(2)
    with pytest.raises(ValueError):
        f.release(3)
    with pytest.raises(ValueError):
        FlowControl(high=4, low=4)


# ---- OffsetLedger -------------------------------------------------------------------------


def test_ledger_commits_only_the_acknowledged_prefix() -> None:
    ledger = OffsetLedger()
    t1 = ledger.open(items("a", range(0, 3)) + items("b", range(0, 2)))
    t2 = ledger.open(items("a", range(3, 5)))
    t3 = ledger.open(items("b", range(2, 4)))
    assert (t1.count, t2.count, t3.count) == (5, 2, 2)
    assert ledger.committable() == {}
    ledger.complete(t2)  # out of order: nothing is safe yet (t1 still open)
    assert ledger.committable() == {} and ledger.completed_seq == 0
    ledger.complete(t1)  # t1 and t2 retire together
    assert ledger.committable() == {"a": 5, "b": 2}
    assert ledger.completed_seq == 2 and ledger.open_count == 1
    ledger.mark_committed({"a": 5, "b": 2})
    assert ledger.committable() == {}
    ledger.complete(t3)
    assert ledger.committable() == {"b": 4}
    assert ledger.committable(partitions={"a"}) == {}


def test_ledger_forget_fences_late_acknowledgements() -> None:
    """A ticket opened before a partition was forgotten must not move its offset later
    (the partition may have moved away and come back with a higher committed offset)."""
    ledger = OffsetLedger()
    old = ledger.open(items("a", range(0, 10)))
    ledger.forget({"a"})
    ledger.complete(old)
    assert ledger.committable() == {}
    new = ledger.open(items("a", range(50, 52)))
    ledger.complete(new)
    assert ledger.committable() == {"a": 52}


# ---- Ownership ----------------------------------------------------------------------------


def test_ownership_keeps_state_only_for_cleanly_revoked_partitions_that_come_back() -> None:
    own: Ownership[str] = Ownership()
    assert own.assign({"p0", "p1", "p2"}) == {}  # first assignment: nothing to keep
    own.revoke({"p0", "p1", "p2"})
    assert not own.owns("p0")
    own.mark_clean({"p0": 40, "p1": None})  # p2's final commit failed
    keep = own.assign({"p0", "p2", "p3"})
    assert keep == {"p0": 40}  # p1 moved away, p2 was unclean, p3 is new
    assert own.owns("p3") and not own.owns("p1")
    own.revoke({"p0", "p2", "p3"})
    assert own.assign({"p0"}) == {}  # cleanliness holds for one rebalance only


def test_a_partition_held_back_is_assigned_but_not_owned() -> None:
    own: Ownership[str] = Ownership()
    own.assign({"p0", "p1"})
    own.hold_back({"p1", "p9"})  # p9 is not assigned: ignored
    assert own.owns("p0") and not own.owns("p1") and not own.owns("p9")
    own.release({"p1"})
    assert own.owns("p1")
    own.hold_back({"p0"})
    own.revoke({"p0"})  # revoked while held back
    own.assign({"p0"})
    assert own.owns("p0")
