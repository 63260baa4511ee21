"""Decoding and validating input records: :class:`RecordDecoder` (no I/O).

:class:`RecordDecoder` runs once per input record on the hot path, so it validates by hand
(no jsonschema at run time) and raises :class:`~processor.errors.BadRecord` with one of the
stable reason codes in :data:`~processor.codec.reasons.DECODE_REASONS`. Every record, alone
or in a batch, is checked by one :class:`~processor.codec.check.FieldChecker` (the field rules
of :mod:`~processor.codec.fields`) and its ``x`` read by one
:class:`~processor.codec.tensor.TensorReader` or decoded by :mod:`~processor.codec.images`;
the batch form :meth:`RecordDecoder.decode_many` only shares the last steps of the common
case across the batch, so it gives exactly what :meth:`RecordDecoder.decode` gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import numpy as np

from processor.codec.check import FieldChecker, Fields
from processor.codec.images import ImageSize, check_header, decode_images, image_size
from processor.codec.reasons import UNDECODABLE
from processor.codec.tensor import TensorReader
from processor.dtypes import DTYPES, WIRE_DTYPES
from processor.errors import BadRecord
from processor.records import Record

__all__ = ["ImageDecoder", "RecordDecoder"]


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


#: Decodes encoded images of one encoding and size: :func:`~processor.codec.images.decode_images`.
ImageDecoder = Callable[[Sequence[bytes], str, ImageSize], list[np.ndarray | BadRecord]]

_PENDING: Final = BadRecord(UNDECODABLE, "internal: not decoded yet")  # decode_many placeholder


class RecordDecoder:
    """Validates and decodes input records for one model input signature.

    Built once at start-up (by the composition root) from the model's per-step input shape
    and dtype; :meth:`decode` (or :meth:`decode_many` for a batch) is then called by the
    engine/transport for every record, from one thread or many (its only mutable state is a
    memo of validated message keys, safe to share).
    """

    __slots__ = (
        "_checker",
        "_image_decoder",
        "_image_size",
        "_input_dtype",
        "_input_shape",
        "_max_record_bytes",
        "_reader",
        "_shared_finish",
    )

    def __init__(
        self,
        input_shape: tuple[int, ...],
        input_dtype: str | np.dtype[Any] = "float32",
        max_record_bytes: int = 4 * 1024 * 1024,
        max_stream_id_bytes: int = 256,
        *,
        image_decoder: ImageDecoder = decode_images,
    ) -> None:
        """Raise ``ValueError`` for an unusable signature or limit.

        ``input_shape``: the model's per-step input shape (every dimension >= 1; ``()`` is a
        scalar). ``input_dtype``: one of :data:`~processor.dtypes.DTYPES` (byte order is
        ignored: decoded arrays use the native byte order). ``image_decoder`` decodes the
        pixels of encoded images whose headers passed their checks (its contract is that of
        :func:`~processor.codec.images.decode_images`, the default).
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
        native: np.dtype[Any] = np.dtype(dtype.name)
        self._input_shape = shape
        self._input_dtype = native
        self._max_record_bytes = max_record_bytes
        self._checker = FieldChecker(shape, native, max_record_bytes, max_stream_id_bytes)
        self._reader = TensorReader(shape, native)
        self._image_size = image_size(shape)  # None: encoded images never fit this model
        self._image_decoder = image_decoder
        # decode_many finishes exact records together, except for a scalar input (a row of
        # a 1-D batch would be a numpy scalar, not an array).
        self._shared_finish = bool(shape)

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
        fields = self._checker.check(value, key)
        if fields[7] is None:  # no image encoding: a raw tensor
            return self._record(fields)
        result = self._finish_images([self._pending_image(fields)])[0]
        if type(result) is not Record:
            assert isinstance(result, BadRecord)
            raise result
        return result

    def decode_many(
        self, values: Sequence[bytes], keys: Sequence[bytes | str | None]
    ) -> list[Record | BadRecord]:
        """Decode a batch: element ``i`` is what ``decode(values[i], keys[i])`` returns, or
        the :class:`~processor.errors.BadRecord` it raises (same reason, same detail).
        Raises ``ValueError`` if the two sequences differ in length.

        Cheaper per record than :meth:`decode` in the common case -- ``x`` as bin in the
        model's dtype -- which it finishes for the whole batch at once: one finiteness check
        over all the ``x`` values, and every such ``Record.x`` a **read-only** row view of
        one buffer shared by the batch (it keeps that buffer, a copy of the batch's ``x``
        bytes, alive; no other part of the records). Encoded images are decoded together
        (one batch per encoding). Stream ids decoded from a repeated ``bytes`` key are the
        same ``str`` object each time (cheaper dict lookups downstream).
        """
        n = len(values)
        if len(keys) != n:
            raise ValueError(f"{n} values but {len(keys)} keys")
        out: list[Any] = []  # Record | BadRecord, and _PendingImage until decoded
        images: list[int] = []  # positions in `out` of images awaiting the batch decode
        rows: list[int] = []  # positions in `out` of records with an exact x
        row_fields: list[Fields] = []  # their fields
        xs: list[bytes] = []  # their x
        check = self._checker.check
        shared = self._shared_finish
        for value, key in zip(values, keys, strict=True):
            try:
                fields = check(value, key)
            except BadRecord as exc:
                out.append(exc)
                continue
            if fields[8] and shared:  # an exact x: finished with the batch
                rows.append(len(out))
                out.append(_PENDING)
                row_fields.append(fields)
                xs.append(fields[5])
                continue
            if fields[7] is not None:  # an image: decoded with the batch's images
                try:
                    out.append(self._pending_image(fields))
                except BadRecord as exc:
                    out.append(exc)
                    continue
                images.append(len(out) - 1)
                continue
            out.append(self._record_or_error(fields))
        if images:
            for i, result in zip(
                images, self._finish_images([out[i] for i in images]), strict=True
            ):
                out[i] = result
        if rows:
            self._finish_rows(out, rows, row_fields, xs)
        return out

    def _finish_rows(
        self, out: list[Any], rows: list[int], fields: list[Fields], xs: list[bytes]
    ) -> None:
        """Put the records of exact ``xs`` at their positions ``rows`` in ``out``: each ``x``
        a row of one array made of ``xs``, checked for finiteness all at once; a record with
        a non-finite ``x`` is read alone, for the error :meth:`decode` gives."""
        arr = np.frombuffer(b"".join(xs), dtype=self._input_dtype)
        arr = arr.reshape(len(rows), *self._input_shape)
        if self._input_dtype.kind == "f":
            finite = np.isfinite(arr.reshape(len(rows), -1)).all(axis=1)
            if not finite.all():
                for j in np.flatnonzero(~finite).tolist():
                    out[rows[j]] = self._record_or_error(fields[j])
                    rows[j] = -1
        views: list[np.ndarray] = list(arr)  # read-only row views (frombuffer of bytes)
        for i, (stream, seq, ts, reset, end, _, _, _, _), x in zip(
            rows, fields, views, strict=True
        ):
            if i >= 0:
                out[i] = Record(stream, seq, x, ts, reset, end)

    def _record(self, fields: Fields) -> Record:
        """The record of checked raw-tensor ``fields``, or ``BadRecord`` for its ``x``."""
        stream, seq, ts, reset, end, x, wire, _, _ = fields
        return Record(stream, seq, self._reader.read(x, wire), ts, reset, end)

    def _record_or_error(self, fields: Fields) -> Record | BadRecord:
        try:
            return self._record(fields)
        except BadRecord as exc:
            return exc

    def _pending_image(self, fields: Fields) -> _PendingImage:
        """Checked image ``fields`` whose header passed its checks, or ``BadRecord``."""
        stream, seq, ts, reset, end, data, _, encoding, _ = fields
        assert encoding is not None
        size = check_header(data, encoding, self._image_size, self._max_record_bytes)
        return _PendingImage(stream, seq, ts, reset, end, encoding, size, data)

    def _finish_images(self, pending: Sequence[_PendingImage]) -> list[Record | BadRecord]:
        """Decode the images of ``pending`` (one batch per encoding) into records."""
        out: list[Record | BadRecord] = [_PENDING] * len(pending)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(pending):
            groups.setdefault(p.encoding, []).append(i)
        for encoding, idx in groups.items():
            size = pending[idx[0]].size  # every header matched the model's image size
            images = self._image_decoder([pending[i].data for i in idx], encoding, size)
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
