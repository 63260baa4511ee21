"""Recovering a state partition's records into the cache without a broker: batch decoding
of state records, loading them as arrays, and what the recovery reports per stream (the
checkpoint offset below which a stream's re-delivered records are skipped)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from processor.engine.pipeline import Pipeline, StalePolicy
from processor.engine.sources import SourceIndex
from processor.kafka.checkpoint.states import TOMBSTONE_OFFSET_HEADER
from processor.kafka.durable.record import (
    BadStateRecordError,
    StateMismatchError,
    StateRecordCodec,
)
from processor.kafka.durable.recovery import Recovery
from processor.model import StateSpec
from processor.obs.metrics import Metrics
from processor.state.cache import StateCache, StreamState

SPEC = (StateSpec("lstm/h", (3,)), StateSpec("lstm/c", (3,)))
OTHER = (StateSpec("lstm/h", (5,)), StateSpec("lstm/c", (5,)))
TP = TopicPartition("in", 1)


def _state(value: float, seq: int) -> StreamState:
    return StreamState((np.full(3, value, np.float32), np.full(3, -value, np.float32)), seq)


def _record(offset: int, key: str, value: bytes | None, headers: Any = ()) -> Any:
    return ConsumerRecord(
        topic="in-state",
        partition=1,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value or b""),
        headers=list(headers),
    )


def test_decode_many_equals_decode_of_each_record_and_reports_failures_by_position() -> None:
    f32 = StateRecordCodec(SPEC, "float32")
    f16 = StateRecordCodec(SPEC, "float16")
    values = [
        f32.encode(_state(0.5, 1), ("in", 1, 10)),
        f16.encode(_state(0.25, 2), ("in", 1, 11)),  # another storage dtype: converted
        StateRecordCodec(OTHER, "float32").encode(
            StreamState((np.zeros(5, np.float32), np.zeros(5, np.float32)), 3), ("in", 1, 12)
        ),
        b"\xc1",  # not msgpack
        f32.encode(_state(-1.0, 4), ("in", 1, 13)),
    ]
    batch = f32.decode_many(values)
    assert batch.index == [0, 1, 4]
    assert batch.seqs.tolist() == [1, 2, 4]
    assert batch.next_offsets == [10, 11, 13]
    assert batch.dtypes == ["float16", "float32"]
    for j, i in enumerate(batch.index):
        one = f32.decode_full(values[i])
        for k in range(len(SPEC)):
            np.testing.assert_array_equal(batch.arrays[k][j], one.arrays[k])
    kinds = {i: type(exc) for i, exc in batch.errors}
    assert kinds == {2: StateMismatchError, 3: BadStateRecordError}


def test_load_rows_puts_states_in_the_host_tiers_and_checks_shapes() -> None:
    cache = StateCache(SPEC, 2, spill_capacity=2)
    try:
        arrays = [np.arange(12, dtype=np.float32).reshape(4, 3), -np.ones((4, 3), np.float32)]
        cache.load_rows(["a", "b", "c", "d"], np.array([5, 6, 7, 8]), arrays)
        assert len(cache) == 0  # nothing admitted to the device
        assert cache.host_count == 2 and cache.disk_count == 2  # the oldest overflowed
        snap = cache.snapshot(["a", "d"])
        np.testing.assert_array_equal(snap["a"].arrays[0], [0, 1, 2])
        np.testing.assert_array_equal(snap["d"].arrays[0], [9, 10, 11])
        assert (snap["a"].seq, snap["d"].seq) == (5, 8)
        with pytest.raises(ValueError, match="expected shape"):
            cache.load_rows(["e"], np.array([1]), [np.zeros((1, 4)), np.zeros((1, 3))])
        assert cache.last_seq("e") == -1
    finally:
        cache.close()


@pytest.mark.parametrize("reset", [False, True])
def test_a_restored_chunk_last_record_wins_and_reports_each_streams_checkpoint_offset(
    reset: bool,
) -> None:
    codec = StateRecordCodec(SPEC, "float32")
    other = StateRecordCodec(OTHER, "float32")
    cache = StateCache(SPEC, 4, spill_capacity=8)
    index = SourceIndex(track_changes=True)
    metrics = Metrics(CollectorRegistry())

    def no_engine() -> Any:
        raise AssertionError("decoding needs no engine")

    recovery = Recovery(
        consumer_kw={"bootstrap_servers": "unused:9092"},
        state_topics={"in": "in-state"},
        # Never started: decode runs on the caller's thread here, and the index loads what
        # it returns into the cache as the pipeline's engine thread does.
        pipeline=Pipeline(no_engine, stale=StalePolicy.SKIP),
        codec=codec,
        reset_on_mismatch=reset,
        metrics=metrics,
    )
    records = [
        _record(0, "a", codec.encode(_state(0.1, 3), ("in", 1, 20))),
        _record(1, "b", codec.encode(_state(0.2, 4), ("in", 1, 20))),
        _record(2, "a", codec.encode(_state(0.3, 7), ("in", 1, 40))),  # a's newer state
        _record(3, "b", None, [(TOMBSTONE_OFFSET_HEADER, b"40")]),  # b ended
        _record(4, "c", codec.encode(_state(0.4, 1), ("in", 1, 20))),
        _record(
            5,
            "c",
            other.encode(
                StreamState((np.zeros(5, np.float32), np.zeros(5, np.float32)), 2), ("in", 1, 40)
            ),
        ),
        _record(6, "d", b"\xc1"),  # unreadable: lost, counted
    ]
    try:
        if not reset:
            with pytest.raises(StateMismatchError, match="--on-state-mismatch reset"):
                recovery.decode(TP, records)
            return
        loaded = recovery.decode(TP, records)
        index.load(cache, TP, loaded)
        assert loaded.positions == {"a": 40, "b": 40, "c": -1, "d": -1}
        assert cache.last_seq("a") == 7
        np.testing.assert_allclose(cache.snapshot(["a"])["a"].arrays[0], 0.3)
        # b ended; c's newest record is of another model (reset: from the initial state);
        # d's could not be read: none of them has a state.
        assert [cache.last_seq(s) for s in "bcd"] == [-1, -1, -1]
        assert metrics.restore_skipped.labels("model_mismatch")._value.get() == 1
        assert metrics.state_lost._value.get() == 1
        assert len(index) == 1  # only a is known, on partition TP
    finally:
        cache.close()
