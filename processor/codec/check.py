"""Checking an input record up to its ``x`` payload: :class:`FieldChecker` (no I/O).

The one validator of an input record's size, msgpack, map and fields, used by
:meth:`~processor.codec.RecordDecoder.decode` and its batch form alike. Presence and type
rules, with their reasons and details, are the table of :mod:`~processor.codec.fields`; each
check here lets the most common accepted value through inline (the hot path runs once per
record) and hands anything else to its rule, which accepts it or builds the rejection. The
rules on values -- stream id limits and the message key, seq range, encoding, dtype, shape --
are here. What ``x`` holds is checked when it is read (:mod:`~processor.codec.tensor`,
:mod:`~processor.codec.images`).
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from processor.codec._common import UNPACK_ERRORS, clip, type_name, unpack, unpack_error
from processor.codec.fields import (
    ABSENT,
    DTYPE,
    ENCODING,
    END,
    IMAGE_X,
    MAX_SEQ,
    RESET,
    SEQ,
    SHAPE,
    STREAM,
    TS,
    X,
)
from processor.codec.images import ENCODINGS
from processor.codec.reasons import (
    BAD_DTYPE,
    BAD_STREAM_ID,
    BAD_VALUE,
    KEY_MISMATCH,
    NEGATIVE_SEQ,
    NOT_A_MAP,
    OVERSIZE,
    SHAPE_MISMATCH,
)
from processor.dtypes import DTYPES, WIRE_DTYPES
from processor.errors import BadRecord

__all__ = ["FieldChecker", "Fields"]

#: A checked record: ``(stream, seq, ts, reset, end, x, wire, image, exact)``. ``x`` is the
#: unpacked value (bin, or for a raw tensor an array), ``wire`` the dtype it is in on the wire
#: (little-endian; ``uint8`` for an image), ``image`` the encoding of an encoded image or
#: ``None`` for a raw tensor, ``exact`` whether ``x`` is a raw tensor's bin of exactly the
#: model's input in the model's own dtype (so it needs no conversion and no size check). A
#: plain tuple: built once per record on the hot path.
Fields = tuple[str, int, int | None, bool, bool, Any, np.dtype[Any], str | None, bool]

# Memoised message keys before the memo is reset (~150 bytes each: bounded at ~40 MB; with
# more live streams than this the memo is refilled, which costs what no memo would).
_MAX_KEY_IDS: Final = 1 << 18
_UINT8: Final = WIRE_DTYPES["uint8"]


class FieldChecker:
    """Checks input records for one model input signature: everything but what ``x`` holds.

    Built by :class:`~processor.codec.RecordDecoder` from the model's per-step input shape
    and dtype and its limits; :meth:`check` may be called from several threads at once (its
    only mutable state is a memo of valid message keys, which only ever holds valid pairs).
    """

    __slots__ = (
        "_dtype_name",
        "_exact_wire",
        "_float_model",
        "_key_ids",
        "_max_record_bytes",
        "_max_stream_id_bytes",
        "_model_wire",
        "_nbytes",
        "_shape_list",
        "_wire_dtypes",
    )

    def __init__(
        self,
        input_shape: tuple[int, ...],
        input_dtype: np.dtype[Any],
        max_record_bytes: int,
        max_stream_id_bytes: int,
    ) -> None:
        """``input_dtype``: one of :data:`~processor.dtypes.DTYPES`; the limits are >= 1 (the
        decoder checked both)."""
        self._shape_list = list(input_shape)
        self._float_model = input_dtype.kind == "f"
        self._max_record_bytes = max_record_bytes
        self._max_stream_id_bytes = max_stream_id_bytes
        # The wire dtypes a raw x may come in: integer models accept only their own dtype,
        # as any other conversion could lose data.
        accepted = DTYPES if self._float_model else (input_dtype.name,)
        self._wire_dtypes: dict[str, np.dtype[Any]] = {n: WIRE_DTYPES[n] for n in accepted}
        self._dtype_name = input_dtype.name  # np.dtype.name is computed on each access
        self._model_wire = WIRE_DTYPES[input_dtype.name]
        # An exact x is in the model's wire dtype, and that is the model's dtype in native
        # order (always, except on big-endian hosts: there no x is exact).
        self._exact_wire = self._model_wire if self._model_wire == input_dtype else None
        self._nbytes = math.prod(input_shape) * input_dtype.itemsize
        # Message key bytes -> the stream id they name, for keys that passed every stream id
        # check (ids repeat every step; the memo also makes one str object per key).
        self._key_ids: dict[bytes, str] = {}

    def check(self, value: bytes, key: bytes | str | None) -> Fields:
        """The fields of the input record ``value`` with Kafka message key ``key``, or
        ``BadRecord`` for the first rule it breaks, in this order: size, msgpack, map, stream
        id, seq, ts, reset, end, encoding, dtype, shape, x (its presence and type)."""
        if len(value) > self._max_record_bytes:
            raise BadRecord(
                OVERSIZE, f"record is {len(value)} bytes, limit is {self._max_record_bytes}"
            )
        try:
            obj = unpack(value)
        except UNPACK_ERRORS as exc:
            raise unpack_error(exc) from None
        if type(obj) is not dict:
            raise BadRecord(NOT_A_MAP, f"expected a msgpack map, got {type_name(obj)}")
        # With strict_map_key the keys are str or bytes; bytes keys are unknown keys.
        get = obj.get
        # The stream id: a memoised key, with no stream field or the same id; or no key and
        # a stream id within the limits (UTF-8 takes at most 4 bytes a char); else every rule.
        if (
            type(key) is bytes
            and (sid := self._key_ids.get(key)) is not None
            and get("stream", sid) == sid
        ):
            stream = sid
        else:
            stream = get("stream", ABSENT)
            if not (
                key is None
                and type(stream) is str
                and stream
                and len(stream) * 4 <= self._max_stream_id_bytes
            ):
                stream = self._stream_id(stream, key)
        seq = get("seq")
        if type(seq) is not int:
            raise SEQ.reject(get("seq", ABSENT))
        if seq < 0 or seq > MAX_SEQ:
            raise _seq_out_of_range(seq)
        ts = get("ts", ABSENT)
        if ts is ABSENT:
            ts = None
        elif type(ts) is not int:
            raise TS.reject(ts)
        reset = get("reset", False)
        if type(reset) is not bool:
            raise RESET.reject(reset)
        end = get("end", False)
        if type(end) is not bool:
            raise END.reject(end)
        image: str | None = None
        if "encoding" in obj and (encoding := obj["encoding"]) != "raw":
            image = self._encoding(encoding)
            wire = self._image_dtype(get("dtype", "uint8"), image)
        else:
            name = get("dtype", "float32")
            if name == self._dtype_name:  # the common case first: the model's own dtype
                wire = self._model_wire
            else:
                known = self._wire_dtypes.get(name) if type(name) is str else None
                if known is None:
                    raise self._dtype_error(name)
                wire = known
        shape = get("shape", ABSENT)
        if shape is not ABSENT:
            if shape != self._shape_list:
                raise self._shape_error(shape)
            for d in shape:  # equal values, but 32.0 == 32 and True == 1: check the types
                if type(d) is not int:
                    raise SHAPE.reject(shape)
        x = get("x", ABSENT)
        if image is not None:
            if type(x) is not bytes:
                raise IMAGE_X.reject(x, f"a {image} 'x'")
            return stream, seq, ts, reset, end, x, wire, image, False
        if type(x) is bytes:
            exact = wire is self._exact_wire and len(x) == self._nbytes
            return stream, seq, ts, reset, end, x, wire, None, exact
        if not X.accepts(x):
            raise X.reject(x)
        return stream, seq, ts, reset, end, x, wire, None, False

    def _stream_id(self, stream: object, key: bytes | str | None) -> str:
        """Every stream id rule, for a record the inline check of :meth:`check` did not pass:
        the id, valid (a valid bytes key is then memoised), or ``BadRecord``."""
        if stream is not ABSENT:
            if not STREAM.accepts(stream):
                raise STREAM.reject(stream)
            assert isinstance(stream, str)
            if key is not None:
                key_id = _key_id(key)
                if stream != key_id:
                    raise BadRecord(
                        KEY_MISMATCH,
                        f"'stream' is {clip(stream)!r} but the message key is {clip(key_id)!r}",
                    )
        elif key is not None:
            stream = _key_id(key)
        else:
            raise STREAM.reject(stream)
        if not stream:
            raise BadRecord(BAD_STREAM_ID, "stream id is empty")
        limit = self._max_stream_id_bytes
        if len(stream) * 4 > limit:  # cheap bound first: UTF-8 takes at most 4 bytes a char
            n = len(stream.encode("utf-8"))
            if n > limit:
                raise BadRecord(BAD_STREAM_ID, f"stream id is {n} bytes in UTF-8, limit is {limit}")
        if type(key) is bytes:
            if len(self._key_ids) >= _MAX_KEY_IDS:
                self._key_ids.clear()
            self._key_ids[key] = stream
        return stream

    def _encoding(self, encoding: object) -> str:
        """``encoding`` (not ``raw``) if it names an image encoding, else ``BadRecord``."""
        if not ENCODING.accepts(encoding):
            raise ENCODING.reject(encoding)
        assert isinstance(encoding, str)
        if encoding not in ENCODINGS:
            raise BadRecord(
                BAD_VALUE, f"unknown encoding {clip(encoding)!r}, expected one of {list(ENCODINGS)}"
            )
        return encoding

    def _image_dtype(self, dtype: object, encoding: str) -> np.dtype[Any]:
        """The wire dtype of an image's pixels, ``uint8``, if the record's ``dtype`` says so
        (it is the default) and the model's dtype takes it without loss; else ``BadRecord``."""
        if dtype != "uint8":
            if not DTYPE.accepts(dtype):
                raise DTYPE.reject(dtype)
            assert isinstance(dtype, str)
            raise BadRecord(
                BAD_DTYPE, f"a {encoding} 'x' holds uint8 pixels, but 'dtype' is {clip(dtype)!r}"
            )
        if not self._float_model and self._dtype_name != "uint8":
            raise BadRecord(
                BAD_DTYPE,
                f"a {encoding} 'x' holds uint8 pixels, which the model's "
                f"{self._dtype_name} cannot take without loss",
            )
        return _UINT8

    def _dtype_error(self, name: object) -> BadRecord:
        """The error of a raw record whose ``dtype`` is ``name``, not an accepted one."""
        if not DTYPE.accepts(name):
            return DTYPE.reject(name)
        assert isinstance(name, str)
        model = self._dtype_name
        if name in WIRE_DTYPES:
            return BadRecord(
                BAD_DTYPE,
                f"dtype {name!r} cannot be converted to the model's {model} without loss; "
                f"expected {model!r}",
            )
        return BadRecord(BAD_DTYPE, f"unknown dtype {clip(name)!r}, expected one of {list(DTYPES)}")

    def _shape_error(self, shape: object) -> BadRecord:
        """The error of a present ``shape`` that is not the model's input shape."""
        if not SHAPE.accepts(shape):
            return SHAPE.reject(shape)
        return BadRecord(
            SHAPE_MISMATCH, f"expected shape {self._shape_list}, got {clip(str(shape))}"
        )


def _seq_out_of_range(seq: int) -> BadRecord:
    if seq < 0:
        return BadRecord(NEGATIVE_SEQ, f"'seq' must be >= 0, got {seq}")
    # The engine keeps the last applied seq per stream as int64.
    return BadRecord(BAD_VALUE, f"'seq' must be <= 2**63 - 1, got {seq}")


def _key_id(key: bytes | str) -> str:
    """The stream id a Kafka message key names, or ``BadRecord(BAD_STREAM_ID, ...)``."""
    if isinstance(key, str):
        try:  # msgpack strs are valid UTF-8, but a caller's str may hold lone surrogates
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRecord(BAD_STREAM_ID, "message key is not valid Unicode") from None
        return key
    try:
        return bytes(key).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(BAD_STREAM_ID, f"message key is not UTF-8: {exc}") from None
