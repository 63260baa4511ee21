"""The field rule table (processor.codec.fields) is what the decoder applies: every value a
rule refuses is rejected with that rule's reason and detail, by decode and decode_many alike,
every value it accepts gets past it, and a record breaking several rules reports the first in
the table's order."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import numpy as np
import pytest

from processor.codec import RecordDecoder
from processor.codec.fields import ABSENT, IMAGE_X, INPUT_FIELDS, FieldRule
from processor.errors import BadRecord
from processor.records import Record

SHAPE = (4, 3)
# One value of every msgpack type, and the edge cases of each rule (bool is not int, a float
# shape equals an int one, an empty array has no item of the wrong type).
PANEL: list[object] = [
    ABSENT,
    None,
    True,
    0,
    -1,
    2.5,
    "",
    "raw",
    "float32",
    "s-1",
    b"",
    b"s-1",
    [],
    [4, 3],
    [4.0, 3.0],
    [True, 3],
    {"a": 1},
]
# A value each rule refuses for its type, to break two rules at once.
REFUSED = {
    "stream": 5,
    "seq": "7",
    "ts": "now",
    "reset": 1,
    "end": "yes",
    "encoding": 1,
    "dtype": 5,
    "shape": "4x3",
    "x": "abc",
}


def record(**changes: object) -> bytes:
    """A valid float32 input record for SHAPE with ``changes`` (ABSENT: the field left out)."""
    fields: dict[str, Any] = {
        "stream": "s-1",
        "seq": 7,
        "x": np.zeros(SHAPE, "<f4").tobytes(),
        "dtype": "float32",
        "shape": list(SHAPE),
    }
    fields.update(changes)
    packed: bytes = msgpack.packb(
        {k: v for k, v in fields.items() if v is not ABSENT}, use_bin_type=True
    )
    return packed


def outcomes(decoder: RecordDecoder, value: bytes) -> list[tuple[str, str] | None]:
    """``(reason, detail)`` of decode's and decode_many's rejection of ``value``, or None."""
    try:
        decoder.decode(value)
        one = None
    except BadRecord as exc:
        one = (exc.reason, exc.detail)
    [many] = decoder.decode_many([value], [None])
    return [one, (many.reason, many.detail) if isinstance(many, BadRecord) else None]


def rejection(rule: FieldRule, value: object, subject: str | None = None) -> tuple[str, str]:
    error = rule.reject(value, subject)
    return error.reason, error.detail


def test_the_table_lists_the_fields_in_the_documented_check_order() -> None:
    names = [rule.name for rule in INPUT_FIELDS]
    assert names == ["stream", "seq", "ts", "reset", "end", "encoding", "dtype", "shape", "x"]
    assert set(REFUSED) == set(names)
    assert all(not rule.accepts(REFUSED[rule.name]) for rule in INPUT_FIELDS)


@pytest.mark.parametrize("rule", INPUT_FIELDS, ids=lambda rule: rule.name)
def test_the_decoder_applies_each_rule_of_the_table(rule: FieldRule) -> None:
    decoder = RecordDecoder(SHAPE)
    own = (f"{rule.name!r} must be {rule.expected},", f"missing field {rule.name!r}")
    for value in PANEL:
        got = outcomes(decoder, record(**{rule.name: value}))
        if rule.accepts(value):  # past this rule: accepted, or refused by another rule
            assert got[0] == got[1], value
            assert got[0] is None or not got[0][1].startswith(own), (value, got)
        else:
            assert got == [rejection(rule, value)] * 2, value


def test_an_image_x_has_its_own_rule() -> None:
    decoder = RecordDecoder(SHAPE, "uint8")
    for value in PANEL:
        got = outcomes(decoder, record(x=value, encoding="jpeg", dtype="uint8"))
        if IMAGE_X.accepts(value):
            assert got[0] is not None and got[0][0] == "image_undecodable", (value, got)
        else:
            assert got == [rejection(IMAGE_X, value, "a jpeg 'x'")] * 2, value


@pytest.mark.parametrize(("first", "later"), list(itertools.combinations(INPUT_FIELDS, 2)), ids=str)
def test_a_record_breaking_two_rules_reports_the_first(first: FieldRule, later: FieldRule) -> None:
    value = record(**{first.name: REFUSED[first.name], later.name: REFUSED[later.name]})
    got = outcomes(RecordDecoder(SHAPE), value)
    assert got == [rejection(first, REFUSED[first.name])] * 2


def test_absent_optional_fields_take_their_defaults() -> None:
    optional = [rule.name for rule in INPUT_FIELDS if rule.missing is None]
    assert optional == ["ts", "reset", "end", "encoding", "dtype", "shape"]
    decoded = RecordDecoder(SHAPE).decode(record(**dict.fromkeys(optional, ABSENT)))
    assert isinstance(decoded, Record)
    assert (decoded.ts, decoded.reset, decoded.end, decoded.x.dtype) == (
        None,
        False,
        False,
        np.float32,
    )
    assert repr(ABSENT) == "ABSENT"
