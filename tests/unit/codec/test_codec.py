"""Wire format: decoding with validation, encoders, dead letters and file framing."""

from __future__ import annotations

import random
import warnings
from typing import Any

import msgpack
import numpy as np
import pytest

from processor import codec
from processor.codec import (
    DECODE_REASONS,
    DTYPES,
    REASONS,
    Reason,
    RecordDecoder,
    decode_dead_letter,
    decode_output,
    encode_dead_letter,
    encode_input,
    encode_output,
)
from processor.errors import BadRecord
from processor.records import Output, Record

SHAPE = (4, 3)
INT_DTYPES = ("uint8", "int8", "int16", "int32")
FLOAT_DTYPES = ("float16", "float32", "float64")


def pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def sample(dtype: str = "float32", shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """Values every dtype can hold exactly (so round trips compare exactly)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 100, size=shape).astype(dtype)


def base_record(**changes: Any) -> dict[str, Any]:
    """A valid input record for SHAPE as a dict; keys set to ``...`` are removed."""
    record: dict[str, Any] = {
        "stream": "s-1",
        "seq": 7,
        "x": sample().astype("<f4").tobytes(),
        "dtype": "float32",
        "shape": list(SHAPE),
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


@pytest.fixture
def decoder() -> RecordDecoder:
    return RecordDecoder(SHAPE)


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("as_list", [False, True])
def test_every_dtype_round_trips_into_a_float_model(dtype: str, as_list: bool) -> None:
    decoder = RecordDecoder(SHAPE, "float32")
    x = sample(dtype)
    record = decoder.decode(encode_input("s", 3, x, as_list=as_list))
    assert record.x.dtype == np.float32
    assert record.x.shape == SHAPE
    assert record.x.flags.c_contiguous
    np.testing.assert_array_equal(record.x, x.astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("as_list", [False, True])
def test_a_model_of_every_dtype_accepts_its_own_dtype_exactly(dtype: str, as_list: bool) -> None:
    decoder = RecordDecoder(SHAPE, dtype)
    x = sample(dtype, seed=1)
    if dtype in INT_DTYPES:  # use the extremes of the range too
        info = np.iinfo(dtype)
        x.flat[0], x.flat[1] = info.min, info.max
    record = decoder.decode(encode_input("s", 3, x, as_list=as_list))
    assert record.x.dtype == np.dtype(dtype)
    assert record.x.shape == SHAPE
    np.testing.assert_array_equal(record.x, x)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_a_float64_model_converts_float_inputs_exactly(dtype: str) -> None:
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(dtype)
    record = RecordDecoder(SHAPE, np.dtype("float64")).decode(encode_input("s", 0, x))
    assert record.x.dtype == np.float64
    np.testing.assert_array_equal(record.x, x.astype(np.float64))


def test_bin_x_is_little_endian_c_order(decoder: RecordDecoder) -> None:
    x = np.arange(12, dtype=">f4").reshape(SHAPE)  # big-endian in memory
    raw = encode_input("s", 0, x)
    assert msgpack.unpackb(raw)["x"] == np.arange(12, dtype="<f4").tobytes()
    assert msgpack.unpackb(raw)["dtype"] == "float32"
    np.testing.assert_array_equal(decoder.decode(raw).x, np.arange(12).reshape(SHAPE))
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(SHAPE))
    np.testing.assert_array_equal(decoder.decode(encode_input("s", 0, fortran)).x, fortran)


def test_same_dtype_bin_is_a_read_only_view_and_conversions_are_owned(
    decoder: RecordDecoder,
) -> None:
    same = decoder.decode(encode_input("s", 0, sample("float32"))).x
    assert not same.flags.writeable
    converted = decoder.decode(encode_input("s", 0, sample("float64"))).x
    assert converted.flags.writeable and converted.flags.owndata
    from_list = decoder.decode(encode_input("s", 0, sample("float32"), as_list=True)).x
    assert from_list.flags.writeable


def test_nested_lists_matching_the_shape(decoder: RecordDecoder) -> None:
    x = sample()
    record = decoder.decode(pack(base_record(x=x.tolist())))
    np.testing.assert_array_equal(record.x, x)
    decoder3 = RecordDecoder((2, 3, 2))
    x3 = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    raw = pack({"stream": "s", "seq": 0, "x": x3.tolist()})
    np.testing.assert_array_equal(decoder3.decode(raw).x, x3)
    mixed = pack({"stream": "s", "seq": 0, "x": [[1, 2.5, 3]] * 4})  # ints and floats mix
    np.testing.assert_array_equal(decoder.decode(mixed).x, [[1, 2.5, 3]] * 4)


def test_optional_fields_round_trip(decoder: RecordDecoder) -> None:
    x = sample()
    record = decoder.decode(encode_input("s-9", 12, x, ts=1_700_000_000_123, reset=True, end=True))
    assert record == Record(
        stream="s-9", seq=12, x=record.x, ts=1_700_000_000_123, reset=True, end=True
    )
    plain = decoder.decode(encode_input("s-9", 0, x, include_shape=False))
    assert (plain.ts, plain.reset, plain.end) == (None, False, False)
    explicit = decoder.decode(pack(base_record(reset=False, end=False, ts=-5)))
    assert (explicit.ts, explicit.reset, explicit.end) == (-5, False, False)


def test_defaults_dtype_and_shape(decoder: RecordDecoder) -> None:
    raw = pack({"stream": "s", "seq": 0, "x": sample().tobytes()})
    np.testing.assert_array_equal(decoder.decode(raw).x, sample())


def test_stream_id_from_the_kafka_key(decoder: RecordDecoder) -> None:
    raw = encode_input("ignored", 5, sample(), include_stream=False)
    assert "stream" not in msgpack.unpackb(raw)
    assert decoder.decode(raw, key=b"k\xc3\xa9y").stream == "kéy"
    assert decoder.decode(raw, key="kéy").stream == "kéy"
    both = encode_input("same", 5, sample())
    assert decoder.decode(both, key=b"same").stream == "same"
    assert decoder.decode(both, key=None).stream == "same"


def test_unknown_keys_are_ignored(decoder: RecordDecoder) -> None:
    raw = pack(base_record(future={"a": [1, 2]}, note="x", zz=None))
    assert decoder.decode(raw).seq == 7
    with_bytes_key: dict[str | bytes, Any] = {b"bin-key": 1}
    with_bytes_key.update(base_record())
    assert decoder.decode(pack(with_bytes_key)).seq == 7


def test_big_seq_and_stream_id_at_the_limit() -> None:
    decoder = RecordDecoder(SHAPE, max_stream_id_bytes=8)
    record = decoder.decode(pack(base_record(stream="é" * 4, seq=2**63 - 1)))
    assert (record.stream, record.seq) == ("é" * 4, 2**63 - 1)
    for value in (pack(base_record(seq=2**63)), pack(base_record(seq=2**64 - 1))):
        with pytest.raises(BadRecord, match=r"'seq' must be <= 2\*\*63 - 1") as info:
            decoder.decode(value)
        assert info.value.reason == "bad_value"
        [many] = decoder.decode_many([value], [None])
        assert isinstance(many, BadRecord) and many.reason == "bad_value"


def test_scalar_input_shape() -> None:
    decoder = RecordDecoder(())
    record = decoder.decode(pack({"stream": "s", "seq": 0, "x": [2.5], "shape": []}))
    assert record.x.shape == () and float(record.x) == 2.5
    record = decoder.decode(pack({"stream": "s", "seq": 0, "x": np.float32(1).tobytes()}))
    assert record.x.shape == ()


def test_constructor_rejects_unusable_signatures() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        RecordDecoder((4, 0))
    with pytest.raises(ValueError, match="input_dtype"):
        RecordDecoder((4,), "complex64")
    with pytest.raises(ValueError, match="max_record_bytes"):
        RecordDecoder((4,), max_record_bytes=0)
    decoder = RecordDecoder((4,), np.dtype(">f4"))
    assert decoder.input_dtype == np.dtype("float32") and decoder.input_shape == (4,)


# -- rejections --------------------------------------------------------------------------------

DEEP = b"\x91" * 5000 + b"\x00"  # arrays nested 5000 deep


def png_header(height: int, width: int, color: int = 0) -> bytes:
    """The signature and IHDR chunk of a PNG (8-bit; the CRC is not checked before decoding)."""
    ihdr = height.to_bytes(4, "big").join((width.to_bytes(4, "big"), bytes((8, color, 0, 0, 0))))
    return b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr + b"\0" * 4


def jpeg_header(height: int, width: int, channels: int = 1) -> bytes:
    """SOI and a baseline SOF0 segment declaring ``height`` x ``width`` x ``channels``."""
    sof = bytes((8,)) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes((channels,))
    sof += bytes((1, 0x11, 0)) * channels
    return b"\xff\xd8\xff\xc0" + (len(sof) + 2).to_bytes(2, "big") + sof


def image_record(x: object, encoding: object = "jpeg", **changes: Any) -> bytes:
    return pack(base_record(**{"x": x, "encoding": encoding, "dtype": "uint8", **changes}))


REJECTS: list[tuple[str, bytes, bytes | str | None, str]] = [
    ("oversize", b"\x00" * 101, None, "record is 101 bytes, limit is 100"),
    ("undecodable", b"\xc1", None, "invalid msgpack"),
    ("undecodable", b"", None, "invalid msgpack"),
    ("undecodable", pack(base_record())[:-3], None, "invalid msgpack"),
    ("undecodable", pack({"a": 1}) + b"\x01\x02", None, "2 trailing bytes"),
    ("undecodable", b"\x81\x01\x02", None, "int is not allowed for map key"),
    ("undecodable", b"\xa2\xff\xfe", None, "invalid msgpack"),  # str, not UTF-8
    ("undecodable", b"\x81\xa1x\xdd\xff\xff\xff\xff", None, "4294967295 exceeds max_array_len(8)"),
    ("undecodable", b"\x81\xa1x\xc6\x7f\xff\xff\xff", None, "incomplete input"),
    ("undecodable", b"\xdf\xff\xff\xff\xff", None, "exceeds max_map_len(2)"),
    ("not_a_map", pack(5), None, "expected a msgpack map, got int"),
    ("not_a_map", pack([1, 2]), None, "got list"),
    ("missing_field", pack(base_record(stream=...)), None, "missing field 'stream' and no"),
    ("missing_field", pack(base_record(seq=...)), None, "missing field 'seq'"),
    ("missing_field", pack(base_record(x=...)), None, "missing field 'x'"),
    ("wrong_type", pack(base_record(seq="7")), None, "'seq' must be an int, got str"),
    ("wrong_type", pack(base_record(seq=True)), None, "'seq' must be an int, got bool"),
    ("wrong_type", pack(base_record(seq=None)), None, "'seq' must be an int, got nil"),
    ("wrong_type", pack(base_record(seq=7.0)), None, "'seq' must be an int, got float"),
    ("wrong_type", pack(base_record(ts="now")), None, "'ts' must be an int, got str"),
    ("wrong_type", pack(base_record(ts=None)), None, "'ts' must be an int, got nil"),
    ("wrong_type", pack(base_record(ts=False)), None, "'ts' must be an int, got bool"),
    ("wrong_type", pack(base_record(reset=1)), None, "'reset' must be a bool, got int"),
    ("wrong_type", pack(base_record(end="yes")), None, "'end' must be a bool, got str"),
    ("wrong_type", pack(base_record(dtype=5)), None, "'dtype' must be a str, got int"),
    ("wrong_type", pack(base_record(shape="4x3")), None, "'shape' must be an array of ints"),
    ("wrong_type", pack(base_record(shape=[4, True])), None, "got array of bool/int"),
    ("wrong_type", pack(base_record(x="abc")), None, "'x' must be bin or an array"),
    ("wrong_type", pack(base_record(x={"a": 1})), None, "got dict"),
    ("bad_stream_id", pack(base_record(stream="")), None, "stream id is empty"),
    ("bad_stream_id", pack(base_record(stream=5)), None, "'stream' must be a str, got int"),
    ("bad_stream_id", pack(base_record(stream=None)), None, "'stream' must be a str, got nil"),
    ("bad_stream_id", pack(base_record(stream=b"s")), None, "got bin"),
    (
        "bad_stream_id",
        pack(base_record(stream="a" * 257)),
        None,
        "257 bytes in UTF-8, limit is 256",
    ),
    ("bad_stream_id", pack(base_record(stream="é" * 129)), None, "258 bytes in UTF-8"),
    ("bad_stream_id", pack(base_record(stream=...)), b"\xff", "message key is not UTF-8"),
    ("bad_stream_id", pack(base_record(stream=...)), b"", "stream id is empty"),
    ("bad_stream_id", pack(base_record(stream=...)), "\ud800", "message key is not valid Unicode"),
    ("key_mismatch", pack(base_record()), b"other", "'stream' is 's-1' but the message key is"),
    ("key_mismatch", pack(base_record()), "S-1", "message key is 'S-1'"),
    ("negative_seq", pack(base_record(seq=-1)), None, "'seq' must be >= 0, got -1"),
    ("bad_dtype", pack(base_record(dtype="float128")), None, "unknown dtype 'float128', exp"),
    ("bad_dtype", pack(base_record(dtype="FLOAT32")), None, "unknown dtype 'FLOAT32'"),
    ("bad_dtype", pack(base_record(dtype="bool")), None, "expected one of ['float32',"),
    ("shape_mismatch", pack(base_record(shape=[3, 4])), None, "expected shape [4, 3], got [3, 4]"),
    ("shape_mismatch", pack(base_record(shape=[12])), None, "got [12]"),
    ("shape_mismatch", pack(base_record(shape=[])), None, "got []"),
    ("size_mismatch", pack(base_record(x=b"\x00" * 44)), None, "has 44 bytes, expected 48"),
    (
        "size_mismatch",
        pack(base_record(x=b"\x00" * 48, dtype="float64")),
        None,
        "expected 96 (12 x float64 for shape [4, 3])",
    ),
    ("size_mismatch", pack(base_record(x=[1.0] * 11)), None, "has 11 elements, expected 12"),
    ("size_mismatch", pack(base_record(x=[])), None, "has 0 elements, expected 12"),
    ("shape_mismatch", pack(base_record(x=[[1.0] * 4] * 3)), None, "3 elements at depth 0, ex"),
    ("shape_mismatch", pack(base_record(x=[[1.0] * 3] * 3 + [[1.0]])), None, "1 elements at de"),
    ("shape_mismatch", pack(base_record(x=[[1.0] * 3] * 3 + [5])), None, "nested 1 deep, exp"),
    ("shape_mismatch", pack(base_record(x=[[[1.0]] * 3] * 4)), None, "'x[0][0]' is nested de"),
    ("non_finite", pack(base_record(x=[1.0] * 11 + [float("nan")])), None, "1 NaN/infinite"),
    (
        "non_finite",
        pack(base_record(x=np.full(12, np.inf, "<f4").tobytes())),
        None,
        "'x' has 12 NaN/infinite values out of 12",
    ),
    (
        "non_finite",
        pack(base_record(x=np.full(12, 1e300, "<f8").tobytes(), dtype="float64")),
        None,
        "after conversion from float64 to float32",
    ),
    ("non_finite", pack(base_record(x=[1e300] * 12, dtype="float64")), None, "after conversion"),
    ("non_finite", pack(base_record(x=[1e5] * 12, dtype="float16")), None, "12 NaN/infinite"),
    ("bad_value", pack(base_record(x=[1.0] * 11 + ["a"])), None, "'x[11]' must be a number, got"),
    ("bad_value", pack(base_record(x=[1.0] * 11 + [True])), None, "got bool"),
    ("bad_value", pack(base_record(x=[1.0] * 11 + [None])), None, "got nil"),
    ("bad_value", pack(base_record(x=[[1.0] * 3] * 3 + [[1, 2, b""]])), None, "'x[3][2]' must"),
    ("bad_value", pack(base_record(x=[1.5] * 12, dtype="int8")), None, "dtype int8 needs ints"),
    ("bad_value", image_record(b"", encoding="gif"), None, "unknown encoding 'gif'"),
    ("wrong_type", image_record(b"", encoding=1), None, "'encoding' must be a str, got int"),
    ("wrong_type", image_record([1] * 12), None, "a jpeg 'x' must be bin, got list"),
    ("bad_dtype", image_record(b"", dtype="float32"), None, "but 'dtype' is 'float32'"),
    ("missing_field", image_record(...), None, "missing field 'x'"),
    ("image_undecodable", image_record(b"\xff\xd8garbage"), None, "JPEG marker expected at"),
    ("image_undecodable", image_record(b"GIF89a"), None, "not a JPEG: no SOI marker"),
    ("image_undecodable", image_record(b"\xff\xd8\xff\xd9"), None, "no frame header (SOF)"),
    ("image_undecodable", image_record(png_header(4, 3)[:20], "png"), None, "not a PNG"),
    ("image_undecodable", image_record(png_header(4, 3) + b"junk", "png"), None, "does not decode"),
    ("image_wrong_size", image_record(png_header(5, 5), "png"), None, "is 5x5x1, expected 4x3x1"),
    ("image_wrong_size", image_record(jpeg_header(4, 3, 3)), None, "is 4x3x3, expected 4x3x1"),
    (
        "image_too_large",
        image_record(jpeg_header(65000, 65000)),
        None,
        "declares 65000x65000x1 = 4225000000 bytes of pixels, limit is 4194304; not decoded",
    ),
    ("image_too_large", image_record(png_header(2**31, 2, 6), "png"), None, "not decoded"),
]


def _decoder_for(raw: bytes) -> RecordDecoder:
    return RecordDecoder(SHAPE, max_record_bytes=100) if len(raw) == 101 else RecordDecoder(SHAPE)


@pytest.mark.parametrize(
    ("reason", "raw", "key", "detail"),
    REJECTS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(REJECTS)],
)
def test_rejects_with_reason_and_detail(
    reason: str, raw: bytes, key: bytes | str | None, detail: str
) -> None:
    with pytest.raises(BadRecord) as caught:
        _decoder_for(raw).decode(raw, key)
    assert (caught.value.reason, detail in caught.value.detail) == (reason, True), (
        caught.value.detail
    )
    assert str(caught.value) == f"{reason}: {caught.value.detail}"


def test_every_decode_reason_is_exercised_and_registered() -> None:
    covered = {r[0] for r in REJECTS} | {"bad_dtype"}
    assert covered == set(DECODE_REASONS)
    assert set(DECODE_REASONS) <= set(REASONS)
    assert {codec.OVERSIZE, codec.BAD_VALUE, codec.NON_FINITE} <= set(DECODE_REASONS)


def test_the_reason_registry_names_every_code_once_with_a_meaning() -> None:
    constants = {
        value
        for name, value in vars(codec).items()
        if name.isupper() and isinstance(value, str) and name != "MAX_SEQ"
    }
    assert constants == set(REASONS)
    for code, reason in REASONS.items():
        assert reason == Reason(code, reason.meaning)
        assert reason.meaning and "\n" not in reason.meaning and "|" not in reason.meaning
    assert codec.MISSING_KEY == "missing_key"
    assert codec.NON_INCREASING_SEQ == "non_increasing_seq"
    assert codec.TRUNCATED == "truncated"


@pytest.mark.parametrize("model_dtype", INT_DTYPES)
def test_an_integer_model_accepts_only_its_own_dtype(model_dtype: str) -> None:
    decoder = RecordDecoder(SHAPE, model_dtype)
    for dtype in DTYPES:
        raw = encode_input("s", 0, sample(dtype))
        if dtype == model_dtype:
            assert decoder.decode(raw).x.dtype == np.dtype(model_dtype)
            continue
        with pytest.raises(BadRecord) as caught:
            decoder.decode(raw)
        assert caught.value.reason == "bad_dtype"
        assert caught.value.detail == (
            f"dtype {dtype!r} cannot be converted to the model's {model_dtype} without loss; "
            f"expected {model_dtype!r}"
        )
    # The default dtype is float32, so an integer model needs an explicit dtype.
    with pytest.raises(BadRecord, match="bad_dtype"):
        decoder.decode(pack({"stream": "s", "seq": 0, "x": [1] * 12}))


@pytest.mark.parametrize(("dtype", "value"), [("uint8", 256), ("uint8", -1), ("int8", 128)])
def test_integers_out_of_range_are_bad_values(dtype: str, value: int) -> None:
    decoder = RecordDecoder(SHAPE, dtype)
    with pytest.raises(BadRecord) as caught:
        decoder.decode(pack(base_record(x=[0] * 11 + [value], dtype=dtype)))
    assert caught.value.reason == "bad_value"
    assert caught.value.detail.startswith(f"'x' value out of range for {dtype}")


def test_nan_is_accepted_by_neither_bin_nor_list_but_large_finite_values_are() -> None:
    decoder = RecordDecoder((2,))
    big = np.array([3e38, 3e38], dtype=np.float32)  # sum of squares overflows; values finite
    np.testing.assert_array_equal(decoder.decode(encode_input("s", 0, big)).x, big)
    f16 = RecordDecoder((2,), "float16")
    with pytest.raises(BadRecord, match="after conversion from float32 to float16"):
        f16.decode(encode_input("s", 0, big))
    with pytest.raises(BadRecord, match="non_finite"):
        decoder.decode(encode_input("s", 0, np.array([np.nan, 1], np.float16)))
    with pytest.raises(BadRecord, match="non_finite"):
        decoder.decode(encode_input("s", 0, np.array([-np.inf, 1], np.float64), as_list=True))


def test_checks_run_in_the_documented_order(decoder: RecordDecoder) -> None:
    raw = pack(base_record(stream="", seq=-1, dtype="nope", x=b""))
    with pytest.raises(BadRecord, match="bad_stream_id"):
        decoder.decode(raw)
    with pytest.raises(BadRecord, match="negative_seq"):
        decoder.decode(pack(base_record(seq=-1, dtype="nope", x=b"")))
    with pytest.raises(BadRecord, match="bad_dtype"):
        decoder.decode(pack(base_record(dtype="nope", shape=[1], x=b"")))
    with pytest.raises(BadRecord, match="shape_mismatch"):
        decoder.decode(pack(base_record(shape=[1], x=b"")))


# -- limits ------------------------------------------------------------------------------------


def test_oversize_is_checked_before_parsing() -> None:
    decoder = RecordDecoder(SHAPE, max_record_bytes=64)
    with pytest.raises(BadRecord) as caught:
        decoder.decode(b"\xc1" * 65)  # not even msgpack: size is checked first
    assert caught.value.reason == "oversize"
    assert caught.value.detail == "record is 65 bytes, limit is 64"
    big = RecordDecoder((100_000,), max_record_bytes=1 << 20)
    raw = encode_input("s", 0, np.zeros(300_000, np.float32).reshape(3, 100_000))
    with pytest.raises(BadRecord, match="oversize: record is 1200"):
        big.decode(raw)


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        # Containers are allocated from the header, so the limit is checked there.
        (b"\xdd\xff\xff\xff\xff", "4294967295 exceeds max_array_len(32)"),
        (b"\xdc\xff\xff", "65535 exceeds max_array_len(30)"),
        (b"\xdf\xff\xff\xff\xff", "4294967295 exceeds max_map_len(16)"),
        # Payloads are only read in place once complete, which they cannot be.
        (b"\xc6\xff\xff\xff\xff", "incomplete input"),  # bin32 of 4 GiB
        (b"\xdb\xff\xff\xff\xff", "incomplete input"),  # str32
        (b"\xc9\xff\xff\xff\xff\x01", "exceeds max_ext_len(33)"),  # ext32
    ],
)
def test_lying_length_headers_are_rejected_without_allocating(header: bytes, detail: str) -> None:
    decoder = RecordDecoder(SHAPE)
    raw = b"\x83\xa6stream\xa1s\xa3seq\x00\xa1x" + header + b"\x00" * 10
    with pytest.raises(BadRecord) as caught:
        decoder.decode(raw)
    assert caught.value.reason == "undecodable"
    assert detail in caught.value.detail


def test_deep_nesting_is_undecodable() -> None:
    with pytest.raises(BadRecord, match="undecodable"):
        RecordDecoder(SHAPE).decode(DEEP)


# -- fuzzing -----------------------------------------------------------------------------------


def _decode_any(decoder: RecordDecoder, raw: bytes, key: bytes | None = None) -> str:
    """Decode; only a valid Record or BadRecord with a known reason (and no warning) may come."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            record = decoder.decode(raw, key)
        except BadRecord as exc:
            assert exc.reason in DECODE_REASONS, exc
            return exc.reason
    assert isinstance(record, Record)
    assert record.x.shape == decoder.input_shape
    assert record.x.dtype == decoder.input_dtype
    assert record.x.flags.c_contiguous
    if decoder.input_dtype.kind == "f":
        assert np.isfinite(record.x).all()
    assert isinstance(record.stream, str) and record.stream
    assert isinstance(record.seq, int) and record.seq >= 0
    return "ok"


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a bit
            pos = min(pos, len(data) - 1)
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # replace a byte with an interesting one
            pos = min(pos, len(data) - 1)
            data[pos] = rng.choice([0x00, 0x7F, 0x80, 0x90, 0xC0, 0xC1, 0xC2, 0xCA, 0xDD, 0xFF])
        elif op == 2:  # insert random bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:  # truncate
            del data[pos:]
        else:  # delete a span
            del data[pos : pos + rng.randint(1, 8)]
    return bytes(data)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 7)
    if kind == 0:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 1:
        return rng.randint(-3, 20)
    if kind == 2:
        return rng.random() * 10.0 ** rng.randint(-5, 308) * rng.choice([1, -1])
    if kind == 3:
        return rng.choice([float("nan"), float("inf"), -0.0])
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return rng.choice(["", "s", "float32", "int16", "float16", "é" * 70])
    if kind == 6:
        return rng.randbytes(rng.choice([0, 1, 10, 12, 24, 48, 96]))
    if kind == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 4, 5, 12]))]
    return {"k": _random_value(rng, depth + 1)}


def _random_record(rng: random.Random, valid: dict[str, Any]) -> bytes:
    """``valid`` with some fields dropped or replaced by random values."""
    record = dict(valid)
    if rng.random() < 0.5:
        x = np.frombuffer(valid["x"], np.dtype(valid["dtype"]).newbyteorder("<"))
        nested = x.reshape(valid["shape"]).tolist()
        record["x"] = nested if rng.random() < 0.5 else x.tolist()
    for name in ("stream", "seq", "x", "dtype", "shape", "ts", "reset", "end", "extra"):
        roll = rng.random()
        if roll < 0.1:
            record.pop(name, None)
        elif roll < 0.25:
            record[name] = _random_value(rng)
    target = record.get("x")
    if isinstance(target, list) and target and rng.random() < 0.5:
        while isinstance(target[0], list) and target[0] and rng.random() < 0.7:
            target = target[0]
        target[rng.randrange(len(target))] = _random_value(rng, depth=2)
    return pack(record)


@pytest.mark.parametrize(
    ("decoder", "dtype"),
    [
        (RecordDecoder(SHAPE), "float64"),
        (RecordDecoder((5,), "int16"), "int16"),
        (RecordDecoder((2, 2, 3), "float16"), "float32"),
    ],
    ids=["float32-4x3", "int16-5", "float16-2x2x3"],
)
def test_fuzz_decode_only_returns_records_or_raises_bad_record(
    decoder: RecordDecoder, dtype: str
) -> None:
    rng = random.Random(20240601)
    x = sample(dtype, decoder.input_shape)
    valid = msgpack.unpackb(encode_input("s", 1, x, ts=9))
    seeds = [
        encode_input("s", 1, x, ts=9, reset=True, end=True),
        encode_input("s", 1, x, as_list=True),
        pack({**valid, "x": x.tolist()}),
        encode_input("s", 1, sample("int16", (5,)), ts=9),
        encode_output(Output("s", 1, np.zeros(3, np.float32), ts=4)),
    ]
    outcomes: dict[str, int] = {}
    for i in range(6000):
        kind = i % 3
        if kind == 0:
            raw = rng.randbytes(rng.randint(0, 64))
        elif kind == 1:
            raw = _mutate(rng, rng.choice(seeds))
        else:
            raw = _random_record(rng, valid)
        key = rng.choice([None, None, b"s", b"s-1", b"\xff", b""])
        outcome = _decode_any(decoder, raw, key)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # The generators reach deep into the decoder, not just its first checks.
    assert outcomes.get("ok", 0) > 100, outcomes
    assert len(outcomes) >= 12, outcomes


# -- batch decoding ----------------------------------------------------------------------------


def _decode_one(decoder: RecordDecoder, raw: bytes, key: bytes | str | None) -> Record | BadRecord:
    try:
        return decoder.decode(raw, key)
    except BadRecord as exc:
        return exc


def _outcome(result: Record | BadRecord) -> tuple[Any, ...]:
    """Everything observable about a decode result (a record, or a reject)."""
    if isinstance(result, BadRecord):
        return ("bad", result.reason, result.detail)
    x = result.x
    flags = (x.flags.c_contiguous, x.flags.writeable)
    fields = (result.stream, result.seq, result.ts, result.reset, result.end)
    return ("ok", *fields, x.dtype.str, x.shape, x.tobytes(), *flags)


def _corpus(decoder: RecordDecoder, n_fuzz: int) -> list[tuple[bytes, bytes | str | None]]:
    """Every reject case, valid records of every form (fast path or not), fuzzed records."""
    rng = random.Random(99)
    shape = decoder.input_shape
    corpus: list[tuple[bytes, bytes | str | None]] = [(raw, key) for _, raw, key, _ in REJECTS]
    float_shape = [float(d) for d in shape]  # equal to the shape, but not ints: rejected
    for dtype in DTYPES:
        x = sample(dtype, shape, seed=len(corpus))
        corpus += [
            (encode_input("s-1", 3, x, ts=-5), None),
            (encode_input("s-1", 3, x, ts=2**62, reset=True, end=True), b"s-1"),
            (encode_input("s-1", 3, x, reset=True), b"s-1"),
            (encode_input("s-1", 3, x, end=True), b"s-1"),
            (pack({**msgpack.unpackb(encode_input("s-1", 3, x)), "end": None}), b"s-1"),
            (encode_input("s-1", 3, x, include_stream=False, include_shape=False), b"s-1"),
            (encode_input("s-1", 3, x, include_stream=False), "s-1"),  # str key: slow path
            (encode_input("s-1", 3, x, as_list=True), b"s-1"),
            (encode_input("s-1", 3, x), b"s-2"),  # key mismatch
            (encode_input("é" * 64, 0, x), "é" * 64),  # 128 bytes of UTF-8: at the limit
            (encode_input("é" * 64, 0, x, include_stream=False), ("é" * 64).encode()),
            (encode_input("é" * 129, 0, x, include_stream=False), ("é" * 129).encode()),
            (encode_input("s", 0, x, include_stream=False), b"\xff"),
            (encode_input("s", 0, x, include_stream=False), b""),
            (pack({**msgpack.unpackb(encode_input("s", 0, x)), "shape": float_shape}), None),
        ]
    native = sample(decoder.input_dtype.name, shape)
    if decoder.input_dtype.kind == "f":
        for bad in (np.nan, np.inf, -np.inf):
            y = native.copy()
            y.flat[-1] = bad
            corpus.append((encode_input("s-nan", 1, y), b"s-nan"))
    valid = msgpack.unpackb(encode_input("s", 1, native, ts=9))
    seeds = [raw for raw, _ in corpus[-20:]]
    for i in range(n_fuzz):
        raw = _mutate(rng, rng.choice(seeds)) if i % 2 else _random_record(rng, valid)
        corpus.append((raw, rng.choice([None, b"s", b"s-1", b"\xff", b"", "s"])))
    rng.shuffle(corpus)
    return corpus


@pytest.mark.parametrize(
    "decoder",
    [
        RecordDecoder(SHAPE),
        RecordDecoder(SHAPE, max_record_bytes=100, max_stream_id_bytes=128),
        RecordDecoder((5,), "int16"),
        RecordDecoder((2, 2, 3), "float16"),
        RecordDecoder((6,), "float64"),
        RecordDecoder((), "float32"),  # scalar input: no fast path
    ],
    ids=["float32-4x3", "small-limits", "int16-5", "float16-2x2x3", "float64-6", "scalar"],
)
def test_decode_many_gives_exactly_what_decode_gives(decoder: RecordDecoder) -> None:
    corpus = _corpus(decoder, n_fuzz=1500)
    start, outcomes = 0, set()
    for size in [1, 2, 7, 64, 500, len(corpus)]:  # batches of every size, fast and slow mixed
        chunk = corpus[start : start + size] or corpus[:size]
        start += size
        got = decoder.decode_many([raw for raw, _ in chunk], [key for _, key in chunk])
        want = [_decode_one(decoder, raw, key) for raw, key in chunk]
        assert [_outcome(g) for g in got] == [_outcome(w) for w in want]
        outcomes |= {w.reason if isinstance(w, BadRecord) else "ok" for w in want}
    assert "ok" in outcomes and len(outcomes) >= 8, outcomes  # the corpus reaches deep


def test_decode_many_shares_one_read_only_buffer_and_one_id_object_per_key() -> None:
    decoder = RecordDecoder((3,))
    xs = np.arange(12, dtype=np.float32).reshape(4, 3)
    raws = [encode_input("k", i, xs[i]) for i in range(4)]
    records = decoder.decode_many(raws, [b"k"] * 4)
    assert all(isinstance(r, Record) for r in records)
    rs = [r for r in records if isinstance(r, Record)]
    np.testing.assert_array_equal(np.stack([r.x for r in rs]), xs)
    assert all(not r.x.flags.writeable and r.x.base is rs[0].x.base for r in rs)
    assert all(r.stream is rs[0].stream for r in rs)  # memoised: one str object per key
    # A non-finite record inside a batch is rejected alone, as decode() rejects it.
    bad = xs[1].copy()
    bad[0] = np.nan
    mixed = decoder.decode_many([raws[0], encode_input("k", 9, bad), raws[2]], [b"k"] * 3)
    assert [type(r).__name__ for r in mixed] == ["Record", "BadRecord", "Record"]
    assert isinstance(mixed[1], BadRecord) and mixed[1].reason == "non_finite"
    assert decoder.decode_many([], []) == []
    with pytest.raises(ValueError, match="2 values but 1 keys"):
        decoder.decode_many(raws[:2], [b"k"])


# -- output and dead-letter records -------------------------------------------------------------


def test_output_round_trip_with_and_without_ts() -> None:
    y = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    raw = encode_output(Output("s-1", 9, y, ts=123))
    assert msgpack.unpackb(raw) == {
        "stream": "s-1",
        "seq": 9,
        "y": y.astype("<f4").tobytes(),
        "shape": [2, 3],
        "dtype": "float32",
        "ts": 123,
    }
    out = decode_output(raw)
    assert out["y"].dtype == np.float32 and out["y"].shape == (2, 3)
    np.testing.assert_array_equal(out["y"], y)
    assert {k: v for k, v in out.items() if k != "y"} == {
        "stream": "s-1",
        "seq": 9,
        "shape": [2, 3],
        "dtype": "float32",
        "ts": 123,
    }
    no_ts = decode_output(encode_output(Output("s-1", 10, y.astype(np.float64))))
    assert "ts" not in no_ts and no_ts["y"].dtype == np.float32
    assert "ts" not in msgpack.unpackb(encode_output(Output("s", 0, y)))


@pytest.mark.parametrize("shape", [(8,), (), (2, 3), (0,), (100,)])
@pytest.mark.parametrize("dtype", ["float32", "float64", ">f4", "float16"])
def test_encode_outputs_is_encode_output_byte_for_byte(shape: tuple[int, ...], dtype: str) -> None:
    rng = np.random.default_rng(5)
    cases = [("s", 0, None), ("é" * 40, 2**40, -5), ("x" * 300, 127, 2**63 - 1), ("", 2**64 - 1, 0)]
    outputs = [Output(s, q, rng.standard_normal(shape).astype(dtype), ts) for s, q, ts in cases]
    outputs.append(Output("t", 1, np.asfortranarray(rng.standard_normal((*shape, 2)))[..., 0]))
    assert codec.encode_outputs(outputs) == [encode_output(o) for o in outputs]


def test_encode_outputs_of_differing_shapes_and_of_nothing() -> None:
    outputs = [Output("a", 1, np.zeros(3, np.float32)), Output("b", 2, np.ones(4, np.float32), 5)]
    assert codec.encode_outputs(outputs) == [encode_output(o) for o in outputs]
    assert codec.encode_outputs([]) == []


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([1], "not_a_map"),
        ({"stream": "s", "seq": 0, "shape": [1], "dtype": "float32"}, "missing_field"),
        ({"stream": "s", "seq": 0, "y": [1.0], "shape": [1], "dtype": "float32"}, "wrong_type"),
        ({"stream": "s", "seq": 0, "y": b"\0" * 4, "shape": [1], "dtype": "f4"}, "bad_dtype"),
        (
            {"stream": "s", "seq": 0, "y": b"\0" * 3, "shape": [1], "dtype": "float32"},
            "size_mismatch",
        ),
        ({"stream": "s", "seq": 0, "y": b"", "shape": [0], "dtype": "float32"}, "wrong_type"),
        (
            {"stream": "s", "seq": 0, "y": b"\0" * 4, "shape": [1], "dtype": "float32", "ts": 1.5},
            "wrong_type",
        ),
    ],
)
def test_decode_output_rejects_malformed_records(record: object, reason: str) -> None:
    with pytest.raises(BadRecord) as caught:
        decode_output(pack(record))
    assert caught.value.reason == reason


def test_dead_letter_round_trip() -> None:
    original = b"\xc1 not msgpack"
    raw = encode_dead_letter(original, "undecodable", "invalid msgpack: ...")
    assert decode_dead_letter(raw) == {
        "reason": "undecodable",
        "detail": "invalid msgpack: ...",
        "record": original,
    }
    full = encode_dead_letter(original, "truncated", "d", source="in.msgpack", offset=40, index=3)
    assert decode_dead_letter(full) == {
        "reason": "truncated",
        "detail": "d",
        "record": original,
        "source": "in.msgpack",
        "offset": 40,
        "index": 3,
    }
    assert type(msgpack.unpackb(full)["record"]) is bytes  # bin on the wire, not str
    with pytest.raises(BadRecord, match="missing_field"):
        decode_dead_letter(pack({"reason": "x", "detail": "y"}))
    with pytest.raises(BadRecord, match="wrong_type"):
        decode_dead_letter(pack({"reason": "x", "detail": "y", "record": b"", "offset": "3"}))


def test_encode_input_rejects_unsupported_dtypes() -> None:
    with pytest.raises(ValueError, match=r"x\.dtype must be one of"):
        encode_input("s", 0, np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="int64"):
        encode_input("s", 0, np.zeros(3, dtype=np.int64))


def test_encode_input_writes_the_documented_fields() -> None:
    x = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert msgpack.unpackb(encode_input("s", 1, x, as_list=True, ts=3, end=True)) == {
        "stream": "s",
        "seq": 1,
        "x": [0, 1, 2, 3, 4, 5],
        "dtype": "int16",
        "shape": [2, 3],
        "ts": 3,
        "end": True,
    }
    assert msgpack.unpackb(encode_input("s", 1, x, include_shape=False, include_stream=False)) == {
        "seq": 1,
        "x": x.astype("<i2").tobytes(),
        "dtype": "int16",
    }
