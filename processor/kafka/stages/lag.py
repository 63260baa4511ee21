"""The consumer-lag gauge of every owned partition: its high watermark minus the next offset
to acknowledge, refreshed after every periodic checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from aiokafka import TopicPartition

from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.stages.fetch import Fetcher
from processor.obs.metrics import Metrics

__all__ = ["POSITION_TIMEOUT_S", "LagGauge"]

# Longest the lag refresh waits for the consumer's position of one partition: it is known at
# once for a partition being fetched; only one being reset or revoked right now can make it
# wait, and its gauge then keeps the acknowledged offset until the next tick.
POSITION_TIMEOUT_S = 0.5


class PositionedConsumer(Protocol):
    """What the gauge needs of ``AIOKafkaConsumer``."""

    def highwater(self, tp: TopicPartition) -> int | None: ...

    async def position(self, tp: TopicPartition) -> int: ...


class LagGauge:
    """Sets and removes the ``consumer_lag`` gauge's partitions.

    Args:
        consumer: high watermarks and positions.
        owned: the partitions whose lag is shown (this member owns them now).
        ledger: acknowledged offsets.
        fetcher: where fetching started and got to per partition.
        metrics: the gauge.
    """

    def __init__(
        self,
        consumer: PositionedConsumer,
        owned: Callable[[], Collection[TopicPartition]],
        ledger: OffsetLedger,
        fetcher: Fetcher,
        metrics: Metrics,
    ) -> None:
        self._consumer = consumer
        self._owned = owned
        self._ledger = ledger
        self._fetcher = fetcher
        self._gauge = metrics.consumer_lag

    async def refresh(self) -> None:
        """Set the lag gauge of every owned partition: its high watermark minus the next
        offset to acknowledge (before any acknowledgement: the first offset fetched).

        Once every record fetched from a partition is acknowledged, the consumer's position
        is used when it is further on: the offsets between hold no record to process, such
        as the commit markers of a transactional producer, which take an offset each but
        are never handed out. Without that an idle partition written transactionally would
        show a lag of one forever."""
        for tp in list(self._owned()):
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            position = self._ledger.acked(tp)
            if position is None:
                position = self._fetcher.first_offset(tp)
            if position is None:
                continue
            if position == self._fetcher.fetched_to(tp):
                position = max(position, await self._position(tp, position))
            self._gauge.labels(tp.topic, str(tp.partition)).set(max(0, high - position))

    def remove(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop the gauges of partitions this member stopped owning."""
        for tp in partitions:
            with contextlib.suppress(KeyError):
                self._gauge.remove(tp.topic, str(tp.partition))

    async def _position(self, tp: TopicPartition, fallback: int) -> int:
        """The consumer's next fetch offset of ``tp``, or ``fallback`` when it has none at
        once (a partition being revoked or reset right now: the next tick tells)."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the commit
        # loop's cancellation when the position arrives at the same moment (it runs the
        # coroutine as a task of its own), and the loop would then outlive close(). Awaited
        # directly, a known position returns without suspending at all.
        try:
            async with asyncio.timeout(POSITION_TIMEOUT_S):
                return int(await self._consumer.position(tp))
        except Exception:  # a gauge refresh must never fail the commit loop
            return fallback
