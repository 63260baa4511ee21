"""TensorFlow's start-up output stays off the command line's stderr unless asked for.

The end-to-end tests run ``lstm-stream replay`` in a fresh interpreter (TensorFlow's
start-up lines are written once per process, to file descriptor 2, so only a new process
shows them); the others check :func:`processor.tfenv.quiet_tensorflow_startup` in this
process, with TensorFlow hidden from ``sys.modules`` so that the capture is armed.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import msgpack
import numpy as np
import pytest

from processor.codec import encode_input
from processor.tfenv import quiet_tensorflow_startup

FEATURES = 3
RECORDS = 2
REPO = Path(__file__).resolve().parents[3]

# What TensorFlow writes at start-up on a machine without a GPU, and the format of its C++
# log lines in general ("E0000 00:00:1796014241.495195    4936 cuda_platform.cc:52] ...").
NOISE = ("cuInit", "E0000", "WARNING: All log messages before absl", "cudart_stub")
ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)
DEVICE_LINE = re.compile(r" INFO [\w.]+: device: /(CPU|GPU):\d+ \(.+\)$", re.MULTILINE)


@pytest.fixture(scope="module")
def replay_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model file and an input file of ``RECORDS`` records for it."""
    folder = tmp_path_factory.mktemp("startup")
    inp = keras.Input((None, FEATURES))
    out = keras.layers.Dense(2)(keras.layers.LSTM(4, return_sequences=True)(inp))
    model = folder / "m.keras"
    keras.Model(inp, out).save(model)
    records = folder / "in.msgpack"
    x = np.ones(FEATURES, np.float32)
    records.write_bytes(b"".join(encode_input("s", seq, x) for seq in range(RECORDS)))
    return model, records


def run_replay(files: tuple[Path, Path], out: Path, *head: str) -> str:
    """``lstm-stream HEAD... replay`` in a new interpreter with the project's default
    environment; checks that it really ran the model, returns its stderr."""
    model, records = files
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    cmd = [sys.executable, "-m", "processor.cli", *head, "replay"]
    cmd += ["--model", str(model), "--input", str(records), "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(list(msgpack.Unpacker(io.BytesIO(out.read_bytes())))) == RECORDS
    return proc.stderr


def test_default_level_shows_the_device_and_none_of_tensorflows_startup_lines(
    replay_files: tuple[Path, Path], tmp_path: Path
) -> None:
    err = run_replay(replay_files, tmp_path / "out.msgpack")
    assert [m for m in NOISE if m in err] == []
    assert ABSL_LINE.findall(err) == []
    assert len(DEVICE_LINE.findall(err)) == 1, err
    assert "TensorFlow start-up output" not in err


def test_debug_level_shows_the_captured_startup_lines(
    replay_files: tuple[Path, Path], tmp_path: Path
) -> None:
    err = run_replay(replay_files, tmp_path / "out.msgpack", "--log-level", "DEBUG")
    header = err.find("DEBUG processor.tfenv: TensorFlow start-up output:")
    assert header >= 0, err
    captured = err[header:]
    # TensorFlow logs before absl::InitializeLog() on every machine (CUDA stub or driver
    # lines); on one without a GPU the failed CUDA probe is among them.
    assert "WARNING: All log messages before absl" in captured
    assert ABSL_LINE.search(captured)
    assert len(DEVICE_LINE.findall(err)) == 1


@pytest.fixture
def tensorflow_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the capture think TensorFlow is not imported yet (restored after the test);
    the blocks below must not import it."""
    monkeypatch.delitem(sys.modules, "tensorflow")


@pytest.mark.usefixtures("tensorflow_not_imported")
def test_captured_output_is_dropped_at_the_default_level(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="processor.tfenv"),
        quiet_tensorflow_startup(show=False),
    ):
        os.write(2, b"I0000 start-up chatter\n")
    os.write(2, b"after the block\n")
    assert capfd.readouterr().err == "after the block\n"
    assert caplog.records == []


@pytest.mark.usefixtures("tensorflow_not_imported")
def test_captured_output_is_logged_at_debug_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="processor.tfenv"),
        quiet_tensorflow_startup(show=True),
    ):
        os.write(2, b"I0000 start-up chatter\n")
    assert [r.getMessage() for r in caplog.records] == [
        "TensorFlow start-up output:\nI0000 start-up chatter"
    ]


@pytest.mark.usefixtures("tensorflow_not_imported")
def test_captured_output_is_shown_when_the_block_fails(capfd: pytest.CaptureFixture[str]) -> None:
    with (
        pytest.raises(ImportError, match="no such library"),
        quiet_tensorflow_startup(show=False),
    ):
        os.write(2, b"E0000 why the import failed\n")
        raise ImportError("no such library")
    assert capfd.readouterr().err == "E0000 why the import failed\n"


def test_nothing_is_captured_once_tensorflow_is_imported(
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert "tensorflow" in sys.modules  # conftest imports it
    with quiet_tensorflow_startup(show=False):
        os.write(2, b"a later message\n")
    assert capfd.readouterr().err == "a later message\n"
