"""The one table of an input record's field rules: which fields it must have, what msgpack
type each may take, and the dead-letter reason and detail of a record that breaks one (no I/O).

:class:`~processor.codec.check.FieldChecker` is the only reader of an input record's fields,
for :meth:`~processor.codec.RecordDecoder.decode` and its batch form alike; it accepts a value
exactly when its rule here does and builds every presence and type rejection with
:meth:`FieldRule.reject`, so the two paths cannot tell a record's fault differently. The rules
on values (seq range, dtype names, the model's shape, the stream id's limits) are the
checker's; the rules on ``x``'s contents are :mod:`~processor.codec.tensor`'s and
:mod:`~processor.codec.images`'s. The output and dead-letter decoders state their records'
fields as :class:`FieldRule` values too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from processor.codec._common import type_name
from processor.codec.reasons import BAD_STREAM_ID, MISSING_FIELD, WRONG_TYPE
from processor.errors import BadRecord

__all__ = [
    "ABSENT",
    "DTYPE",
    "ENCODING",
    "END",
    "IMAGE_X",
    "INPUT_FIELDS",
    "MAX_SEQ",
    "RESET",
    "SEQ",
    "SHAPE",
    "STREAM",
    "TS",
    "FieldRule",
    "X",
    "describe",
]

#: Largest accepted ``seq``: the engine keeps the last applied seq per stream as int64.
MAX_SEQ: Final = 2**63 - 1


class _Absent:
    """The type of :data:`ABSENT`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


#: What a field read with ``obj.get(name, ABSENT)`` is when the record leaves it out (an
#: explicit nil is ``None``, a value of the wrong type, so the two must differ).
ABSENT: Final = _Absent()


def describe(value: object) -> str:
    """A short description of a value for error details: its type name (see
    :func:`~processor.codec._common.type_name`), and for an array the types it holds."""
    if type(value) is list:
        kinds = sorted({type_name(v) for v in value})
        return f"array of {'/'.join(kinds)}" if kinds else "empty array"
    return type_name(value)


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One field of the input record: its ``name``, the exact msgpack ``types`` its value may
    have (``bool`` is not an ``int`` here) and, for an array, the exact type of its ``items``;
    the ``reason`` code of a value of another type and what the detail says it must be
    (``expected``, the value shown by ``shown``); the detail of a record leaving it out
    (``missing``; ``None`` for an optional field)."""

    name: str
    types: tuple[type, ...]
    expected: str
    missing: str | None = None
    reason: str = WRONG_TYPE
    items: type | None = None
    shown: Callable[[object], str] = type_name

    def accepts(self, value: object) -> bool:
        """Whether ``value`` (:data:`ABSENT` when left out) passes this rule."""
        if value is ABSENT:
            return self.missing is None
        if type(value) not in self.types:
            return False
        if self.items is None:
            return True
        return isinstance(value, list) and all(type(v) is self.items for v in value)

    def reject(self, value: object, subject: str | None = None) -> BadRecord:
        """The error of a record whose field is ``value`` (:data:`ABSENT` when left out), a
        value this rule does not accept. ``subject`` names the field in the detail (default:
        its quoted name)."""
        if value is ABSENT:
            assert self.missing is not None, f"{self.name!r} is optional"
            return BadRecord(MISSING_FIELD, self.missing)
        name = repr(self.name) if subject is None else subject
        return BadRecord(self.reason, f"{name} must be {self.expected}, got {self.shown(value)}")


# The rules, in the order the checker applies them (a record with several faults reports the
# first). `stream` may be left out when the Kafka message key names the stream; the checker
# reports it missing only without a key.
STREAM: Final = FieldRule(
    "stream", (str,), "a str", "missing field 'stream' and no message key", BAD_STREAM_ID
)
SEQ: Final = FieldRule("seq", (int,), "an int", "missing field 'seq'")
TS: Final = FieldRule("ts", (int,), "an int")
RESET: Final = FieldRule("reset", (bool,), "a bool")
END: Final = FieldRule("end", (bool,), "a bool")
ENCODING: Final = FieldRule("encoding", (str,), "a str")
DTYPE: Final = FieldRule("dtype", (str,), "a str")
SHAPE: Final = FieldRule("shape", (list,), "an array of ints", items=int, shown=describe)
X: Final = FieldRule("x", (bytes, list), "bin or an array of numbers", "missing field 'x'")
#: ``x`` of an encoded image (its detail names the encoding: ``a jpeg 'x' must be bin``).
IMAGE_X: Final = FieldRule("x", (bytes,), "bin", "missing field 'x'")

#: Every field of an input record, in check order (for ``x``: the rule of a raw tensor).
INPUT_FIELDS: Final[tuple[FieldRule, ...]] = (
    STREAM,
    SEQ,
    TS,
    RESET,
    END,
    ENCODING,
    DTYPE,
    SHAPE,
    X,
)
