"""``lstm-stream run`` against a real broker: outputs equal the in-process replay, bad
records go to the dead-letter topic, duplicates are skipped, backpressure bounds the
pipeline."""

from __future__ import annotations

import gc
import time

import msgpack
import numpy as np
import pytest
from kafka_helpers import (  # type: ignore[import-not-found]
    FEATURES,
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
from processor.kafka.output import DLQ_HEADERS
from processor.options import build_engine

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

    got = outputs_by_key(await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total))
    ref = reference_outputs(tiny_model, [v for _, v in records_a + records_b])
    assert set(got) == set(ref) and len(ref) == total
    for key, ys in got.items():
        assert len(ys) == 1, f"{key} has {len(ys)} outputs"
        np.testing.assert_allclose(ys[0], ref[key], rtol=1e-5, atol=1e-6, err_msg=str(key))
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
        ("missing_field", None, encode_input("x", 0, _x(), include_stream=False)),  # no id
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
    # Interleave: after every few good records, one bad one; then re-send one good record
    # (same seq: a duplicate the engine must skip, not dead-letter).
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
    dup_stream, dup_value = good[5]
    plan.append((None, dup_stream.encode(), dup_value))
    sent = await send_raw(kafka_bootstrap, source, [(k, v) for _, k, v in plan])
    expected_bad = {
        (s.partition, s.offset): (reason, s.key, s.value)
        for (reason, _, _), s in zip(plan, sent, strict=True)
        if reason is not None
    }
    assert len({r for r, _, _ in expected_bad.values()}) >= 12  # kinds of bad record

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
        stats = run.proc.stats
        await wait_for(
            lambda: stats.outputs + stats.dead_letters + stats.duplicates >= len(plan),
            90,
            "every record handled",
            run,
        )
    proc = run.proc
    assert proc.stats.dead_letters == len(expected_bad)
    assert proc.stats.outputs == len(good)
    assert proc.stats.duplicates == 1
    assert registry.get_sample_value("lstm_stream_duplicates_skipped_total") == 1

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
        assert r.value == (value if value is not None else b"")
    by_reason: dict[str, int] = {}
    for reason, _, _ in expected_bad.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    for reason, n in by_reason.items():
        assert registry.get_sample_value("lstm_stream_dead_letters_total", {"reason": reason}) == n

    got = outputs_by_key(
        await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= len(good))
    )
    ref = reference_outputs(tiny_model, [v for _, v in good])
    assert set(got) == set(ref)
    for key, ys in got.items():
        assert len(ys) == 1, key
        np.testing.assert_allclose(ys[0], ref[key], rtol=1e-5, atol=1e-6, err_msg=str(key))


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
