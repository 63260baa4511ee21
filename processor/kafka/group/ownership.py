"""Which partitions this member owns, and which of its cached states are still valid.

aiokafka's group protocol is eager: every rebalance revokes *all* partitions and then
assigns the new set, often mostly the same partitions. Forgetting every stream's state on
each rebalance would restart all streams whenever a member joins, so the runtime keeps the
state of a partition that was revoked *cleanly* (its processed offsets committed, nothing of
it in flight) and comes straight back in the next assignment: nobody else can have processed
it in between. Every other partition's streams are forgotten and, when there is a state
topic, recovered from it. Meanwhile the partition is *held back*: assigned but not owned,
its records kept out of the pipeline, until it is *released*.

Pure logic, used from the event loop only.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Ownership"]

K = TypeVar("K", bound=Hashable)


@dataclass
class Ownership(Generic[K]):
    """Owned partitions, those held back (assigned, their ownership still being settled),
    and those revoked cleanly (with the offset committed at their revocation) and not yet
    reassigned."""

    owned: set[K] = field(default_factory=set)
    held: set[K] = field(default_factory=set)
    clean: dict[K, int | None] = field(default_factory=dict)
    assignments: int = 0

    def owns(self, tp: K) -> bool:
        """Records of ``tp`` may enter the pipeline (checked when they are fetched): it is
        assigned and not held back."""
        return tp in self.owned and tp not in self.held

    def revoke(self, partitions: Collection[K]) -> None:
        """Stop owning ``partitions`` now (their fetched records are dropped from here on)."""
        self.owned.difference_update(partitions)
        self.held.difference_update(partitions)

    def mark_clean(self, offsets: Mapping[K, int | None]) -> None:
        """The partitions' processed offsets were committed (``offsets[tp]``: the offset
        committed, None if this member never committed one) after their in-flight work
        finished: their cached states are exactly at those offsets."""
        self.clean.update(offsets)

    def assign(self, partitions: Collection[K]) -> dict[K, int | None]:
        """Own ``partitions``; returns those whose cached states may be kept (cleanly
        revoked and back) with the offsets committed at their revocation: a caller that can
        read the group's committed offsets keeps only those still equal (an offset commit
        can succeed after this member was evicted from the group, and another member may
        have processed the partition meanwhile). Cleanliness is consumed: it holds for one
        rebalance only."""
        keep = {tp: off for tp, off in self.clean.items() if tp in partitions}
        self.owned = set(partitions)
        self.held = set()
        self.clean = {}
        self.assignments += 1
        return keep

    def hold_back(self, partitions: Collection[K]) -> None:
        """Hold ``partitions`` (assigned ones) back: not owned until :meth:`release` (their
        cached streams are being kept or recovered, their positions set)."""
        self.held.update(tp for tp in partitions if tp in self.owned)

    def release(self, partitions: Collection[K]) -> None:
        """``partitions`` are settled: their records may enter the pipeline."""
        self.held.difference_update(partitions)
