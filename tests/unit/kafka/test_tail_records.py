"""What ``lstm-stream tail`` prints for each record: an output's fields, a dead letter's
headers, or why a record is not an output (no broker: records built with aiokafka's own
record type)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord

from processor.codec import encode_output
from processor.kafka.tools.tail import Decoding, RecordKind, describe_record
from processor.records import Output

DLQ_HEADERS = [
    ("lstm-stream.reason", b"invalid_shape"),
    ("lstm-stream.detail", b"x has 3 values, expected 4"),
    ("lstm-stream.source.topic", b"sensors"),
    ("lstm-stream.source.partition", b"2"),
    ("lstm-stream.source.offset", b"17"),
]


def _record(
    value: bytes | None, key: bytes | None = b"s1", headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=5,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers or [],
    )


def test_an_output_shows_its_fields_and_at_most_16_values() -> None:
    y = np.arange(20, dtype=np.float32) / 4
    row = describe_record(_record(encode_output(Output("s1", 3, y, ts=99))))
    assert row == {
        "partition": 0,
        "offset": 5,
        "key": "s1",
        "kind": RecordKind.OUTPUT,
        "stream": "s1",
        "seq": 3,
        "shape": [20],
        "y": [float(v) for v in y[:16]],
        "ts": 99,
        "y_truncated": 20,
    }
    assert json.loads(json.dumps(row))["kind"] == "output"  # printed as its plain value


@pytest.mark.parametrize("kind", [Decoding.AUTO, Decoding.DLQ])
def test_a_dead_letter_shows_its_headers(kind: Decoding) -> None:
    row = describe_record(_record(b"\x93\x01", headers=DLQ_HEADERS), kind)
    assert row == {
        "partition": 0,
        "offset": 5,
        "key": "s1",
        "kind": RecordKind.DLQ,
        "reason": "invalid_shape",
        "detail": "x has 3 values, expected 4",
        "source": "sensors/2@17",
        "value_bytes": 2,
    }


def test_a_record_that_is_not_an_output_says_why() -> None:
    row = describe_record(_record(b"\xc1", key=None))
    assert row["kind"] == RecordKind.UNDECODABLE and row["key"] is None
    assert row["reason"] and row["detail"]


def test_output_decoding_ignores_dead_letter_headers() -> None:
    row = describe_record(_record(b"\xc1", headers=DLQ_HEADERS), Decoding.OUTPUT)
    assert row["kind"] == RecordKind.UNDECODABLE
