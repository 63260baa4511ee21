"""Pure batching and flow-control logic of the Kafka runtime (no I/O, no clock of its own).

* :class:`Batcher` -- one FIFO of fetched items per partition; a batch is cut when
  ``max_batch`` items wait or the oldest item has waited ``max_delay_s``, whichever comes
  first, and takes a prefix of every partition's FIFO, sharing the batch evenly among them.
  Prefixes keep every partition's (and so every stream's) order.
* :class:`FlowControl` -- counts records between fetch and acknowledgement and says when to
  pause and resume the partitions (high/low water marks with hysteresis).

Both are used from the event loop only; they are plain objects so that tests drive them with
an explicit ``now``.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["Batcher", "FlowChange", "FlowControl", "Queued"]


class Queued(Protocol):
    """What the batcher needs of an item: its partition and when it arrived (monotonic s)."""

    @property
    def tp(self) -> Hashable: ...

    @property
    def arrived(self) -> float: ...


T = TypeVar("T", bound=Queued)


class Batcher(Generic[T]):
    """Per-partition FIFOs of items; see the module docstring.

    Args:
        max_batch: the most items in one batch (>= 1).
        max_delay_s: the longest the oldest item waits before a partial batch is due (>= 0).
    """

    def __init__(self, max_batch: int, max_delay_s: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._queues: dict[Hashable, deque[T]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, items: Iterable[T]) -> None:
        """Append items in arrival order (callers add one partition's records in offset
        order, so per-partition order is kept)."""
        queues = self._queues
        n = 0
        for item in items:
            q = queues.get(item.tp)
            if q is None:
                q = queues[item.tp] = deque()
            q.append(item)
            n += 1
        self._count += n

    def _oldest(self) -> float:
        return min(q[0].arrived for q in self._queues.values())

    def due(self, now: float) -> bool:
        """True when a batch should be cut now: a full batch is waiting, or the oldest item
        has waited at least ``max_delay_s``."""
        if not self._count:
            return False
        return self._count >= self.max_batch or now - self._oldest() >= self.max_delay_s

    def time_until_due(self, now: float) -> float | None:
        """Seconds until :meth:`due` becomes true without new items (0 if it already is),
        or ``None`` when empty (nothing will ever be due)."""
        if not self._count:
            return None
        if self._count >= self.max_batch:
            return 0.0
        return max(0.0, self._oldest() + self.max_delay_s - now)

    def take(self) -> list[T]:
        """Remove and return up to ``max_batch`` items (fewer if fewer are queued), whether
        or not a batch is due (the caller decides; a drain takes everything).

        Each partition gives a prefix of its queue (its order is kept) and the partitions
        share the batch evenly, oldest head first: ``n`` items over ``k`` partitions take
        about ``n / k`` from each, a partition with fewer gives all it has and the rest is
        shared again. Why not plain FIFO: a backlog is fetched a partition at a time, and a
        FIFO batch of one partition's records holds several consecutive records of each of
        its streams, which the engine must apply as several narrower steps (each padded to a
        bucket); even shares across partitions give the most distinct streams per batch."""
        remaining = min(self.max_batch, self._count)
        out: list[T] = []
        if not remaining:
            return out
        queues = self._queues
        order = sorted(queues, key=lambda tp: queues[tp][0].arrived)  # stable: oldest first
        while remaining:
            share = max(1, remaining // len(order))
            left: list[Hashable] = []
            for tp in order:
                q = queues[tp]
                k = min(share, len(q), remaining)
                out.extend([q.popleft() for _ in range(k)])
                remaining -= k
                if q:
                    left.append(tp)
                else:
                    del queues[tp]
                if not remaining:
                    break
            order = left
        self._count -= len(out)
        return out

    def drop(self, partitions: Collection[Hashable]) -> list[T]:
        """Remove and return every queued item of ``partitions`` (revoked partitions: their
        records will be fetched again by the new owner from the committed offset)."""
        dropped: list[T] = []
        for tp in partitions:
            q = self._queues.pop(tp, None)
            if q:
                dropped.extend(q)
        self._count -= len(dropped)
        return dropped


class FlowChange(enum.StrEnum):
    """A transition of :class:`FlowControl` (:meth:`FlowControl.decide`), which the fetch
    stage applies to the consumer. Running --PAUSE--> paused (at or above the high-water
    mark); paused --RESUME--> running (at or below the low-water mark); no other transition
    (``decide`` returns None in between: hysteresis)."""

    PAUSE = "pause"  #: pause every owned partition
    RESUME = "resume"  #: resume the owned partitions


@dataclass
class FlowControl:
    """High/low-water backpressure over the records in the pipeline.

    A record counts from the moment it is fetched until its output (or dead letter) is
    acknowledged by the broker, or until it is dropped (revoked partition). At ``high`` or
    more the caller pauses fetching; once paused, it resumes only at ``low`` or fewer
    (hysteresis, so the consumer does not flap around one threshold).
    """

    high: int
    low: int
    in_flight: int = 0
    paused: bool = False
    peak: int = 0  # the most records ever in flight (for the run summary and tests)

    def __post_init__(self) -> None:
        if self.high < 1 or not 0 <= self.low < max(self.high, 2):
            raise ValueError(f"need high >= 1 and 0 <= low < high, got {self.high}/{self.low}")

    def acquire(self, n: int) -> None:
        """``n`` records entered the pipeline."""
        self.in_flight += n
        self.peak = max(self.peak, self.in_flight)

    def release(self, n: int) -> None:
        """``n`` records left it (acknowledged or dropped)."""
        if n > self.in_flight:
            raise ValueError(f"releasing {n} records but only {self.in_flight} are in flight")
        self.in_flight -= n

    @property
    def headroom(self) -> int:
        """Records that may still be fetched before the high-water mark (>= 0); the fetch
        asks for at most this many so the bound is never overshot."""
        return max(0, self.high - self.in_flight)

    def decide(self) -> FlowChange | None:
        """The transition to apply now, if any, and record it (see :class:`FlowChange`):
        PAUSE when at or above the high-water mark and not paused, RESUME when paused and
        at or below the low-water mark, else None."""
        if not self.paused and self.in_flight >= self.high:
            self.paused = True
            return FlowChange.PAUSE
        if self.paused and self.in_flight <= self.low:
            self.paused = False
            return FlowChange.RESUME
        return None
