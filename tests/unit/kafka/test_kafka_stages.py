"""The Kafka runtime's stages without a broker: small in-process fakes of the consumer and
the producer drive the real fetch, dispatch, emit, ack and commit code (and, end to end, a
real engine on a tiny model). The real-broker tests in tests/integration stay the
authority on aiokafka's behaviour; these pin the runtime's own logic: ownership at the
fetch boundary, emit contents, ack ordering, revocation and drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from aiokafka import TopicPartition
from kafka_fakes import (
    IN,
    STATE,
    TP0,
    TP1,
    FakeConsumer,
    FakeProducer,
    Harness,
    input_value,
    until,
)
from prometheus_client import CollectorRegistry

from processor.codec import encode_input
from processor.codec.reasons import MISSING_FIELD, MISSING_KEY, UNDECODABLE
from processor.engine.pipeline import CacheSnapshot, Stepped
from processor.engine.sources import Loaded
from processor.kafka.checkpoint.ledger import OffsetLedger
from processor.kafka.group.ownership import Ownership
from processor.kafka.stages.ack import Acker
from processor.kafka.stages.batcher import Batcher, FlowControl
from processor.kafka.stages.emit import Emitter
from processor.kafka.stages.fetch import Fetcher
from processor.kafka.stages.items import BadInput, Batch, Item
from processor.obs.metrics import Metrics
from processor.records import Output, Record
from processor.state.stats import CacheStats

# ---- stages on their own ------------------------------------------------------------------


def _decoder() -> Callable[[list[bytes], list[bytes | None]], list[Any]]:
    from processor.codec import RecordDecoder

    return RecordDecoder((2,), np.dtype("float32")).decode_many


@dataclass
class FetchParts:
    """A fetch stage and the objects it shares with the rest of the runtime."""

    fetcher: Fetcher
    batcher: Batcher[Item]
    flow: FlowControl
    ownership: Ownership[TopicPartition]


def _fetch_stage(consumer: FakeConsumer, *, high: int = 1000, max_batch: int = 64) -> FetchParts:
    ownership: Ownership[TopicPartition] = Ownership()
    ownership.assign(consumer.assignment())
    batcher: Batcher[Item] = Batcher(max_batch, 0.0)
    flow = FlowControl(high, high // 2)
    fetcher = Fetcher(
        consumer,  # type: ignore[arg-type]
        _decoder(),
        batcher,
        flow,
        ownership,
        Metrics(CollectorRegistry()),
        asyncio.Event(),
        max_batch=max_batch,
        pipeline_depth=2,
    )
    return FetchParts(fetcher, batcher, flow, ownership)


# ---- fetch --------------------------------------------------------------------------------


def test_fetch_takes_a_share_of_every_partition_and_never_more_than_the_limit() -> None:
    tps = tuple(TopicPartition(IN, p) for p in range(5))
    consumer = FakeConsumer(tps)
    for tp, n in zip(tps, (100, 100, 3, 0, 50), strict=True):
        for i in range(n):
            consumer.add(tp, b"k", input_value("k", i))
    consumer.pause(tps[4])
    fetcher = _fetch_stage(consumer).fetcher
    got = asyncio.run(fetcher.fetch(64))
    # 64 over the 4 fetchable partitions: 16 each at most; partition 4 is paused.
    assert {tp.partition: len(rs) for tp, rs in got.items()} == {0: 16, 1: 16, 2: 3}
    assert [r.offset for r in got[tps[0]]] == list(range(16))  # a prefix, in offset order
    # A limit below the number of partitions: never more than the limit, and over a few
    # fetches every partition gets its turn.
    few = FakeConsumer(tps[:3])
    for tp in tps[:3]:
        for i in range(5):
            few.add(tp, b"k", input_value("k", i))
    fetch_few = _fetch_stage(few).fetcher
    served: set[int] = set()
    for _ in range(3):
        got = asyncio.run(fetch_few.fetch(2))
        assert sum(map(len, got.values())) == 2
        served |= {tp.partition for tp in got}
    assert served == {0, 1, 2}


def test_fetch_drops_records_of_a_partition_revoked_while_they_were_fetched() -> None:
    consumer = FakeConsumer()
    for i in range(4):
        consumer.add(TP0, b"a", input_value("a", i))
        consumer.add(TP1, b"b", input_value("b", i))
    parts = _fetch_stage(consumer)
    fetcher, batcher, flow, ownership = parts.fetcher, parts.batcher, parts.flow, parts.ownership
    batches = asyncio.run(fetcher.fetch(100))
    assert set(batches) == {TP0, TP1}
    ownership.revoke({TP1})  # the rebalance landed between fetch and hand-out
    assert fetcher.admit(batches) == 4
    taken = batcher.take()
    assert {it.tp for it in taken} == {TP0}
    assert flow.in_flight == 4  # only admitted records count against the bound


def test_fetch_turns_bad_records_into_dead_letter_items_and_keeps_the_good_ones() -> None:
    consumer = FakeConsumer((TP0,))
    consumer.add(TP0, b"a", input_value("a", 0))
    consumer.add(TP0, None, input_value("a", 1))  # no key
    consumer.add(TP0, b"a", None)  # tombstone
    consumer.add(TP0, b"a", b"\xc1")  # not msgpack
    consumer.add(TP0, b"a", input_value("a", 1))
    fetcher = _fetch_stage(consumer).fetcher
    items = fetcher.to_items(TP0, asyncio.run(fetcher.fetch(10))[TP0], time.monotonic())
    assert [it.offset for it in items] == [0, 1, 2, 3, 4]
    assert [it.record.seq if it.record else None for it in items] == [0, None, None, None, 1]
    reasons = [it.bad.reason if it.bad else None for it in items]
    assert reasons == [None, MISSING_KEY, UNDECODABLE, UNDECODABLE, None]
    assert items[1].bad is not None and items[1].bad.value == input_value("a", 1)  # kept verbatim


def test_flow_control_pauses_owned_partitions_at_the_high_water_mark_and_resumes() -> None:
    consumer = FakeConsumer()
    for i in range(6):
        consumer.add(TP0, b"a", input_value("a", i))
        consumer.add(TP1, b"b", input_value("b", i))
    parts = _fetch_stage(consumer, high=8)
    fetcher, flow = parts.fetcher, parts.flow
    fetcher.admit(asyncio.run(fetcher.fetch(flow.headroom)))
    assert flow.in_flight == 8
    assert consumer.paused() == {TP0, TP1}
    assert asyncio.run(fetcher.fetch(max(1, flow.headroom))) == {}  # nothing past it
    flow.release(3)  # 5 in flight: above the low-water mark (4)
    fetcher.apply_flow()
    assert consumer.paused() == {TP0, TP1}
    flow.release(1)
    fetcher.apply_flow()
    assert consumer.paused() == set()


# ---- emit and ack -------------------------------------------------------------------------


def _stepped(outputs: list[Output], skipped: list[Record] | None = None) -> Stepped:
    return Stepped(
        outputs,
        skipped or [],
        [],
        len(skipped or []),
        0,
        0.001,
        CacheSnapshot(1, 8, 0, CacheStats()),
    )


def _item(tp: TopicPartition, offset: int, record: Record | None, bad: BadInput | None = None):
    return Item(tp, offset, 0.0, 5_000 + offset, record, bad)


def test_emit_sends_outputs_keyed_by_stream_then_dead_letters_with_their_source() -> None:
    async def go() -> None:
        producer = FakeProducer()
        from processor.kafka.io.output import DeadLetterWriter, OutputWriter

        metrics = Metrics(CollectorRegistry())
        emitter = Emitter(
            OutputWriter(producer, "out"),  # type: ignore[arg-type]
            DeadLetterWriter(producer, "dlq", 100),  # type: ignore[arg-type]
            lambda outs: [o.stream.encode() + b"!" for o in outs],
            metrics,
        )
        r0, r1, dup = (
            Record("a", 0, np.zeros(2)),
            Record("b", 3, np.zeros(2)),
            Record("a", 0, np.zeros(2)),
        )
        bad = BadInput("non_finite", "x has NaN", b"c", b"raw", (("h", b"v"),), 77)
        items = [_item(TP0, 0, r0), _item(TP0, 1, None, bad), _item(TP1, 5, r1), _item(TP1, 6, dup)]
        ledger = OffsetLedger()
        batch = Batch(items, [items[0], items[2], items[3]], ledger.open(items), None)
        outs = [Output("a", 0, np.zeros(1)), Output("b", 3, np.zeros(1))]
        emitted = await emitter.emit(batch, _stepped(outs, skipped=[dup]))
        assert sorted(v for _, _, v, _ in producer.sent["out"]) == [b"a!", b"b!"]
        assert {k for _, k, _, _ in producer.sent["out"]} == {b"a", b"b"}
        (_, key, value, headers) = producer.sent["dlq"][0]
        header = dict(headers)
        assert (key, value, header["h"]) == (b"c", b"raw", b"v")
        assert header["lstm-stream.reason"] == b"non_finite"
        assert header["lstm-stream.source.partition"] == b"0"
        assert header["lstm-stream.source.offset"] == b"1"
        assert emitted.outputs == 2 and emitted.reasons == ["non_finite"]
        assert emitted.event_ms == [5_000, 5_005]  # the skipped duplicate has no latency
        # One send future per output partition's batch, one per dead letter.
        assert len(emitted.futures) == len({p for p, _, _, _ in producer.sent["out"]}) + 1
        assert metrics.summary().duplicates == 1

    asyncio.run(go())


def test_ack_completes_tickets_in_dispatch_order_whatever_order_the_broker_acks() -> None:
    async def go() -> None:
        producer = FakeProducer()
        producer.hold = True
        metrics = Metrics(CollectorRegistry())
        ledger = OffsetLedger()
        released: list[int] = []
        acker = Acker(ledger, released.append, metrics, "out")
        from processor.kafka.stages.items import Emitted

        first = ledger.open([_item(TP0, 0, None), _item(TP0, 1, None)])
        second = ledger.open([_item(TP0, 2, None)])
        f1 = await producer.send("out", b"1")
        f2 = await producer.send("out", b"2")
        acker.put(Emitted(first, [f1], 2, [], []))
        acker.put(Emitted(second, [f2], 1, [], []))
        acker.finish()
        task = asyncio.create_task(acker.run())
        producer.release(1)  # the later batch is acknowledged first
        assert not await acker.wait_completed(second.seq, 0.2)
        assert ledger.committable() == {}  # nothing: the first batch is still unacked
        producer.release(0)
        assert await acker.wait_completed(second.seq, 5)
        await task
        assert ledger.committable() == {TP0: 3}
        assert released == [2, 1]
        assert metrics.summary().outputs == 3

    asyncio.run(go())


# ---- the whole processor over fakes -------------------------------------------------------


def test_processor_over_fakes_answers_every_record_in_order_and_commits_on_drain(
    make_model: Any,
) -> None:
    async def go() -> None:
        h = Harness(make_model)
        await h.start()
        for seq in range(30):
            for tp, stream in ((TP0, "s0"), (TP1, "s1"), (TP0, "s2")):
                h.consumer.add(tp, stream.encode(), input_value(stream, seq, seq / 30))
        h.consumer.add(TP1, b"s1", b"\xc1")  # one bad record, offset 30 of TP1
        await until(lambda: len(h.outputs()) == 90, "90 outputs")
        await h.proc.drain()
        stats = h.proc.stats
        await h.proc.close()
        outs = h.outputs()
        for stream in ("s0", "s1", "s2"):
            assert [seq for s, seq in outs if s == stream] == list(range(30))
        assert h.consumer.offsets == {TP0: 60, TP1: 31}
        assert stats.outputs == 90 and stats.dead_letters == 1 and stats.records_in == 91
        assert len(h.producer.sent["out-dlq"]) == 1

    asyncio.run(go())


def test_revocation_drops_queued_records_finishes_in_flight_ones_and_commits_them(
    make_model: Any,
) -> None:
    async def go() -> None:
        # A long batch deadline keeps fetched records queued in the batcher.
        h = Harness(make_model, max_delay_ms=60_000)
        await h.start()
        for seq in range(3):
            h.consumer.add(TP1, b"q", input_value("q", seq))
        await until(lambda: len(h.proc.batcher) == 3, "3 queued records")
        await h.proc.group.on_revoked({TP0, TP1})
        assert len(h.proc.batcher) == 0
        assert h.proc.stats.dropped_on_revoke == 3
        assert h.outputs() == []  # dropped, not processed: the next owner reads them
        assert TP1 not in h.consumer.offsets  # nothing of TP1 was acknowledged
        assert h.proc.flow.in_flight == 0
        assert not h.proc.ready
        await h.proc.close()

    asyncio.run(go())


def test_a_rebalance_that_aiokafka_runs_while_the_consumer_stops_does_nothing(
    make_model: Any,
) -> None:
    """aiokafka's consumer.stop() waits for its group coordinator, which may still run a
    rebalance's callbacks after close() began: they must neither checkpoint nor pause,
    start producers or recover."""

    async def go() -> None:
        h = Harness(make_model)
        await h.start()
        h.consumer.add(TP0, b"a", input_value("a", 1))
        await until(lambda: h.outputs() == [("a", 1)], "one output")
        await h.proc.drain()
        committed = dict(h.consumer.offsets)
        group = h.proc.group  # what the rebalance listener holds
        await h.proc.close()
        h.consumer.add(TP0, b"a", input_value("a", 2))
        await group.on_revoked({TP0, TP1})
        await group.on_assigned({TP0})
        assert h.consumer.offsets == committed  # no checkpoint of its own
        assert h.consumer.paused() == set()  # nothing held back
        assert h.proc.stats.dropped_on_revoke == 0
        assert h.outputs() == [("a", 1)]

    asyncio.run(go())


def test_the_lag_of_a_partition_read_up_to_a_commit_marker_is_zero(make_model: Any) -> None:
    """A transactional producer's commit marker takes the last offset of an idle partition;
    once every record before it is acknowledged and the consumer has read past it, the lag
    gauge reads 0 (not the 1 that the high watermark minus the acknowledged offset gives),
    while a partition with records left to read still shows them."""

    async def go() -> None:
        h = Harness(make_model)
        await h.start()
        for seq in range(3):
            h.consumer.add(TP0, b"s", input_value("s", seq))
        h.consumer.add_marker(TP0)
        lag = h.proc.metrics.consumer_lag
        await until(lambda: len(h.outputs()) == 3, "3 outputs")
        await until(lambda: h.consumer.offsets.get(TP0) == 3, "offset 3 of TP0 committed")
        await until(lambda: lag.labels(IN, "0")._value.get() == 0, "lag 0 on TP0")
        assert h.consumer.highwater(TP0) == 4  # the marker took an offset
        h.consumer.add(TP1, b"t", input_value("t", 0))
        await until(lambda: len(h.outputs()) == 4, "4 outputs")
        h.consumer.held.add(TP1)  # two more records the consumer has not read yet
        h.consumer.add(TP1, b"t", input_value("t", 1))
        h.consumer.add(TP1, b"t", input_value("t", 2))
        await until(lambda: lag.labels(IN, "1")._value.get() == 2, "lag 2 on TP1")
        h.consumer.held.clear()
        await h.proc.drain()
        await h.proc.close()

    asyncio.run(go())


def test_stale_records_are_skipped_and_counted_by_kind(make_model: Any) -> None:
    async def go() -> None:
        h = Harness(make_model)
        await h.start()
        for seq in (0, 1, 2):
            h.consumer.add(TP0, b"s", input_value("s", seq))
        await until(lambda: len(h.outputs()) == 3, "3 outputs")
        h.consumer.add(TP0, b"s", input_value("s", 2))  # a re-delivery
        h.consumer.add(TP0, b"s", input_value("s", 0))  # out of order
        h.consumer.add(TP0, b"s", input_value("s", 3))
        await until(lambda: len(h.outputs()) == 4, "4 outputs")
        await h.proc.drain()
        stats = h.proc.stats
        await h.proc.close()
        assert (stats.duplicates, stats.out_of_order) == (1, 1)
        assert h.consumer.offsets[TP0] == 6

    asyncio.run(go())


def test_a_bad_record_goes_to_the_dead_letter_topic_with_its_reason_and_is_committed(
    make_model: Any,
) -> None:
    async def go() -> None:
        h = Harness(make_model)
        await h.start()
        h.consumer.add(TP0, b"x", msgpack.packb({"stream": "x"}))  # no seq, no x
        h.consumer.add(TP0, b"x", input_value("x", 0))
        await until(lambda: len(h.outputs()) == 1, "the good record's output")
        await h.proc.drain()
        await h.proc.close()
        headers = dict(h.producer.sent["out-dlq"][0][3])
        assert headers["lstm-stream.reason"] == MISSING_FIELD.encode()
        assert h.outputs() == [("x", 0)]
        assert h.consumer.offsets[TP0] == 2

    asyncio.run(go())


# ---- durable state: checkpoints ----------------------------------------------------------


def _states(h: Harness) -> dict[str, tuple[int | None, int | None]]:
    """stream -> (state topic partition, seq) of its last state record (seq None: a
    tombstone)."""
    out: dict[str, tuple[int | None, int | None]] = {}
    for partition, key, value, _ in h.producer.sent.get(STATE, []):
        assert key is not None
        seq = None if value is None else msgpack.unpackb(value)["seq"]
        out[key.decode()] = (partition, seq)
    return out


def test_a_checkpoint_writes_the_states_at_its_barrier_after_their_outputs_are_acked(
    make_model: Any,
) -> None:
    async def go() -> None:
        h = Harness(make_model, commit_interval_ms=600_000)  # checkpoints on demand only
        await h.start()
        h.producer.hold = True  # outputs are sent but not acknowledged until released
        for seq in range(3):
            h.consumer.add(TP0, b"a", input_value("a", seq))
            h.consumer.add(TP1, b"b", input_value("b", seq))
        await until(lambda: len(h.outputs()) == 6, "6 outputs sent")
        stages = h.proc.stages
        checkpoint = asyncio.create_task(stages.committer.commit_now())
        await asyncio.sleep(0)  # the barrier is taken synchronously at the first step
        # Records after the barrier: processed, but neither their states nor their offsets
        # belong to this checkpoint.
        h.consumer.add(TP0, b"a", input_value("a", 3))
        await until(lambda: len(h.outputs()) == 7, "the 7th output sent")
        for _ in range(50):  # every task gets its turns; none of the acks can arrive
            await asyncio.sleep(0)
        assert STATE not in h.producer.sent, "a state was written before its outputs' acks"
        assert not checkpoint.done()
        while not checkpoint.done():  # acknowledge everything sent so far, in order
            for fut in h.producer.held:
                if not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(0.01)
        assert checkpoint.result() is True
        # State partition = input partition; the seqs are the barrier's, not a's seq 3.
        assert _states(h) == {"a": (0, 2), "b": (1, 2)}
        assert h.consumer.offsets == {TP0: 3, TP1: 3}
        state = msgpack.unpackb(h.producer.sent[STATE][0][2])
        assert state["src"][:2] in (["in", 0], ["in", 1]) and state["src"][2] == 3
        h.producer.hold = False
        await h.proc.drain()  # the final checkpoint covers a's seq 3
        await h.proc.close()
        assert _states(h)["a"] == (0, 3)
        assert h.consumer.offsets == {TP0: 4, TP1: 3}

    asyncio.run(go())


def test_only_streams_changed_since_the_last_checkpoint_are_written_and_ended_ones_as_tombstones(
    make_model: Any,
) -> None:
    async def go() -> None:
        h = Harness(make_model, commit_interval_ms=600_000)
        await h.start()
        stages = h.proc.stages
        for stream in ("a", "b", "c"):
            h.consumer.add(TP0, stream.encode(), input_value(stream, 0))
        await until(lambda: len(h.outputs()) == 3, "3 outputs")
        assert await stages.committer.commit_now()
        assert len(h.producer.sent[STATE]) == 3
        h.consumer.add(TP0, b"b", input_value("b", 1))
        h.consumer.add(TP0, b"c", encode_input("c", 1, np.zeros(2, np.float32), end=True))
        await until(lambda: len(h.outputs()) == 5, "5 outputs")
        assert await stages.committer.commit_now()
        written = h.producer.sent[STATE][3:]
        assert sorted((k, v is None) for _, k, v, _ in written) == [(b"b", False), (b"c", True)]
        assert await stages.committer.commit_now()  # nothing changed: nothing written
        assert len(h.producer.sent[STATE]) == 5
        assert h.proc.metrics.state_tombstones._value.get() == 1
        await h.proc.drain()
        await h.proc.close()

    asyncio.run(go())


def test_records_below_a_restored_checkpoint_are_skipped_as_duplicates_without_a_warning(
    make_model: Any, caplog: Any
) -> None:
    async def go() -> None:
        h = Harness(make_model, commit_interval_ms=600_000)
        await h.start()
        stages = h.proc.stages
        # The state of stream s after its seq 4, as a recovery from offset 5 loads it.
        spec = h.proc.pipeline.engine.model.state_spec
        zeros = [np.zeros((1, *x.shape), np.float32) for x in spec]
        loaded = Loaded(["s"], np.array([4]), zeros)
        await asyncio.wrap_future(h.proc.pipeline.load_states(TP0, lambda: loaded))
        # s's state came from a checkpoint at offset 5 of TP0, t's (ended) from offset 3.
        stages.fetcher.replay_until(TP0, {"s": 5, "t": 3})
        for seq in range(7):  # s's seqs 0..4 re-delivered at once, 5 and 6 new
            h.consumer.add(TP0, b"s", input_value("s", seq))
        h.consumer.add(TP0, b"t", input_value("t", 0))  # offset 7: a new life of t, seq from 0
        await until(lambda: len(h.outputs()) == 3, "3 outputs")
        await h.proc.drain()
        stats = h.proc.stats
        await h.proc.close()
        assert sorted(h.outputs()) == [("s", 5), ("s", 6), ("t", 0)]
        assert (stats.duplicates, stats.out_of_order) == (5, 0)
        assert "out-of-order" not in caplog.text

    asyncio.run(go())


def test_records_arriving_while_an_assignment_is_settled_are_processed_once(
    make_model: Any,
) -> None:
    """aiokafka fetches a new assignment while the assignment callback still runs (here:
    while it reads the group's committed offsets); those records must neither enter the
    pipeline early nor be lost: the kept partition is sought back to its committed offset."""

    async def go() -> None:
        h = Harness(make_model, commit_interval_ms=600_000)
        await h.start()
        for seq in range(3):
            h.consumer.add(TP0, b"a", input_value("a", seq))
        await until(lambda: len(h.outputs()) == 3, "3 outputs")
        await h.proc.group.on_revoked({TP0, TP1})  # clean: checkpointed and committed at 3
        assert h.consumer.offsets == {TP0: 3}
        for seq in range(3, 6):
            h.consumer.add(TP0, b"a", input_value("a", seq))
        h.consumer.committed_delay = 0.2  # the fetch loop runs meanwhile
        assigned = asyncio.create_task(h.proc.group.on_assigned({TP0, TP1}))
        await until(lambda: h.consumer.read_to[TP0] == 6 or assigned.done(), "a fetch")
        await assigned
        h.consumer.add(TP0, b"a", input_value("a", 6))
        await until(lambda: len(h.outputs()) == 7, "7 outputs")
        await h.proc.drain()
        await h.proc.close()
        assert [seq for s, seq in h.outputs() if s == "a"] == list(range(7))
        assert h.consumer.offsets[TP0] == 7

    asyncio.run(go())


def test_backpressure_never_resumes_a_partition_that_is_not_owned() -> None:
    consumer = FakeConsumer()
    for i in range(6):
        consumer.add(TP0, b"a", input_value("a", i))
    parts = _fetch_stage(consumer, high=4)
    fetcher, flow, ownership = parts.fetcher, parts.flow, parts.ownership
    ownership.hold_back({TP1})  # held back: paused by the group handler
    consumer.pause(TP1)
    fetcher.admit(asyncio.run(fetcher.fetch(flow.headroom)))
    assert consumer.paused() == {TP0, TP1}  # the high-water mark
    flow.release(4)
    fetcher.apply_flow()
    assert consumer.paused() == {TP1}  # TP0 resumes, TP1 waits for its release
