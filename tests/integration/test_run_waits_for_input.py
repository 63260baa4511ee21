"""``lstm-stream run`` started before its input topic exists: it says once that it waits,
creates its missing output topic, and answers every record within seconds of the topic's
creation (not after a consumer's periodic metadata refresh, by default minutes)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_helpers import (  # type: ignore[import-not-found]
    PYTHON,
    RunProcess,
    assert_outputs_in_seq_order,
    no_leftover_tasks,
    outputs_by_key,
    read_topic,
    subprocess_env,
    tiny_model,
)

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

WAITING = "do not exist yet"  # the processor's one WARNING while it waits for inputs
STREAMS, COUNT = 8, 200
#: Well below any consumer metadata refresh that would have found the topic by chance
#: (aiokafka's default is 5 minutes), well above what the processor needs.
ANSWER_DEADLINE_S = 60.0


@pytest.fixture
async def fresh_topics(
    admin_client: AIOKafkaAdminClient, request: pytest.FixtureRequest
) -> AsyncIterator[list[str]]:
    """Names of an input and an output topic that do not exist; both are deleted after the
    test (whoever created them)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    names = [f"{base}-{role}-{uuid.uuid4().hex[:10]}" for role in ("in", "out")]
    yield names
    existing = set(await admin_client.list_topics())
    if doomed := [n for n in names if n in existing]:
        try:
            await admin_client.delete_topics(doomed)
        except Exception as exc:  # cleanup must not fail a test
            print(f"deleting topics {doomed} failed: {exc!r}")


async def test_run_started_before_its_input_topic_answers_every_record(
    kafka_bootstrap: str,
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
    fresh_topics: list[str],
) -> None:
    source, out = fresh_topics
    assert not {source, out} & set(await admin_client.list_topics())
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source, "--output-topic", out,
        "--group-id", unique_group, "--model", tiny_model, "--threads", "1",
        "--log-level", "INFO",
    ]  # fmt: skip
    proc = RunProcess(args, tmp_path / "run.log")
    try:
        await proc.wait_for_log(WAITING, 120)
        assert proc.popen.poll() is None
        assert out not in set(await admin_client.list_topics())  # created after the inputs
        await admin_client.create_topics([NewTopic(source, 2, 1)])
        produced = await asyncio.to_thread(
            subprocess.run,
            [PYTHON, "-m", "processor.cli", "produce", "--bootstrap-servers", kafka_bootstrap,
             "--topic", source, "--streams", str(STREAMS), "--count", str(COUNT), "--shape",
             "4", "--rate", "0"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env=subprocess_env(), check=False,
        )  # fmt: skip
        assert produced.returncode == 0, produced.stderr[-3000:]
        assert f"produced {COUNT} records" in produced.stdout, produced.stdout
        # Every record answered, however long the processor took to notice the topic --
        # within a deadline that a consumer relying on its metadata refresh would miss.
        records = await read_topic(
            kafka_bootstrap, out, until=lambda rs: len(rs) >= COUNT, timeout=ANSWER_DEADLINE_S
        )
        assert proc.popen.poll() is None, proc.text()
        rc = await proc.terminate()
    finally:
        proc.kill()
    log = proc.log.read_text()
    assert rc == 0, log[-5000:]
    # No TensorFlow start-up noise on the terminal (processor.tfenv), for `run` too.
    assert "cuInit" not in log and "E0000" not in log and "absl" not in log, log[-5000:]
    waiting = [line for line in log.splitlines() if WAITING in line]
    assert len(waiting) == 1 and "WARNING" in waiting[0] and source in waiting[0], waiting
    got = outputs_by_key(records)
    expected = {(f"s{i}", seq) for i in range(STREAMS) for seq in range(COUNT // STREAMS)}
    assert set(got) == expected and all(len(ys) == 1 for ys in got.values())
    assert len(records) == COUNT
    order = assert_outputs_in_seq_order(records)
    assert all(seqs == list(range(COUNT // STREAMS)) for seqs in order.values())
    # The output topic was created by the processor, as partitioned as the input.
    [described] = await admin_client.describe_topics([out])
    assert described["error_code"] == 0 and len(described["partitions"]) == 2
