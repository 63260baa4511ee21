"""Fixtures for tests that need a real Kafka broker.

``kafka_bootstrap`` (session): the address of a broker. If ``LSTM_STREAM_TEST_BOOTSTRAP`` is
set, that broker is used as is. Otherwise a private single-node broker is started with
``deploy/kafka-local/kafka.sh start`` in a temporary run dir on a free port pair (so it never
collides with a developer's own broker on 19092) and stopped at the end of the session.

``topic_factory`` creates uniquely named topics and waits until every partition has a leader;
``unique_group`` gives a fresh consumer group id; ``fresh_name`` names topics that do not
exist yet. Every test in this folder is marked
``integration``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka-local" / "kafka.sh"
BOOTSTRAP_ENV = "LSTM_STREAM_TEST_BOOTSTRAP"
# First start downloads the broker jars with Maven; later starts take seconds.
START_TIMEOUT_S = int(os.environ.get("KAFKA_LOCAL_TIMEOUT", "120"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _free_port_pair() -> tuple[int, int]:
    """Two distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return socks[0].getsockname()[1], socks[1].getsockname()[1]
    finally:
        for s in socks:
            s.close()


def _kafka_sh(
    command: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(KAFKA_SH), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        yield external
        return

    run_dir = tmp_path_factory.mktemp("kafka-local")
    env = dict(os.environ)
    env["KAFKA_LOCAL_DIR"] = str(run_dir)
    env.setdefault("KAFKA_LOCAL_TIMEOUT", str(START_TIMEOUT_S))
    # If this pytest process dies without running finalizers, the broker stops itself.
    env["KAFKA_LOCAL_OWNER_PID"] = str(os.getpid())

    result = None
    for _attempt in range(3):  # a port picked as free can be taken before the broker binds it
        port, controller_port = _free_port_pair()
        env["KAFKA_LOCAL_PORT"] = str(port)
        env["KAFKA_LOCAL_CONTROLLER_PORT"] = str(controller_port)
        t0 = time.monotonic()
        # Generous: the very first start also downloads the jars (Maven).
        result = _kafka_sh("start", env, timeout=START_TIMEOUT_S + 480)
        if result.returncode == 0:
            break
        if "already in use" not in result.stderr:
            break
    assert result is not None
    if result.returncode != 0:
        _kafka_sh("stop", env, timeout=60)
        pytest.fail(
            f"kafka.sh start failed (exit {result.returncode}); run dir {run_dir}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    bootstrap = result.stdout.strip().splitlines()[-1]
    print(f"\nkafka-local broker {bootstrap} ready in {time.monotonic() - t0:.1f}s ({run_dir})")
    try:
        yield bootstrap
    finally:
        stopped = _kafka_sh("stop", env, timeout=120)
        if stopped.returncode != 0:
            print(f"kafka.sh stop failed: {stopped.stderr}")


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def admin_client(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, topic: str, partitions: int, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        described = await admin.describe_topics([topic])
        if described and described[0]["error_code"] == 0:
            parts = described[0]["partitions"]
            if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} has no leader for every partition: {described}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def topic_factory(
    admin_client: AIOKafkaAdminClient, request: pytest.FixtureRequest
) -> AsyncIterator[TopicFactory]:
    """``await topic_factory(partitions=1, prefix=None, configs=None) -> name``.

    Creates a topic with a name unique to this call, waits until all its partitions have a
    leader, and deletes the topics the test created afterwards (best effort).
    """
    created: list[str] = []
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60].strip("-")

    async def create(
        partitions: int = 1,
        prefix: str | None = None,
        configs: dict[str, str] | None = None,
    ) -> str:
        name = f"{prefix or base}-{uuid.uuid4().hex[:10]}"
        response = await admin_client.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs or {})]
        )
        for topic_error in response.topic_errors:
            # (name, error_code, error_message) on CreateTopics v1+
            code = topic_error[1]
            if code != 0:
                raise for_code(code)(f"create_topics({name}): {topic_error}")
        await _wait_for_leaders(admin_client, name, partitions)
        created.append(name)
        return name

    yield create

    if created and not os.environ.get("LSTM_STREAM_TEST_KEEP_TOPICS"):
        try:
            await admin_client.delete_topics(created)
        except Exception as exc:  # cleanup must not fail a test
            print(f"deleting topics {created} failed: {exc!r}")


@pytest.fixture
def unique_group(request: pytest.FixtureRequest) -> str:
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60].strip("-")
    return f"g-{base}-{uuid.uuid4().hex[:10]}"


#: ``fresh_name(role) -> name`` (see the fixture of that name).
FreshName = Callable[[str], str]


@pytest.fixture
async def fresh_name(
    request: pytest.FixtureRequest, admin_client: AIOKafkaAdminClient
) -> AsyncIterator[FreshName]:
    """``fresh_name(role) -> name`` of a topic that does not exist yet (for tests that expect
    the code under test to create it); deleted after the test if it exists by then."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:50].strip("-")
    names: list[str] = []

    def make(role: str) -> str:
        names.append(f"{base}-{role}-{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    existing = set(await admin_client.list_topics())
    doomed = [n for n in names if n in existing]
    if doomed:
        await admin_client.delete_topics(doomed)
