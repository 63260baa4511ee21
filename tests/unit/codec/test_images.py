"""Encoded image payloads: JPEG/PNG ``x`` round trips through RecordDecoder.decode and
decode_many (JPEG pixel for pixel as an independent libjpeg decoder, Pillow, gives), and
corrupt, wrong-size and bomb images are dead-lettered with their reasons (the bomb without
being decoded) while good records of the same batch are unaffected."""

from __future__ import annotations

import io
from typing import Any

import msgpack
import numpy as np
import pytest
from PIL import Image

from processor.codec import (
    IMAGE_TOO_LARGE,
    IMAGE_UNDECODABLE,
    IMAGE_WRONG_SIZE,
    RecordDecoder,
    encode_frame,
    encode_image_input,
    images,
)
from processor.demo.synthetic import SyntheticInput
from processor.errors import BadRecord
from processor.records import Record

SHAPE = (84, 84, 1)
# Frames in a batch large enough for the batched decode (images.decode_images).
BATCH = 9
# JPEG at quality 90 on these frames (noise 0..31 under a bright bar): every pixel within
# JPEG_MAX_ERROR of the raw frame and JPEG_MEAN_ERROR on average (measured: 18 and 2.9).
JPEG_MAX_ERROR = 40
JPEG_MEAN_ERROR = 4.0


def frames(n: int, shape: tuple[int, ...] = SHAPE, seq: int = 3) -> np.ndarray:
    return SyntheticInput("frames", shape, n, seed=1).step(seq)


def sof_offset(jpeg: bytes) -> int:
    """Byte offset of the SOF0 marker in a baseline JPEG written by TensorFlow."""
    at = jpeg.find(b"\xff\xc0")
    assert at > 0
    return at


def bomb(height: int = 65000, width: int = 65000) -> bytes:
    """A real tiny JPEG whose SOF is patched to declare ``height`` x ``width``."""
    data = bytearray(encode_frame(frames(1, (8, 8, 1))[0], "jpeg"))
    at = sof_offset(bytes(data))
    data[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def record(x: bytes, encoding: str, seq: int = 1, stream: str = "s", **extra: Any) -> bytes:
    packed: bytes = msgpack.packb(
        {"stream": stream, "seq": seq, "x": x, "encoding": encoding, **extra}, use_bin_type=True
    )
    return packed


def decoded(decoder: RecordDecoder, values: list[bytes]) -> list[Record | BadRecord]:
    """decode_many's results, checked equal to decode's record by record."""
    many = decoder.decode_many(values, [None] * len(values))
    for value, got in zip(values, many, strict=True):
        try:
            one: Record | BadRecord = decoder.decode(value)
        except BadRecord as exc:
            one = exc
        if isinstance(one, BadRecord):
            assert isinstance(got, BadRecord) and (got.reason, got.detail) == (
                one.reason,
                one.detail,
            )
        else:
            assert isinstance(got, Record)
            assert (got.stream, got.seq, got.x.dtype, got.x.shape) == (
                one.stream,
                one.seq,
                one.x.dtype,
                one.x.shape,
            )
            np.testing.assert_array_equal(got.x, one.x)
    return many


@pytest.mark.parametrize("n", [1, 12])  # below and above the batched decode's threshold
@pytest.mark.parametrize("encoding", ["png", "jpeg", "raw"])
def test_round_trip_within_the_codec_loss(encoding: str, n: int) -> None:
    xs = frames(n)
    values = [encode_image_input(f"s{i}", 5, x, encoding, ts=9) for i, x in enumerate(xs)]
    out = decoded(RecordDecoder(SHAPE, "uint8"), values)
    for i, (x, got) in enumerate(zip(xs, out, strict=True)):
        assert isinstance(got, Record)
        assert (got.stream, got.seq, got.ts, got.x.dtype, got.x.shape) == (
            f"s{i}",
            5,
            9,
            np.uint8,
            SHAPE,
        )
        error = np.abs(got.x.astype(int) - x.astype(int))
        if encoding == "jpeg":
            assert error.max() <= JPEG_MAX_ERROR and error.mean() <= JPEG_MEAN_ERROR
            assert error.max() > 0  # really went through the lossy codec
        else:
            assert error.max() == 0


def textured(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A uint8 frame with structure a JPEG must work for: a diagonal gradient (a different
    one per channel) plus Gaussian noise, so every 8x8 block has edges and texture."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    channels = shape[2] if len(shape) == 3 else 1
    ramps = [
        (yy * (0.5 + 0.2 * c) * 255 / h + xx * (0.5 - 0.1 * c) * 255 / w) for c in range(channels)
    ]
    frame = np.stack(ramps, axis=-1) + rng.normal(0.0, 14.0, (h, w, channels))
    return np.clip(frame, 0, 255).astype(np.uint8).reshape(shape)


def pillow_decode(data: bytes) -> np.ndarray:
    """``data`` decoded by Pillow (libjpeg with its default, accurate integer IDCT)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@pytest.mark.parametrize(
    ("shape", "quality"),
    [((84, 84), 95), ((84, 84), 75), ((37, 61), 90), ((64, 48, 3), 95), ((31, 57, 3), 50)],
)
def test_jpeg_decodes_pixel_for_pixel_as_an_independent_decoder(
    shape: tuple[int, ...], quality: int
) -> None:
    """JPEG payloads decode with libjpeg's accurate IDCT: exactly Pillow's pixels, for one
    frame (decoded alone) and for a batch (the batched decode), grayscale and RGB."""
    xs = [textured(shape, seed) for seed in range(BATCH)]
    datas = [encode_frame(x, "jpeg", quality) for x in xs]
    decoder = RecordDecoder(shape, "uint8")
    alone = decoder.decode(record(datas[0], "jpeg"))
    batch = decoder.decode_many(
        [record(d, "jpeg", seq=i) for i, d in enumerate(datas)], [None] * BATCH
    )
    decoded = [(xs[0], datas[0], alone), *zip(xs, datas, batch, strict=True)]
    for i, (x, data, got) in enumerate(decoded):
        assert isinstance(got, Record)
        want = pillow_decode(data)
        assert want.shape == shape and (want != x).any()  # lossy: the IDCT decides the pixels
        np.testing.assert_array_equal(got.x, want, err_msg=f"frame {i}")


@pytest.mark.parametrize("encoding", ["png", "jpeg"])
def test_float_and_two_dimensional_models_take_images_converted(encoding: str) -> None:
    xs = frames(9, (84, 84))
    values = [
        encode_image_input("s", i, x, encoding, include_shape=False) for i, x in enumerate(xs)
    ]
    for decoder in (RecordDecoder((84, 84), "float32"), RecordDecoder((84, 84, 1), "float16")):
        for x, got in zip(xs, decoded(decoder, values), strict=True):
            assert isinstance(got, Record)
            assert got.x.dtype == decoder.input_dtype and got.x.shape == decoder.input_shape
            assert got.x.flags.writeable
            tolerance = 0 if encoding == "png" else JPEG_MAX_ERROR
            assert np.abs(got.x.reshape(84, 84) - x.astype(np.float32)).max() <= tolerance


def test_an_explicit_raw_encoding_is_plain_tensor_bytes() -> None:
    xs = frames(3)
    values = [record(x.tobytes(), "raw", seq=i, dtype="uint8") for i, x in enumerate(xs)]
    values.append(record(xs[0].tobytes(), None, seq=9, dtype="uint8"))  # type: ignore[arg-type]
    out = decoded(RecordDecoder(SHAPE, "uint8"), values)
    for x, got in zip(xs, out, strict=False):
        assert isinstance(got, Record)
        np.testing.assert_array_equal(got.x, x)
    assert isinstance(out[3], BadRecord) and out[3].reason == "wrong_type"


def test_rgb_images_need_an_rgb_model() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    value = encode_image_input("s", 1, rgb, "png", include_shape=False)
    got = RecordDecoder((16, 16, 3), "uint8").decode(value)
    np.testing.assert_array_equal(got.x, rgb)
    with pytest.raises(BadRecord) as caught:
        RecordDecoder((16, 16, 1), "uint8").decode(value)
    assert caught.value.reason == IMAGE_WRONG_SIZE
    assert "png image is 16x16x3, expected 16x16x1" in caught.value.detail


def test_an_integer_model_other_than_uint8_refuses_images() -> None:
    value = encode_image_input("s", 1, frames(1)[0], "png")
    with pytest.raises(BadRecord) as caught:
        RecordDecoder(SHAPE, "int16").decode(value)
    assert caught.value.reason == "bad_dtype" and "int16" in caught.value.detail


def test_bad_images_are_dead_lettered_and_the_batch_keeps_its_good_records() -> None:
    xs = frames(10)
    good = [encode_frame(x, "jpeg") for x in xs]
    corrupt = good[0][:200] + bytes(len(good[0]) - 200)  # header intact, scan zeroed
    palette_rgba = encode_frame(np.zeros((84, 84, 4), np.uint8), "png")  # 4 channels
    cases = {
        2: (record(corrupt, "jpeg"), IMAGE_UNDECODABLE, "jpeg data does not decode"),
        4: (record(b"\xff\xd8\xff", "jpeg"), IMAGE_UNDECODABLE, "no frame header (SOF)"),
        5: (record(bomb(), "jpeg"), IMAGE_TOO_LARGE, "declares 65000x65000x1"),
        7: (record(encode_frame(frames(1, (80, 84, 1))[0], "png"), "png"), IMAGE_WRONG_SIZE, ""),
        8: (record(palette_rgba, "png"), IMAGE_WRONG_SIZE, "84x84x4, expected 84x84x1"),
    }
    values = [record(good[i], "jpeg", seq=i, stream=f"s{i}") for i in range(len(xs))]
    for i, (value, _, _) in cases.items():
        values[i] = value
    values += [record(g, "jpeg", seq=20 + i, stream=f"t{i}") for i, g in enumerate(good)]
    out = decoded(RecordDecoder(SHAPE, "uint8"), values)
    for i, got in enumerate(out):
        if i in cases:
            _, reason, detail = cases[i]
            assert isinstance(got, BadRecord) and got.reason == reason, got
            assert detail in got.detail, got.detail
        else:
            assert isinstance(got, Record), got
            assert np.abs(got.x.astype(int) - xs[i % 10].astype(int)).max() <= JPEG_MAX_ERROR


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding() -> None:
    def no_decoding(*args: object) -> list[np.ndarray | BadRecord]:
        raise AssertionError("an image was decoded")

    decoder = RecordDecoder(SHAPE, "uint8", image_decoder=no_decoding)
    png_bomb = bytearray(encode_frame(frames(1)[0], "png"))
    png_bomb[16:24] = (100_000).to_bytes(4, "big") * 2
    for value, encoding in ((bomb(), "jpeg"), (bytes(png_bomb), "png")):
        with pytest.raises(BadRecord) as caught:
            decoder.decode(record(value, encoding))
        assert caught.value.reason == IMAGE_TOO_LARGE, caught.value
        assert "not decoded" in caught.value.detail
        out = decoder.decode_many([record(value, encoding)] * 9, [None] * 9)
        assert all(isinstance(r, BadRecord) and r.reason == IMAGE_TOO_LARGE for r in out)
    # The header limit is the record limit: a frame within it but of another size is
    # image_wrong_size, also undecoded.
    with pytest.raises(BadRecord) as caught:
        decoder.decode(record(bomb(100, 100), "jpeg"))
    assert caught.value.reason == IMAGE_WRONG_SIZE
    assert "jpeg image is 100x100x1, expected 84x84x1" in caught.value.detail


def test_header_readers_report_declared_sizes() -> None:
    assert images.read_header(encode_frame(frames(1)[0], "jpeg"), "jpeg") == SHAPE
    rgb = np.zeros((5, 7, 3), np.uint8)
    assert images.read_header(encode_frame(rgb, "jpeg"), "jpeg") == (5, 7, 3)
    assert images.read_header(encode_frame(rgb, "png"), "png") == (5, 7, 3)
    assert images.image_size((84, 84)) == (84, 84, 1)
    assert images.image_size((32,)) is None and images.image_size((4, 4, 5)) is None


def test_a_model_whose_input_is_not_an_image_refuses_images() -> None:
    value = encode_image_input("s", 1, frames(1, (4, 8))[0], "png", include_shape=False)
    with pytest.raises(BadRecord) as caught:
        RecordDecoder((32,), "float32").decode(value)
    assert caught.value.reason == IMAGE_WRONG_SIZE
    assert "the model's input is not an image" in caught.value.detail


def test_encode_frame_rejects_what_the_codecs_cannot_hold() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_frame(np.zeros((4, 4), np.float32), "png")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        encode_frame(np.zeros((4, 4, 4), np.uint8), "jpeg")
    with pytest.raises(ValueError, match="quality"):
        encode_frame(np.zeros((4, 4), np.uint8), "jpeg", quality=0)
    with pytest.raises(ValueError, match="encoding must be one of"):
        encode_frame(np.zeros((4, 4), np.uint8), "gif")
    raw = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert encode_frame(raw, "raw") == raw.tobytes()
