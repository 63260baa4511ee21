"""StateRecordCodec: round trips in each storage dtype, refusals, and the JSON Schema."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from jsonschema import Draft202012Validator

from processor.errors import LstmStreamError
from processor.kafka.durable.record import (
    STATE_FORMAT_VERSION,
    BadStateRecordError,
    StateMismatchError,
    StateRecordCodec,
    state_fingerprint,
)
from processor.model import StateSpec
from processor.state.cache import StreamState

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "state-record.schema.json"
SPEC = (StateSpec("lstm/h", (8,)), StateSpec("lstm/c", (8,)), StateSpec("conv/s", (2, 3)))
SOURCE = ("events", 3, 1234)


def make_state(seed: int = 0, seq: int = 41) -> StreamState:
    rng = np.random.default_rng(seed)
    return StreamState(
        arrays=tuple(rng.standard_normal(s.shape).astype(np.float32) for s in SPEC), seq=seq
    )


def unpacked(value: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = msgpack.unpackb(value, raw=False)
    return obj


def pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def to_json(value: object) -> object:
    """Unpacked msgpack as schemas/README.md maps it to JSON: bin -> base64 string."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def test_fingerprint_lists_names_and_shapes_in_order() -> None:
    assert state_fingerprint(SPEC) == [["lstm/h", [8]], ["lstm/c", [8]], ["conv/s", [2, 3]]]


def test_float32_round_trip_is_exact_and_keeps_seq_and_source() -> None:
    codec = StateRecordCodec(SPEC, "float32", "sha256:abc")
    state = make_state()
    value = codec.encode(state, SOURCE)
    decoded = codec.decode_full(value)
    assert decoded.seq == 41
    assert decoded.dtype == "float32"
    assert decoded.source == SOURCE
    assert decoded.model == "sha256:abc"
    for got, want, spec in zip(decoded.arrays, state.arrays, SPEC, strict=True):
        assert got.dtype == np.float32 and got.shape == spec.shape
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable and got.flags.c_contiguous
    plain = codec.decode(value)
    assert isinstance(plain, StreamState) and plain.seq == 41
    np.testing.assert_array_equal(plain.arrays[2], state.arrays[2])


def test_value_layout_is_the_documented_map() -> None:
    codec = StateRecordCodec(SPEC, "float16", "m1")
    obj = unpacked(codec.encode(make_state(), SOURCE))
    assert obj["v"] == STATE_FORMAT_VERSION == 1
    assert obj["fp"] == state_fingerprint(SPEC)
    assert obj["model"] == "m1"
    assert obj["dtype"] == "float16"
    assert obj["seq"] == 41
    assert obj["src"] == list(SOURCE)
    assert [len(b) for b in obj["s"]] == [16, 16, 12]
    np.testing.assert_array_equal(
        np.frombuffer(obj["s"][0], "<f2"), make_state().arrays[0].astype(np.float16)
    )


def test_bfloat16_bytes_are_the_upper_half_of_float32_and_exact_for_bfloat16_values() -> None:
    # float32 values whose lower 16 bits are zero are bfloat16 values: stored without loss.
    raw = np.array([1.0, -2.5, 0.15625, 3.0e38, -0.0, 1.0e-38, 96.0, -1.7e-5], np.float32)
    values = (raw.view("<u4") & np.uint32(0xFFFF0000)).view("<f4")
    spec = (StateSpec("h", (8,)),)
    codec = StateRecordCodec(spec, "bfloat16")
    value = codec.encode(StreamState((values,), 7), SOURCE)
    stored = np.frombuffer(unpacked(value)["s"][0], "<u2")
    upper = (values.view("<u4") >> 16).astype("<u2")
    np.testing.assert_array_equal(stored, upper)
    decoded = codec.decode_full(value)
    assert decoded.dtype == "bfloat16"
    np.testing.assert_array_equal(decoded.arrays[0], values)


def test_bfloat16_rounds_other_values_to_nearest_and_keeps_nan() -> None:
    values = np.array([1.0 + 2**-8 + 2**-12, np.nan, np.inf], np.float32)
    codec = StateRecordCodec((StateSpec("h", (3,)),), "bfloat16")
    got = codec.decode(codec.encode(StreamState((values,), 0), SOURCE)).arrays[0]
    assert got[0] == np.float32(1.0 + 2**-7)  # rounded up, not truncated to 1.0
    assert np.isnan(got[1]) and got[2] == np.inf


@pytest.mark.parametrize("written", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reader", ["float32", "float16", "bfloat16"])
def test_any_storage_dtype_is_read_as_float32(written: str, reader: str) -> None:
    state = make_state(seed=3)
    value = StateRecordCodec(SPEC, written).encode(state, SOURCE)
    decoded = StateRecordCodec(SPEC, reader).decode_full(value)
    assert decoded.dtype == written
    tolerance = {"float32": 0.0, "float16": 1e-3, "bfloat16": 8e-3}[written]
    for got, want in zip(decoded.arrays, state.arrays, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


def test_another_models_states_are_refused_with_one_clear_line() -> None:
    other = (StateSpec("lstm/h", (16,)), StateSpec("lstm/c", (16,)))
    value = StateRecordCodec(other, "float32", "sha256:old").encode(
        StreamState((np.zeros(16, np.float32), np.zeros(16, np.float32)), 1), SOURCE
    )
    codec = StateRecordCodec(SPEC, "float32", state_topic="g-events-state")
    with pytest.raises(StateMismatchError) as info:
        codec.decode(value)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("state topic g-events-state holds states of another model")
    assert "sha256:old" in message
    assert "[['lstm/h', [16]], ['lstm/c', [16]]]" in message
    assert "this model's [['lstm/h', [8]]" in message
    assert isinstance(info.value, LstmStreamError)


def test_the_model_identity_alone_does_not_matter() -> None:
    value = StateRecordCodec(SPEC, "float32", "sha256:one").encode(make_state(), SOURCE)
    assert StateRecordCodec(SPEC, "float32", "sha256:two").decode(value).seq == 41


def good_map() -> dict[str, Any]:
    return unpacked(StateRecordCodec(SPEC, "float32", "m").encode(make_state(), SOURCE))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: b"\xc1", "undecodable"),
        (lambda m: pack([1, 2]), "not a map"),
        (lambda m: pack({**m, "v": 2}), "format version 2"),
        (lambda m: pack({**m, "v": True}), "format version True"),
        (lambda m: pack({k: v for k, v in m.items() if k != "v"}), "format version None"),
        (lambda m: pack({**m, "dtype": "float64"}), "dtype 'float64'"),
        (lambda m: pack({**m, "seq": 1.0}), "seq must be an integer"),
        (lambda m: pack({**m, "seq": "1"}), "seq must be an integer"),
        (lambda m: pack({**m, "src": ["t", 1]}), "src must be"),
        (lambda m: pack({**m, "src": ["t", "1", 2]}), "src must be"),
        (lambda m: pack({**m, "s": m["s"][:2]}), "holds 2 state tensors, the model has 3"),
        (lambda m: pack({**m, "s": None}), "holds NoneType state tensors"),
        (lambda m: pack({**m, "s": [m["s"][0], m["s"][1][:-4], m["s"][2]]}), "holds 28 bytes"),
        (lambda m: pack({**m, "s": [m["s"][0], "text", m["s"][2]]}), "'lstm/c' holds str"),
        (lambda m: pack({**m, "dtype": "float16"}), "expected 16 (float16 [8])"),
    ],
)
def test_bad_records_are_refused_with_a_reason(change: Any, expected: str) -> None:
    codec = StateRecordCodec(SPEC, "float32", state_topic="st")
    with pytest.raises(BadStateRecordError) as info:
        codec.decode(change(good_map()))
    message = str(info.value)
    assert expected in message, message
    assert message.startswith("state topic st: ") and "\n" not in message


def test_unknown_keys_are_ignored() -> None:
    value = pack({**good_map(), "future": [1, 2]})
    assert StateRecordCodec(SPEC, "float32").decode(value).seq == 41


def test_encoding_a_state_of_the_wrong_layout_is_a_caller_bug() -> None:
    codec = StateRecordCodec(SPEC, "float32")
    with pytest.raises(ValueError, match="2 tensors"):
        codec.encode(StreamState(make_state().arrays[:2], 0), SOURCE)
    wrong = (np.zeros(9, np.float32), *make_state().arrays[1:])
    with pytest.raises(ValueError, match="'lstm/h' has 9 elements"):
        codec.encode(StreamState(wrong, 0), SOURCE)
    with pytest.raises(ValueError, match="storage dtype"):
        StateRecordCodec(SPEC, "float64")


def test_schema_is_valid_and_documented() -> None:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("state-record:1")
    assert schema["title"] and schema["description"]
    for name, spec in schema["properties"].items():
        assert spec.get("description"), name
    assert set(schema["required"]) <= set(schema["properties"])
    assert set(schema["properties"]) == set(good_map())  # every key written is described


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_encoded_values_validate_against_the_schema(dtype: str) -> None:
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    value = StateRecordCodec(SPEC, dtype, "sha256:abc").encode(make_state(), SOURCE)
    validator.validate(to_json(unpacked(value)))


def test_the_schema_rejects_what_the_codec_rejects() -> None:
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    good = good_map()
    for bad in (
        {**good, "v": 2},
        {**good, "dtype": "float64"},
        {**good, "src": ["t", 1]},
        {k: v for k, v in good.items() if k != "s"},
        {**good, "fp": [["h"]]},
    ):
        assert not validator.is_valid(to_json(bad)), bad


def test_throughput_of_4_kib_states_is_reported() -> None:
    """Not a timing assertion (machines differ): prints records/s for the report, and checks
    that a round trip of many records stays correct."""
    spec = (StateSpec("lstm/h", (512,)), StateSpec("lstm/c", (512,)))  # 4 KiB in float32
    codec = StateRecordCodec(spec, "float32", "m")
    state = StreamState((np.ones(512, np.float32), np.full(512, 2.0, np.float32)), 9)
    n = 5000
    started = time.perf_counter()
    values = [codec.encode(state, ("t", 0, i)) for i in range(n)]
    encoded = time.perf_counter()
    decoded = [codec.decode(v) for v in values]
    done = time.perf_counter()
    print(
        f"\nstate records (4 KiB float32): encode {n / (encoded - started):,.0f}/s, "
        f"decode {n / (done - encoded):,.0f}/s"
    )
    assert all(d.seq == 9 and d.arrays[1][511] == 2.0 for d in decoded)
