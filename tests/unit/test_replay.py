"""`lstm-stream replay`: one output per valid input, bad records dead-lettered, order kept."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import msgpack
import numpy as np
import pytest

from processor.cli import main as cli_main
from processor.codec import decode_dead_letter, decode_output, encode_input
from processor.errors import ModelLoadError
from processor.model import load_step_model

FEATURES = 3


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keras.utils.set_random_seed(11)
    inp = keras.Input((None, FEATURES))
    h = keras.layers.LSTM(8, return_sequences=True)(inp)
    out = keras.layers.Dense(2)(h)
    path = tmp_path_factory.mktemp("model") / "m.keras"
    keras.Model(inp, out).save(path)
    return path


def replay_cli(model: Path | str, inp: Path | str, out: Path | str, *extra: str) -> int:
    """``lstm-stream replay --model MODEL --input INP --output OUT EXTRA...``, its exit code."""
    args = ["--model", str(model), "--input", str(inp), "--output", str(out), *extra]
    return cli_main(["replay", *args])


def read_all(data: bytes) -> list[object]:
    return list(msgpack.Unpacker(io.BytesIO(data), raw=False))


def test_replay_outputs_equal_the_model_and_bad_records_go_to_the_dlq(
    model_path: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    n, steps = 12, 6
    x = rng.standard_normal((n, steps, FEATURES)).astype(np.float32)
    good: list[bytes] = []
    order = rng.permutation(np.repeat(np.arange(n), steps))
    cursor = [0] * n
    for s in order:
        good.append(encode_input(f"s{s}", cursor[s], x[s, cursor[s]], ts=1000 + cursor[s]))
        cursor[s] += 1
    bad = {
        "not_a_map": msgpack.packb(7),
        "missing_field": msgpack.packb({"stream": "b", "x": b"\0" * 12}),
        "shape_mismatch": encode_input("b", 0, np.zeros(4, np.float32)),
        "non_finite": encode_input("b", 0, np.array([1.0, np.nan, 0.0], np.float32)),
        "wrong_type": msgpack.packb({"stream": "b", "seq": "1", "x": b"\0" * 12}),
        "non_increasing_seq": encode_input("s0", 0, x[0, 0]),  # s0 seq 0 applied before
    }
    stream = b"".join(good) + b"".join(bad.values())
    inp, out, dlq = tmp_path / "in.msgpack", tmp_path / "out.msgpack", tmp_path / "dlq.msgpack"
    inp.write_bytes(stream)
    code = replay_cli(
        model_path,
        inp,
        out,
        "--dlq",
        str(dlq),
        "--max-batch",
        "8",
        "--cache-capacity",
        "16",
    )
    assert code == 0
    outputs = [decode_output(o) for o in iter_records(out.read_bytes())]
    assert len(outputs) == len(good)
    ref = np.asarray(load_step_model(model_path).keras_model(x, training=False))  # type: ignore[attr-defined]
    seen: dict[str, int] = {}
    for o in outputs:
        s, t = int(o["stream"][1:]), o["seq"]
        assert t == seen.get(o["stream"], -1) + 1  # per-stream order kept
        seen[o["stream"]] = t
        assert o["ts"] == 1000 + t
        np.testing.assert_allclose(o["y"], ref[s, t], rtol=1e-4, atol=1e-5)
    dead = [decode_dead_letter(d) for d in iter_records(dlq.read_bytes())]
    assert [d["reason"] for d in dead] == list(bad)
    assert [d["record"] for d in dead] == list(bad.values())
    assert all(d["index"] >= len(good) and d["offset"] >= len(b"".join(good)) for d in dead)


def iter_records(data: bytes) -> list[bytes]:
    """Split concatenated msgpack objects back into their raw bytes."""
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=True)
    out, pos = [], 0
    for _ in unpacker:
        end = unpacker.tell()
        out.append(data[pos:end])
        pos = end
    return out


def test_replay_stdin_stdout_and_dlq_on_stderr(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.ones(FEATURES, np.float32)
    data = encode_input("a", 0, x) + encode_input("a", 1, x, as_list=True) + msgpack.packb("junk")

    class In:
        buffer = io.BytesIO(data)

    class Out:
        buffer = io.BytesIO()

    monkeypatch.setattr("sys.stdin", In)
    monkeypatch.setattr("sys.stdout", Out)
    code = replay_cli(model_path, "-", "-")
    assert code == 0
    outs = [decode_output(o) for o in iter_records(Out.buffer.getvalue())]
    assert [o["seq"] for o in outs] == [0, 1]
    err = capsys.readouterr().err
    assert "dead-letter index=2" in err and "not_a_map" in err
    assert "2 outputs, 1 dead letters" in err


def test_corrupt_framing_is_reported_with_exit_code_2(model_path: Path, tmp_path: Path) -> None:
    x = np.ones(FEATURES, np.float32)
    data = encode_input("a", 0, x) + b"\xc1" + encode_input("a", 1, x)
    inp, out, dlq = tmp_path / "in", tmp_path / "out", tmp_path / "dlq"
    inp.write_bytes(data)
    code = replay_cli(model_path, inp, out, "--dlq", str(dlq))
    assert code == 2
    assert len(iter_records(out.read_bytes())) == 1  # the record before the corruption
    dead = [decode_dead_letter(d) for d in iter_records(dlq.read_bytes())]
    assert [d["reason"] for d in dead] == ["undecodable"]


def test_unsupported_model_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = keras.Input((None, FEATURES))
    h = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))(inp)
    h = keras.layers.LSTM(4)(h)
    path = tmp_path / "bi.keras"
    keras.Model(inp, h).save(path)
    (tmp_path / "in").write_bytes(b"")
    code = replay_cli(path, tmp_path / "in", tmp_path / "out")
    assert code == 1
    assert "Bidirectional" in capsys.readouterr().err


def test_missing_input_file_is_one_clear_line(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = replay_cli(model_path, tmp_path / "nope", tmp_path / "out")
    assert code == 1
    err = capsys.readouterr().err
    assert "lstm-stream replay:" in err and "nope" in err and "Traceback" not in err


def test_seq_beyond_int64_is_dead_lettered(model_path: Path, tmp_path: Path) -> None:
    x = np.ones(FEATURES, np.float32)
    data = encode_input("a", 2**63, x) + encode_input("a", 0, x)
    inp, out, dlq = tmp_path / "in", tmp_path / "out", tmp_path / "dlq"
    inp.write_bytes(data)
    assert replay_cli(model_path, inp, out, "--dlq", str(dlq)) == 0
    assert [decode_output(o)["seq"] for o in iter_records(out.read_bytes())] == [0]
    assert [decode_dead_letter(d)["reason"] for d in iter_records(dlq.read_bytes())] == [
        "bad_value"
    ]


def test_model_with_an_input_dtype_the_wire_cannot_carry_is_refused(tmp_path: Path) -> None:
    inp = keras.Input((None, FEATURES), dtype="int64")
    h = keras.layers.Embedding(10, 4)(inp[..., 0])
    h = keras.layers.LSTM(4)(h)
    path = tmp_path / "int64.keras"
    keras.Model(inp, h).save(path)
    with pytest.raises(ModelLoadError, match="input dtype int64 is not one the wire format"):
        load_step_model(path)
