"""Exactly-once: one transactional producer per owned input partition.

aiokafka's transactional offset commit (``send_offsets_to_transaction``) carries no group
generation or member id, so the broker cannot fence a member that was evicted from the group
and carries on (a *zombie*: paused past its session timeout, then resumed). Fencing comes
from the transactional id instead, one per input partition: ``<group>-<topic>-<partition>``
(:func:`transactional_id`). Whoever owns a partition starts its producer; starting it bumps
the id's epoch, which aborts the previous owner's open transaction (or lets one already
committing finish) and makes every later request of the previous owner fail as fenced.

Per partition and commit interval, one transaction holds the partition's outputs and dead
letters (sent by the emit stage through :meth:`PartitionProducers.sink`), the state records
of its streams changed in the interval, and its consumed offsets
(:meth:`PartitionProducers.end`). A read_committed reader sees all of them or none.

aiokafka facts this module is built around:

* a send that fails inside a transaction fails only its own future (the transaction does
  not become abortable by itself), so every send is awaited before the commit and any
  failure aborts;
* ``commit_transaction``/``abort_transaction`` wait without a timeout, so each runs under
  :func:`asyncio.wait_for`; a producer whose call timed out is discarded (the next start of
  its transactional id ends whatever it left open);
* calls on one transactional producer must not interleave (its sender races otherwise), so
  each partition's producer has a lock held by every transactional call;
* a fenced producer's transaction state is fatal: it cannot even abort; it is discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedVersionError,
)

from processor.errors import ConfigError, LstmStreamError
from processor.kafka.io.output import DeadLetterWriter, OutputWriter
from processor.obs.metrics import Metrics

__all__ = [
    "FENCED",
    "PartitionProducer",
    "PartitionProducers",
    "TransactionError",
    "TxnResult",
    "transactional_id",
]

log = logging.getLogger(__name__)

#: Errors meaning "another producer with this transactional id started after this one".
FENCED: Final = (ProducerFenced, InvalidProducerEpoch)
#: Failures that redoing the interval cannot fix: the processor stops with an error.
_PERMANENT: Final = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    AuthenticationFailedError,
    InvalidTopicError,
    UnsupportedVersionError,
)
#: Longest wait for a producer to stop when it is discarded (its unsent batches are dropped:
#: their transaction is aborted by the next start of the id).
_STOP_TIMEOUT_S: Final = 5.0


class TxnResult(enum.StrEnum):
    """How :meth:`PartitionProducers.end` ended a partition's interval.

    A partition's producer goes: started --(sends)--> open transaction --end--> COMMITTED
    (the producer stays live, the next send begins the next transaction); with nothing
    open, nothing to write and no offset, --end--> IDLE (nothing happens). An open
    transaction whose send or commit failed --end--> ABORTED (aborted, the producer
    discarded); one whose end did not finish within the timeout --end--> TIMEOUT (the
    producer discarded, the next start of its id aborts it); one whose producer was fenced
    --end--> FENCED (the producer discarded: another start of its id took over). After
    ABORTED, TIMEOUT or FENCED the partition is *lost*: its uncommitted work is dropped and
    the group decides who recovers it. The values are the ``result`` label of the
    transactions metric (:data:`processor.obs.metrics.TRANSACTION_RESULTS`; IDLE is never
    counted)."""

    # In the metric's label order.
    COMMITTED = "committed"
    ABORTED = "aborted"
    FENCED = "fenced"
    TIMEOUT = "timeout"
    IDLE = "idle"

    @property
    def kept(self) -> bool:
        """The partition's producer and work go on (committed or idle)."""
        return self in (TxnResult.COMMITTED, TxnResult.IDLE)

    @classmethod
    def counted(cls) -> tuple[str, ...]:
        """The label values of the transactions metric: every result but IDLE."""
        return tuple(r.value for r in cls if r is not cls.IDLE)


class TransactionError(LstmStreamError):
    """A partition's transactional producer cannot be started (the broker refused its
    transactional id, or did not answer in time)."""


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    """The transactional id of input partition ``tp`` in consumer group ``group_id``: the same
    on every member, so the partition's next owner fences its previous one."""
    return f"{group_id}-{tp.topic}-{tp.partition}"


@dataclass(eq=False)
class PartitionProducer:
    """One input partition's transactional producer and its writers (output topic, dead
    letters, the partition's state topic).

    ``failure`` is the first error of the open transaction (a send that failed): the
    transaction can only be aborted. ``lock`` serialises the producer's transactional calls.
    """

    tp: TopicPartition
    producer: AIOKafkaProducer
    outputs: OutputWriter
    dead_letters: DeadLetterWriter
    states: OutputWriter
    open: bool = False
    failure: BaseException | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def begin(self) -> None:
        """Begin a transaction unless one is open (the first send of an interval)."""
        if not self.open:
            await self.producer.begin_transaction()
            self.open = True

    def track(self, futures: Iterable[asyncio.Future[Any]]) -> list[asyncio.Future[Any]]:
        """Futures that resolve when the given sends end, successfully or not: a failed send
        is recorded in :attr:`failure` (the transaction will be aborted at its end) instead
        of failing the processor."""
        return [asyncio.ensure_future(self._watch(f)) for f in futures]

    async def _watch(self, fut: asyncio.Future[Any]) -> None:
        try:
            await fut
        except KafkaError as exc:
            if self.failure is None:
                self.failure = exc


class PartitionProducers:
    """The transactional producers of the owned input partitions (see the module docstring).

    Args:
        producer_kw: the processor's producer keywords (``transactional_id`` and
            ``transaction_timeout_ms`` are added per partition).
        group_id: the consumer group (transactional ids and offset commits).
        output_topic, dlq_topic, dlq_max_value_bytes: where outputs and dead letters go.
        state_topics: input topic -> its state topic.
        transaction_timeout_ms: the broker aborts a transaction left open this long.
        timeout_s: longest wait for one step of a transaction's end (the state records'
            acknowledgements, the offsets, the commit, an abort) and for a producer's start.
        metrics: transactions by result, their duration, producers active, state records.
        factory: makes a producer from keyword arguments (in-process fakes in tests).
    """

    def __init__(
        self,
        producer_kw: Mapping[str, Any],
        *,
        group_id: str,
        output_topic: str,
        dlq_topic: str,
        dlq_max_value_bytes: int,
        state_topics: Mapping[str, str],
        transaction_timeout_ms: int,
        timeout_s: float,
        metrics: Metrics,
        factory: Callable[..., AIOKafkaProducer] = AIOKafkaProducer,
    ) -> None:
        self._kw = dict(producer_kw)
        self._factory = factory
        self._group = group_id
        self._output_topic = output_topic
        self._dlq_topic = dlq_topic
        self._dlq_max = dlq_max_value_bytes
        self._state_topics = dict(state_topics)
        self._txn_timeout_ms = transaction_timeout_ms
        self.timeout_s = timeout_s
        self._metrics = metrics
        self._live: dict[TopicPartition, PartitionProducer] = {}

    @property
    def transaction_timeout_ms(self) -> int:
        """How long the broker lets one of these transactions stay open."""
        return self._txn_timeout_ms

    def get(self, tp: TopicPartition) -> PartitionProducer | None:
        """The live producer of ``tp`` (None: not started, or discarded after a failure)."""
        return self._live.get(tp)

    def live(self) -> list[TopicPartition]:
        """Partitions with a live producer."""
        return list(self._live)

    async def start(self, partitions: Iterable[TopicPartition]) -> None:
        """Start a fresh producer for each partition (discarding any live one first), all
        concurrently. Starting fences the partition's previous owner: when this returns, no
        other producer can commit a transaction of these partitions, and the offsets the
        group has committed for them are final. Raises :class:`TransactionError`."""
        parts = sorted(set(partitions))
        await asyncio.gather(*(self.discard(tp) for tp in parts))
        started = await asyncio.gather(
            *(self._start_one(tp) for tp in parts), return_exceptions=True
        )
        errors = [r for r in started if isinstance(r, BaseException)]
        for r in started:
            if isinstance(r, PartitionProducer):
                old = self._live.pop(r.tp, None)
                if old is not None:  # a concurrent start of the same partition
                    await _stop_quietly(old.producer)
                self._live[r.tp] = r
        self._metrics.producers_active.set(len(self._live))
        if errors:
            raise errors[0]

    async def _start_one(self, tp: TopicPartition) -> PartitionProducer:
        tid = transactional_id(self._group, tp)
        try:
            producer = self._factory(
                **self._kw, transactional_id=tid, transaction_timeout_ms=self._txn_timeout_ms
            )
        except ValueError as exc:  # e.g. producer.acks other than all
            raise ConfigError(f"exactly-once needs an idempotent producer: {exc}") from None
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except BaseException as exc:
            await _stop_quietly(producer)
            if not isinstance(exc, (TimeoutError, KafkaError)):
                raise
            if isinstance(exc, TransactionalIdAuthorizationFailed):
                raise TransactionError(
                    f"the broker refuses the transactional id {tid!r} (grant this principal "
                    "WRITE and DESCRIBE on transactional ids with this prefix)"
                ) from None
            raise TransactionError(
                f"starting the transactional producer {tid!r} failed: {exc!r}"
            ) from None
        state_topic = self._state_topics[tp.topic]
        return PartitionProducer(
            tp,
            producer,
            OutputWriter(producer, self._output_topic),
            DeadLetterWriter(producer, self._dlq_topic, self._dlq_max),
            OutputWriter(producer, state_topic),
        )

    async def discard(self, tp: TopicPartition, pp: PartitionProducer | None = None) -> None:
        """Forget ``tp``'s producer (only if it still is ``pp``, when given: a newer one
        started meanwhile stays) and stop it without waiting for its unsent batches (an open
        transaction stays open until the next start of the id aborts it, or the broker does
        after the transaction timeout)."""
        live = self._live.get(tp)
        if pp is None:
            pp = live
        if pp is not None and live is pp:
            del self._live[tp]
        self._metrics.producers_active.set(len(self._live))
        if pp is not None:
            await _stop_quietly(pp.producer)

    async def close(self) -> None:
        """Abort every open transaction (best effort, within the timeout) and stop every
        producer. Called when the processor stops: a drained processor has none open."""
        live = list(self._live.values())
        await asyncio.gather(*(self._abort(pp) for pp in live))
        await asyncio.gather(*(self.discard(pp.tp, pp) for pp in live))

    async def sink(self, tp: TopicPartition) -> PartitionProducer | None:
        """The producer through which records of input partition ``tp`` are sent now, its
        transaction begun; None when ``tp`` has no live producer or its transaction already
        failed (the partition is being recovered: what would be sent is dropped, its input
        is processed again)."""
        pp = self._live.get(tp)
        if pp is None or pp.failure is not None:
            return None
        try:
            await pp.begin()
        except Exception as exc:  # a fenced or broken producer cannot begin
            pp.failure = exc
            return None
        return pp

    async def end(
        self,
        tp: TopicPartition,
        states: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
        offset: int | None,
    ) -> TxnResult:
        """End ``tp``'s interval: produce its state records (``(key, value, headers)`` for
        the partition of the state topic numbered like ``tp``) and await them, add
        ``offset`` (the next input offset; None: unchanged) to the transaction, commit; all
        within ``timeout_s``.

        Returns the :class:`TxnResult` (IDLE when there was nothing to commit). On any
        result other than COMMITTED or IDLE the producer is discarded: the caller must stop
        owning the partition and forget its uncommitted state; its recovery goes through
        the group. Raises
        :class:`TransactionError` (after aborting) when the failure cannot go away by
        trying again (a record the broker refuses, a missing authorisation...): redoing the
        interval would fail the same way forever.
        """
        pp = self._live.get(tp)
        if pp is None:
            return TxnResult.IDLE
        if not pp.open and not states and offset is None and pp.failure is None:
            return TxnResult.IDLE
        t0 = time.perf_counter()
        result = TxnResult.COMMITTED
        cause: BaseException | None = None
        async with pp.lock:
            try:
                await asyncio.wait_for(self._commit(pp, states, offset), self.timeout_s)
            except FENCED as exc:
                result = TxnResult.FENCED
                log.debug("transaction of %s fenced: %r", tp, exc)
            except TimeoutError:
                result = TxnResult.TIMEOUT
                log.warning(
                    "the transaction of %s did not end within %.0f s: abandoned (its producer "
                    "is discarded; the next start of its id aborts it)",
                    tp,
                    self.timeout_s,
                )
            except Exception as exc:
                result, cause = TxnResult.ABORTED, exc
                log.warning("the transaction of %s failed (%r): aborted", tp, exc)
        self._metrics.transactions.labels(result.value).inc()
        self._metrics.transaction_seconds.observe(time.perf_counter() - t0)
        if result is not TxnResult.COMMITTED:
            if result is TxnResult.ABORTED:
                await self._abort(pp)
            await self.discard(tp, pp)
        if cause is not None and _permanent(cause):
            raise TransactionError(
                f"producing to the transaction of {tp.topic}/{tp.partition} failed in a way "
                f"that retrying cannot fix: {cause!r}"
            ) from cause
        return result

    async def _commit(
        self,
        pp: PartitionProducer,
        states: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]],
        offset: int | None,
    ) -> None:
        if pp.failure is not None:
            raise pp.failure
        await pp.begin()
        if states:
            futures = await pp.states.write_partitioned({pp.tp.partition: states})
            await asyncio.gather(*futures)
        if offset is not None:
            await pp.producer.send_offsets_to_transaction({pp.tp: offset}, self._group)
        await pp.producer.commit_transaction()
        pp.open = False

    async def _abort(self, pp: PartitionProducer) -> None:
        """Abort ``pp``'s open transaction within the timeout; never raises (a producer that
        cannot abort -- fenced, broken -- is discarded, and the next start of its id
        aborts)."""
        if not pp.open:
            return
        with contextlib.suppress(Exception):
            async with pp.lock:
                await asyncio.wait_for(pp.producer.abort_transaction(), self.timeout_s)
                pp.open = False


def _permanent(exc: BaseException) -> bool:
    """A send or commit failure that trying again cannot fix."""
    return isinstance(exc, (*_PERMANENT, ValueError))  # ValueError: larger than a batch


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_S)
    except Exception as exc:  # stopping a broken producer must not fail its caller
        log.debug("stopping a transactional producer: %r", exc)
