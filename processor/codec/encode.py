"""Encoding input and output records, and decoding output records (no I/O).

Input records are encoded by load generators, producers and tests; output records by the
engine's transports (:func:`encode_outputs` is the Kafka runtime's and replay's hot path) and
decoded by tail tools and tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import msgpack
import numpy as np

from processor.codec._common import (
    LE_FLOAT32,
    OUTPUT_DTYPE,
    le_bytes,
    type_name,
    unpack_or_bad_record,
)
from processor.codec.fields import ABSENT, TS, FieldRule
from processor.codec.reasons import BAD_DTYPE, NOT_A_MAP, SIZE_MISMATCH, WRONG_TYPE
from processor.dtypes import DTYPES, WIRE_DTYPES
from processor.errors import BadRecord
from processor.records import Output

__all__ = ["decode_output", "encode_input", "encode_output", "encode_outputs"]


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

    ``dtype`` is taken from ``x.dtype`` (must be one of :data:`~processor.dtypes.DTYPES`,
    else ``ValueError``); ``x`` is written as little-endian bin in C order, or with
    ``as_list`` as a flat array of numbers. ``reset``/``end`` are written only when true
    and ``ts`` only when given. ``include_stream=False`` omits ``stream`` (the Kafka key
    then carries it). Values are not validated (tests use this to build records the decoder
    must reject).
    """
    arr = np.asarray(x)
    name = arr.dtype.name
    if name not in WIRE_DTYPES:
        raise ValueError(f"x.dtype must be one of {DTYPES}, got {name!r}")
    record: dict[str, object] = {}
    if include_stream:
        record["stream"] = stream
    record["seq"] = seq
    record["x"] = arr.ravel().tolist() if as_list else le_bytes(arr, WIRE_DTYPES[name])
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
        "y": le_bytes(y, LE_FLOAT32),
        "shape": list(y.shape),
        "dtype": OUTPUT_DTYPE,
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
    data = np.ascontiguousarray(ys, dtype=LE_FLOAT32).tobytes()
    size = len(data) // n
    packer = msgpack.Packer(use_bin_type=True)  # autoreset: pack() returns the bytes
    pack = packer.pack
    y_bin = pack(b"\x00" * size)
    # The constant pieces; map headers are fixmaps (5 or 6 entries, with ts last).
    head5, head6 = b"\x85" + pack("stream"), b"\x86" + pack("stream")
    seq_key = pack("seq")
    y_key = pack("y") + y_bin[: len(y_bin) - size]  # the key and the bin header of `size`
    tail = pack("shape") + pack(list(ys.shape[1:])) + pack("dtype") + pack(OUTPUT_DTYPE)
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
    keys dropped. Raises ``BadRecord`` (reasons from
    :data:`~processor.codec.reasons.DECODE_REASONS`) on a malformed record.
    """
    obj = unpack_or_bad_record(value)
    if type(obj) is not dict:
        raise BadRecord(NOT_A_MAP, f"expected a msgpack map, got {type_name(obj)}")
    for rule in _OUTPUT_FIELDS:
        value = obj.get(rule.name, ABSENT)
        if not rule.accepts(value):
            raise rule.reject(value)
    shape = obj["shape"]
    if not all(type(d) is int and d >= 1 for d in shape):
        raise BadRecord(WRONG_TYPE, f"'shape' must be an array of ints >= 1, got {shape!r}")
    if obj.get("dtype") != OUTPUT_DTYPE:
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
        "y": np.frombuffer(y_bytes, dtype=LE_FLOAT32).astype(np.float32).reshape(shape),
        "shape": shape,
        "dtype": OUTPUT_DTYPE,
    }
    if "ts" in obj:
        if not TS.accepts(obj["ts"]):
            raise TS.reject(obj["ts"])
        result["ts"] = obj["ts"]
    return result


# The output record's required fields, in check order (its `ts` is an input record's).
_OUTPUT_FIELDS: Final = tuple(
    FieldRule(name, (kind,), kind.__name__, f"missing field {name!r}", shown=repr)
    for name, kind in (("stream", str), ("seq", int), ("y", bytes), ("shape", list))
)
