"""Dead-letter records: a rejected record's original bytes with its reason (no I/O)."""

from __future__ import annotations

from typing import Any

import msgpack

from processor.codec._common import type_name, unpack_or_bad_record
from processor.codec.reasons import MISSING_FIELD, NOT_A_MAP, WRONG_TYPE
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
    fields = (
        ("reason", str, True),
        ("detail", str, True),
        ("record", bytes, True),
        ("source", str, False),
        ("offset", int, False),
        ("index", int, False),
    )
    for name, kind, required in fields:
        if name not in obj:
            if required:
                raise BadRecord(MISSING_FIELD, f"missing field {name!r}")
            continue
        if type(obj[name]) is not kind:
            raise BadRecord(
                WRONG_TYPE, f"{name!r} must be {kind.__name__}, got {type_name(obj[name])}"
            )
        result[name] = obj[name]
    return result
