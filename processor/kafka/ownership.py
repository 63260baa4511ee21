"""Which partitions this member owns, and which of its cached states are still valid.

aiokafka's group protocol is eager: every rebalance revokes *all* partitions and then
assigns the new set, often mostly the same partitions. Forgetting every stream's state on
each rebalance would restart all streams whenever a member joins, so the runtime keeps the
state of a partition that was revoked *cleanly* (its processed offsets committed, nothing of
it in flight) and comes straight back in the next assignment: nobody else can have processed
it in between. Every other partition's streams start clean.

Pure logic, used from the event loop only.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Ownership"]

K = TypeVar("K", bound=Hashable)


@dataclass
class Ownership(Generic[K]):
    """Owned partitions, plus those revoked cleanly and not yet reassigned."""

    owned: set[K] = field(default_factory=set)
    clean: set[K] = field(default_factory=set)
    assignments: int = 0

    def owns(self, tp: K) -> bool:
        """Records of ``tp`` may enter the pipeline (checked when they are fetched)."""
        return tp in self.owned

    def revoke(self, partitions: Collection[K]) -> None:
        """Stop owning ``partitions`` now (their fetched records are dropped from here on)."""
        self.owned.difference_update(partitions)

    def mark_clean(self, partitions: Collection[K]) -> None:
        """The partitions' processed offsets were committed after their in-flight work
        finished: their cached states are exactly at the committed offsets."""
        self.clean.update(partitions)

    def assign(self, partitions: Collection[K]) -> set[K]:
        """Own ``partitions``; returns those whose cached states may be kept (cleanly
        revoked and back). Cleanliness is consumed: it holds for one rebalance only."""
        keep = self.clean & set(partitions)
        self.owned = set(partitions)
        self.clean = set()
        self.assignments += 1
        return keep
