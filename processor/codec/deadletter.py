"""Dead-letter records: a rejected record's original bytes with its reason (no I/O)."""

from __future__ import annotations

from typing import Any, Final

import msgpack

from processor.codec._common import type_name, unpack_or_bad_record
from processor.codec.fields import ABSENT, FieldRule
from processor.codec.reasons import NOT_A_MAP
from processor.errors import BadRecord

__all__ = ["decode_dead_letter", "encode_dead_letter"]


def encode_dead_letter(
    raw: bytes,
    reason: str,
    detail: str,
    *,
    source: str | None = None,
    offset: int | None = None,
    index: int | None = None,
) -> bytes:
    """Encode one dead-letter record for a file: ``raw`` (the rejected record's original
    bytes) verbatim as bin, the ``reason`` code and ``detail``, and ``source`` (e.g. the
    input file or topic), ``offset`` (byte or Kafka offset) and ``index`` (record number)
    when given. ``reason`` should be a code of
    :data:`~processor.codec.reasons.REASONS` (the dead-letter schema lists exactly those);
    it is written as given, not checked, so that writing a dead letter never fails.
    """
    record: dict[str, object] = {"reason": reason, "detail": detail, "record": raw}
    if source is not None:
        record["source"] = source
    if offset is not None:
        record["offset"] = offset
    if index is not None:
        record["index"] = index
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def decode_dead_letter(value: bytes) -> dict[str, Any]:
    """Decode one dead-letter record: ``{"reason", "detail", "record"}`` plus whichever of
    ``source``/``offset``/``index`` are present (unknown keys dropped). Raises ``BadRecord``
    (reasons from :data:`~processor.codec.reasons.DECODE_REASONS`) on a malformed record.
    """
    obj = unpack_or_bad_record(value)
    if type(obj) is not dict:
        raise BadRecord(NOT_A_MAP, f"expected a msgpack map, got {type_name(obj)}")
    result: dict[str, Any] = {}
    for rule in _FIELDS:
        value = obj.get(rule.name, ABSENT)
        if not rule.accepts(value):
            raise rule.reject(value)
        if value is not ABSENT:
            result[rule.name] = value
    return result


# The dead-letter record's fields, in check order.
_FIELDS: Final = (
    FieldRule("reason", (str,), "str", "missing field 'reason'"),
    FieldRule("detail", (str,), "str", "missing field 'detail'"),
    FieldRule("record", (bytes,), "bytes", "missing field 'record'"),
    FieldRule("source", (str,), "str"),
    FieldRule("offset", (int,), "int"),
    FieldRule("index", (int,), "int"),
)
