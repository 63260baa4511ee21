"""File framing: one frame per top-level msgpack object, oversize objects of any size and
header kind passed over by their headers (on seekable files and on pipes) so that framing
and ``lstm-stream replay`` go on after them; only bytes that are not a header stop it."""

from __future__ import annotations

import io
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

import keras
import msgpack
import numpy as np
import pytest

from processor.cli import main as cli_main
from processor.codec import (
    DECODE_REASONS,
    Frame,
    RecordDecoder,
    decode_dead_letter,
    decode_output,
    encode_dead_letter,
    encode_input,
    iter_framed,
)
from processor.codec.framing import MAX_WALK_DEPTH
from processor.errors import BadRecord

FEATURES = 3
LIMIT = 200  # --max-record-bytes of most tests here: small, so oversize objects stay small


def pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def good(i: int, stream: str = "a") -> bytes:
    """A valid input record for a model of FEATURES float32 inputs (~70 bytes)."""
    x = np.arange(FEATURES, dtype=np.float32) + i
    return encode_input(stream, i, x, ts=1000 + i)


def offsets(parts: list[bytes]) -> list[int]:
    out, at = [], 0
    for part in parts:
        out.append(at)
        at += len(part)
    return out


def oversize(size: int, limit: int = LIMIT) -> str:
    return f"oversize: record is {size} bytes, limit is {limit}"


class Pipe(io.RawIOBase):
    """A non-seekable stream like a pipe: no seek, and reads that may return fewer bytes
    than asked (at most ``step``), as a raw pipe does."""

    def __init__(self, data: bytes, step: int = 1 << 30) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step
        self.delivered = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def binary(self) -> BinaryIO:
        """This stream as the binary file type ``iter_framed`` takes (it reads, and asks
        ``seekable()``)."""
        return cast(BinaryIO, self)

    def read(self, size: int | None = -1, /) -> bytes:
        assert size is not None and size > 0, "iter_framed must never read the whole stream"
        n = min(size, self._step, len(self._data) - self._pos)
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        self.delivered += n
        return chunk


class CountingFile(io.BytesIO):
    """A seekable file that counts the bytes read (so a test can see what was sought over)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requests: list[int] = []
        self.delivered = 0

    def read(self, size: int | None = -1, /) -> bytes:
        assert size is not None and size > 0, "iter_framed must never read the whole file"
        self.requests.append(size)
        chunk = super().read(size)
        self.delivered += len(chunk)
        return chunk


READERS: dict[str, Callable[[bytes], BinaryIO]] = {
    "file": lambda data: CountingFile(data),
    "pipe": lambda data: Pipe(data).binary(),
    "pipe-short-reads": lambda data: Pipe(data, step=1000).binary(),
}


def frames_of(
    data: bytes, limit: int = LIMIT, chunk_size: int = 1 << 20, reader: str = "file"
) -> list[Frame]:
    return list(iter_framed(READERS[reader](data), limit, chunk_size))


# -- oversize objects of every header kind ------------------------------------------------


def _header(first: int, size: int, width: int) -> bytes:
    return bytes([first]) + size.to_bytes(width, "big")


def _mixed() -> tuple[int, bytes]:
    """Elements of every scalar kind (and small containers): (count, their bytes)."""
    values: list[object] = [
        *(0, 127, -1, -32, 200, 70_000, 2**33, -100, -40_000, -(2**33), 2**64 - 1),
        *(1.5, None, True, False, "", "x" * 31, "y" * 40, b"", b"z" * 10),
        *(msgpack.ExtType(n, b"e" * n) for n in (1, 2, 4, 8, 16, 3)),
        *([], {}, [1, [2, [3]]], {"a": {"b": []}}),
    ]
    data = b"".join(pack(v) for v in values) + msgpack.packb(2.5, use_single_float=True)
    return len(values) + 1, data


def _oversize_objects() -> dict[str, bytes]:
    """An object larger than LIMIT for each msgpack header kind that can carry one."""
    mixed_n, mixed = _mixed()
    key_values = b"".join(pack(f"k{i}") + pack(b"v" * 3) for i in range(100))
    objects = {
        "str8": _header(0xD9, 250, 1) + b"a" * 250,
        "str16": _header(0xDA, 5_000, 2) + b"a" * 5_000,
        "str32": _header(0xDB, 70_000, 4) + b"a" * 70_000,
        "bin8": _header(0xC4, 250, 1) + b"\x00" * 250,
        "bin16": _header(0xC5, 5_000, 2) + b"\x00" * 5_000,
        "bin32": _header(0xC6, 70_000, 4) + b"\x00" * 70_000,
        # Longer than replay's parse buffer (the limit plus its 1 MiB chunk).
        "bin32-beyond-1-mib": _header(0xC6, (1 << 20) + 4096, 4) + bytes((1 << 20) + 4096),
        "ext8": _header(0xC7, 250, 1) + b"\x05" + b"e" * 250,
        "ext16": _header(0xC8, 5_000, 2) + b"\x05" + b"e" * 5_000,
        "ext32": _header(0xC9, 70_000, 4) + b"\x05" + b"e" * 70_000,
        "fixarray": b"\x93" + pack(b"\x01" * 100) * 3,
        "array16-runs": _header(0xDC, 300, 2) + b"\x01" * 150 + pack(1.5) * 150,
        "array16-mixed": _header(0xDC, mixed_n * 10, 2) + mixed * 10,
        "array32": _header(0xDD, 70_000, 4) + pack(-7.25) * 70_000,
        "fixmap": b"\x83" + b"".join(pack(k) + pack(b"\x02" * 100) for k in "abc"),
        "map16": _header(0xDE, 100, 2) + key_values,
        "map32": _header(0xDF, 100, 4) + key_values,
        "nested": pack(
            {
                "stream": "s",
                "seq": 1,
                "x": [[b"\x00" * 300, {"k": "v" * 1_000}], list(range(50))],
                "meta": {"deep": [[[["a" * 70_000, 1], 2], 3], {"e": msgpack.ExtType(1, b"")}]},
            }
        ),
        "nested-5000-deep": b"\x91" * 5_000 + _header(0xC4, 250, 1) + b"\x00" * 250,
    }
    for name, obj in objects.items():  # each is one complete msgpack object, oversize
        assert len(obj) > LIMIT, name
        unpacker = msgpack.Unpacker(raw=True, max_buffer_size=1 << 24)
        unpacker.feed(obj)
        if name != "nested-5000-deep":  # deeper than msgpack's own parser goes
            unpacker.skip()
            assert unpacker.tell() == len(obj), name
    return objects


OVERSIZE_OBJECTS = _oversize_objects()


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("chunk_size", [64, 1 << 20])
@pytest.mark.parametrize("kind", list(OVERSIZE_OBJECTS))
def test_an_oversize_object_of_each_header_kind_is_passed_over(
    kind: str, chunk_size: int, reader: str
) -> None:
    big = OVERSIZE_OBJECTS[kind]
    parts = [big, good(0), good(1), big, good(2), big]
    frames = frames_of(b"".join(parts), chunk_size=chunk_size, reader=reader)
    expected = [
        Frame(at, None, oversize(len(p))) if p is big else Frame(at, p)
        for at, p in zip(offsets(parts), parts, strict=True)
    ]
    assert frames == expected
    assert not any(f.fatal for f in frames)


def test_a_20_mb_x_between_good_records_is_passed_over_at_the_default_limits() -> None:
    """A payload far longer than the unpacker's buffer (limit plus chunk) is passed over too."""
    big = encode_input("big", 0, np.zeros(5_000_000, np.float32))  # x: 20 MB of bin32
    parts = [good(0), big, good(1)]
    for reader in ("file", "pipe"):
        frames = list(iter_framed(READERS[reader](b"".join(parts)), 4 * 1024 * 1024))
        at = offsets(parts)
        assert frames == [
            Frame(at[0], parts[0]),
            Frame(at[1], None, oversize(len(big), 4 * 1024 * 1024)),
            Frame(at[2], parts[2]),
        ]


def test_a_seekable_file_is_sought_over_and_a_pipe_read_in_bounded_chunks() -> None:
    big = OVERSIZE_OBJECTS["bin32"] * 40  # 40 payloads of 70 kB
    data = good(0) + big + good(1)
    file = CountingFile(data)
    frames = list(iter_framed(file, LIMIT, chunk_size=256))
    assert [f.reason for f in frames] == [None] + ["oversize"] * 40 + [None]
    assert file.delivered < len(data) // 50  # the payloads were sought over, not read
    assert set(file.requests) == {1, 256}  # chunks, and the last byte of each sought payload
    pipe = Pipe(data)
    assert list(iter_framed(pipe.binary(), LIMIT, chunk_size=256)) == frames
    assert pipe.delivered == len(data)


@pytest.mark.parametrize("reader", ["file", "pipe", "pipe-short-reads"])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_walked_boundaries_agree_with_msgpack(chunk_size: int, reader: str) -> None:
    """Random objects framed with a 1-byte limit (so nearly all are walked by their headers)
    end exactly where msgpack's own parser says."""
    rnd = random.Random(chunk_size)

    def value(depth: int) -> object:
        kind = rnd.randrange(9 if depth < 4 else 6)
        if kind == 0:
            return rnd.choice([0, 1, -1, 127, 128, -33, 2**15, -(2**31), 2**63, 2**64 - 1])
        if kind == 1:
            return rnd.choice([None, True, False, 0.5, -1e300])
        if kind == 2:
            return "s" * rnd.choice([0, 1, 31, 32, 255, 256, 300])
        if kind == 3:
            return b"b" * rnd.choice([0, 1, 255, 256, 300])
        if kind == 4:
            return msgpack.ExtType(rnd.randrange(128), b"e" * rnd.choice([1, 2, 3, 4, 8, 16, 300]))
        if kind == 5:
            return rnd.randrange(-(2**40), 2**40)
        if kind in (6, 7):
            return [value(depth + 1) for _ in range(rnd.choice([0, 1, 2, 15, 16, 40]))]
        return {f"k{i}": value(depth + 1) for i in range(rnd.choice([0, 1, 15, 16, 20]))}

    parts = [pack(value(0)) for _ in range(60)]
    frames = frames_of(b"".join(parts), limit=1, chunk_size=chunk_size, reader=reader)
    expected = [
        Frame(at, p) if len(p) <= 1 else Frame(at, None, oversize(len(p), 1))
        for at, p in zip(offsets(parts), parts, strict=True)
    ]
    assert frames == expected


@pytest.mark.parametrize("reader", ["file", "pipe"])
@pytest.mark.parametrize("chunk_size", [64, 1 << 20])
def test_an_invalid_header_inside_an_oversize_object_ends_the_framing(
    chunk_size: int, reader: str
) -> None:
    bad = _header(0xDC, 300, 2) + b"\x01" * 250 + b"\xc1" + b"\x01" * 49
    data = good(0) + bad + good(1)
    frames = frames_of(data, chunk_size=chunk_size, reader=reader)
    assert frames[0] == Frame(0, good(0))
    assert (frames[1].offset, frames[1].raw, frames[1].reason) == (
        len(good(0)),
        None,
        "undecodable",
    )
    assert frames[1].fatal
    assert frames[1].error == (
        f"undecodable: byte 0xc1 at offset {len(good(0)) + 253} is not a msgpack header"
    )
    assert len(frames) == 2


@pytest.mark.parametrize("chunk_size", [64, 1 << 20])
def test_more_open_containers_than_the_walk_tracks_end_the_framing(chunk_size: int) -> None:
    # Each array's second element is still to come while its first nests deeper.
    data = good(0) + b"\x92" * (MAX_WALK_DEPTH + 2) + b"\x00" * (MAX_WALK_DEPTH + 3)
    frames = frames_of(data, chunk_size=chunk_size)
    assert frames[0] == Frame(0, good(0))
    assert frames[1].reason == "undecodable" and frames[1].fatal
    assert frames[1].error is not None and f"more than {MAX_WALK_DEPTH} nested" in frames[1].error
    assert len(frames) == 2


@pytest.mark.parametrize("reader", ["file", "pipe"])
def test_an_oversize_object_cut_short_by_the_end_of_the_input_is_truncated(reader: str) -> None:
    for big in (OVERSIZE_OBJECTS["bin32"], OVERSIZE_OBJECTS["array32"], OVERSIZE_OBJECTS["str8"]):
        frames = frames_of(good(0) + big[:-1], chunk_size=64, reader=reader)
        assert frames == [Frame(0, good(0)), Frame(len(good(0)), None, "truncated")]
        assert not frames[1].fatal


# -- framing in general --------------------------------------------------------------------


def _records(n: int) -> list[bytes]:
    return [good(i, stream=f"s-{i % 3}") for i in range(n)]


def _decode_outcome(decoder: RecordDecoder, raw: bytes) -> str:
    try:
        decoder.decode(raw)
    except BadRecord as exc:
        assert exc.reason in DECODE_REASONS
        return exc.reason
    return "ok"


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1 << 20])
def test_framing_yields_original_bytes_and_offsets(chunk_size: int) -> None:
    parts = _records(5)
    parts.insert(2, pack(42))  # valid msgpack, not a record
    parts.insert(4, b"\x81\xa1a\xa2\xff\xfe")  # valid structure, invalid UTF-8 inside
    frames = frames_of(b"".join(parts), limit=1 << 20, chunk_size=chunk_size)
    assert frames == [Frame(o, p) for o, p in zip(offsets(parts), parts, strict=True)]
    decoder = RecordDecoder((FEATURES,))
    outcomes = [_decode_outcome(decoder, f.raw) for f in frames if f.raw is not None]
    assert outcomes == ["ok", "ok", "not_a_map", "ok", "undecodable", "ok", "ok"]


@pytest.mark.parametrize("chunk_size", [1, 5, 1 << 20])
def test_framing_reports_a_truncated_tail(chunk_size: int) -> None:
    parts = _records(3)
    partial = parts[2][:-5]
    frames = frames_of(parts[0] + parts[1] + partial, limit=1 << 20, chunk_size=chunk_size)
    assert frames[:2] == [Frame(0, parts[0]), Frame(len(parts[0]), parts[1])]
    assert frames[2] == Frame(len(parts[0]) + len(parts[1]), partial, "truncated")
    assert frames[2].reason == "truncated" and frames[0].reason is None
    assert len(frames) == 3


def test_framing_an_empty_file_yields_nothing() -> None:
    assert frames_of(b"") == []


@pytest.mark.parametrize("chunk_size", [1, 4, 1 << 20])
def test_framing_stops_at_corrupt_bytes(chunk_size: int) -> None:
    parts = _records(2)
    data = parts[0] + b"\x92\x01\xc1" + parts[1]  # 0xc1 is never valid msgpack
    frames = frames_of(data, limit=1 << 20, chunk_size=chunk_size)
    assert frames[0] == Frame(0, parts[0])
    assert frames[1].offset == len(parts[0]) and frames[1].raw is None
    assert frames[1].reason == "undecodable" and frames[1].fatal
    assert frames[1].error is not None and frames[1].error.startswith("undecodable: ")
    assert len(frames) == 2


@pytest.mark.parametrize("chunk_size", [1, 16, 100, 1 << 20])
def test_framing_skips_an_object_of_many_small_items_and_goes_on(chunk_size: int) -> None:
    small = _records(2)
    big = pack({"stream": "s", "seq": 1, "x": [1.5] * 500})  # 4.5 kB of many small items
    parts = [small[0], big, small[1]]
    frames = frames_of(b"".join(parts), limit=1000, chunk_size=chunk_size)
    at = offsets(parts)
    assert frames == [
        Frame(at[0], small[0]),
        Frame(at[1], None, oversize(len(big), 1000)),
        Frame(at[2], small[1]),
    ]


@pytest.mark.parametrize("chunk_size", [64, 1 << 20])
@pytest.mark.parametrize(
    "payload",
    [
        b"\xc6\x00\x30\x00\x00" + b"\x00" * (3 << 20),  # bin32 of 3 MiB
        b"\x92\x01\xdb\x00\x30\x00\x00" + b"a" * (3 << 20),  # str32 inside an array
    ],
    ids=["bin", "nested-str"],
)
def test_framing_passes_a_payload_larger_than_the_parse_buffer(
    payload: bytes, chunk_size: int
) -> None:
    record = _records(1)[0]
    frames = frames_of(record + payload + record, limit=1000, chunk_size=chunk_size)
    at = len(record)
    assert frames == [
        Frame(0, record),
        Frame(at, None, oversize(len(payload), 1000)),
        Frame(at + len(payload), record),
    ]


def test_framing_skips_a_payload_just_over_the_limit() -> None:
    record = _records(1)[0]
    big = pack(b"\x00" * 1020)
    frames = frames_of(record + big + record, limit=1000)
    at = len(record)
    assert frames == [
        Frame(0, record),
        Frame(at, None, oversize(len(big), 1000)),
        Frame(at + len(big), record),
    ]


def test_framing_a_lying_array_header_swallows_the_rest_with_bounded_reads() -> None:
    record = _records(1)[0]
    lying = b"\xdd\xff\xff\xff\xff"  # array32 of 4 Gi items, followed by ordinary records
    reader = CountingFile(record + lying + record * 2000)
    frames = list(iter_framed(reader, max_record_bytes=1000, chunk_size=4096))
    assert frames == [Frame(0, record), Frame(len(record), None, "truncated")]
    assert not frames[1].fatal
    assert set(reader.requests) <= {1, 4096}  # chunks, and the last byte of sought payloads


@pytest.mark.parametrize("chunk_size", [64, 1 << 20])
def test_nesting_too_deep_for_msgpack_is_framed_and_passed_over(chunk_size: int) -> None:
    deep = b"\x91" * 5000 + b"\x00"  # arrays nested 5000 deep: msgpack's parser refuses
    frames = frames_of(pack(1) + deep + pack(2), limit=1 << 20, chunk_size=chunk_size)
    assert frames[0] == Frame(0, b"\x01")
    assert frames[1].offset == 1 and frames[1].raw == deep and frames[1].reason == "undecodable"
    assert not frames[1].fatal
    assert frames[2] == Frame(1 + len(deep), b"\x02")
    with pytest.raises(BadRecord, match="undecodable"):
        RecordDecoder((FEATURES,)).decode(deep)


def test_framing_a_lying_header_at_the_end_is_truncated() -> None:
    record = _records(1)[0]
    tail = b"\xc6\x00\x10\x00\x00" + b"\x00" * 10
    frames = frames_of(record + tail, limit=1000)
    assert frames == [Frame(0, record), Frame(len(record), tail, "truncated")]


def test_framing_reads_lazily_in_chunks() -> None:
    parts = _records(200)
    reader = CountingFile(b"".join(parts))
    frames = iter_framed(reader, max_record_bytes=1000, chunk_size=256)
    assert next(frames) == Frame(0, parts[0])
    assert reader.delivered <= 256
    assert len(list(frames)) == 199
    assert set(reader.requests) == {256}


def test_framing_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        list(iter_framed(io.BytesIO(b""), 10, chunk_size=0))
    with pytest.raises(ValueError, match="max_record_bytes"):
        list(iter_framed(io.BytesIO(b""), 0))


def test_framed_dead_letters_are_themselves_framed_files() -> None:
    """A dead-letter file is concatenated dead-letter records: framing reads it back."""
    bad = [pack(1), b"\x90"]
    data = b"".join(encode_dead_letter(b, "not_a_map", "d", index=i) for i, b in enumerate(bad))
    letters = [decode_dead_letter(f.raw) for f in frames_of(data) if f.raw is not None]
    assert [d["record"] for d in letters] == bad


@pytest.mark.parametrize("reader", ["file", "pipe"])
def test_framing_memory_stays_bounded_by_the_limits(reader: str) -> None:
    """A 9 MB oversize array, a 6 MB bin and a lying header over 4 MB pass with ~60 kB
    traced."""
    small = pack({"a": 1})
    data = (
        small
        + pack([1.5] * 1_000_000)
        + small
        + _header(0xC6, 6_000_000, 4)
        + bytes(6_000_000)
        + small
        + b"\xdd\xff\xff\xff\xff"
        + b"\x01" * 4_000_000
    )
    # Plain readers: CountingFile's own list of requests would count against the bound.
    fp = io.BytesIO(data) if reader == "file" else Pipe(data).binary()
    tracemalloc.start()
    try:
        frames = list(iter_framed(fp, max_record_bytes=1000, chunk_size=4096))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames == [
        Frame(0, small),
        Frame(4, None, oversize(9_000_005, 1000)),
        Frame(9_000_009, small),
        Frame(9_000_013, None, oversize(6_000_005, 1000)),
        Frame(15_000_018, small),
        Frame(15_000_022, None, "truncated"),
    ]
    assert peak < 4 * (1000 + 4096) + 64 * 1024


# -- replay goes on after oversize records -------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, FEATURES))
    out = keras.layers.Dense(2)(keras.layers.LSTM(4, return_sequences=True)(inp))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inp, out).save(path)
    return path


def replay_args(model: Path, inp: str, out: Path, dlq: Path, *extra: str) -> list[str]:
    return [
        "replay",
        *("--model", str(model), "--input", inp, "--output", str(out), "--dlq", str(dlq)),
        *("--max-record-bytes", str(LIMIT), *extra),
    ]


def iter_records(data: bytes) -> list[bytes]:
    return [f.raw for f in iter_framed(io.BytesIO(data), 1 << 24) if f.raw is not None]


def _mixed_input() -> tuple[bytes, list[bytes], list[tuple[int, int, int]]]:
    """Good records with one oversize object of every kind among them: (input, the good
    records, (index, offset, size) of each oversize one)."""
    parts: list[bytes] = []
    goods: list[bytes] = []
    for i, big in enumerate(OVERSIZE_OBJECTS.values()):
        goods.append(good(i))
        parts += [goods[-1], big]
    goods.append(good(len(OVERSIZE_OBJECTS)))
    parts.append(goods[-1])
    bad = [
        (index, at, len(p))
        for index, (at, p) in enumerate(zip(offsets(parts), parts, strict=True))
        if index % 2
    ]
    return b"".join(parts), goods, bad


def _check_replay(
    out: bytes, dlq: bytes, goods: list[bytes], bad: list[tuple[int, int, int]]
) -> None:
    """Every good record answered (as by a replay of the good records alone), every oversize
    one dead-lettered with its index and byte offset."""
    outputs = [decode_output(o) for o in iter_records(out)]
    assert [(o["stream"], o["seq"]) for o in outputs] == [("a", i) for i in range(len(goods))]
    dead = [decode_dead_letter(d) for d in iter_records(dlq)]
    assert [(d["index"], d["offset"], d["reason"], d["record"]) for d in dead] == [
        (index, at, "oversize", b"") for index, at, _ in bad
    ]
    assert [d["detail"] for d in dead] == [oversize(size) for _, _, size in bad]


def test_replay_answers_every_good_record_around_oversize_ones_in_a_file(
    model_path: Path, tmp_path: Path
) -> None:
    data, goods, bad = _mixed_input()
    inp, out, dlq = tmp_path / "in", tmp_path / "out", tmp_path / "dlq"
    inp.write_bytes(data)
    assert cli_main(replay_args(model_path, str(inp), out, dlq)) == 0
    _check_replay(out.read_bytes(), dlq.read_bytes(), goods, bad)
    # The outputs are those of the good records alone.
    (tmp_path / "good").write_bytes(b"".join(goods))
    alone = tmp_path / "alone"
    assert cli_main(replay_args(model_path, str(tmp_path / "good"), alone, tmp_path / "d2")) == 0
    assert out.read_bytes() == alone.read_bytes()


def test_replay_answers_every_good_record_around_oversize_ones_on_a_non_seekable_stdin(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, goods, bad = _mixed_input()

    class Stdin:
        buffer = Pipe(data, step=4096)

    monkeypatch.setattr("sys.stdin", Stdin)
    out, dlq = tmp_path / "out", tmp_path / "dlq"
    assert cli_main(replay_args(model_path, "-", out, dlq)) == 0
    assert Stdin.buffer.delivered == len(data)
    _check_replay(out.read_bytes(), dlq.read_bytes(), goods, bad)


def test_replay_from_a_real_pipe_goes_on_after_oversize_records(
    model_path: Path, tmp_path: Path
) -> None:
    data, goods, bad = _mixed_input()
    out, dlq = tmp_path / "out", tmp_path / "dlq"
    command = [sys.executable, "-m", "processor.cli", *replay_args(model_path, "-", out, dlq)]
    done = subprocess.run(command, input=data, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    _check_replay(out.read_bytes(), dlq.read_bytes(), goods, bad)


def test_replay_goes_on_after_a_record_with_a_20_mb_x_at_the_default_limit(
    model_path: Path, tmp_path: Path
) -> None:
    big = encode_input("big", 0, np.zeros(5_000_000, np.float32))
    inp, out, dlq = tmp_path / "in", tmp_path / "out", tmp_path / "dlq"
    inp.write_bytes(good(0) + big + good(1))
    args = ["--model", str(model_path), "--input", str(inp), "--output", str(out)]
    assert cli_main(["replay", *args, "--dlq", str(dlq)]) == 0
    assert [decode_output(o)["seq"] for o in iter_records(out.read_bytes())] == [0, 1]
    dead = [decode_dead_letter(d) for d in iter_records(dlq.read_bytes())]
    assert [(d["reason"], d["offset"], d["index"]) for d in dead] == [("oversize", len(good(0)), 1)]


def test_replay_still_stops_with_exit_code_2_at_an_invalid_header(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _header(0xDC, 300, 2) + b"\x01" * 250 + b"\xc1" + b"\x01" * 49  # 0xc1 in an array
    big = OVERSIZE_OBJECTS["str32"]
    data = good(0) + big + good(1) + bad + good(2)
    inp, out, dlq = tmp_path / "in", tmp_path / "out", tmp_path / "dlq"
    inp.write_bytes(data)
    assert cli_main(replay_args(model_path, str(inp), out, dlq)) == 2
    assert [decode_output(o)["seq"] for o in iter_records(out.read_bytes())] == [0, 1]
    dead = [decode_dead_letter(d) for d in iter_records(dlq.read_bytes())]
    assert [(d["reason"], d["offset"]) for d in dead] == [
        ("oversize", len(good(0))),
        ("undecodable", len(good(0)) + len(big) + len(good(1))),
    ]
    assert "input framing is corrupt" in capsys.readouterr().err
