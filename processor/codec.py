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
============  ========================================================================

Unknown extra keys are ignored (forward compatibility). Output records carry ``stream``,
``seq``, ``y`` (bin, little-endian float32), ``shape``, ``dtype`` (``"float32"``) and ``ts``
when the input had one. Dead-letter records carry ``reason``, ``detail``, ``record`` (bin, the
original bytes) and optionally ``source``, ``offset`` and ``index``.

:class:`RecordDecoder` runs once per input record on the hot path, so it validates by hand
(no jsonschema at run time) and raises :class:`~processor.errors.BadRecord` with one of the
stable reason codes in :data:`REASONS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import msgpack
import numpy as np

from processor.errors import BadRecord
from processor.records import Output, Record

__all__ = [
    "BAD_DTYPE",
    "BAD_STREAM_ID",
    "BAD_VALUE",
    "DTYPES",
    "KEY_MISMATCH",
    "MISSING_FIELD",
    "NEGATIVE_SEQ",
    "NON_FINITE",
    "NOT_A_MAP",
    "OVERSIZE",
    "REASONS",
    "SHAPE_MISMATCH",
    "SIZE_MISMATCH",
    "TRUNCATED",
    "UNDECODABLE",
    "WRONG_TYPE",
    "Frame",
    "RecordDecoder",
    "decode_dead_letter",
    "decode_output",
    "encode_dead_letter",
    "encode_input",
    "encode_output",
    "encode_outputs",
    "iter_framed",
]

# Stable reason codes (metric labels, dead-letter headers). Never rename one.
OVERSIZE: Final = "oversize"
UNDECODABLE: Final = "undecodable"
NOT_A_MAP: Final = "not_a_map"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
BAD_STREAM_ID: Final = "bad_stream_id"
KEY_MISMATCH: Final = "key_mismatch"
NEGATIVE_SEQ: Final = "negative_seq"
MAX_SEQ: Final = 2**63 - 1  # the engine stores seqs as int64
BAD_DTYPE: Final = "bad_dtype"
SHAPE_MISMATCH: Final = "shape_mismatch"
SIZE_MISMATCH: Final = "size_mismatch"
NON_FINITE: Final = "non_finite"
BAD_VALUE: Final = "bad_value"

#: Every reason :meth:`RecordDecoder.decode` can raise (stable codes; never rename one).
REASONS: Final[tuple[str, ...]] = (
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
)

#: Frame error for a partial object at the end of a file (see :func:`iter_framed`).
TRUNCATED: Final = "truncated"

# Wire dtype names and their little-endian numpy dtypes (the wire is always little-endian).
_WIRE_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float16", "float64", "uint8", "int8", "int16", "int32")
}
#: Accepted values of the ``dtype`` field.
DTYPES: Final[tuple[str, ...]] = tuple(_WIRE_DTYPES)

# Memoised message keys before the memo is reset (~150 bytes each: bounded at ~40 MB; with
# more live streams than this the memo is refilled, which costs what no memo would).
_MAX_KEY_IDS: Final = 1 << 18
_PENDING: Final = BadRecord(UNDECODABLE, "internal: not decoded yet")  # decode_many placeholder

_OUTPUT_DTYPE: Final = "float32"
_LE_FLOAT32: Final = _WIRE_DTYPES["float32"]


def _type_name(value: object) -> str:
    """A short name for an unpacked msgpack value, for error details."""
    if value is None:
        return "nil"
    if isinstance(value, bytes):
        return "bin"
    return type(value).__name__


def _unpack(value: bytes) -> object:
    """Unpack exactly one msgpack object with size limits derived from ``len(value)``.

    No string, bin, array, map or ext inside a buffer of n bytes can legitimately be longer
    than n (a map entry takes at least 2 bytes), so these limits reject a lying length header
    before msgpack allocates for it. Raises ``ValueError``/``msgpack.UnpackException``
    (invalid data, trailing bytes, limits, invalid UTF-8, non-string map keys, nesting too
    deep).
    """
    n = len(value)
    return msgpack.unpackb(
        value,
        raw=False,
        strict_map_key=True,
        max_bin_len=n,
        max_str_len=n,
        max_array_len=n,
        max_map_len=n // 2,
        max_ext_len=n,
    )


def _unpack_or_bad_record(value: bytes) -> object:
    """:func:`_unpack`, raising ``BadRecord(UNDECODABLE, ...)`` on any parse failure."""
    try:
        return _unpack(value)
    except msgpack.ExtraData as exc:
        raise BadRecord(
            UNDECODABLE,
            f"{len(exc.extra)} trailing bytes after a complete msgpack object",
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadRecord(UNDECODABLE, f"invalid msgpack: {exc}") from None


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
        scalar). ``input_dtype``: one of :data:`DTYPES` (byte order is ignored: decoded
        arrays use the native byte order).
        """
        shape = tuple(input_shape)
        if not all(type(d) is int and d >= 1 for d in shape):
            raise ValueError(f"input_shape must be positive ints, got {input_shape!r}")
        dtype = np.dtype(input_dtype)
        if dtype.name not in _WIRE_DTYPES:
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
        self._fast = _WIRE_DTYPES[dtype.name] == self._input_dtype and bool(shape)
        self._nbytes = self._size * self._input_dtype.itemsize
        self._shape_list = list(shape)
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
        reason is one of :data:`REASONS`. Checks run in this order, so a record with several
        faults reports the first: size, msgpack, map, stream id, seq, ts, reset, end, dtype,
        shape, x. Monotonicity of ``seq`` is the engine's job.
        """
        if len(value) > self._max_record_bytes:
            raise BadRecord(
                OVERSIZE,
                f"record is {len(value)} bytes, limit is {self._max_record_bytes}",
            )
        obj = _unpack_or_bad_record(value)
        if type(obj) is not dict:
            raise BadRecord(NOT_A_MAP, f"expected a msgpack map, got {_type_name(obj)}")
        # With strict_map_key the keys are str or bytes; bytes keys are unknown keys.

        stream = self._stream_id(obj, key)

        seq = obj.get("seq")
        if type(seq) is not int:
            if seq is None and "seq" not in obj:
                raise BadRecord(MISSING_FIELD, "missing field 'seq'")
            raise BadRecord(WRONG_TYPE, f"'seq' must be an int, got {_type_name(seq)}")
        if seq < 0:
            raise BadRecord(NEGATIVE_SEQ, f"'seq' must be >= 0, got {seq}")
        if seq > MAX_SEQ:
            # The engine keeps the last applied seq per stream as int64.
            raise BadRecord(BAD_VALUE, f"'seq' must be <= 2**63 - 1, got {seq}")

        ts = obj.get("ts")
        if type(ts) is not int and (ts is not None or "ts" in obj):
            raise BadRecord(WRONG_TYPE, f"'ts' must be an int, got {_type_name(ts)}")
        reset = obj.get("reset", False)
        if type(reset) is not bool:
            raise BadRecord(WRONG_TYPE, f"'reset' must be a bool, got {_type_name(reset)}")
        end = obj.get("end", False)
        if type(end) is not bool:
            raise BadRecord(WRONG_TYPE, f"'end' must be a bool, got {_type_name(end)}")

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
                WRONG_TYPE, f"'x' must be bin or an array of numbers, got {_type_name(x)}"
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
        out: list[Record | BadRecord] = []
        if not self._fast:
            return [self._decode_or_error(v, k) for v, k in zip(values, keys, strict=True)]
        fast_rows: list[int] = []  # positions in `out` of records on the fast path
        fields: list[tuple[str, int, int | None, bool, bool, bytes]] = []
        xs: list[bytes] = []
        fast = self._fast_fields
        for value, key in zip(values, keys, strict=True):
            f = fast(value, key)
            if f is None:
                out.append(self._decode_or_error(value, key))
                continue
            fast_rows.append(len(out))
            out.append(_PENDING)
            fields.append(f)
            xs.append(f[5])
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
            obj = _unpack(value)
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
                raise BadRecord(BAD_STREAM_ID, f"'stream' must be a str, got {_type_name(stream)}")
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
            raise BadRecord(WRONG_TYPE, f"'dtype' must be a str, got {_type_name(name)}")
        if name not in self._accepted_dtypes:
            if name in _WIRE_DTYPES:
                raise BadRecord(
                    BAD_DTYPE,
                    f"dtype {name!r} cannot be converted to the model's "
                    f"{self._input_dtype.name} without loss; expected {self._input_dtype.name!r}",
                )
            raise BadRecord(
                BAD_DTYPE, f"unknown dtype {_clip(name)!r}, expected one of {list(DTYPES)}"
            )
        return _WIRE_DTYPES[name]

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
            raise BadRecord(BAD_VALUE, f"'x{where}' must be a number, got {_type_name(v)}")
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
        kinds = sorted({_type_name(v) for v in value})
        return f"array of {'/'.join(kinds)}" if kinds else "empty array"
    return _type_name(value)


# -- encoders -----------------------------------------------------------------------------


def _le_bytes(arr: np.ndarray, dtype: np.dtype[Any]) -> bytes:
    """C-order little-endian bytes of ``arr`` converted to ``dtype``."""
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def encode_input(
    stream: str,
    seq: int,
    x: np.ndarray,
    *,
    ts: int | None = None,
    reset: bool = False,
    end: bool = False,
    as_list: bool = False,
    include_shape: bool = True,
    include_stream: bool = True,
) -> bytes:
    """Encode one input record (for load generators, producers and tests).

    ``dtype`` is taken from ``x.dtype`` (must be one of :data:`DTYPES`, else ``ValueError``);
    ``x`` is written as little-endian bin in C order, or with ``as_list`` as a flat array of
    numbers. ``reset``/``end`` are written only when true and ``ts`` only when given.
    ``include_stream=False`` omits ``stream`` (the Kafka key then carries it). Values are not
    validated (tests use this to build records the decoder must reject).
    """
    arr = np.asarray(x)
    name = arr.dtype.name
    if name not in _WIRE_DTYPES:
        raise ValueError(f"x.dtype must be one of {DTYPES}, got {name!r}")
    record: dict[str, object] = {}
    if include_stream:
        record["stream"] = stream
    record["seq"] = seq
    record["x"] = arr.ravel().tolist() if as_list else _le_bytes(arr, _WIRE_DTYPES[name])
    record["dtype"] = name
    if include_shape:
        record["shape"] = list(arr.shape)
    if ts is not None:
        record["ts"] = ts
    if reset:
        record["reset"] = True
    if end:
        record["end"] = True
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def encode_output(out: Output) -> bytes:
    """Encode one output record; ``y`` is written as little-endian float32 in C order.

    ``ts`` is written only when ``out.ts`` is not ``None``. Called by the engine/transport
    for every output, so it does no validation beyond the float32 conversion.
    """
    y = np.asarray(out.y)
    record: dict[str, object] = {
        "stream": out.stream,
        "seq": out.seq,
        "y": _le_bytes(y, _LE_FLOAT32),
        "shape": list(y.shape),
        "dtype": _OUTPUT_DTYPE,
    }
    if out.ts is not None:
        record["ts"] = out.ts
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def encode_outputs(outputs: Sequence[Output]) -> list[bytes]:
    """:func:`encode_output` of every output, byte for byte, with less work per record.

    The hot path of the Kafka runtime (one call per engine batch): when every ``y`` has the
    same shape (the model's), the ``y`` values are converted with one numpy call, and each
    record is joined from constant pieces (map header, keys, the ``y`` bin header, ``shape``
    and ``dtype``) plus its packed ``stream``, ``seq`` and ``ts``, in the key order
    :func:`encode_output` writes. Otherwise it falls back to :func:`encode_output`.
    """
    n = len(outputs)
    if n == 0:
        return []
    try:
        ys = np.stack([o.y for o in outputs])
    except ValueError:  # differing shapes: no common layout
        return [encode_output(o) for o in outputs]
    data = np.ascontiguousarray(ys, dtype=_LE_FLOAT32).tobytes()
    size = len(data) // n
    packer = msgpack.Packer(use_bin_type=True)  # autoreset: pack() returns the bytes
    pack = packer.pack
    y_bin = pack(b"\x00" * size)
    # The constant pieces; map headers are fixmaps (5 or 6 entries, with ts last).
    head5, head6 = b"\x85" + pack("stream"), b"\x86" + pack("stream")
    seq_key = pack("seq")
    y_key = pack("y") + y_bin[: len(y_bin) - size]  # the key and the bin header of `size`
    tail = pack("shape") + pack(list(ys.shape[1:])) + pack("dtype") + pack(_OUTPUT_DTYPE)
    ts_key = pack("ts")
    out: list[bytes] = []
    append = out.append
    join = b"".join
    start = 0
    for o in outputs:
        end = start + size
        y = data[start:end]
        start = end
        ts = o.ts
        if ts is None:
            append(join((head5, pack(o.stream), seq_key, pack(o.seq), y_key, y, tail)))
        else:
            parts = (head6, pack(o.stream), seq_key, pack(o.seq), y_key, y, tail, ts_key, pack(ts))
            append(join(parts))
    return out


def decode_output(value: bytes) -> dict[str, Any]:
    """Decode one output record (for tail tools and tests).

    Returns ``{"stream", "seq", "y", "shape", "dtype"}`` plus ``"ts"`` when present, with
    ``y`` a native-endian float32 ``np.ndarray`` of ``shape`` (a list of ints) and unknown
    keys dropped. Raises ``BadRecord`` (reasons from :data:`REASONS`) on a malformed record.
    """
    obj = _unpack_or_bad_record(value)
    if type(obj) is not dict:
        raise BadRecord(NOT_A_MAP, f"expected a msgpack map, got {_type_name(obj)}")
    for name, kind in (("stream", str), ("seq", int), ("y", bytes), ("shape", list)):
        if name not in obj:
            raise BadRecord(MISSING_FIELD, f"missing field {name!r}")
        if type(obj[name]) is not kind:
            raise BadRecord(WRONG_TYPE, f"{name!r} must be {kind.__name__}, got {obj[name]!r}")
    shape = obj["shape"]
    if not all(type(d) is int and d >= 1 for d in shape):
        raise BadRecord(WRONG_TYPE, f"'shape' must be an array of ints >= 1, got {shape!r}")
    if obj.get("dtype") != _OUTPUT_DTYPE:
        raise BadRecord(BAD_DTYPE, f"expected dtype 'float32', got {obj.get('dtype')!r}")
    y_bytes: bytes = obj["y"]
    expected = math.prod(shape) * 4
    if len(y_bytes) != expected:
        raise BadRecord(
            SIZE_MISMATCH, f"'y' has {len(y_bytes)} bytes, expected {expected} for {shape}"
        )
    result: dict[str, Any] = {
        "stream": obj["stream"],
        "seq": obj["seq"],
        "y": np.frombuffer(y_bytes, dtype=_LE_FLOAT32).astype(np.float32).reshape(shape),
        "shape": shape,
        "dtype": _OUTPUT_DTYPE,
    }
    if "ts" in obj:
        if type(obj["ts"]) is not int:
            raise BadRecord(WRONG_TYPE, f"'ts' must be an int, got {_type_name(obj['ts'])}")
        result["ts"] = obj["ts"]
    return result


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
    when given. ``reason`` is not restricted to :data:`REASONS` (framing and engine reasons
    such as :data:`TRUNCATED` go here too).
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
    (reasons from :data:`REASONS`) on a malformed record.
    """
    obj = _unpack_or_bad_record(value)
    if type(obj) is not dict:
        raise BadRecord(NOT_A_MAP, f"expected a msgpack map, got {_type_name(obj)}")
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
                WRONG_TYPE, f"{name!r} must be {kind.__name__}, got {_type_name(obj[name])}"
            )
        result[name] = obj[name]
    return result


# -- framing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One top-level object of a file of concatenated msgpack records.

    ``offset``: byte offset of the object's first byte in the file. ``raw``: the object's
    original bytes (feed them to :meth:`RecordDecoder.decode`, or verbatim to a dead-letter
    file), or ``None`` when they were not kept. ``error``: ``None`` for a complete object,
    else ``"<reason>"`` or ``"<reason>: <detail>"`` with reason :data:`OVERSIZE`,
    :data:`TRUNCATED` or :data:`UNDECODABLE`.
    """

    offset: int
    raw: bytes | None
    error: str | None = None

    @property
    def reason(self) -> str | None:
        """The reason code of :attr:`error` (without the detail), or ``None``."""
        return None if self.error is None else self.error.partition(":")[0]


def iter_framed(fp: BinaryIO, max_record_bytes: int, chunk_size: int = 1 << 20) -> Iterator[Frame]:
    """Split a binary stream of concatenated msgpack objects into frames, in file order.

    Only the structure is checked here (so a frame may still be rejected by the decoder:
    an int is a valid frame whose decoding gives ``not_a_map``; invalid UTF-8 in a string
    is a valid frame too). ``fp`` is read in ``chunk_size`` pieces from its current
    position; offsets count from there. Memory stays below about
    ``2 * (max_record_bytes + chunk_size)`` whatever the file holds.

    Exactly one frame per top-level object:

    * a complete object of at most ``max_record_bytes``: ``Frame(offset, raw, None)``;
    * a complete object larger than that: ``Frame(offset, None, "oversize")``; its bytes are
      dropped as they are read and iteration goes on after it. Array and map headers are
      trusted while skipping: a corrupt header declaring billions of items swallows the rest
      of the file (which then ends in ``"truncated"``), with memory still bounded;
    * an object holding a single str/bin/ext payload longer than the parse buffer, about
      ``max_record_bytes + chunk_size`` (msgpack can only pass a payload once it is buffered
      whole): ``Frame(offset, None, "oversize: <detail>; cannot skip safely")`` and
      **iteration stops**;
    * a partial object at end of file: ``Frame(offset, raw, "truncated")``, last; ``raw`` is
      the partial bytes, or ``None`` when there were ``max_record_bytes`` or more;
    * bytes that are not msgpack (e.g. the reserved byte 0xc1) or nest deeper than msgpack's
      parser allows: ``Frame(offset, None, "undecodable: <detail>")`` and **iteration stops**,
      since there is no way to find the next object boundary.

    So an error starting with ``"oversize:"`` or ``"undecodable:"`` is always the last frame.
    """
    if max_record_bytes < 1:
        raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    # skip() parses without building anything (so the max_*_len limits, which guard
    # construction, do not apply) and resumes where the last feed ended: only a single
    # str/bin/ext payload must be contiguous in the unpacker's buffer, which max_buffer_size
    # bounds. Before an object is known to be oversize, at most max_record_bytes of it are
    # unparsed, plus one chunk.
    unpacker = msgpack.Unpacker(raw=True, max_buffer_size=max_record_bytes + chunk_size + 64)
    buf = bytearray()  # file bytes from buf_start on, kept to hand out raw frames
    buf_start = 0
    start = 0  # offset of the object being parsed
    fed = 0  # bytes fed to the unpacker so far
    discarding = False  # the current object is oversize: its bytes are not kept
    eof = False
    while True:
        try:
            unpacker.skip()
        except msgpack.OutOfData:
            if eof:
                if fed > start:
                    raw = None if discarding else bytes(buf[start - buf_start :])
                    yield Frame(start, raw, TRUNCATED)
                return
            if not discarding and fed - start >= max_record_bytes:
                # Incomplete after max_record_bytes bytes, so longer than that: stop keeping
                # its bytes; its one frame comes when we know how it ends.
                discarding = True
                buf.clear()
                buf_start = fed
            chunk = fp.read(chunk_size)
            if not chunk:
                eof = True
                continue
            try:
                unpacker.feed(chunk)
            except msgpack.BufferFull:  # only possible while discarding (see above)
                yield Frame(
                    start,
                    None,
                    f"{OVERSIZE}: a str/bin/ext payload longer than the parse buffer "
                    f"({max_record_bytes} + {chunk_size} bytes); cannot skip safely",
                )
                return
            if discarding:
                # The object, if it ends, ends inside the newest chunk: keep only that.
                buf = bytearray(chunk)
                buf_start = fed
            else:
                buf += chunk
            fed += len(chunk)
            continue
        except (ValueError, msgpack.UnpackException) as exc:  # FormatError, StackError
            yield Frame(start, None, f"{UNDECODABLE}: {exc}")
            return
        end = unpacker.tell()
        if discarding or end - start > max_record_bytes:
            discarding = False
            yield Frame(start, None, OVERSIZE)
        else:
            yield Frame(start, bytes(buf[start - buf_start : end - buf_start]), None)
        del buf[: end - buf_start]
        buf_start = start = end
