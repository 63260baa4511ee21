"""The value of a state-topic record: one stream's LSTM state as a msgpack map (no I/O).

Each input topic has a compacted state topic (see :mod:`processor.kafka.durable.topic`); its
records are keyed by the stream id's UTF-8 bytes and hold the stream's state after its last
applied record, or a tombstone (no value) once the stream has ended. The value is a msgpack
map, described by ``schemas/state-record.schema.json``:

``v``
    :data:`STATE_FORMAT_VERSION`; another version is refused (:class:`BadStateRecordError`).
``fp``
    The model's state fingerprint, ``[[name, [dims...]], ...]`` (:func:`state_fingerprint`).
    A record whose fingerprint differs from the reading model's belongs to another model and
    is refused (:class:`StateMismatchError`).
``model``
    The writing model's identity (a file digest). Informational only: retraining a model
    without changing its state layout keeps its states usable.
``dtype``
    Storage dtype of the tensors: ``float32``, ``float16`` or ``bfloat16``.
``seq``
    The last applied seq of the stream.
``s``
    One bin per state tensor, in the fingerprint's order: little-endian, C order, in the
    storage dtype. bfloat16 elements are the upper 16 bits of the float32 value (float32
    values are rounded to nearest even, which is exact for values that are already bfloat16).
``src``
    ``[input_topic, partition, next_offset]``: the input position the state corresponds to.

:class:`StateRecordCodec` encodes and decodes these values for one model. Readers ignore
keys they do not know, so later versions may add some without a new ``v``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import ml_dtypes
import msgpack
import numpy as np

from processor.errors import LstmStreamError
from processor.model import StateSpec
from processor.state.cache import StreamState

__all__ = [
    "STATE_DTYPES",
    "STATE_FORMAT_VERSION",
    "BadStateRecordError",
    "DecodedState",
    "StateMismatchError",
    "StateRecordCodec",
    "state_fingerprint",
]

#: Value of the ``v`` key; raised only for an incompatible change of the layout.
STATE_FORMAT_VERSION: Final = 1

#: Storage dtype name -> little-endian dtype of its bytes (bfloat16 travels as raw uint16).
STATE_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
}

_F32: Final = np.dtype("<f4")
# numpy's bfloat16 (from ml_dtypes, which TensorFlow depends on): casts from float32 round to
# nearest even and keep NaN, in C.
_BF16: Final = np.dtype(ml_dtypes.bfloat16)


class StateMismatchError(LstmStreamError):
    """A state record was written for a model with other state names or shapes; the message
    is one line naming both fingerprints (and the state topic when the codec knows it)."""


class BadStateRecordError(LstmStreamError):
    """A state record cannot be decoded: not msgpack, not a map, another format version,
    a missing or mistyped key, or tensors of the wrong count or byte length."""


@dataclass(slots=True)
class DecodedState:
    """Everything a state record holds besides its fingerprint.

    ``arrays`` are float32 whatever ``dtype`` the record was stored in (C-contiguous,
    writable, shaped as the model's state spec); ``source`` is ``(input_topic, partition,
    next_offset)``; ``model`` is the writer's identity ("" when it gave none).
    """

    seq: int
    arrays: tuple[np.ndarray, ...]
    dtype: str
    source: tuple[str, int, int]
    model: str

    def state(self) -> StreamState:
        """The :class:`StreamState` of this record."""
        return StreamState(arrays=self.arrays, seq=self.seq)


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """What :meth:`StateRecordCodec.decode_many` decoded: ``index[j]`` is the position in the
    input of decoded record ``j``, whose ``seqs[j]``, ``arrays[k][j]`` (float32, per state
    tensor ``[n, *shape]``) and ``next_offsets[j]`` (its ``src`` offset) follow; ``dtypes``
    the storage dtypes met; ``errors`` the records that could not be decoded."""

    index: list[int]
    seqs: np.ndarray
    arrays: tuple[np.ndarray, ...]
    next_offsets: list[int]
    dtypes: list[str]
    errors: list[tuple[int, LstmStreamError]]


def state_fingerprint(spec: Sequence[StateSpec]) -> list[list[Any]]:
    """``[[name, [dims...]], ...]`` of a model's state spec, in spec order: what a state
    record must match to be read by the model (msgpack and JSON both carry it as is)."""
    return [[s.name, [int(d) for d in s.shape]] for s in spec]


class StateRecordCodec:
    """Encodes and decodes the state records of one model.

    ``spec`` is the model's state spec (names and per-stream shapes), ``storage_dtype`` the
    dtype the state cache stores (the dtype records are written in), ``model_identity`` the
    model's identity written into each record for information, and ``state_topic`` (optional)
    the topic named in error messages. Stateless after construction and thread-safe.
    """

    def __init__(
        self,
        spec: Sequence[StateSpec],
        storage_dtype: str,
        model_identity: str = "",
        *,
        state_topic: str | None = None,
    ) -> None:
        if storage_dtype not in STATE_DTYPES:
            raise ValueError(
                f"storage dtype must be one of {', '.join(STATE_DTYPES)}, got {storage_dtype!r}"
            )
        self.spec: tuple[StateSpec, ...] = tuple(spec)
        self.storage_dtype = storage_dtype
        self.model_identity = model_identity
        self.state_topic = state_topic
        self.fingerprint = state_fingerprint(self.spec)
        self._shapes = tuple(tuple(int(d) for d in s.shape) for s in self.spec)
        self._sizes = tuple(math.prod(shape) for shape in self._shapes)
        self._layout = tuple(
            zip(self._sizes, self._shapes, (s.name for s in self.spec), strict=True)
        )
        self._packer = msgpack.Packer(use_bin_type=True)

    # ---- encoding --------------------------------------------------------------------------

    def encode(self, state: StreamState, source: tuple[str, int, int]) -> bytes:
        """The record value of ``state`` (float32 arrays shaped as the spec, converted to the
        storage dtype here) read up to ``source`` = ``(input_topic, partition,
        next_offset)``. Raises ValueError for a state of the wrong tensor count or sizes:
        that is a bug of the caller, not bad input."""
        arrays = state.arrays
        if len(arrays) != len(self._sizes):
            raise ValueError(f"state has {len(arrays)} tensors, the model has {len(self._sizes)}")
        for array, size, spec in zip(arrays, self._sizes, self.spec, strict=True):
            if array.size != size:
                raise ValueError(
                    f"state {spec.name!r} has {array.size} elements, the model's has {size}"
                )
        blobs = self._tensor_bytes(arrays)
        topic, partition, offset = source
        return self._packer.pack(
            {
                "v": STATE_FORMAT_VERSION,
                "fp": self.fingerprint,
                "model": self.model_identity,
                "dtype": self.storage_dtype,
                "seq": int(state.seq),
                "s": blobs,
                "src": [topic, int(partition), int(offset)],
            }
        )

    def _tensor_bytes(self, arrays: Sequence[np.ndarray]) -> list[bytes]:
        values = [np.ascontiguousarray(a, dtype=_F32) for a in arrays]
        if self.storage_dtype == "float32":
            return [v.tobytes() for v in values]
        if self.storage_dtype == "float16":
            return [v.astype("<f2").tobytes() for v in values]
        # bfloat16 bit patterns as little-endian uint16 (a no-op on little-endian hosts).
        return [v.astype(_BF16).view(np.uint16).astype("<u2", copy=False).tobytes() for v in values]

    # ---- decoding --------------------------------------------------------------------------

    def decode(self, value: bytes) -> StreamState:
        """The float32 state held by a record value; see :meth:`decode_full`."""
        return self.decode_full(value).state()

    def decode_full(self, value: bytes) -> DecodedState:
        """Decode a record value (not a tombstone: the caller handles ``None``).

        Raises :class:`StateMismatchError` when the record's fingerprint is not this model's,
        :class:`BadStateRecordError` for anything else wrong (see its doc). A record stored
        in another storage dtype is converted to float32; ``dtype`` of the result says which
        it was. Tensor values are not checked (a state holds what the model computed).
        """
        seq, blobs, dtype, source, model = self._parse(value)
        arrays = tuple(a[0] for a in self._to_float32(blobs, dtype, 1))
        return DecodedState(seq, arrays, dtype, source, model)

    def _parse(self, value: bytes) -> tuple[int, list[bytes], str, tuple[str, int, int], str]:
        # Runs for every stream on restore: one pass over the map, checks inline (a call per
        # check would cost more than the checks themselves).
        try:
            obj = msgpack.unpackb(value, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise BadStateRecordError(
                f"{self._where()}undecodable state record: {type(exc).__name__}: {exc}"
            ) from None
        if type(obj) is not dict:
            raise BadStateRecordError(
                f"{self._where()}state record is a msgpack {type(obj).__name__}, not a map"
            )
        version = obj.get("v")
        if version != STATE_FORMAT_VERSION or type(version) is not int:
            raise BadStateRecordError(
                f"{self._where()}state record has format version {version!r}; this version "
                f"of lstm-stream reads version {STATE_FORMAT_VERSION}"
            )
        model = obj.get("model", "")
        if type(model) is not str:
            model = repr(model)
        fp = obj.get("fp")
        if fp != self.fingerprint:
            by = f" (written by model {model})" if model else ""
            topic = f"state topic {self.state_topic}" if self.state_topic else "the state topic"
            raise StateMismatchError(
                f"{topic} holds states of another model{by}: state names/shapes {fp!r} vs "
                f"this model's {self.fingerprint!r}"
            )
        dtype = obj.get("dtype")
        if type(dtype) is not str or dtype not in STATE_DTYPES:
            raise BadStateRecordError(
                f"{self._where()}state record dtype {dtype!r} is not one of "
                f"{', '.join(STATE_DTYPES)}"
            )
        seq = obj.get("seq")
        if type(seq) is not int:
            raise BadStateRecordError(
                f"{self._where()}state record seq must be an integer, got {seq!r}"
            )
        src = obj.get("src")
        if not (
            type(src) is list
            and len(src) == 3
            and type(src[0]) is str
            and type(src[1]) is int
            and type(src[2]) is int
        ):
            raise BadStateRecordError(
                f"{self._where()}state record src must be [input_topic, partition, "
                f"next_offset], got {src!r}"
            )
        blobs = obj.get("s")
        if type(blobs) is not list or len(blobs) != len(self._layout):
            count = len(blobs) if type(blobs) is list else type(blobs).__name__
            raise BadStateRecordError(
                f"{self._where()}state record holds {count} state tensors, "
                f"the model has {len(self._layout)}"
            )
        itemsize = STATE_DTYPES[dtype].itemsize
        for blob, (size, shape, name) in zip(blobs, self._layout, strict=True):
            if type(blob) is not bytes or len(blob) != size * itemsize:
                got = f"{len(blob)} bytes" if type(blob) is bytes else type(blob).__name__
                raise BadStateRecordError(
                    f"{self._where()}state tensor {name!r} holds {got}, expected "
                    f"{size * itemsize} ({dtype} {list(shape)})"
                )
        return seq, blobs, dtype, (src[0], src[1], src[2]), model

    def _to_float32(self, blobs: Sequence[bytes], dtype: str, count: int) -> list[np.ndarray]:
        """Per state tensor, ``[count, *shape]`` float32 (a writable copy) from the
        ``count`` records' blobs of that tensor (``blobs[k]``: their bytes joined)."""
        wire = STATE_DTYPES[dtype]
        out = []
        for blob, (_, shape, _) in zip(blobs, self._layout, strict=True):
            raw = np.frombuffer(blob, dtype=wire)
            if dtype == "bfloat16":
                raw = raw.astype(np.uint16, copy=False).view(_BF16)
            out.append(raw.astype(np.float32).reshape(count, *shape))
        return out

    def decode_many(self, values: Sequence[bytes]) -> DecodedBatch:
        """Decode many record values at once (restore: tens of thousands per second): the
        per-record checks of :meth:`decode_full`, then one conversion per state tensor for
        all records of a storage dtype. Records that fail are reported in ``errors`` (their
        :class:`StateMismatchError` or :class:`BadStateRecordError`), not raised."""
        parsed: list[tuple[int, int, list[bytes], str, int]] = []  # (i, seq, blobs, dtype, off)
        errors: list[tuple[int, LstmStreamError]] = []
        for i, value in enumerate(values):
            try:
                seq, blobs, dtype, source, _ = self._parse(value)
            except (StateMismatchError, BadStateRecordError) as exc:
                errors.append((i, exc))
                continue
            parsed.append((i, seq, blobs, dtype, source[2]))
        n = len(parsed)
        arrays = [np.empty((n, *shape), np.float32) for _, shape, _ in self._layout]
        for dtype in {p[3] for p in parsed}:
            rows = [r for r, p in enumerate(parsed) if p[3] == dtype]
            joined = [b"".join(parsed[r][2][k] for r in rows) for k in range(len(self._layout))]
            converted = self._to_float32(joined, dtype, len(rows))
            if len(rows) == n:
                arrays = converted
            else:
                for out, part in zip(arrays, converted, strict=True):
                    out[rows] = part
        return DecodedBatch(
            index=[p[0] for p in parsed],
            seqs=np.array([p[1] for p in parsed], np.int64),
            arrays=tuple(arrays),
            next_offsets=[p[4] for p in parsed],
            dtypes=sorted({p[3] for p in parsed}),
            errors=errors,
        )

    def _where(self) -> str:
        return f"state topic {self.state_topic}: " if self.state_topic else ""
