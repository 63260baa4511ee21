"""Exactly-once over in-process fakes: a whole Processor with a tiny real model, whose
per-partition transactional producers are fakes that keep each transaction's records apart
and expose only committed ones (what a read_committed reader sees). The real-broker tests in
tests/integration (kill loops, a zombie, rebalances, a broker restart) are the authority on
aiokafka and the broker; these pin the runtime's own logic: where the barrier sits, what one
transaction holds, and what a failed or fenced transaction does to its partition."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, ProducerFenced
from kafka_fakes import (
    IN,
    STATE,
    TP0,
    TP1,
    FakeBatch,
    FakeProducer,
    Harness,
    input_value,
    until,
)

from processor.codec import decode_output
from processor.kafka.checkpoint.transactions import TxnResult, transactional_id
from processor.obs.metrics import TRANSACTION_RESULTS

OUT, DLQ = "out", "out-dlq"
GROUP = "lstm-stream"


#: A committed transaction: its transactional id, its (topic, key, value) records, its offsets.
Txn = tuple[str, list[tuple[str, bytes | None, bytes | None]], dict[TopicPartition, int]]


class FakeTxnBroker:
    """The transactional side of a broker: the current epoch of each transactional id
    (a new producer of an id fences the older ones), committed records per topic in commit
    order, and the group's offsets committed by transactions."""

    def __init__(self) -> None:
        self.epochs: dict[str, int] = {}
        self.committed: dict[str, list[tuple[int | None, bytes | None, bytes | None]]] = {}
        self.offsets: dict[TopicPartition, int] = {}
        # One entry per committed transaction: (transactional id, its records, its offsets).
        self.transactions: list[Txn] = []
        self.fail_sends: set[str] = set()  # transactional ids whose next send fails
        self.producers: list[FakeTxnProducer] = []

    def factory(self, **kwargs: Any) -> FakeTxnProducer:
        producer = FakeTxnProducer(self, kwargs["transactional_id"])
        self.producers.append(producer)
        return producer

    def outputs(self) -> list[tuple[str, int]]:
        return [
            (rec["stream"], rec["seq"])
            for _, _, value in self.committed.get(OUT, [])
            for rec in [decode_output(value)]
        ]


class FakeTxnProducer(FakeProducer):
    """A transactional producer: records sent in a transaction become visible (in
    :attr:`FakeTxnBroker.committed`) only when it commits; a producer whose epoch is not
    the id's latest fails every call with ProducerFenced."""

    def __init__(self, broker: FakeTxnBroker, tid: str) -> None:
        super().__init__()
        self.broker = broker
        self.tid = tid
        self.epoch = -1
        self.in_txn = False
        self.pending: list[tuple[str, int | None, bytes | None, bytes | None]] = []
        self.pending_offsets: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self.epoch = self.broker.epochs.get(self.tid, -1) + 1
        self.broker.epochs[self.tid] = self.epoch  # fences the previous one; drops its txn

    def _check(self) -> None:
        if self.broker.epochs.get(self.tid) != self.epoch:
            raise ProducerFenced()

    async def begin_transaction(self) -> None:
        self._check()
        assert not self.in_txn
        self.in_txn = True

    def _failing(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.tid in self.broker.fail_sends:
            self.broker.fail_sends.discard(self.tid)
            fut.set_exception(KafkaConnectionError("injected send failure"))
        elif self.broker.epochs.get(self.tid) != self.epoch:
            fut.set_exception(ProducerFenced())
        else:
            fut.set_result(None)
        return fut

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        assert self.in_txn, "a send outside a transaction"
        for key, value, _ in batch.records:
            self.pending.append((topic, partition, key, value))
        return self._failing()

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> Any:
        assert self.in_txn, "a send outside a transaction"
        self.pending.append((topic, None, key, value))
        return self._failing()

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None:
        self._check()
        assert self.in_txn and group_id == GROUP
        self.pending_offsets.update(offsets)

    async def commit_transaction(self) -> None:
        self._check()
        assert self.in_txn
        for topic, partition, key, value in self.pending:
            self.broker.committed.setdefault(topic, []).append((partition, key, value))
        self.broker.offsets.update(self.pending_offsets)
        records = [(t, k, v) for t, _, k, v in self.pending]
        self.broker.transactions.append((self.tid, records, dict(self.pending_offsets)))
        self._end()

    async def abort_transaction(self) -> None:
        self._check()
        self._end()

    def _end(self) -> None:
        self.in_txn = False
        self.pending = []
        self.pending_offsets = {}


class FakeCoordinator:
    """Counts the rejoins the runtime asks for (a test delivers the rebalance)."""

    def __init__(self) -> None:
        self.rejoins = 0

    def request_rejoin(self) -> None:
        self.rejoins += 1


class TxnHarness(Harness):
    """:class:`Harness` in exactly-once mode: the group's offsets are the transactions'."""

    def __init__(self, make_model: Any, **settings: Any) -> None:
        super().__init__(make_model, processing_guarantee="exactly-once", **settings)
        self.broker = FakeTxnBroker()
        # The runtime reads the group's offsets through the consumer: the transactions'.
        self.consumer.offsets = self.broker.offsets
        self.coordinator = FakeCoordinator()
        self.consumer._coordinator = self.coordinator  # type: ignore[attr-defined]

    async def start(self) -> None:
        await self.proc.start_with(self.consumer, self.producer, self.broker.factory)  # type: ignore[arg-type]
        await self.proc.group.on_assigned({TP0, TP1})

    async def rebalance(self) -> None:
        """The rebalance a rejoin leads to, with the same assignment (eager: all revoked)."""
        await self.proc.group.on_revoked({TP0, TP1})
        await self.proc.group.on_assigned({TP0, TP1})


def _feed(h: Harness, seqs: range, streams: tuple[tuple[TopicPartition, str], ...]) -> None:
    for seq in seqs:
        for tp, stream in streams:
            h.consumer.add(tp, stream.encode(), input_value(stream, seq, seq / 50))


STREAMS = ((TP0, "a"), (TP1, "b"), (TP0, "c"))


def _assert_each_transaction_covers_exactly_its_offsets(h: TxnHarness) -> None:
    """Every committed transaction of a partition holds the outputs of exactly the input
    records between the previous transaction's offset and its own: nothing of a later
    batch rides along, nothing is left out."""
    done: dict[str, int] = {}
    for tid, records, offsets in h.broker.transactions:
        (tp,) = [tp for tp in (TP0, TP1) if transactional_id(GROUP, tp) == tid]
        outs = [decode_output(v) for t, _, v in records if t == OUT]
        if tp not in offsets:
            assert not outs, f"outputs of {tid} committed without an offset"
            continue
        start, end = done.get(tid, 0), offsets[tp]
        # Input offsets of TP0 alternate a, c (2 per seq); TP1 holds b (1 per seq).
        per_seq = 2 if tp == TP0 else 1
        want = sorted(
            (s, seq)
            for off in range(start, end)
            for s, seq in [(dict(STREAMS_BY_TP)[tp][off % per_seq], off // per_seq)]
        )
        assert sorted((o["stream"], o["seq"]) for o in outs) == want, (tid, start, end)
        done[tid] = end


STREAMS_BY_TP = {TP0: ("a", "c"), TP1: ("b",)}


def test_each_partition_commits_its_outputs_states_and_offsets_in_one_transaction(
    make_model: Any,
) -> None:
    async def go() -> None:
        h = TxnHarness(make_model, commit_interval_ms=20)
        await h.start()
        assert sorted(p.tid for p in h.broker.producers) == [
            transactional_id(GROUP, TP0),
            transactional_id(GROUP, TP1),
        ]
        # Input keeps arriving while checkpoints run: barriers land between batches.
        for chunk in range(10):
            _feed(h, range(chunk * 5, chunk * 5 + 5), STREAMS)
            await asyncio.sleep(0.03)
        await until(lambda: len(h.broker.outputs()) == 150, "150 committed outputs")
        await h.proc.drain()
        await h.proc.close()
        outs = h.broker.outputs()
        assert sorted(outs) == sorted({(s, q) for _, s in STREAMS for q in range(50)})
        assert h.producer.sent.get(OUT) is None, "an output bypassed the transactions"
        assert h.broker.offsets == {TP0: 100, TP1: 50}
        assert len(h.broker.transactions) > 4, "expected several checkpoints"
        _assert_each_transaction_covers_exactly_its_offsets(h)
        # State records ride in their partition's transaction, to its own partition.
        for tid, records, _ in h.broker.transactions:
            state_keys = {k for t, k, _ in records if t == STATE}
            tp = TP0 if tid.endswith("-0") else TP1
            assert state_keys <= {s.encode() for s in STREAMS_BY_TP[tp]}
        m = h.proc.metrics
        assert m.transactions.labels("committed")._value.get() == len(h.broker.transactions)
        assert m.producers_active._value.get() == 0  # all stopped at close

    asyncio.run(go())


def test_a_failed_send_aborts_its_partition_which_is_consumed_again_from_its_commit(
    make_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        h = TxnHarness(make_model, commit_interval_ms=20)
        await h.start()
        _feed(h, range(10), STREAMS)
        await until(lambda: len(h.broker.outputs()) == 30, "30 committed outputs")
        h.broker.fail_sends.add(transactional_id(GROUP, TP0))
        _feed(h, range(10, 20), STREAMS)
        await until(
            lambda: h.proc.metrics.transactions.labels("aborted")._value.get() == 1,
            "the aborted transaction",
        )
        # TP0 stops being processed and the member asks the group for a new assignment.
        await until(lambda: h.coordinator.rejoins == 1, "the rejoin")
        assert not h.proc.ownership.owns(TP0) and TP0 in h.consumer.paused()
        await h.rebalance()
        await until(lambda: len(h.broker.outputs()) == 60, "60 committed outputs")
        await h.proc.drain()
        await h.proc.close()
        outs = h.broker.outputs()
        # Nothing of the aborted transaction is visible, and nothing twice: TP0's records
        # after its last commit were consumed again and answered once.
        assert len(outs) == len(set(outs)) == 60
        assert h.broker.offsets == {TP0: 40, TP1: 20}
        _assert_each_transaction_covers_exactly_its_offsets(h)
        # At the new assignment fresh producers took over (each fenced the previous one).
        assert h.broker.epochs[transactional_id(GROUP, TP0)] == 1
        assert h.broker.epochs[transactional_id(GROUP, TP1)] == 1

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())
    assert any("aborted" in r.getMessage() for r in caplog.records)


def test_a_fenced_partition_stops_being_owned_and_the_others_go_on(
    make_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        h = TxnHarness(make_model, commit_interval_ms=20)
        await h.start()
        _feed(h, range(5), STREAMS)
        await until(lambda: len(h.broker.outputs()) == 15, "15 committed outputs")
        # Another member starts TP0's producer: this one is a zombie for TP0 now.
        usurper = h.broker.factory(transactional_id=transactional_id(GROUP, TP0))
        await usurper.start()
        _feed(h, range(5, 10), STREAMS)
        await until(
            lambda: h.proc.metrics.transactions.labels("fenced")._value.get() == 1,
            "the fenced transaction",
        )
        await until(lambda: len(h.broker.outputs()) == 20, "TP1's outputs committed")
        await until(lambda: h.coordinator.rejoins == 1, "the rejoin")
        assert not h.proc.ownership.owns(TP0) and h.proc.ownership.owns(TP1)
        assert TP0 in h.consumer.paused()
        _feed(h, range(10, 12), ((TP1, "b"),))
        await until(lambda: len(h.broker.outputs()) == 22, "TP1 goes on")
        await h.proc.drain()
        await h.proc.close()
        outs = h.broker.outputs()
        # TP0's outputs after the fence never became visible; the offsets stayed.
        assert sorted(s for s, q in outs if q >= 5) == ["b"] * 7
        assert h.broker.offsets[TP0] == 10 and h.broker.offsets[TP1] == 12

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())
    fenced = [m for r in caplog.records if "fenced out of partition" in (m := r.getMessage())]
    assert len(fenced) == 1 and f"{IN}" in fenced[0]


def test_exactly_once_requires_the_state_topic() -> None:
    from processor.config.engine_options import EngineOptions
    from processor.errors import ConfigError
    from processor.kafka.settings import Settings

    with pytest.raises(ConfigError, match="needs the state topic"):
        Settings(
            input_topics=(IN,),
            output_topic=OUT,
            engine=EngineOptions(model="m.keras"),
            processing_guarantee="exactly-once",
            state_topic="none",
        )
    with pytest.raises(ConfigError, match="must exceed twice --commit-interval-ms"):
        Settings(
            input_topics=(IN,),
            output_topic=OUT,
            engine=EngineOptions(model="m.keras"),
            processing_guarantee="exactly-once",
            commit_interval_ms=20_000,
            transaction_timeout_ms=30_000,
        )


def test_emit_routes_each_record_through_its_partitions_transaction_and_drops_stale_ones() -> None:
    """Outputs and dead letters go through the producer of their input partition; records
    of a partition forgotten after their batch was dispatched (it is consumed again from its
    commit) and of a partition whose transaction failed are not sent at all."""
    from prometheus_client import CollectorRegistry

    from processor.engine.pipeline import CacheSnapshot, Stepped
    from processor.kafka.checkpoint.ledger import OffsetLedger
    from processor.kafka.checkpoint.transactions import PartitionProducers
    from processor.kafka.io.output import DeadLetterWriter, OutputWriter
    from processor.kafka.stages.emit import Emitter
    from processor.kafka.stages.items import BadInput, Batch, Item
    from processor.obs.metrics import Metrics
    from processor.records import Output, Record
    from processor.state.stats import CacheStats

    tp2 = TopicPartition(IN, 2)

    async def go() -> None:
        broker = FakeTxnBroker()
        metrics = Metrics(CollectorRegistry())
        producers = PartitionProducers(
            {},
            group_id=GROUP,
            output_topic=OUT,
            dlq_topic=DLQ,
            dlq_max_value_bytes=100,
            state_topics={IN: STATE},
            transaction_timeout_ms=10_000,
            timeout_s=5.0,
            metrics=metrics,
            factory=broker.factory,
        )
        await producers.start([TP0, TP1, tp2])
        assert metrics.producers_active._value.get() == 3
        ledger = OffsetLedger()
        shared = FakeProducer()
        emitter = Emitter(
            OutputWriter(shared, OUT),  # type: ignore[arg-type]
            DeadLetterWriter(shared, DLQ, 100),  # type: ignore[arg-type]
            lambda outs: [o.stream.encode() for o in outs],
            metrics,
            producers,
            stale=ledger.fenced_since,
        )
        bad = BadInput("non_finite", "x has NaN", b"d", b"raw", (), None)
        recs = {s: Record(s, 0, np.zeros(2)) for s in "abc"}
        items = [
            Item(TP0, 0, 0.0, None, recs["a"]),
            Item(TP0, 1, 0.0, None, None, bad),
            Item(TP1, 0, 0.0, None, recs["b"]),
            Item(tp2, 0, 0.0, None, recs["c"]),
            Item(TP1, 1, 0.0, None, None, bad),
        ]
        batch = Batch(items, [items[0], items[2], items[3]], ledger.open(items), None)
        ledger.forget([TP1])  # TP1 moved on after this batch was dispatched
        pp2 = producers.get(tp2)
        assert pp2 is not None
        pp2.failure = KafkaConnectionError("earlier send failed")
        outs = [Output(s, 0, np.zeros(1)) for s in "abc"]
        stepped = Stepped(outs, [], [], 0, 0, 0.001, CacheSnapshot(3, 8, 0, CacheStats()))
        emitted = await emitter.emit(batch, stepped)
        await asyncio.gather(*emitted.futures)
        assert not shared.sent, "a send bypassed the partitions' transactions"
        sent = {p.tid: [(t, k) for t, _, k, _ in p.pending] for p in broker.producers}
        assert sent == {
            transactional_id(GROUP, TP0): [(OUT, b"a"), (DLQ, b"d")],
            transactional_id(GROUP, TP1): [],
            transactional_id(GROUP, tp2): [],
        }
        assert emitted.outputs == 1 and emitted.reasons == ["non_finite"]

    asyncio.run(go())


class _FailingPipeline:
    """Steps fail (as an engine error would)."""

    def step(self, records: Any, sources: Any = None) -> Any:
        from concurrent.futures import Future

        fut: Future[Any] = Future()
        fut.set_exception(RuntimeError("engine failed"))
        return fut


class _RecordingCheckpoint:
    """arm()/finish() as the dispatcher calls them; finish answers True."""

    def __init__(self) -> None:
        self.armed = 0
        self.finished = 0

    def arm(self) -> Any:
        self.armed += 1
        return object()

    async def finish(self, barrier: Any, partitions: Any) -> bool:
        self.finished += 1
        return True


def test_checkpoint_requests_are_answered_even_when_the_dispatcher_fails() -> None:
    """A request armed on a batch whose step then fails is answered (False) instead of
    leaving its caller -- a rebalance callback -- waiting forever; while the dispatcher is not
    running, a request is served at once."""
    from processor.kafka.checkpoint.ledger import OffsetLedger
    from processor.kafka.stages.batcher import Batcher
    from processor.kafka.stages.dispatch import Dispatcher
    from processor.kafka.stages.items import Item
    from processor.records import Record

    async def go() -> None:
        batcher: Batcher[Item] = Batcher(8, 0.0)
        checkpoint = _RecordingCheckpoint()

        async def emit(batch: Any, stepped: Any) -> Any:
            raise AssertionError("nothing is emitted: the step fails")

        wakeup = asyncio.Event()
        dispatcher = Dispatcher(
            _FailingPipeline(),  # type: ignore[arg-type]
            batcher,
            OffsetLedger(),
            emit,
            lambda emitted: None,
            wakeup,
            pipeline_depth=2,
            checkpoint=checkpoint,  # type: ignore[arg-type]
        )
        assert await dispatcher.checkpoint() is True  # not running: served at once
        assert (checkpoint.armed, checkpoint.finished) == (1, 1)
        run = asyncio.create_task(dispatcher.run())
        request = asyncio.create_task(dispatcher.checkpoint([TP0]))
        await asyncio.sleep(0)  # the request is queued before the batch is submitted
        batcher.add([Item(TP0, 0, 0.0, None, Record("a", 0, np.zeros(2)))])
        wakeup.set()  # as the fetch stage does after adding items
        with pytest.raises(RuntimeError, match="engine failed"):
            await run
        assert checkpoint.armed == 2, "the request did not ride on the failing batch"
        assert await asyncio.wait_for(request, 5) is False
        assert checkpoint.finished == 1

    asyncio.run(go())


def test_the_transaction_results_counted_are_the_metrics_label_values() -> None:
    """The transactions metric's ``result`` label values (declared in the metrics, which
    import nothing of Kafka) are exactly the results a transaction can end with, IDLE
    aside; the kept results are COMMITTED and IDLE."""
    assert TxnResult.counted() == TRANSACTION_RESULTS
    assert {r for r in TxnResult if r.kept} == {TxnResult.COMMITTED, TxnResult.IDLE}
