"""Exit codes of ``lstm-stream run`` as a subprocess: 2 for invalid settings, 1 when the
processor fails (a model that cannot be loaded) and when a second signal aborts a drain;
0 after a graceful stop is asserted by ``test_run_signals.py``."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import (  # type: ignore[import-not-found]
    PYTHON,
    RunProcess,
    http_get,
    metric_total,
    no_leftover_tasks,
    send_raw,
    send_synthetic,
    subprocess_env,
    synthetic_records,
    tiny_model,
)

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

RECORDS_IN = "lstm_stream_records_in_total"


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "processor.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=subprocess_env(),
        check=False,
    )


def _base_args(bootstrap: str, model: str, source: str, out: str) -> list[str]:
    return [
        "--bootstrap-servers", bootstrap, "--input-topic", source, "--output-topic", out,
        "--model", model, "--threads", "1", "--log-level", "INFO",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "flags", "message"),
    [
        (None, ["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
        ("max-batch = 8\nmax-bacth = 3\n", [], "unknown key 'max-bacth'"),
    ],
    ids=["flag-out-of-range", "unknown-toml-key"],
)
def test_invalid_settings_exit_2_with_the_reason(
    kafka_bootstrap: str,
    tiny_model: str,
    tmp_path: Path,
    toml: str | None,
    flags: list[str],
    message: str,
) -> None:
    args = _base_args(kafka_bootstrap, tiny_model, "unused-in", "unused-out") + flags
    if toml is not None:
        config = tmp_path / "run.toml"
        config.write_text(toml)
        args += ["--config", str(config)]
    result = _run(args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    # Refused before anything started: no engine, no Kafka client.
    assert "building the engine" not in result.stderr + result.stdout


@pytest.mark.parametrize("model", ["missing", "not-a-model"])
async def test_a_model_that_cannot_be_loaded_exits_1(
    kafka_bootstrap: str, topic_factory, tmp_path: Path, model: str
) -> None:
    source = await topic_factory(partitions=1, prefix="in")
    out = await topic_factory(partitions=1, prefix="out")
    path = tmp_path / f"{model}.keras"
    if model == "not-a-model":
        path.write_text("this is not a Keras model\n")
    result = _run(_base_args(kafka_bootstrap, str(path), source, out))
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-5000:]
    assert "processor failed" in text and str(path) in text, text[-5000:]
    assert "stopped cleanly" not in text


async def test_a_second_signal_during_the_drain_aborts_with_exit_1(
    kafka_bootstrap: str,
    topic_factory,
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    """The first record is bad, and the producer holds single sends for ten minutes
    (``linger_ms``): its dead letter is never acknowledged, so the drain after SIGTERM cannot
    finish and nothing can be committed (the ledger never passes an unacknowledged batch).
    Only the second signal ends the process -- with exit 1 and without a commit."""
    source = await topic_factory(partitions=1, prefix="in")
    out = await topic_factory(partitions=1, prefix="out")
    await send_raw(kafka_bootstrap, source, [(b"s0", b"\xc1")])  # undecodable
    await send_synthetic(kafka_bootstrap, source, synthetic_records(streams=4, steps=5))
    args = _base_args(kafka_bootstrap, tiny_model, source, out)
    args += ["--group-id", unique_group, "--drain-timeout", "300"]
    args += ["--kafka-option", "producer.linger_ms=600000"]
    proc = RunProcess(args, tmp_path / "run.log")
    try:
        await proc.wait_ready()
        # All 21 records consumed: the dead letter of the first waits in the producer.
        await proc.wait_until(
            lambda: metric_total(http_get(proc.url("/metrics"))[1], RECORDS_IN) >= 21,
            60,
            "records consumed",
        )
        proc.signal(signal.SIGTERM)
        await proc.wait_for_log("stop requested: draining", 30)
        assert proc.popen.poll() is None, "the drain ended without an acknowledged dead letter"
        proc.signal(signal.SIGTERM)
        rc = await proc.wait(60)
    finally:
        proc.kill()
    log = proc.log.read_text()
    assert rc == 1, log[-5000:]
    assert "SIGTERM received: draining" in log
    assert "second signal: aborting without the final commit" in log and "aborted" in log
    assert "stopped cleanly" not in log and "drained:" not in log
    # TensorFlow's start-up lines stay off the terminal for `run` too (processor.tfenv).
    assert "cuInit" not in log and "E0000" not in log and "absl" not in log, log[-5000:]
    offsets = await admin_client.list_consumer_group_offsets(unique_group)
    assert all(meta.offset <= 0 for tp, meta in offsets.items() if tp.topic == source), offsets
