"""The one registry of dead-letter reason codes (no I/O).

Every dead letter lstm-stream writes -- to a dead-letter file (``replay``), to the
dead-letter topic (``run``), as a metric label -- names its cause with one of these codes.
The codes are stable: other tools match on them, so a code is never renamed or reused for
another meaning; a new cause gets a new code here. The README's reason table and the
dead-letter record schema (``schemas/dead-letter-record.schema.json``) list exactly these
codes with these meanings (a unit test keeps them in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "BAD_DTYPE",
    "BAD_STREAM_ID",
    "BAD_VALUE",
    "DECODE_REASONS",
    "IMAGE_TOO_LARGE",
    "IMAGE_UNDECODABLE",
    "IMAGE_WRONG_SIZE",
    "KEY_MISMATCH",
    "MISSING_FIELD",
    "MISSING_KEY",
    "NEGATIVE_SEQ",
    "NON_FINITE",
    "NON_INCREASING_SEQ",
    "NOT_A_MAP",
    "OVERSIZE",
    "REASONS",
    "SHAPE_MISMATCH",
    "SIZE_MISMATCH",
    "TRUNCATED",
    "UNDECODABLE",
    "WRONG_TYPE",
    "Reason",
]


@dataclass(frozen=True, slots=True)
class Reason:
    """One dead-letter reason: its stable ``code`` and a one-line ``meaning`` (plain text
    with backquoted field names, shown in the README and the dead-letter schema)."""

    code: str
    meaning: str


# Input records the decoder rejects (processor.codec.decode.RecordDecoder).
OVERSIZE: Final = "oversize"
UNDECODABLE: Final = "undecodable"
NOT_A_MAP: Final = "not_a_map"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
BAD_STREAM_ID: Final = "bad_stream_id"
KEY_MISMATCH: Final = "key_mismatch"
NEGATIVE_SEQ: Final = "negative_seq"
BAD_DTYPE: Final = "bad_dtype"
SHAPE_MISMATCH: Final = "shape_mismatch"
SIZE_MISMATCH: Final = "size_mismatch"
NON_FINITE: Final = "non_finite"
BAD_VALUE: Final = "bad_value"
IMAGE_UNDECODABLE: Final = "image_undecodable"
IMAGE_WRONG_SIZE: Final = "image_wrong_size"
IMAGE_TOO_LARGE: Final = "image_too_large"
# Framing of an input file (processor.codec.framing.iter_framed).
TRUNCATED: Final = "truncated"
# Transport rules: the Kafka runtime (a record needs its key) and replay (seq order).
MISSING_KEY: Final = "missing_key"
NON_INCREASING_SEQ: Final = "non_increasing_seq"

_ALL: Final = (
    Reason(OVERSIZE, "the record is larger than `--max-record-bytes`; its bytes are not kept"),
    Reason(
        UNDECODABLE,
        "not one valid msgpack object: corrupt or trailing bytes, invalid UTF-8, a non-str "
        "map key, nesting too deep, or a Kafka record without a value",
    ),
    Reason(NOT_A_MAP, "valid msgpack, but not a map"),
    Reason(
        MISSING_FIELD, "a required field is absent: `seq`, `x`, or `stream` with no message key"
    ),
    Reason(WRONG_TYPE, "a field has the wrong msgpack type, e.g. a str or float `seq`"),
    Reason(
        BAD_STREAM_ID,
        "the stream id is not a str, empty, longer than its byte limit or not valid UTF-8",
    ),
    Reason(KEY_MISMATCH, "the record's `stream` differs from its Kafka message key"),
    Reason(NEGATIVE_SEQ, "`seq` is below 0"),
    Reason(
        BAD_DTYPE,
        "`dtype` is unknown, or not convertible to the model's input dtype without loss",
    ),
    Reason(
        SHAPE_MISMATCH,
        "`shape`, or the nesting of an array `x`, differs from the model's per-step input shape",
    ),
    Reason(SIZE_MISMATCH, "the length of `x` (bytes or elements) does not fit the shape and dtype"),
    Reason(NON_FINITE, "`x` holds NaN or infinity, also after conversion to the model's dtype"),
    Reason(
        BAD_VALUE,
        "a value out of range: `seq` above `2**63 - 1`, a non-number in `x`, a float for an "
        "integer dtype, an int the dtype cannot hold, or an unknown `encoding`",
    ),
    Reason(
        IMAGE_UNDECODABLE,
        "a `jpeg` or `png` `x` has no valid header or its data does not decode",
    ),
    Reason(
        IMAGE_WRONG_SIZE,
        "a `jpeg` or `png` `x` is not of the model's input height, width and channels",
    ),
    Reason(
        IMAGE_TOO_LARGE,
        "a `jpeg` or `png` header declares more pixel bytes than `--max-record-bytes`; "
        "refused before decoding",
    ),
    Reason(TRUNCATED, "the input file ends inside this record"),
    Reason(MISSING_KEY, "a Kafka record without a message key (the key must be the stream id)"),
    Reason(
        NON_INCREASING_SEQ,
        "replay: `seq` is not greater than the stream's last applied seq (the Kafka runtime "
        "skips such re-deliveries instead)",
    ),
)

#: Every dead-letter reason, by code, in a stable order (iterating gives the codes).
REASONS: Final[Mapping[str, Reason]] = MappingProxyType({r.code: r for r in _ALL})

#: The codes :meth:`processor.codec.RecordDecoder.decode` (and the output and dead-letter
#: decoders) can raise, in :data:`REASONS` order.
DECODE_REASONS: Final[tuple[str, ...]] = (
    OVERSIZE,
    UNDECODABLE,
    NOT_A_MAP,
    MISSING_FIELD,
    WRONG_TYPE,
    BAD_STREAM_ID,
    KEY_MISMATCH,
    NEGATIVE_SEQ,
    BAD_DTYPE,
    SHAPE_MISMATCH,
    SIZE_MISMATCH,
    NON_FINITE,
    BAD_VALUE,
    IMAGE_UNDECODABLE,
    IMAGE_WRONG_SIZE,
    IMAGE_TOO_LARGE,
)
