"""Wire format: msgpack input, output and dead-letter records, and file framing (no I/O here
beyond reading a file object handed in by the caller).

The format is fixed; other tools depend on it. The JSON Schemas in ``schemas/`` describe the
same records (with msgpack ``bin`` values mapped to base64 strings).

Input record, a msgpack map:

============  ========================================================================
``stream``    str, the stream id (in Kafka it is the message key; may then be omitted)
``seq``       int >= 0, strictly increasing per stream (checked by the engine, not here)
``x``         bin (raw little-endian tensor bytes in C order) or an array of numbers,
              flat in C order or nested to match ``shape``
``dtype``     optional str, default ``"float32"``; one of :data:`DTYPES`
``shape``     optional array of int, default the model's per-step input shape; must match it
``ts``        optional int, event time in ms since the epoch
``reset``     optional bool: start from the initial state before this step
``end``       optional bool: free the stream's state after this step
``encoding``  optional str, ``"raw"`` (default), ``"jpeg"`` or ``"png"``: ``x`` is then the
              compressed bytes of a uint8 image of the model's (H, W[, C]) input shape
============  ========================================================================

Unknown extra keys are ignored (forward compatibility). Output records carry ``stream``,
``seq``, ``y`` (bin, little-endian float32), ``shape``, ``dtype`` (``"float32"``) and ``ts``
when the input had one. Dead-letter records carry ``reason``, ``detail``, ``record`` (bin, the
original bytes) and optionally ``source``, ``offset`` and ``index``.

Modules:

- :mod:`~processor.codec.decode`: :class:`RecordDecoder`, input records one by one or in
  batches, built from
- :mod:`~processor.codec.fields`: the one table of the input record's field rules (presence,
  msgpack type, reason and detail of a breach), and :data:`MAX_SEQ`;
- :mod:`~processor.codec.check`: ``FieldChecker``, which applies them, with the rules on
  values (stream id and message key, seq range, encoding, dtype, shape);
- :mod:`~processor.codec.tensor`: ``TensorReader``, a raw ``x`` into the model's array;
- :mod:`~processor.codec.images`: JPEG/PNG payloads (:func:`encode_frame`,
  :func:`encode_image_input`, header checks, batched decoding; JPEG with libjpeg's accurate
  IDCT);
- :mod:`~processor.codec.encode`: input and output records (:func:`encode_input`,
  :func:`encode_outputs`, :func:`decode_output`);
- :mod:`~processor.codec.deadletter`: dead-letter records;
- :mod:`~processor.codec.framing`: files of concatenated records (:func:`iter_framed`);
- :mod:`~processor.codec.reasons`: the one registry of dead-letter reason codes
  (:data:`REASONS`).

This package re-exports the public names callers use (not the decoder's parts: checker,
reader); import them from here. The codec's own modules import each other by full module
path, never through this face.
"""

from __future__ import annotations

from processor.codec.deadletter import decode_dead_letter, encode_dead_letter
from processor.codec.decode import RecordDecoder
from processor.codec.encode import decode_output, encode_input, encode_output, encode_outputs
from processor.codec.fields import MAX_SEQ
from processor.codec.framing import Frame, iter_framed
from processor.codec.images import ENCODINGS, encode_frame, encode_image_input
from processor.codec.reasons import (
    BAD_DTYPE,
    BAD_STREAM_ID,
    BAD_VALUE,
    DECODE_REASONS,
    IMAGE_TOO_LARGE,
    IMAGE_UNDECODABLE,
    IMAGE_WRONG_SIZE,
    KEY_MISMATCH,
    MISSING_FIELD,
    MISSING_KEY,
    NEGATIVE_SEQ,
    NON_FINITE,
    NON_INCREASING_SEQ,
    NOT_A_MAP,
    OVERSIZE,
    REASONS,
    SHAPE_MISMATCH,
    SIZE_MISMATCH,
    TRUNCATED,
    UNDECODABLE,
    WRONG_TYPE,
    Reason,
)
from processor.dtypes import DTYPES

__all__ = [
    "BAD_DTYPE",
    "BAD_STREAM_ID",
    "BAD_VALUE",
    "DECODE_REASONS",
    "DTYPES",
    "ENCODINGS",
    "IMAGE_TOO_LARGE",
    "IMAGE_UNDECODABLE",
    "IMAGE_WRONG_SIZE",
    "KEY_MISMATCH",
    "MAX_SEQ",
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
    "Frame",
    "Reason",
    "RecordDecoder",
    "decode_dead_letter",
    "decode_output",
    "encode_dead_letter",
    "encode_frame",
    "encode_image_input",
    "encode_input",
    "encode_output",
    "encode_outputs",
    "iter_framed",
]
