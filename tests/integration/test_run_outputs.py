"""``lstm-stream run`` against a real broker: outputs equal the in-process replay and each
stream's are in seq order in the output topic, bad records go to the dead-letter topic,
duplicates and out-of-order records are skipped (and counted apart), backpressure bounds
the pipeline."""

from __future__ import annotations

import gc
import time

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from kafka_helpers import (  # type: ignore[import-not-found]
    FEATURES,
    assert_outputs_in_seq_order,
    no_leftover_tasks,
    outputs_by_key,
    read_topic,
    reference_outputs,
    running,
    send_raw,
    send_synthetic,
    settings_for,
    synthetic_records,
    tiny_model,
    wait_for,
)
from prometheus_client import CollectorRegistry

from processor.codec import encode_input
from processor.engine.build import build_engine
from processor.kafka.io.output import DLQ_HEADERS

__all__ = ["no_leftover_tasks", "tiny_model"]  # fixtures used by name below
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


async def test_outputs_equal_the_replay_of_the_same_records(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    """Many streams over several partitions (and two input topics): one output per input,
    keyed by stream id, equal to running the same records through an Engine in-process."""
    in_a = await topic_factory(partitions=4, prefix="in-a")
    in_b = await topic_factory(partitions=2, prefix="in-b")
    out = await topic_factory(partitions=3, prefix="out")
    await topic_factory(partitions=1, prefix="unused")  # leaves other topics alone
    records_a = synthetic_records(streams=48, steps=20, seed=1, prefix="a")
    records_b = synthetic_records(streams=16, steps=20, seed=2, prefix="b")
    await send_synthetic(kafka_bootstrap, in_a, records_a)
    await send_synthetic(kafka_bootstrap, in_b, records_b)
    total = len(records_a) + len(records_b)

    registry = CollectorRegistry()
    settings = settings_for(kafka_bootstrap, tiny_model, [in_a, in_b], out, unique_group)
    gc_before = gc.get_threshold()
    async with running(settings, registry) as run:
        await wait_for(lambda: run.proc.stats.outputs >= total, 90, "all outputs", run)
        # While running, start-up objects are frozen and young collections are rare...
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] >= 50_000
    # ... and the process's collector is as it was once the processor closed.
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == gc_before
    proc = run.proc
    assert proc.stats.records_in == total
    assert proc.stats.outputs == total and proc.stats.dead_letters == 0

    records = await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total)
    got = outputs_by_key(records)
    ref = reference_outputs(tiny_model, [v for _, v in records_a + records_b])
    assert set(got) == set(ref) and len(ref) == total
    for key, ys in got.items():
        assert len(ys) == 1, f"{key} has {len(ys)} outputs"
        np.testing.assert_allclose(ys[0], ref[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
    order = assert_outputs_in_seq_order(records)
    assert len(order) == 64 and all(seqs == list(range(20)) for seqs in order.values())
    # Metrics moved with the run (each test has its own registry).
    assert registry.get_sample_value("lstm_stream_records_in_total", {"topic": in_a}) == len(
        records_a
    )
    assert registry.get_sample_value("lstm_stream_records_out_total", {"topic": out}) == total
    assert registry.get_sample_value("lstm_stream_batch_records_count") == proc.stats.batches
    # One end-to-end latency per output (binned per batch).
    assert registry.get_sample_value("lstm_stream_end_to_end_latency_seconds_count") == total


def _x(value: float = 0.5) -> np.ndarray:
    return np.full(FEATURES, value, np.float32)


def _bad_records(good_key: bytes) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected reason, key, value) for at least ten kinds of bad record."""
    nan = _x()
    nan[1] = np.nan
    pack = msgpack.packb
    return [
        ("undecodable", b"bad-0", b"\xc1 not msgpack"),
        ("undecodable", b"bad-1", None),  # a tombstone: no value at all
        ("not_a_map", b"bad-2", pack([1, 2, 3])),
        ("missing_field", b"bad-3", pack({"x": _x().tobytes()})),  # no seq
        ("missing_key", None, encode_input("x", 0, _x(), include_stream=False)),  # no id
        # A 'stream' field does not make up for the key: it must be the stream id.
        ("missing_key", None, encode_input("no-key", 0, _x())),
        ("wrong_type", b"bad-5", pack({"seq": "7", "x": _x().tobytes()})),
        ("bad_stream_id", b"\xff\xfe", encode_input("x", 0, _x(), include_stream=False)),
        ("key_mismatch", good_key, encode_input("somebody-else", 0, _x())),
        ("negative_seq", b"bad-8", encode_input("bad-8", -1, _x())),
        ("bad_dtype", b"bad-9", pack({"seq": 0, "x": _x().tobytes(), "dtype": "complex64"})),
        ("shape_mismatch", b"bad-10", encode_input("bad-10", 0, np.zeros(5, np.float32))),
        ("size_mismatch", b"bad-11", pack({"seq": 0, "x": b"\x00" * 7})),
        ("non_finite", b"bad-12", encode_input("bad-12", 0, nan)),
        ("oversize", b"bad-13", encode_input("bad-13", 0, np.zeros(2000, np.float32))),
    ]


async def test_bad_records_go_to_the_dead_letter_topic_and_good_ones_are_unaffected(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    source = await topic_factory(partitions=2, prefix="in")
    out = await topic_factory(partitions=2, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    good = synthetic_records(streams=10, steps=12, seed=3)
    bad = _bad_records(b"s3")
    # Interleave: after every few good records, one bad one; then re-send a stream's last
    # record (its seq equals the last applied one: a duplicate) and another stream's first
    # (its seq is below the last applied one: out of order). The engine skips and counts
    # both, apart; neither is dead-lettered.
    plan: list[tuple[str | None, bytes | None, bytes | None]] = []
    bad_iter = iter(bad)
    for i, (stream, value) in enumerate(good):
        plan.append((None, stream.encode(), value))
        if i % 8 == 7:
            extra = next(bad_iter, None)
            if extra is not None:
                plan.append(extra)
    for reason, key, val in bad_iter:
        plan.append((reason, key, val))
    dup_stream, dup_value = good[-1]
    plan.append((None, dup_stream.encode(), dup_value))
    late_stream, late_value = good[5]
    assert late_stream != dup_stream
    plan.append((None, late_stream.encode(), late_value))
    sent = await send_raw(kafka_bootstrap, source, [(k, v) for _, k, v in plan])
    expected_bad = {
        (s.partition, s.offset): (reason, s.key, s.value)
        for (reason, _, _), s in zip(plan, sent, strict=True)
        if reason is not None
    }
    assert len({r for r, _, _ in expected_bad.values()}) >= 13  # kinds of bad record

    registry = CollectorRegistry()
    settings = settings_for(
        kafka_bootstrap,
        tiny_model,
        [source],
        out,
        unique_group,
        dlq_topic=dlq,
        max_record_bytes=4096,
    )
    async with running(settings, registry) as run:
        proc = run.proc
        await wait_for(
            lambda: (
                proc.stats.outputs
                + proc.stats.dead_letters
                + proc.stats.duplicates
                + proc.stats.out_of_order
                >= len(plan)
            ),
            90,
            "every record handled",
            run,
        )
    proc = run.proc
    assert proc.stats.dead_letters == len(expected_bad)
    assert proc.stats.outputs == len(good)
    assert proc.stats.duplicates == 1 and proc.stats.out_of_order == 1
    assert registry.get_sample_value("lstm_stream_duplicates_skipped_total") == 1
    assert registry.get_sample_value("lstm_stream_out_of_order_skipped_total") == 1

    letters = await read_topic(kafka_bootstrap, dlq, until=lambda rs: len(rs) >= len(expected_bad))
    assert len(letters) == len(expected_bad)
    for r in letters:
        headers = {k: v.decode() for k, v in r.headers}
        where = (int(headers[DLQ_HEADERS["partition"]]), int(headers[DLQ_HEADERS["offset"]]))
        reason, key, value = expected_bad[where]
        assert headers[DLQ_HEADERS["reason"]] == reason, (where, headers)
        assert headers[DLQ_HEADERS["topic"]] == source
        assert headers[DLQ_HEADERS["detail"]]  # a human-readable explanation
        assert r.key == key
        if reason == "oversize":  # never forwarded: it may exceed the dead-letter topic's limit
            assert r.value == b""
            assert headers[DLQ_HEADERS["value_truncated"]] == str(len(value or b""))
        else:
            assert r.value == (value if value is not None else b"")
            assert DLQ_HEADERS["value_truncated"] not in headers
    by_reason: dict[str, int] = {}
    for reason, _, _ in expected_bad.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    for reason, n in by_reason.items():
        assert registry.get_sample_value("lstm_stream_dead_letters_total", {"reason": reason}) == n

    records = await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= len(good))
    got = outputs_by_key(records)
    ref = reference_outputs(tiny_model, [v for _, v in good])
    assert set(got) == set(ref)
    for key, ys in got.items():
        assert len(ys) == 1, key
        np.testing.assert_allclose(ys[0], ref[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
    order = assert_outputs_in_seq_order(records)
    assert len(order) == 10 and all(seqs == list(range(12)) for seqs in order.values())


async def _send_one(
    bootstrap: str, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await (await producer.send(topic, value=value, key=key, headers=headers))
    finally:
        await producer.stop()


async def test_dead_letters_too_large_for_the_dead_letter_topic_never_stop_the_processor(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    """The dead-letter topic takes at most 2000 bytes per batch and the producer refuses
    requests above 4000 bytes: an oversize record's value is omitted, a long one is cut to
    --dlq-max-value-bytes, and a dead letter that the broker or the producer still refuses
    (here: because of its original headers) is re-sent without its value and original
    headers. The processor keeps running and every good record gets its output."""
    source = await topic_factory(partitions=1, prefix="in")
    out = await topic_factory(partitions=2, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq", configs={"max.message.bytes": "2000"})
    small = encode_input("x", 0, np.zeros(5, np.float32), include_stream=False)  # wrong shape
    # (key, value, original headers, the value expected in the dead letter)
    cases: list[tuple[bytes, bytes, list[tuple[str, bytes]], bytes]] = []
    big = encode_input("big", 0, np.zeros(1250, np.float32))  # ~5000 bytes: shape_mismatch
    assert 4096 < len(big) < 8192
    cases.append((b"big", big, [], big[:1000]))  # cut: fits the topic
    huge = encode_input("huge", 0, np.zeros(3000, np.float32))  # > --max-record-bytes
    cases.append((b"huge", huge, [], b""))  # oversize: omitted
    cases.append((b"hdr-broker", small, [("trace", b"t" * 2500)], b""))  # broker refuses
    cases.append((b"hdr-client", small, [("trace", b"t" * 5000)], b""))  # producer refuses
    good_1 = synthetic_records(streams=8, steps=5, seed=6)
    good_2 = synthetic_records(streams=8, steps=5, seed=7, start_seq=5)

    settings = settings_for(
        kafka_bootstrap,
        tiny_model,
        [source],
        out,
        unique_group,
        dlq_topic=dlq,
        max_record_bytes=8192,
        dlq_max_value_bytes=1000,
        kafka={"producer.max_request_size": "4000"},
    )
    async with running(settings) as run:
        proc = run.proc
        await send_synthetic(kafka_bootstrap, source, good_1)
        # One bad record at a time, so that no dead letter shares a produce batch with
        # another (the broker's limit applies to the whole batch).
        for i, (key, value, headers, _) in enumerate(cases):
            await _send_one(kafka_bootstrap, source, key, value, headers)
            await wait_for(lambda i=i: proc.stats.dead_letters > i, 60, f"dead letter {key!r}", run)
        await send_synthetic(kafka_bootstrap, source, good_2)
        total = len(good_1) + len(good_2)
        await wait_for(lambda: proc.stats.outputs >= total, 60, "all outputs", run)
        run.check()  # still running
        assert not run.task.done()
    assert run.proc.stats.dead_letter_reasons == {"shape_mismatch": 3, "oversize": 1}

    letters = await read_topic(kafka_bootstrap, dlq, until=lambda rs: len(rs) >= len(cases))
    assert len(letters) == len(cases)
    by_key = {r.key: r for r in letters}
    for key, value, _, expected in cases:
        r = by_key[key]
        headers = {k: v for k, v in r.headers}
        assert r.value == expected, key
        assert headers[DLQ_HEADERS["value_truncated"]] == str(len(value)).encode(), key
        assert headers[DLQ_HEADERS["reason"]] == (
            b"oversize" if key == b"huge" else b"shape_mismatch"
        )
        assert "trace" not in headers, key  # the retry dropped the original headers
    records = await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total)
    got = outputs_by_key(records)
    ref = reference_outputs(tiny_model, [v for _, v in good_1 + good_2])
    assert set(got) == set(ref) and len(ref) == total
    for key2, ys in got.items():
        assert len(ys) == 1, key2
        np.testing.assert_allclose(ys[0], ref[key2], rtol=1e-5, atol=1e-6, err_msg=str(key2))
    order = assert_outputs_in_seq_order(records)
    assert len(order) == 8 and all(seqs == list(range(10)) for seqs in order.values())


async def test_backpressure_pauses_partitions_and_bounds_in_flight_records(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    """With an engine slower than the input, fetching pauses at the high-water mark and
    the records in the pipeline never exceed it; everything is still processed."""
    source = await topic_factory(partitions=3, prefix="in")
    out = await topic_factory(partitions=1, prefix="out")
    records = synthetic_records(streams=32, steps=25, seed=4)
    await send_synthetic(kafka_bootstrap, source, records)

    def slow_engine(options):  # type: ignore[no-untyped-def]
        engine = build_engine(options)
        inner = engine.process

        def process(batch):  # type: ignore[no-untyped-def]
            time.sleep(0.02)  # a slow device: ~3 ms of work per record at max_batch 16
            return inner(batch)

        engine.process = process  # type: ignore[method-assign]
        return engine

    settings = settings_for(
        kafka_bootstrap,
        tiny_model,
        [source],
        out,
        unique_group,
        max_batch=16,
        queue_max_records=48,
        queue_low_records=16,
    )
    async with running(settings, engine_factory=slow_engine) as run:
        await wait_for(lambda: run.proc.stats.outputs >= len(records), 120, "all outputs", run)
    proc = run.proc
    assert proc.stats.pauses >= 1, "fetching was never paused"
    assert proc.stats.peak_in_flight == 48, proc.stats  # reached, never exceeded
    assert proc.stats.outputs == len(records)
