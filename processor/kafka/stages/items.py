"""The runtime's own typed values for a record and a batch on their way through the Kafka
stages (fetch -> batcher -> dispatch -> emit -> ack). Plain data, no I/O."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from processor.engine.pipeline import Stepped
from processor.kafka.checkpoint.barrier import Armed
from processor.kafka.checkpoint.ledger import Ticket
from processor.records import Record

__all__ = ["BadInput", "Batch", "Emitted", "Item"]


@dataclass(slots=True)
class BadInput:
    """A record that goes to the dead-letter topic: why, and what to carry there."""

    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int | None


@dataclass(slots=True)
class Item:
    """One fetched record: where it came from and either its decoded record or why it is
    bad (exactly one of ``record`` and ``bad`` is set)."""

    tp: TopicPartition
    offset: int
    arrived: float  # monotonic seconds, for the batcher's deadline
    event_ms: int | None  # ts field, else the Kafka timestamp (for end-to-end latency)
    record: Record | None
    bad: BadInput | None = None
    # Applied before the checkpoint its stream's state was recovered from: not stepped again.
    redelivered: bool = False


@dataclass(slots=True)
class Batch:
    """A batch cut from the batcher: its items, its ledger ticket and the engine's future
    (None when the batch holds no good record); ``barrier``: a checkpoint barrier armed
    right behind it, finished once it is emitted (exactly-once)."""

    items: list[Item]
    good: list[Item]
    ticket: Ticket
    future: asyncio.Future[Stepped] | None
    barrier: Armed | None = None


@dataclass(slots=True)
class Emitted:
    """A batch whose outputs and dead letters were handed to the producer: the send
    futures to await before its ticket completes, and what to count once they are
    acknowledged."""

    ticket: Ticket
    futures: list[asyncio.Future[Any]]
    outputs: int
    reasons: list[str]
    event_ms: list[int]
