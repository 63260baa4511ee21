"""What the user tools log against a real broker, run as the user runs them (a subprocess of
``python -m processor.cli`` at the default ``--log-level INFO``).

``produce`` into a topic that does not exist yet creates it (one INFO line of its own, the
requested partition count) instead of letting the broker auto-create it while aiokafka logs
"Topic ... not found in cluster metadata" at ERROR; ``tail`` on a topic that does not exist
yet waits for it (one WARNING, one INFO when it appears) and reads it. Neither lets
aiokafka's INFO records through.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_helpers import send_raw

ROOT = Path(__file__).resolve().parents[2]
FreshName = Callable[[str], str]  # the conftest fixture ``fresh_name``

#: A log line of a Kafka client library at ERROR or below WARNING, in the cli's format
#: ("<time> LEVEL logger: message").
CLIENT_NOISE = re.compile(r"^\S+ \S+ (DEBUG|INFO|ERROR) (aiokafka|kafka)(\.\S+)?: ", re.M)


def _env() -> dict[str, str]:
    """The environment without ambient ``LSTM_STREAM_*`` settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LSTM_STREAM_")}


def _command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "processor.cli", *argv]


def _collect(stream: IO[str], lines: list[str]) -> None:
    """Append each line of ``stream`` to ``lines`` as it comes (until the stream ends)."""
    for line in stream:
        lines.append(line)


async def test_produce_creates_a_missing_topic_in_its_own_words(
    kafka_bootstrap: str, fresh_name: FreshName, admin_client: AIOKafkaAdminClient
) -> None:
    topic = fresh_name("in")
    done = await asyncio.to_thread(
        subprocess.run,
        _command("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                 "--shape", "4", "--streams", "3", "--count", "6", "--rate", "0",
                 "--partitions", "2"),
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "produced 6 records" in done.stdout
    assert f"created topic {topic!r}: 2 partition(s)" in done.stderr, done.stderr
    assert "not found in cluster metadata" not in done.stderr, done.stderr
    assert not CLIENT_NOISE.search(done.stderr), done.stderr
    [described] = await admin_client.describe_topics([topic])
    assert len(described["partitions"]) == 2

    again = await asyncio.to_thread(
        subprocess.run,
        _command("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                 "--shape", "4", "--streams", "3", "--count", "3", "--rate", "0",
                 "--partitions", "5"),
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "created topic" not in again.stderr  # an existing topic is used as it is
    assert not CLIENT_NOISE.search(again.stderr), again.stderr
    [described] = await admin_client.describe_topics([topic])
    assert len(described["partitions"]) == 2


async def test_tail_waits_for_a_missing_topic_in_its_own_words(
    kafka_bootstrap: str, fresh_name: FreshName, admin_client: AIOKafkaAdminClient
) -> None:
    topic = fresh_name("out")
    tail = subprocess.Popen(
        _command("tail", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                 "--from-beginning", "--max-records", "2", "--idle-timeout", "60"),
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    err_lines: list[str] = []
    assert tail.stderr is not None and tail.stdout is not None
    reader = threading.Thread(target=_collect, args=(tail.stderr, err_lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("does not exist yet" in line for line in err_lines):
            assert tail.poll() is None, "".join(err_lines)
            assert time.monotonic() < deadline, "".join(err_lines)
            await asyncio.sleep(0.1)
        await admin_client.create_topics([NewTopic(topic, 1, 1)])
        await send_raw(kafka_bootstrap, topic, [(b"s0", b"not msgpack"), (b"s1", b"x")])
        out = await asyncio.wait_for(asyncio.to_thread(tail.stdout.read), timeout=90)
        tail.wait(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    reader.join(timeout=10)
    stderr = "".join(err_lines)
    assert tail.returncode == 0, stderr
    assert len(out.splitlines()) == 2, out
    assert re.search(rf"WARNING \S+: topic {re.escape(repr(topic))} does not exist yet", stderr)
    assert f"topic {topic!r} exists now" in stderr, stderr
    assert not CLIENT_NOISE.search(stderr), stderr


def test_the_noise_pattern_matches_client_lines_only() -> None:
    """The pattern above must recognise the lines it is meant to exclude (or the tests
    prove nothing), and only those."""
    assert CLIENT_NOISE.search(
        "2026-01-01 00:00:00,000 INFO processor.kafka.io.topics: created topic 'x'\n"
        "2026-01-01 00:00:00,001 ERROR aiokafka.cluster: Topic x not found in cluster metadata\n"
    )
    assert CLIENT_NOISE.search("2026-01-01 00:00:00,000 INFO aiokafka: joined\n")
    assert not CLIENT_NOISE.search(
        "2026-01-01 00:00:00,000 INFO processor.kafka.io.topics: created topic 'x'\n"
        "2026-01-01 00:00:00,000 WARNING aiokafka: kept\n"
    )
