"""``lstm-stream run`` as a subprocess: SIGTERM mid-stream drains, commits exactly what it
produced and exits 0; a restart then completes the work -- every input has exactly one
output (nothing lost, and after a graceful stop nothing re-delivered)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import (  # type: ignore[import-not-found]
    PYTHON,
    free_port,
    no_leftover_tasks,
    outputs_by_key,
    read_topic,
    subprocess_env,
    tiny_model,
)

from processor.codec import decode_output
from processor.tools import produce

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

STREAMS = 40
STEPS = 60


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _metric(body: str, name: str) -> float:
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


class RunProcess:
    """``python -m processor.cli run ...`` with its output in a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._fp = log.open("w")
        self.popen = subprocess.Popen(
            [PYTHON, "-m", "processor.cli", "run", *args, "--metrics-port", str(self.port),
             "--metrics-host", "127.0.0.1"],
            stdout=self._fp,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(),
        )  # fmt: skip

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (await asyncio.to_thread(_get, self.url("/readyz")))[0] != 200:
            if self.popen.poll() is not None:
                pytest.fail(f"run exited early ({self.popen.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"run not ready after {timeout}s:\n{self.text()}")
            await asyncio.sleep(0.2)

    async def outputs_acked(self) -> float:
        status, body = await asyncio.to_thread(_get, self.url("/metrics"))
        return _metric(body, "lstm_stream_records_out_total") if status == 200 else 0.0

    async def terminate(self, timeout: float = 60) -> int:
        self.popen.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            pytest.fail(f"run did not exit within {timeout}s of SIGTERM:\n{self.text()}")
        self._fp.close()
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._fp.close()

    def text(self) -> str:
        self._fp.flush()
        return self.log.read_text()[-5000:]


async def test_sigterm_drains_commits_and_exits_0_and_a_restart_loses_nothing(
    kafka_bootstrap: str,
    topic_factory,
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    source = await topic_factory(partitions=3, prefix="in")
    out = await topic_factory(partitions=3, prefix="out")
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source, "--output-topic", out,
        "--group-id", unique_group, "--model", tiny_model, "--max-batch", "64",
        "--cache-capacity", "1024", "--queue-max-records", "512", "--commit-interval-ms",
        "200", "--threads", "1", "--log-level", "INFO",
    ]  # fmt: skip
    total = STREAMS * STEPS

    first = RunProcess(args, tmp_path / "run1.log")
    try:
        await first.wait_ready()
        # Input arrives while the processor runs (~5 s at 500 records/s).
        producing = asyncio.create_task(
            produce(kafka_bootstrap, source, streams=STREAMS, shape=(4,), count=total, rate=500)
        )
        deadline = time.monotonic() + 60
        while await first.outputs_acked() < 300:
            assert time.monotonic() < deadline, first.text()
            assert not producing.done()
            await asyncio.sleep(0.1)
        assert not producing.done(), "the input finished before SIGTERM: not mid-stream"
        rc = await first.terminate()
    finally:
        first.kill()
    log1 = first.log.read_text()
    assert rc == 0, log1[-5000:]
    assert "drained:" in log1 and "stopped cleanly" in log1
    stats = await producing
    assert stats.records == total

    def seen(records: list) -> set[tuple[str, int]]:  # type: ignore[type-arg]
        return {(d["stream"], d["seq"]) for d in map(decode_output, (r.value for r in records))}

    partial = seen(await read_topic(kafka_bootstrap, out, until=lambda rs: True, settle=1.0))
    assert 0 < len(partial) < total, "SIGTERM did not land mid-stream"

    # The graceful stop committed exactly what it produced: per input partition, the
    # committed offset is the end of the prefix of records that got outputs, and the first
    # run's outputs are exactly the inputs below the committed offsets.
    inputs = await read_topic(kafka_bootstrap, source, until=lambda rs: len(rs) >= total)
    where = {(d["stream"], d["seq"]): (r.partition, r.offset) for r, d in _decoded(inputs)}
    committed = {
        tp.partition: meta.offset
        for tp, meta in (await admin_client.list_consumer_group_offsets(unique_group)).items()
        if tp.topic == source
    }
    for p in range(3):
        done = sorted(where[k][1] for k in partial if where[k][0] == p)
        assert done == list(range(len(done))), f"partition {p}: outputs not a prefix"
        assert max(committed.get(p, 0), 0) == len(done), (p, committed, len(done))
    below = {k for k, (p, offset) in where.items() if offset < max(committed.get(p, 0), 0)}
    assert below == partial

    second = RunProcess(args, tmp_path / "run2.log")
    try:
        await second.wait_ready()
        records = await read_topic(
            kafka_bootstrap, out, until=lambda rs: len(seen(rs)) >= total, timeout=90
        )
        rc2 = await second.terminate()
    finally:
        second.kill()
    assert rc2 == 0, second.log.read_text()[-5000:]
    got = outputs_by_key(records)
    expected = {(f"s{i}", seq) for i in range(STREAMS) for seq in range(STEPS)}
    assert set(got) == expected  # every input has an output, nothing else
    duplicates = {k: len(v) for k, v in got.items() if len(v) > 1}
    # The restart resumed at the committed offsets: nothing was delivered twice.
    assert duplicates == {}


def _decoded(records: list) -> list:  # type: ignore[type-arg]
    """(record, decoded input map) for every record of an input topic."""
    return [(r, msgpack.unpackb(r.value, raw=False)) for r in records]
