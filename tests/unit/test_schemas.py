"""The JSON Schemas in schemas/ agree with the codec (bin values mapped to base64 strings), and
the dead-letter schema and the README list exactly the registry's reason codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from processor.codec import (
    DTYPES,
    REASONS,
    RecordDecoder,
    decode_output,
    encode_dead_letter,
    encode_frame,
    encode_image_input,
    encode_input,
    encode_output,
)
from processor.errors import BadRecord
from processor.records import Output

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
README = ROOT / "README.md"
NAMES = ("input-record", "output-record", "dead-letter-record", "state-record")
SHAPE = (4, 3)


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return schema


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load(name))


def to_json(value: object) -> object:
    """Map unpacked msgpack to JSON values as schemas/README.md says: bin -> base64 string."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, np.ndarray):  # decode_output's y: its wire form
        return to_json(value.astype("<f4").tobytes())
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def wire(raw: bytes) -> object:
    return to_json(msgpack.unpackb(raw, raw=False))


def pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


@pytest.mark.parametrize("name", NAMES)
def test_schemas_are_valid_draft_2020_12_with_ids_and_descriptions(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"{name}:1")
    assert schema["title"] and schema["description"]
    for field, spec in schema["properties"].items():
        assert spec.get("description"), f"{name}: {field} has no description"
    assert set(schema["required"]) <= set(schema["properties"])


def test_bin_fields_are_base64_strings() -> None:
    expected = {"type": "string", "contentEncoding": "base64"}
    assert expected.items() <= load("output-record")["properties"]["y"].items()
    assert expected.items() <= load("dead-letter-record")["properties"]["record"].items()
    assert expected.items() <= load("input-record")["properties"]["x"]["oneOf"][0].items()


def test_dtype_enum_matches_the_codec() -> None:
    assert tuple(load("input-record")["properties"]["dtype"]["enum"]) == DTYPES


def _inputs() -> list[bytes]:
    x32 = np.arange(12, dtype=np.float32).reshape(SHAPE)
    records = [
        encode_input("s", 0, x32),
        encode_input("s", 1, x32, ts=1_700_000_000_000, reset=True, end=True),
        encode_input("s", 2, x32, as_list=True, include_shape=False),
        encode_input("s", 3, x32, include_stream=False),
        pack({"stream": "s", "seq": 4, "x": x32.tolist(), "reset": False, "future": {"a": 1}}),
    ]
    records += [encode_input("s", 5, x32.astype(d)) for d in DTYPES]
    records += [encode_input("s", 6, x32.astype(d), as_list=True) for d in DTYPES]
    return records


@pytest.mark.parametrize("raw", _inputs())
def test_encoded_inputs_validate_and_decode_to_what_they_carry(raw: bytes) -> None:
    validator("input-record").validate(wire(raw))
    fields = msgpack.unpackb(raw, raw=False)
    record = RecordDecoder(SHAPE).decode(raw, key=b"s")
    assert (record.stream, record.seq, record.ts) == ("s", fields["seq"], fields.get("ts"))
    assert (record.reset, record.end) == (fields.get("reset", False), fields.get("end", False))
    assert record.x.dtype == np.float32 and record.x.shape == SHAPE
    np.testing.assert_array_equal(record.x, np.arange(12, dtype=np.float32).reshape(SHAPE))


def _image_inputs() -> list[bytes]:
    frame = (np.arange(12, dtype=np.uint8) * 20).reshape(SHAPE)
    return [
        encode_image_input("s", 0, frame, "png"),
        encode_image_input("s", 1, frame, "jpeg", quality=95, ts=5, include_shape=False),
        pack({"seq": 2, "x": encode_frame(frame, "png"), "encoding": "png"}),
        encode_image_input("s", 3, frame, "raw"),
    ]


@pytest.mark.parametrize("raw", _image_inputs())
def test_encoded_image_inputs_validate_and_decode(raw: bytes) -> None:
    validator("input-record").validate(wire(raw))
    record = RecordDecoder(SHAPE, "uint8").decode(raw, key=b"s")
    expected = (np.arange(12, dtype=np.uint8) * 20).reshape(SHAPE)
    tolerance = 40 if msgpack.unpackb(raw).get("encoding") == "jpeg" else 0
    assert record.x.dtype == np.uint8 and record.x.shape == SHAPE
    assert np.abs(record.x.astype(int) - expected.astype(int)).max() <= tolerance


@pytest.mark.parametrize(
    "changes",
    [
        {"encoding": "gif"},
        {"encoding": "png", "x": [1] * 12},
        {"encoding": "jpeg", "dtype": "float32"},
        {"encoding": 1},
    ],
)
def test_schema_rejects_malformed_image_records(changes: dict[str, Any]) -> None:
    record = {"stream": "s", "seq": 1, "x": "AAAA", "dtype": "uint8", **changes}
    assert not validator("input-record").is_valid(to_json(record))


@pytest.mark.parametrize("ts", [None, 0, 1_700_000_000_000])
@pytest.mark.parametrize("shape", [(), (1,), (2, 3)])
def test_encoded_outputs_and_decode_output_results_validate(
    ts: int | None, shape: tuple[int, ...]
) -> None:
    y = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    raw = encode_output(Output("s-1", 3, y, ts=ts))
    validator("output-record").validate(wire(raw))
    decoded = decode_output(raw)
    validator("output-record").validate(to_json(decoded))
    assert to_json(decoded) == wire(raw)


@pytest.mark.parametrize(
    "options",
    [{}, {"source": "in.msgpack"}, {"offset": 0, "index": 0}, {"source": "t", "offset": 9}],
)
@pytest.mark.parametrize("reason", list(REASONS))
def test_encoded_dead_letters_validate(reason: str, options: dict[str, Any]) -> None:
    raw = encode_dead_letter(b"\xc1\x00", reason, f"detail of {reason}", **options)
    validator("dead-letter-record").validate(wire(raw))


def test_dead_letter_schema_lists_exactly_the_registry_reasons_with_their_meanings() -> None:
    listed = load("dead-letter-record")["properties"]["reason"]["oneOf"]
    assert [(c["const"], c["description"]) for c in listed] == [
        (r.code, r.meaning) for r in REASONS.values()
    ]
    record = {"detail": "d", "record": ""}
    assert not validator("dead-letter-record").is_valid({**record, "reason": "no_such_reason"})


def _readme_reason_table() -> list[tuple[str, str]]:
    """The rows of the README's table under "### Dead-letter reasons": (code, meaning)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    at = lines.index("### Dead-letter reasons")
    header = lines.index("| reason | meaning |", at)
    rows: list[tuple[str, str]] = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        code, meaning = (cell.strip() for cell in line.strip().strip("|").split("|", 1))
        rows.append((code.strip("`"), meaning))
    return rows


def test_readme_reason_table_lists_exactly_the_registry_reasons_with_their_meanings() -> None:
    assert _readme_reason_table() == [(r.code, r.meaning) for r in REASONS.values()]


def _base(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "stream": "s",
        "seq": 1,
        "x": np.zeros(12, "<f4").tobytes(),
        "dtype": "float32",
        "shape": list(SHAPE),
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


# Records the decoder rejects for reasons a schema can express: the schema rejects them too.
SCHEMA_EXPRESSIBLE = [
    ("missing_field", _base(seq=...)),
    ("missing_field", _base(x=...)),
    ("wrong_type", _base(seq="1")),
    ("wrong_type", _base(seq=True)),
    ("wrong_type", _base(seq=1.5)),
    ("wrong_type", _base(seq=None)),
    ("wrong_type", _base(ts="now")),
    ("wrong_type", _base(ts=None)),
    ("wrong_type", _base(ts=True)),
    ("wrong_type", _base(reset=1)),
    ("wrong_type", _base(end="yes")),
    ("wrong_type", _base(dtype=5)),
    ("wrong_type", _base(shape="4x3")),
    ("wrong_type", _base(shape=[4, True])),
    ("wrong_type", _base(shape=[4, 3.5])),
    ("wrong_type", _base(x={"a": 1})),
    ("wrong_type", _base(x=5)),
    ("bad_stream_id", _base(stream="")),
    ("bad_stream_id", _base(stream=7)),
    ("bad_stream_id", _base(stream=None)),
    ("negative_seq", _base(seq=-1)),
    ("bad_dtype", _base(dtype="float128")),
    ("bad_dtype", _base(dtype="FLOAT32")),
    ("bad_value", _base(x=[1.0] * 11 + ["a"])),
    ("bad_value", _base(x=[1.0] * 11 + [True])),
    ("bad_value", _base(x=[1.0] * 11 + [None])),
    ("bad_value", _base(x=[1.5] * 12, dtype="int16")),
    ("bad_value", _base(x=[[1.5] * 3] * 4, dtype="uint8")),
    ("shape_mismatch", _base(shape=[0, 3])),
    ("size_mismatch", _base(x=[])),
]


@pytest.mark.parametrize(("reason", "record"), SCHEMA_EXPRESSIBLE)
def test_schema_rejects_what_the_decoder_rejects(reason: str, record: dict[str, Any]) -> None:
    dtype = record.get("dtype")
    model_dtype = dtype if dtype in ("int16", "uint8") else "float32"
    raw = pack(record)
    with pytest.raises(BadRecord) as caught:
        RecordDecoder(SHAPE, model_dtype).decode(raw)
    assert caught.value.reason == reason
    assert not validator("input-record").is_valid(wire(raw))


@pytest.mark.parametrize(
    "record",
    [
        {"seq": -1, "y": "", "shape": [1], "dtype": "float32", "stream": "s"},
        {"seq": 1, "y": "", "shape": [1], "dtype": "float64", "stream": "s"},
        {"seq": 1, "y": "", "shape": [1], "dtype": "float32"},
        {"seq": 1, "y": [1.0], "shape": [1], "dtype": "float32", "stream": "s"},
    ],
)
def test_output_schema_rejects_malformed_outputs(record: dict[str, Any]) -> None:
    assert not validator("output-record").is_valid(record)


@pytest.mark.parametrize(
    "record",
    [
        {"reason": "x", "detail": "d"},
        {"reason": "", "detail": "d", "record": ""},
        {"reason": "x", "detail": "d", "record": "", "offset": -1},
        {"reason": "x", "detail": "d", "record": "", "index": "3"},
    ],
)
def test_dead_letter_schema_rejects_malformed_records(record: dict[str, Any]) -> None:
    assert not validator("dead-letter-record").is_valid(record)


@pytest.mark.parametrize("record", [_base(seq=1.0), _base(shape=[4, 3.0]), _base(ts=5.0)])
def test_integral_floats_are_the_documented_gap(record: dict[str, Any]) -> None:
    """JSON Schema counts 1.0 as an integer; msgpack keeps int and float apart and the
    decoder wants ints (schemas/README.md says so)."""
    raw = pack(record)
    with pytest.raises(BadRecord, match="wrong_type"):
        RecordDecoder(SHAPE).decode(raw)
    assert validator("input-record").is_valid(wire(raw))
