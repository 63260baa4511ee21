"""Encoded image payloads: ``x`` as JPEG or PNG bytes (``encoding`` field of an input record).

Who calls what:

- producers, tests and benchmarks: :func:`encode_frame` (one frame to JPEG/PNG bytes) and
  :func:`encode_image_input` (a whole input record carrying one);
- :class:`~processor.codec.decode.RecordDecoder`: :func:`check_header` for every encoded
  record (it parses the JPEG SOF / PNG IHDR header itself, so an image declaring huge
  dimensions -- a decompression bomb -- or the wrong size is refused before any pixel is
  decoded), then :func:`decode_images` for a batch (one TensorFlow call for all frames of the
  same encoding and size; a frame the batch call cannot decode is then decoded alone, so one
  bad frame never costs its neighbours their answer).

Images decode to ``uint8`` arrays of shape ``(height, width, channels)``, JPEG with libjpeg's
accurate integer IDCT (the pixels any libjpeg decoder gives by default). TensorFlow is
imported on first use only: the rest of the codec stays importable without it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack
import numpy as np

from processor.codec.reasons import IMAGE_TOO_LARGE, IMAGE_UNDECODABLE, IMAGE_WRONG_SIZE
from processor.errors import BadRecord

__all__ = [
    "ENCODINGS",
    "ImageSize",
    "check_header",
    "decode_images",
    "encode_frame",
    "encode_image_input",
    "image_size",
    "read_header",
]

#: Values of an input record's ``encoding`` field; ``raw`` (the default) is today's tensor bytes.
ENCODINGS: Final = ("raw", "jpeg", "png")

#: ``(height, width, channels)`` of an image.
ImageSize = tuple[int, int, int]

# Batches this small decode faster one eager op per frame than through the traced batch call.
_BATCH_MIN: Final = 8
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels TensorFlow decodes it to (a palette decodes to RGB).
_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
# JPEG start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_STANDALONE: Final = frozenset((0x01, *range(0xD0, 0xD8), 0xD8))


def encode_frame(frame: np.ndarray, encoding: str, quality: int = 90) -> bytes:
    """``frame`` (uint8, ``(H, W)`` or ``(H, W, C)``) as ``encoding`` bytes, the ``x`` of an
    encoded input record: ``jpeg`` (C in 1 or 3, lossy at ``quality`` 1..100), ``png`` (C in
    1..4, lossless) or ``raw`` (its C-order bytes). Raises ``ValueError`` for anything else."""
    arr = np.asarray(frame)
    if encoding == "raw":
        return np.ascontiguousarray(arr).tobytes()
    if arr.dtype != np.uint8:
        raise ValueError(f"frames to encode must be uint8, got {arr.dtype.name}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"frames must be (H, W) or (H, W, C), got shape {list(frame.shape)}")
    import tensorflow as tf

    if encoding == "jpeg":
        if arr.shape[2] not in (1, 3):
            raise ValueError(f"JPEG frames need 1 or 3 channels, got {arr.shape[2]}")
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {quality}")
        return bytes(tf.io.encode_jpeg(arr, quality=quality).numpy())
    if encoding == "png":
        if not 1 <= arr.shape[2] <= 4:
            raise ValueError(f"PNG frames need 1 to 4 channels, got {arr.shape[2]}")
        return bytes(tf.io.encode_png(arr).numpy())
    raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")


def encode_image_input(
    stream: str,
    seq: int,
    frame: np.ndarray,
    encoding: str,
    *,
    quality: int = 90,
    ts: int | None = None,
    include_shape: bool = True,
) -> bytes:
    """One input record whose ``x`` is ``frame`` encoded with :func:`encode_frame`
    (``encoding`` ``jpeg`` or ``png``; ``raw`` gives a plain uint8 record), with ``dtype``
    ``uint8`` and, unless ``include_shape`` is false, ``shape`` = ``frame.shape``."""
    record: dict[str, object] = {"stream": stream, "seq": seq}
    record["x"] = encode_frame(frame, encoding, quality)
    record["dtype"] = "uint8"
    if encoding != "raw":
        record["encoding"] = encoding
    if include_shape:
        record["shape"] = list(np.shape(frame))
    if ts is not None:
        record["ts"] = ts
    packed: bytes = msgpack.packb(record, use_bin_type=True)
    return packed


def image_size(shape: tuple[int, ...]) -> ImageSize | None:
    """The image size a model's per-step input ``shape`` takes: ``(H, W)`` is a one-channel
    image, ``(H, W, C)`` with C in 1..4 an image of C channels; ``None`` for other shapes."""
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and 1 <= shape[2] <= 4:
        return shape[0], shape[1], shape[2]
    return None


def read_header(data: bytes, encoding: str) -> ImageSize:
    """``(height, width, channels)`` declared by a JPEG SOF or PNG IHDR header, read without
    decoding anything; ``BadRecord(IMAGE_UNDECODABLE)`` if there is no valid header."""
    if encoding == "png":
        return _png_header(data)
    if encoding == "jpeg":
        return _jpeg_header(data)
    raise ValueError(f"no header to read for encoding {encoding!r}")


def check_header(
    data: bytes, encoding: str, expected: ImageSize | None, max_bytes: int
) -> ImageSize:
    """Refuse an encoded image before decoding it: ``image_undecodable`` without a valid
    header, ``image_too_large`` if its declared pixels (height x width x channels bytes) exceed
    ``max_bytes`` -- the limit a raw record of the same frame would meet -- and
    ``image_wrong_size`` if its height, width or channels differ from ``expected`` (``None``:
    the model's input is not an image). Returns the declared size."""
    h, w, c = read_header(data, encoding)
    if h * w * c > max_bytes:
        raise BadRecord(
            IMAGE_TOO_LARGE,
            f"{encoding} header declares {h}x{w}x{c} = {h * w * c} bytes of pixels, "
            f"limit is {max_bytes}; not decoded",
        )
    if expected is None:
        raise BadRecord(
            IMAGE_WRONG_SIZE,
            f"{encoding} image {h}x{w}x{c}, but the model's input is not an image "
            "(shape (H, W) or (H, W, C) with C <= 4)",
        )
    if (h, w, c) != expected:
        raise BadRecord(
            IMAGE_WRONG_SIZE,
            f"{encoding} image is {h}x{w}x{c}, expected {expected[0]}x{expected[1]}x{expected[2]}",
        )
    return h, w, c


def decode_images(
    datas: Sequence[bytes], encoding: str, size: ImageSize
) -> list[np.ndarray | BadRecord]:
    """Decode images whose headers passed :func:`check_header` for ``size``: element ``i`` is
    a writable ``uint8`` array of shape ``size``, or ``BadRecord`` (``image_undecodable`` for
    corrupt data, ``image_wrong_size`` for a channel count other than ``size[2]`` or data that
    decodes to another size than its header declared).

    From :data:`_BATCH_MIN` frames on, all go through one batched TensorFlow call (a traced
    ``map_fn``: its fixed cost of a few ms is repaid by a lower cost per frame than one eager
    op each); if that call fails, each frame is decoded alone to find which. Fewer frames are
    decoded one eager op each.
    """
    if len(datas) < _BATCH_MIN:
        return [_decode_one(d, encoding, size) for d in datas]
    import tensorflow as tf

    try:
        batch = _batch_decoder(encoding, size)(tf.constant(list(datas), dtype=tf.string))
        arr = np.array(batch.numpy())  # writable, owned
    except Exception:  # a corrupt frame fails the batch: find it alone
        return [_decode_one(d, encoding, size) for d in datas]
    return list(arr)


def _decode_one(data: bytes, encoding: str, size: ImageSize) -> np.ndarray | BadRecord:
    try:
        img = np.array(_decode_op(encoding)(data).numpy())
    except Exception as exc:  # any decoder failure is this record's fault
        message = str(getattr(exc, "message", exc)).strip().splitlines()
        return BadRecord(
            IMAGE_UNDECODABLE,
            f"{encoding} data does not decode: {message[0][:200] if message else type(exc)}",
        )
    if img.shape != size:
        return BadRecord(
            IMAGE_WRONG_SIZE,
            f"{encoding} image decodes to {'x'.join(map(str, img.shape))}, "
            f"expected {'x'.join(map(str, size))}",
        )
    return img


def _decode_op(encoding: str) -> Callable[[Any], Any]:
    """The TensorFlow op decoding one ``encoding`` image to ``uint8 [H, W, C]``, in its own
    channels (``channels=0``: a channel count other than the model's must fail, not be
    converted). JPEG uses libjpeg's accurate integer IDCT, as other libjpeg decoders (Pillow,
    OpenCV) do by default: TensorFlow's default fast IDCT is off by up to a few levels per
    pixel, so a model would see other pixels than those the frame's producer meant."""
    import tensorflow as tf

    if encoding == "png":
        return functools.partial(tf.io.decode_png, channels=0)
    return functools.partial(tf.io.decode_jpeg, channels=0, dct_method="INTEGER_ACCURATE")


_decoders: dict[tuple[str, ImageSize], Callable[[Any], Any]] = {}
_decoders_lock = threading.Lock()


def _batch_decoder(encoding: str, size: ImageSize) -> Callable[[Any], Any]:
    """A traced ``tf.function``: 1-D string tensor -> ``uint8 [n, *size]``; it fails (so the
    caller falls back to single frames) if any frame is corrupt or of another size."""
    key = (encoding, size)
    fn = _decoders.get(key)
    if fn is not None:
        return fn
    with _decoders_lock:
        fn = _decoders.get(key)
        if fn is None:
            import tensorflow as tf

            op = _decode_op(encoding)
            spec = tf.TensorSpec(size, tf.uint8)

            def one(data: Any) -> Any:
                img = op(data)
                tf.debugging.assert_equal(tf.shape(img), tf.constant(size, tf.int32))
                return tf.ensure_shape(img, size)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def many(datas: Any) -> Any:
                return tf.map_fn(one, datas, fn_output_signature=spec)

            fn = _decoders[key] = many
    return fn


def _png_header(data: bytes) -> ImageSize:
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise BadRecord(IMAGE_UNDECODABLE, "not a PNG: no signature and IHDR chunk")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    color = data[25]
    if color not in _PNG_CHANNELS or not width or not height:
        raise BadRecord(
            IMAGE_UNDECODABLE, f"PNG IHDR is invalid: {width}x{height}, colour type {color}"
        )
    return height, width, _PNG_CHANNELS[color]


def _jpeg_header(data: bytes) -> ImageSize:
    if data[:2] != b"\xff\xd8":
        raise BadRecord(IMAGE_UNDECODABLE, "not a JPEG: no SOI marker")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise BadRecord(IMAGE_UNDECODABLE, f"JPEG marker expected at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            break
        if marker in _SOF_MARKERS:
            if length < 8 or i + 10 > n:
                break
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            channels = data[i + 9]
            if not height or not width or not channels:
                raise BadRecord(
                    IMAGE_UNDECODABLE, f"JPEG SOF is invalid: {height}x{width}x{channels}"
                )
            return height, width, channels
        i += 2 + length
    raise BadRecord(IMAGE_UNDECODABLE, "not a JPEG: no frame header (SOF) before the scan")
