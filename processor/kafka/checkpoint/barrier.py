"""A checkpoint's barrier and the requests that wait for it: plain data, shared by the
dispatcher (which places exactly-once barriers between two emissions) and the checkpoint
cycle (which takes and finishes them)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field

from processor.engine.sources import Changes

__all__ = ["Armed", "Barrier", "Request"]


@dataclass(eq=False)
class Barrier:
    """A point of the dispatch order: the last ticket ``seq`` opened before it, the
    dispatched offsets then, and the changed streams' states as they were after batch
    ``seq`` (taken on the engine thread, in submission order)."""

    seq: int
    offsets: dict[Hashable, int]
    changes: asyncio.Future[Changes]


@dataclass(eq=False)
class Request:
    """A caller waiting for a checkpoint: the partitions it is revoking (committed too)
    and the future its result goes to."""

    partitions: Collection[Hashable]
    answer: asyncio.Future[bool]


@dataclass(eq=False)
class Armed:
    """A barrier placed right behind a submitted batch and the requests it answers."""

    barrier: Barrier
    requests: list[Request] = field(default_factory=list)
