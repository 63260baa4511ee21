"""The restore read: state-topic partitions read from the beginning up to a fixed end
(consumer I/O).

When the processor is assigned an input partition, the states of its streams are read back
from the same partition of the state topic before its input records are processed (what
:mod:`processor.kafka.durable.recovery` makes of them is its own business).
:func:`restore_partitions` does the reading with a group-less consumer (its kwargs come from
:func:`restore_consumer_kwargs`) and hands the records to a caller's ``apply`` callback.

**The end rule.** Each partition is read up to its end offset taken *once* at the start
(for a ``read_committed`` consumer, the last stable offset: nothing of an open transaction),
and records at or after that end are never applied. A partition is done when the consumer's
position reaches the end, or when the position sits at ``end - 1`` and nothing more comes:
a ``read_committed`` position can stay one below the end after a trailing transaction
marker. No specific offset is ever waited for, since transaction markers, aborted records
and compaction all leave gaps in the offsets. A partition whose position stops moving for
``stall_timeout_s`` seconds raises :class:`RestoreError` instead of hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from processor.errors import LstmStreamError

__all__ = [
    "RESTORE_FETCH_MAX_WAIT_MS",
    "RestoreError",
    "RestoreStats",
    "restore_consumer_kwargs",
    "restore_partitions",
]

#: Upper bound of the restore consumer's ``fetch_max_wait_ms``: the broker holds a fetch of
#: partitions without new data this long, and a partition's last record must arrive well
#: within one poll of :func:`restore_partitions` (``poll_timeout_ms``, 1 s by default).
RESTORE_FETCH_MAX_WAIT_MS: Final = 500

# Consumer keywords that only make sense for a group member (or that the restore consumer
# sets itself): dropped by restore_consumer_kwargs. Deserializers are dropped because apply
# receives the raw bytes of keys and values.
_GROUP_ONLY: Final = frozenset(
    {
        "group_id",
        "group_instance_id",
        "enable_auto_commit",
        "auto_commit_interval_ms",
        "partition_assignment_strategy",
        "rebalance_timeout_ms",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_poll_interval_ms",
        "listener",
        "rebalance_listener",
        "isolation_level",
        "auto_offset_reset",
        "key_deserializer",
        "value_deserializer",
    }
)

Apply = Callable[[TopicPartition, list[ConsumerRecord[Any, Any]]], Awaitable[None]]


class RestoreError(LstmStreamError):
    """A state partition cannot be read to its end (it stopped making progress); the
    message names the partition, its position and its end offset."""


@dataclass
class RestoreStats:
    """What :func:`restore_partitions` read from one partition.

    ``records`` counts the records applied, tombstones included; ``tombstones`` those
    without a value; ``bytes`` their keys' and values' bytes; ``end_offset`` the end taken at
    the start; ``seconds`` the time from the start of the restore read until this partition was
    done (or until it returned); ``complete`` is False when ``stop`` ended the restore read before
    this partition was done.
    """

    records: int
    tombstones: int
    bytes: int
    end_offset: int
    seconds: float
    complete: bool = False


def restore_consumer_kwargs(consumer_kw: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of a group-less restore consumer, from the group consumer's
    (:func:`processor.kafka.io.clients.client_kwargs`).

    Keeps the bootstrap servers, security (``security_protocol``, ``ssl_context``,
    ``sasl_*``), client id, timeouts and fetch sizes; drops every group-only keyword (group
    membership, rebalance, session, heartbeat, partition assignment, listener, auto-commit)
    and the deserializers; sets ``group_id=None``, ``enable_auto_commit=False``,
    ``isolation_level="read_committed"``, ``auto_offset_reset="earliest"``, and caps
    ``fetch_max_wait_ms`` at :data:`RESTORE_FETCH_MAX_WAIT_MS`. Pure; the input is not
    modified.
    """
    out = {key: value for key, value in consumer_kw.items() if key not in _GROUP_ONLY}
    wait = out.get("fetch_max_wait_ms", RESTORE_FETCH_MAX_WAIT_MS)
    out.update(
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=min(int(wait), RESTORE_FETCH_MAX_WAIT_MS),
    )
    return out


@dataclass
class _Progress:
    """A partition not done yet: its last seen position, when it last moved, and since when
    it has been at ``end - 1`` (None: below that). Times are ``clock()`` values."""

    position: int
    moved_at: float
    at_tail_since: float | None = None


async def restore_partitions(
    consumer: AIOKafkaConsumer,
    partitions: Collection[TopicPartition],
    apply: Apply,
    *,
    max_records: int = 2000,
    stop: asyncio.Event | None = None,
    stall_timeout_s: float = 60.0,
    poll_timeout_ms: int = 1000,
    clock: Callable[[], float] = time.monotonic,
) -> dict[TopicPartition, RestoreStats]:
    """Read ``partitions`` (state-topic partitions) from the beginning to their end offsets
    and pass their records to ``apply``.

    ``consumer`` is started, group-less and ``read_committed``
    (:func:`restore_consumer_kwargs`); it is assigned exactly ``partitions`` (replacing any
    assignment), and is left with all of them paused when this returns or raises: nothing
    more is fetched. Stop the consumer afterwards without unassigning it first (aiokafka
    0.14's ``stop()`` hangs after ``unsubscribe()`` on a group-less consumer). ``apply(tp,
    records)`` receives each partition's records in offset order, at most ``max_records``
    per call, only those below the end taken at the start (see the module doc for the end
    rule); tombstones have ``value`` None. ``apply`` is awaited before the next poll, and an
    exception from it propagates.

    Returns the stats of every partition. When ``stop`` is set, the restore read returns after
    the current poll (within ``poll_timeout_ms``) with ``complete`` False for the partitions
    not done; it does not raise. Raises :class:`RestoreError` when a partition's position
    does not move for ``stall_timeout_s`` seconds, and the consumer's errors as they are.
    ``clock`` (seconds, monotonic) is injectable for tests.
    """
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    tps = list(dict.fromkeys(partitions))
    if not tps:
        return {}
    started = clock()
    tail_s = poll_timeout_ms / 1000
    stats: dict[TopicPartition, RestoreStats] = {}
    consumer.assign(tps)
    try:
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        pending: dict[TopicPartition, _Progress] = {}
        done: list[TopicPartition] = []
        for tp in tps:
            stats[tp] = RestoreStats(0, 0, 0, ends[tp], 0.0)
            position = await consumer.position(tp)
            if position >= ends[tp]:
                done.append(tp)  # empty (or nothing below the end)
            else:
                now = clock()
                pending[tp] = _Progress(position, now, now if position >= ends[tp] - 1 else None)
        _finish(consumer, stats, done, clock() - started)
        while pending:
            if stop is not None and stop.is_set():
                break
            batch = await consumer.getmany(
                *pending, timeout_ms=poll_timeout_ms, max_records=max_records
            )
            done = []
            for tp, progress in pending.items():
                end = ends[tp]
                records = batch.get(tp) or []
                below = [r for r in records if r.offset < end]
                if below:
                    await apply(tp, below)
                    _count(stats[tp], below)
                position = await consumer.position(tp)
                now = clock()
                if position != progress.position:
                    progress.position, progress.moved_at = position, now
                    progress.at_tail_since = now if position >= end - 1 else None
                if position >= end:
                    done.append(tp)
                    continue
                # Possibly stuck below a trailing transaction marker: done once a whole poll
                # period passed at end - 1 without a record.
                since = progress.at_tail_since
                if since is not None and not records and now - since >= tail_s:
                    done.append(tp)
                    continue
                if now - progress.moved_at >= stall_timeout_s:
                    raise RestoreError(
                        f"restoring state partition {tp.topic}[{tp.partition}] made no "
                        f"progress for {now - progress.moved_at:.0f} s: position {position}, "
                        f"end offset {end}"
                    )
            for tp in done:
                del pending[tp]
            _finish(consumer, stats, done, clock() - started)
        elapsed = clock() - started
        for tp in pending:
            stats[tp].seconds = elapsed
        return stats
    finally:
        consumer.pause(*tps)


def _count(stats: RestoreStats, records: list[ConsumerRecord[Any, Any]]) -> None:
    for record in records:
        stats.records += 1
        if record.value is None:
            stats.tombstones += 1
        else:
            stats.bytes += len(record.value)
        if record.key is not None:
            stats.bytes += len(record.key)


def _finish(
    consumer: AIOKafkaConsumer,
    stats: Mapping[TopicPartition, RestoreStats],
    done: list[TopicPartition],
    elapsed: float,
) -> None:
    """Mark ``done`` complete and pause them: the consumer stops fetching records beyond
    their end."""
    if not done:
        return
    for tp in done:
        stats[tp].complete = True
        stats[tp].seconds = elapsed
    consumer.pause(*done)
