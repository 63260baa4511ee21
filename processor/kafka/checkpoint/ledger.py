"""Offset bookkeeping for at-least-once commits (pure logic, no I/O).

Every batch cut from the batcher gets a :class:`Ticket` *before* it is computed, in dispatch
order. The ticket records, per partition, the offset after the last record of the batch.
When all the batch's sends (outputs and dead letters) are acknowledged, the ticket is
completed; :meth:`OffsetLedger.committable` then offers, per partition, the offset after the
last record of the longest prefix of completed tickets -- never beyond a record whose output
is not yet acknowledged. Batches take a prefix of each partition's queue, so tickets cover
each partition's offsets in increasing, contiguous order.

The ledger is the commit path's only input, in both processing guarantees: exactly-once
commits the same barrier offsets inside each partition's transaction
(``docs/architecture.md``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["OffsetLedger", "Ticket"]


@dataclass(eq=False)
class Ticket:
    """One dispatched batch: ``seq`` (dispatch order), ``next_offsets`` (partition -> offset
    after its last record in the batch), ``count`` (records) and ``done``. Offsets and
    counts only: what the runtime must await or count travels in its own
    :class:`processor.kafka.stages.items.Emitted`."""

    seq: int
    next_offsets: dict[Hashable, int]
    count: int
    done: bool = False


class OffsetLedger:
    """See the module docstring."""

    def __init__(self) -> None:
        self._open: deque[Ticket] = deque()
        self._seq = 0
        self._completed_seq = 0  # every ticket with seq <= this is complete
        self._acked: dict[Hashable, int] = {}  # partition -> acknowledged next offset
        self._committed: dict[Hashable, int] = {}  # partition -> last committed offset
        self._dispatched: dict[Hashable, int] = {}  # partition -> next offset after its
        # last record in any ticket opened so far (acknowledged or not)
        # partition -> seq of the last ticket opened before it was forgotten: offsets of
        # those older tickets must never be acknowledged for it again (it may have moved
        # to another member and come back with a higher committed offset).
        self._fence: dict[Hashable, int] = {}

    @property
    def last_seq(self) -> int:
        """Seq of the last ticket opened (0 before the first)."""
        return self._seq

    @property
    def completed_seq(self) -> int:
        """Every ticket with a seq up to this one is complete."""
        return self._completed_seq

    @property
    def open_count(self) -> int:
        """Tickets opened but not yet retired."""
        return len(self._open)

    def open(self, items: Iterable[Any]) -> Ticket:
        """A ticket for a batch of items (each with ``tp`` and ``offset``), in dispatch order."""
        next_offsets: dict[Hashable, int] = {}
        count = 0
        for item in items:
            count += 1
            nxt = item.offset + 1
            if nxt > next_offsets.get(item.tp, -1):
                next_offsets[item.tp] = nxt
        self._seq += 1
        dispatched = self._dispatched
        for tp, nxt in next_offsets.items():
            if nxt > dispatched.get(tp, -1):
                dispatched[tp] = nxt
        ticket = Ticket(self._seq, next_offsets, count)
        self._open.append(ticket)
        return ticket

    def complete(self, ticket: Ticket) -> None:
        """Mark a ticket's sends acknowledged and retire the completed prefix."""
        ticket.done = True
        while self._open and self._open[0].done:
            head = self._open.popleft()
            self._completed_seq = head.seq
            for tp, nxt in head.next_offsets.items():
                if head.seq <= self._fence.get(tp, 0):
                    continue
                if nxt > self._acked.get(tp, -1):
                    self._acked[tp] = nxt

    def dispatched(self) -> dict[Hashable, int]:
        """Per partition, the offset after its last record in any ticket opened so far: with
        :attr:`last_seq`, what a checkpoint barrier taken now covers (a copy)."""
        return dict(self._dispatched)

    def fenced_since(self, tp: Hashable, seq: int) -> bool:
        """``tp`` was forgotten after ticket ``seq`` was opened: offsets observed at that
        barrier must not be committed for it (it may belong to another member now)."""
        return self._fence.get(tp, 0) >= seq

    def committed(self, tp: Hashable) -> int | None:
        """The last offset committed for ``tp`` by this member (None: none since it was
        assigned)."""
        return self._committed.get(tp)

    def acked(self, tp: Hashable) -> int | None:
        """The acknowledged next offset of a partition, if any record of it was acked."""
        return self._acked.get(tp)

    def committable(self, partitions: Collection[Hashable] | None = None) -> dict[Hashable, int]:
        """Acknowledged offsets not yet committed, optionally only for ``partitions``."""
        return {
            tp: off
            for tp, off in self._acked.items()
            if (partitions is None or tp in partitions) and self._committed.get(tp) != off
        }

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        """Record a successful commit of ``offsets``."""
        for tp, off in offsets.items():
            if off > self._committed.get(tp, -1):
                self._committed[tp] = off

    def forget(self, partitions: Collection[Hashable]) -> None:
        """Drop the bookkeeping of partitions no longer owned (after their final commit, or
        when newly assigned). Tickets opened before this call never count for them again,
        so a late acknowledgement cannot move a partition's offset backwards after it
        moved away and came back."""
        for tp in partitions:
            self._acked.pop(tp, None)
            self._committed.pop(tp, None)
            self._dispatched.pop(tp, None)
            self._fence[tp] = self._seq
