"""Decoding and validating input records: :class:`RecordDecoder` (no I/O).

:class:`RecordDecoder` runs once per input record on the hot path, so it validates by hand
(no jsonschema at run time) and raises :class:`~processor.errors.BadRecord` with one of the
stable reason codes in :data:`~processor.codec.reasons.DECODE_REASONS`. Its batch form
:meth:`RecordDecoder.decode_many` gives exactly what :meth:`RecordDecoder.decode` gives,
record by record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import numpy as np

from processor.codec._common import type_name, unpack, unpack_or_bad_record
from processor.codec.images import ENCODINGS, ImageSize, check_header, decode_images, image_size
from processor.codec.reasons import (
    BAD_DTYPE,
    BAD_STREAM_ID,
    BAD_VALUE,
    KEY_MISMATCH,
    MISSING_FIELD,
    NEGATIVE_SEQ,
    NON_FINITE,
    NOT_A_MAP,
    OVERSIZE,
    SHAPE_MISMATCH,
    SIZE_MISMATCH,
    UNDECODABLE,
    WRONG_TYPE,
)
from processor.dtypes import DTYPES, WIRE_DTYPES
from processor.errors import BadRecord
from processor.records import Record

__all__ = ["MAX_SEQ", "RecordDecoder"]


class _PendingImage(NamedTuple):
    """An encoded image record that passed every check but the decode of its pixels."""

    stream: str
    seq: int
    ts: int | None
    reset: bool
    end: bool
    encoding: str
    size: ImageSize
    data: bytes


#: Largest accepted ``seq``: the engine keeps the last applied seq per stream as int64.
MAX_SEQ: Final = 2**63 - 1

# Memoised message keys before the memo is reset (~150 bytes each: bounded at ~40 MB; with
# more live streams than this the memo is refilled, which costs what no memo would).
_MAX_KEY_IDS: Final = 1 << 18
_PENDING: Final = BadRecord(UNDECODABLE, "internal: not decoded yet")  # decode_many placeholder


class RecordDecoder:
    """Validates and decodes input records for one model input signature.

    Built once at start-up (by the composition root) from the model's per-step input shape
    and dtype; :meth:`decode` (or :meth:`decode_many` for a batch) is then called by the
    engine/transport for every record, from one thread or many (its only mutable state is a
    memo of validated message keys, safe to share).
    """

    __slots__ = (
        "_accepted_dtypes",
        "_dtype_name",
        "_fast",
        "_float_model",
        "_image_size",
        "_input_dtype",
        "_input_shape",
        "_key_ids",
        "_max_record_bytes",
        "_max_stream_id_bytes",
        "_nbytes",
        "_shape_list",
        "_size",
    )

    def __init__(
        self,
        input_shape: tuple[int, ...],
        input_dtype: str | np.dtype[Any] = "float32",
        max_record_bytes: int = 4 * 1024 * 1024,
        max_stream_id_bytes: int = 256,
    ) -> None:
        """Raise ``ValueError`` for an unusable signature or limit.

        ``input_shape``: the model's per-step input shape (every dimension >= 1; ``()`` is a
        scalar). ``input_dtype``: one of :data:`~processor.dtypes.DTYPES` (byte order is
        ignored: decoded arrays use the native byte order).
        """
        shape = tuple(input_shape)
        if not all(type(d) is int and d >= 1 for d in shape):
            raise ValueError(f"input_shape must be positive ints, got {input_shape!r}")
        dtype = np.dtype(input_dtype)
        if dtype.name not in WIRE_DTYPES:
            raise ValueError(f"input_dtype must be one of {DTYPES}, got {dtype.name!r}")
        if max_record_bytes < 1:
            raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
        if max_stream_id_bytes < 1:
            raise ValueError(f"max_stream_id_bytes must be >= 1, got {max_stream_id_bytes}")
        self._input_shape = shape
        self._input_dtype: np.dtype[Any] = np.dtype(dtype.name)  # native byte order
        self._size = math.prod(shape)
        self._max_record_bytes = max_record_bytes
        self._max_stream_id_bytes = max_stream_id_bytes
        self._float_model = dtype.kind == "f"
        # Integer models accept only their own dtype: any other conversion could lose data.
        self._accepted_dtypes: frozenset[str] = (
            frozenset(DTYPES) if self._float_model else frozenset((dtype.name,))
        )
        # decode_many's fast path: bin x already in the model dtype, which must be the wire's
        # little-endian dtype in native order (always, except on big-endian hosts).
        self._fast = WIRE_DTYPES[dtype.name] == self._input_dtype and bool(shape)
        self._nbytes = self._size * self._input_dtype.itemsize
        self._shape_list = list(shape)
        self._image_size = image_size(shape)  # None: encoded images never fit this model
        self._dtype_name = dtype.name  # np.dtype.name is computed on each access (~1 us)
        # Message key bytes -> the stream id they name, for keys that passed every stream id
        # check (a bounded memo: ids repeat every step). Only ever holds valid pairs, so
        # concurrent use from several threads is safe (dict operations are atomic).
        self._key_ids: dict[bytes, str] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The per-step input shape every decoded ``Record.x`` has."""
        return self._input_shape

    @property
    def input_dtype(self) -> np.dtype[Any]:
        """The dtype (native byte order) every decoded ``Record.x`` has."""
        return self._input_dtype

    @property
    def max_record_bytes(self) -> int:
        """Largest accepted encoded record, in bytes."""
        return self._max_record_bytes

    def decode(self, value: bytes, key: bytes | str | None = None) -> Record:
        """Decode and validate one input record, or raise ``BadRecord(reason, detail)``.

        ``key``: the Kafka message key, if any. When given, it is the stream id if the record
        has no ``stream`` field and must equal it otherwise; ``bytes`` keys must be UTF-8.
        An empty key counts as given (and is then an invalid stream id).

        Guarantees on the returned record: ``x`` is C-contiguous with exactly
        :attr:`input_shape` and :attr:`input_dtype` and, for float models, only finite values.
        When ``x`` came as bin already in the model dtype, ``Record.x`` is a **read-only**
        view of an immutable ``bytes`` object created by the unpacker (no copy; it keeps
        nothing else of the record alive); otherwise it is a fresh, writable, owned array.
        Callers that need to write into ``x`` must copy it.

        Never raises anything but ``BadRecord`` for any ``value`` of type ``bytes``; the
        reason is one of :data:`~processor.codec.reasons.DECODE_REASONS`. Checks run in this
        order, so a record with several faults reports the first: size, msgpack, map, stream
        id, seq, ts, reset, end, encoding, dtype, shape, x. Monotonicity of ``seq`` is the
        engine's job.

        An ``x`` with ``encoding`` ``jpeg`` or ``png`` (its ``dtype`` must then be ``uint8``,
        the default, and the model's a float dtype or ``uint8``) is checked by its header
        first -- refused unread if it declares more pixel bytes than ``max_record_bytes``
        (``image_too_large``) or another size than the model's ``(H, W[, C])`` input
        (``image_wrong_size``) -- then decoded (``image_undecodable`` if it does not) and
        converted to the model's dtype; ``Record.x`` is then a fresh, writable array.
        """
        result = self._decode(value, key, defer_images=False)
        assert type(result) is Record  # only deferred decoding returns a _PendingImage
        return result

    def _decode(
        self, value: bytes, key: bytes | str | None, *, defer_images: bool
    ) -> Record | _PendingImage:
        """:meth:`decode`; with ``defer_images`` an encoded image that passed its header
        checks is returned undecoded, for :meth:`decode_many` to decode with its batch."""
        if len(value) > self._max_record_bytes:
            raise BadRecord(
                OVERSIZE,
                f"record is {len(value)} bytes, limit is {self._max_record_bytes}",
            )
        obj = unpack_or_bad_record(value)
        if type(obj) is not dict:
            raise BadRecord(NOT_A_MAP, f"expected a msgpack map, got {type_name(obj)}")
        # With strict_map_key the keys are str or bytes; bytes keys are unknown keys.

        stream = self._stream_id(obj, key)

        seq = obj.get("seq")
        if type(seq) is not int:
            if seq is None and "seq" not in obj:
                raise BadRecord(MISSING_FIELD, "missing field 'seq'")
            raise BadRecord(WRONG_TYPE, f"'seq' must be an int, got {type_name(seq)}")
        if seq < 0:
            raise BadRecord(NEGATIVE_SEQ, f"'seq' must be >= 0, got {seq}")
        if seq > MAX_SEQ:
            # The engine keeps the last applied seq per stream as int64.
            raise BadRecord(BAD_VALUE, f"'seq' must be <= 2**63 - 1, got {seq}")

        ts = obj.get("ts")
        if type(ts) is not int and (ts is not None or "ts" in obj):
            raise BadRecord(WRONG_TYPE, f"'ts' must be an int, got {type_name(ts)}")
        reset = obj.get("reset", False)
        if type(reset) is not bool:
            raise BadRecord(WRONG_TYPE, f"'reset' must be a bool, got {type_name(reset)}")
        end = obj.get("end", False)
        if type(end) is not bool:
            raise BadRecord(WRONG_TYPE, f"'end' must be a bool, got {type_name(end)}")

        encoding = obj.get("encoding", "raw")
        if encoding != "raw":
            if type(encoding) is not str:
                raise BadRecord(WRONG_TYPE, f"'encoding' must be a str, got {type_name(encoding)}")
            if encoding not in ENCODINGS:
                raise BadRecord(
                    BAD_VALUE,
                    f"unknown encoding {_clip(encoding)!r}, expected one of {list(ENCODINGS)}",
                )
            return self._decode_image(obj, encoding, stream, seq, ts, reset, end, defer_images)

        wire_dtype = self._wire_dtype(obj.get("dtype", "float32"))

        if "shape" in obj:
            self._check_shape(obj["shape"])

        if "x" not in obj:
            raise BadRecord(MISSING_FIELD, "missing field 'x'")
        x = obj["x"]
        if type(x) is bytes:
            arr = self._from_bin(x, wire_dtype)
        elif type(x) is list:
            arr = self._from_list(x, wire_dtype)
        else:
            raise BadRecord(
                WRONG_TYPE, f"'x' must be bin or an array of numbers, got {type_name(x)}"
            )
        # A finite sum of squares proves every value finite (inf/NaN would propagate; all
        # terms are >= 0 so there is no inf - inf); only when it is not do we pay for the
        # element-wise check, which also tells an overflowing sum from a real inf/NaN.
        if (
            self._float_model
            and not math.isfinite(np.vdot(arr, arr))
            and not np.isfinite(arr).all()
        ):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            after = (
                ""
                if wire_dtype.name == self._input_dtype.name
                else f" after conversion from {wire_dtype.name} to {self._input_dtype.name}"
            )
            raise BadRecord(
                NON_FINITE, f"'x' has {bad} NaN/infinite values out of {arr.size}{after}"
            )
        return Record(stream=stream, seq=seq, x=arr, ts=ts, reset=reset, end=end)

    def _decode_image(
        self,
        obj: dict[Any, Any],
        encoding: str,
        stream: str,
        seq: int,
        ts: int | None,
        reset: bool,
        end: bool,
        defer: bool,
    ) -> Record | _PendingImage:
        """The rest of :meth:`decode` for an ``x`` encoded as an image."""
        dtype = obj.get("dtype", "uint8")
        if type(dtype) is not str:
            raise BadRecord(WRONG_TYPE, f"'dtype' must be a str, got {type_name(dtype)}")
        if dtype != "uint8":
            raise BadRecord(
                BAD_DTYPE, f"a {encoding} 'x' holds uint8 pixels, but 'dtype' is {_clip(dtype)!r}"
            )
        if not self._float_model and self._dtype_name != "uint8":
            raise BadRecord(
                BAD_DTYPE,
                f"a {encoding} 'x' holds uint8 pixels, which the model's "
                f"{self._dtype_name} cannot take without loss",
            )
        if "shape" in obj:
            self._check_shape(obj["shape"])
        if "x" not in obj:
            raise BadRecord(MISSING_FIELD, "missing field 'x'")
        x = obj["x"]
        if type(x) is not bytes:
            raise BadRecord(WRONG_TYPE, f"a {encoding} 'x' must be bin, got {type_name(x)}")
        size = check_header(x, encoding, self._image_size, self._max_record_bytes)
        pending = _PendingImage(stream, seq, ts, reset, end, encoding, size, x)
        if defer:
            return pending
        result = self._finish_images([pending])[0]
        if type(result) is not Record:
            assert isinstance(result, BadRecord)
            raise result
        return result

    def _finish_images(self, pending: Sequence[_PendingImage]) -> list[Record | BadRecord]:
        """Decode the images of ``pending`` (one batch per encoding) into records."""
        out: list[Record | BadRecord] = [_PENDING] * len(pending)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pending):
            groups.setdefault(p.encoding, []).append(i)
        for encoding, idx in groups.items():
            size = pending[idx[0]].size  # every header matched the model's image size
            images = decode_images([pending[i].data for i in idx], encoding, size)
            for i, img in zip(idx, images, strict=True):
                if isinstance(img, BadRecord):
                    out[i] = img
                    continue
                p = pending[i]
                x = img.reshape(self._input_shape)  # (H, W, 1) -> (H, W) for 2-D models
                if x.dtype != self._input_dtype:
                    x = x.astype(self._input_dtype)  # uint8 -> float: exact, always finite
                out[i] = Record(p.stream, p.seq, x, p.ts, p.reset, p.end)
        return out

    def decode_many(
        self, values: Sequence[bytes], keys: Sequence[bytes | str | None]
    ) -> list[Record | BadRecord]:
        """Decode a batch: element ``i`` is what ``decode(values[i], keys[i])`` returns, or
        the :class:`~processor.errors.BadRecord` it raises (same reason, same detail).
        Raises ``ValueError`` if the two sequences differ in length.

        Cheaper per record than :meth:`decode` in the common case -- ``x`` as bin in the
        model's dtype, ``bytes`` or no key -- which it validates inline and finishes for the
        whole batch at once: one finiteness check over all the ``x`` values, and every such
        ``Record.x`` a **read-only** row view of one buffer shared by the batch (it keeps
        that buffer, a copy of the batch's ``x`` bytes, alive; no other part of the records).
        Any other record, and any record that fails a check, goes through :meth:`decode`,
        so the results never differ from it. Stream ids decoded from a repeated key are the
        same ``str`` object each time (cheaper dict lookups downstream).
        """
        n = len(values)
        if len(keys) != n:
            raise ValueError(f"{n} values but {len(keys)} keys")
        out: list[Any] = []  # Record | BadRecord, and _PendingImage until decoded
        images: list[int] = []  # positions in `out` of images awaiting the batch decode
        if not self._fast:
            for v, k in zip(values, keys, strict=True):
                out.append(self._deferred_or_error(v, k, images, len(out)))
            return self._with_images(out, images)
        fast_rows: list[int] = []  # positions in `out` of records on the fast path
        fields: list[tuple[str, int, int | None, bool, bool, bytes]] = []
        xs: list[bytes] = []
        fast = self._fast_fields
        for value, key in zip(values, keys, strict=True):
            f = fast(value, key)
            if f is None:
                out.append(self._deferred_or_error(value, key, images, len(out)))
                continue
            fast_rows.append(len(out))
            out.append(_PENDING)
            fields.append(f)
            xs.append(f[5])
        if images:
            out = self._with_images(out, images)
        if not fast_rows:
            return out
        arr = np.frombuffer(b"".join(xs), dtype=self._input_dtype)
        arr = arr.reshape(len(fast_rows), *self._input_shape)
        rows: list[np.ndarray] = list(arr)
        if self._float_model:
            finite = np.isfinite(arr.reshape(len(fast_rows), -1)).all(axis=1)
            if not finite.all():
                for j in np.flatnonzero(~finite).tolist():  # decode() reports non_finite
                    i = fast_rows[j]
                    out[i] = self._decode_or_error(values[i], keys[i])
                    fast_rows[j] = -1
        for i, (stream, seq, ts, reset, end, _), x in zip(fast_rows, fields, rows, strict=True):
            if i >= 0:
                out[i] = Record(stream, seq, x, ts, reset, end)
        return out

    def _fast_fields(
        self, value: bytes, key: bytes | str | None
    ) -> tuple[str, int, int | None, bool, bool, bytes] | None:
        """``(stream, seq, ts, reset, end, x bytes)`` of a record that passes every check of
        :meth:`decode` except finiteness, with ``x`` as bin in the model's dtype; ``None``
        for anything else (then :meth:`decode` decides). Hot path: checks inline."""
        if len(value) > self._max_record_bytes:
            return None
        try:
            obj = unpack(value)
        except Exception:  # decode() reports it (undecodable)
            return None
        if type(obj) is not dict:
            return None
        get = obj.get
        if type(key) is bytes:
            sid = self._key_ids.get(key)
            if sid is None:
                sid = self._key_id_or_none(key)
                if sid is None:
                    return None
            stream = get("stream", sid)
            if stream is not sid and stream != sid:
                return None  # wrong type, nil or another id
            stream = sid
        elif key is None:
            stream = get("stream")
            if type(stream) is not str or not stream or len(stream) * 4 > self._max_stream_id_bytes:
                return None
        else:
            return None
        seq = get("seq")
        if type(seq) is not int or seq < 0 or seq > MAX_SEQ:
            return None
        ts = get("ts")
        if (ts is None and "ts" in obj) or (ts is not None and type(ts) is not int):
            return None
        reset = get("reset", False)
        end = get("end", False)
        if type(reset) is not bool or type(end) is not bool:
            return None
        if get("dtype", "float32") != self._dtype_name:
            return None
        if "encoding" in obj and get("encoding") != "raw":
            return None  # an image (or a bad encoding) is decode()'s
        shape = get("shape")
        if shape is None:
            if "shape" in obj:
                return None
        else:
            if type(shape) is not list or shape != self._shape_list:
                return None
            for d in shape:  # equal values, but 32.0 == 32 and True == 1: check the types
                if type(d) is not int:
                    return None
        x = get("x")
        if type(x) is not bytes or len(x) != self._nbytes:
            return None
        return stream, seq, ts, reset, end, x

    def _deferred_or_error(
        self, value: bytes, key: bytes | str | None, images: list[int], at: int
    ) -> Record | BadRecord | _PendingImage:
        """What :meth:`decode` gives, except that an image that passed its header checks is
        returned undecoded and its position ``at`` appended to ``images``."""
        try:
            result = self._decode(value, key, defer_images=True)
        except BadRecord as exc:
            return exc
        if type(result) is _PendingImage:
            images.append(at)
        return result

    def _with_images(self, out: list[Any], images: list[int]) -> list[Record | BadRecord]:
        """``out`` with the pending images at positions ``images`` decoded (in one batch)."""
        if images:
            for i, result in zip(
                images, self._finish_images([out[i] for i in images]), strict=True
            ):
                out[i] = result
        return out

    def _decode_or_error(self, value: bytes, key: bytes | str | None) -> Record | BadRecord:
        try:
            return self.decode(value, key)
        except BadRecord as exc:
            return exc

    def _key_id_or_none(self, key: bytes) -> str | None:
        """The stream id a bytes key names if it passes every stream id check (then
        memoised), else ``None``."""
        try:
            sid = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not sid or len(key) > self._max_stream_id_bytes:
            return None
        if len(self._key_ids) >= _MAX_KEY_IDS:
            self._key_ids.clear()
        self._key_ids[key] = sid
        return sid

    # -- field checks (each raises BadRecord) ---------------------------------------------

    def _stream_id(self, obj: dict[Any, Any], key: bytes | str | None) -> str:
        if "stream" in obj:
            stream = obj["stream"]
            if type(stream) is not str:
                raise BadRecord(BAD_STREAM_ID, f"'stream' must be a str, got {type_name(stream)}")
            if key is not None:
                key_id = _key_id(key)
                if stream != key_id:
                    raise BadRecord(
                        KEY_MISMATCH,
                        f"'stream' is {_clip(stream)!r} but the message key is {_clip(key_id)!r}",
                    )
        elif key is not None:
            stream = _key_id(key)
        else:
            raise BadRecord(MISSING_FIELD, "missing field 'stream' and no message key")
        if not stream:
            raise BadRecord(BAD_STREAM_ID, "stream id is empty")
        limit = self._max_stream_id_bytes
        if len(stream) * 4 > limit:  # cheap bound first: UTF-8 takes at most 4 bytes a char
            n = len(stream.encode("utf-8"))
            if n > limit:
                raise BadRecord(BAD_STREAM_ID, f"stream id is {n} bytes in UTF-8, limit is {limit}")
        return stream

    def _wire_dtype(self, name: object) -> np.dtype[Any]:
        if type(name) is not str:
            raise BadRecord(WRONG_TYPE, f"'dtype' must be a str, got {type_name(name)}")
        if name not in self._accepted_dtypes:
            if name in WIRE_DTYPES:
                raise BadRecord(
                    BAD_DTYPE,
                    f"dtype {name!r} cannot be converted to the model's "
                    f"{self._input_dtype.name} without loss; expected {self._input_dtype.name!r}",
                )
            raise BadRecord(
                BAD_DTYPE, f"unknown dtype {_clip(name)!r}, expected one of {list(DTYPES)}"
            )
        return WIRE_DTYPES[name]

    def _check_shape(self, shape: object) -> None:
        if type(shape) is not list or not all(type(d) is int for d in shape):
            raise BadRecord(WRONG_TYPE, f"'shape' must be an array of ints, got {_describe(shape)}")
        if tuple(shape) != self._input_shape:
            raise BadRecord(
                SHAPE_MISMATCH,
                f"expected shape {list(self._input_shape)}, got {_clip(str(shape))}",
            )

    def _from_bin(self, data: bytes, wire: np.dtype[Any]) -> np.ndarray:
        expected = self._size * wire.itemsize
        if len(data) != expected:
            raise BadRecord(
                SIZE_MISMATCH,
                f"'x' has {len(data)} bytes, expected {expected} "
                f"({self._size} x {wire.name} for shape {list(self._input_shape)})",
            )
        arr = np.frombuffer(data, dtype=wire)
        if len(self._input_shape) != 1:  # frombuffer is already 1-D; reshape costs ~0.15 us
            arr = arr.reshape(self._input_shape)
        return self._convert(arr)

    def _from_list(self, x: list[Any], wire: np.dtype[Any]) -> np.ndarray:
        shape = self._input_shape
        if len(shape) > 1 and x and type(x[0]) is list:
            flat = self._flatten_nested(x)
        elif len(x) != self._size:
            raise BadRecord(
                SIZE_MISMATCH,
                f"'x' has {len(x)} elements, expected {self._size} for shape {list(shape)}",
            )
        else:
            flat = x
        integral = wire.kind in "iu"
        for i, v in enumerate(flat):
            t = type(v)
            if t is int or (t is float and not integral):
                continue
            where = self._index(i, nested=flat is not x)
            if t is float:
                raise BadRecord(BAD_VALUE, f"'x{where}' is a float, dtype {wire.name} needs ints")
            if t is list:
                raise BadRecord(
                    SHAPE_MISMATCH, f"'x{where}' is nested deeper than shape {list(shape)}"
                )
            raise BadRecord(BAD_VALUE, f"'x{where}' must be a number, got {type_name(v)}")
        try:
            with np.errstate(over="ignore"):  # float overflow becomes inf: reported non_finite
                arr = np.array(flat, dtype=wire).reshape(shape)
        except OverflowError as exc:  # an int out of range for an integer dtype
            raise BadRecord(BAD_VALUE, f"'x' value out of range for {wire.name}: {exc}") from None
        return self._convert(arr)

    def _flatten_nested(self, x: list[Any]) -> list[Any]:
        """Check that ``x`` nests exactly like the input shape; return its leaves in C order."""
        level: list[Any] = [x]
        for depth, n in enumerate(self._input_shape):
            nxt: list[Any] = []
            for item in level:
                if type(item) is not list:
                    raise BadRecord(
                        SHAPE_MISMATCH,
                        f"'x' is nested {depth} deep, expected {len(self._input_shape)} "
                        f"for shape {list(self._input_shape)}",
                    )
                if len(item) != n:
                    raise BadRecord(
                        SHAPE_MISMATCH,
                        f"'x' has {len(item)} elements at depth {depth}, expected {n} "
                        f"for shape {list(self._input_shape)}",
                    )
                nxt.extend(item)
            level = nxt
        return level

    def _index(self, flat_index: int, *, nested: bool) -> str:
        if not nested:
            return f"[{flat_index}]"
        idx = np.unravel_index(flat_index, self._input_shape)
        return "".join(f"[{int(i)}]" for i in idx)

    def _convert(self, arr: np.ndarray) -> np.ndarray:
        """Return ``arr`` as the model dtype: itself if it already is, else an owned copy."""
        if arr.dtype == self._input_dtype:
            return arr
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf -> non_finite
            return arr.astype(self._input_dtype)


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


def _clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, so a hostile value cannot flood logs."""
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(value: object) -> str:
    if type(value) is list:
        kinds = sorted({type_name(v) for v in value})
        return f"array of {'/'.join(kinds)}" if kinds else "empty array"
    return type_name(value)
