"""prepare_topics against a real broker: creation, waiting, stopping, refusals.

Topics that a test expects ``prepare_topics`` to create get fresh names from ``fresh_name``
and are deleted afterwards; topics that must exist beforehand come from ``topic_factory``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.kafka.io.clients import admin_kwargs
from processor.kafka.io.metadata import TopicSetupError, TopicWaitStopped
from processor.kafka.io.topics import TopicsReady, prepare_topics

FreshName = Callable[[str], str]  # the conftest fixture ``fresh_name``

LOGGER = "processor.kafka.io.topics"
POLL_S = 0.2  # the waiting poll period in these tests (the default is 1 s)
WAIT_LIMIT_S = 30.0  # deadline of every wait on a condition below

TopicFactory = Callable[..., Awaitable[str]]  # conftest.topic_factory


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """The client prepare_topics uses, built as the runtime builds it: from consumer kwargs."""
    consumer_kw = {
        "bootstrap_servers": kafka_bootstrap,
        "group_id": "unused",
        "enable_auto_commit": False,
        "max_poll_records": 10,
        "request_timeout_ms": 30_000,
    }
    client = AIOKafkaAdminClient(**admin_kwargs(consumer_kw))
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def _described(admin: AIOKafkaAdminClient, topic: str) -> dict[str, Any]:
    [entry] = await admin.describe_topics([topic])  # the topic exists: no auto-creation
    assert entry["error_code"] == 0, entry
    return entry


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and text in r.getMessage()
    ]


async def test_missing_outputs_are_created_with_the_requested_partitions(
    admin: AIOKafkaAdminClient,
    admin_client: AIOKafkaAdminClient,
    topic_factory: TopicFactory,
    fresh_name: FreshName,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source = await topic_factory(partitions=2)
    out, dlq = fresh_name("out"), fresh_name("dlq")

    ready = await prepare_topics(
        admin, input_topics=[source], output_topics=[out, dlq], partitions=3
    )

    assert ready == TopicsReady(partitions={source: 2, out: 3, dlq: 3}, created=(out, dlq))
    for topic in (out, dlq):
        entry = await _described(admin_client, topic)
        assert len(entry["partitions"]) == 3
        # The broker's default.replication.factor (1 on the test broker).
        assert all(len(p["replicas"]) == 1 for p in entry["partitions"])
        assert _records(caplog, logging.INFO, f"created topic {topic!r}: 3 partition(s)")
    assert not _records(caplog, logging.WARNING, "")


async def test_output_partitions_default_to_the_first_input_topic(
    admin: AIOKafkaAdminClient,
    admin_client: AIOKafkaAdminClient,
    topic_factory: TopicFactory,
    fresh_name: FreshName,
) -> None:
    first, second = await topic_factory(partitions=4), await topic_factory(partitions=2)
    out = fresh_name("out")

    ready = await prepare_topics(admin, input_topics=[first, second], output_topics=[out])

    assert ready.partitions == {first: 4, second: 2, out: 4}
    assert ready.created == (out,)
    assert len((await _described(admin_client, out))["partitions"]) == 4


async def test_existing_topics_are_left_alone(
    admin: AIOKafkaAdminClient,
    admin_client: AIOKafkaAdminClient,
    topic_factory: TopicFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source, out = await topic_factory(partitions=1), await topic_factory(partitions=2)

    ready = await prepare_topics(admin, input_topics=[source], output_topics=[out], partitions=5)

    assert ready == TopicsReady(partitions={source: 1, out: 2})
    assert len((await _described(admin_client, out))["partitions"]) == 2
    assert not _records(caplog, logging.INFO, "created topic")
    assert not _records(caplog, logging.WARNING, "")


async def test_a_missing_input_is_waited_for_until_it_is_created(
    admin: AIOKafkaAdminClient,
    admin_client: AIOKafkaAdminClient,
    fresh_name: FreshName,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source, out = fresh_name("in"), fresh_name("out")
    task = asyncio.ensure_future(
        prepare_topics(admin, input_topics=[source], output_topics=[out], poll_interval_s=POLL_S)
    )
    try:
        await _until(lambda: bool(_records(caplog, logging.WARNING, "")), "the WARNING")
        assert not task.done()
        # Waiting must not make the broker auto-create the topic (it allows that).
        assert source not in await admin_client.list_topics()

        response = await admin_client.create_topics([NewTopic(source, 3, 1)])
        assert [e[1] for e in response.topic_errors] == [0]
        ready = await asyncio.wait_for(task, WAIT_LIMIT_S)
    finally:
        task.cancel()

    # The output waited for the input, so it takes the input's partition count.
    assert ready.partitions == {source: 3, out: 3}
    assert ready.created == (out,)
    assert ready.waited_s > 0
    [warning] = _records(caplog, logging.WARNING, "")
    assert repr([source]) in warning
    assert "--create-input-topics" in warning
    [appeared] = _records(caplog, logging.INFO, "exist now")
    assert source in appeared


@pytest.mark.parametrize(("partitions", "expected"), [(-1, 1), (2, 2)])
async def test_create_inputs_creates_missing_inputs(
    admin: AIOKafkaAdminClient,
    admin_client: AIOKafkaAdminClient,
    fresh_name: FreshName,
    caplog: pytest.LogCaptureFixture,
    partitions: int,
    expected: int,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source, out = fresh_name("in"), fresh_name("out")

    ready = await prepare_topics(
        admin,
        input_topics=[source],
        output_topics=[out],
        partitions=partitions,
        create_inputs=True,
    )

    assert ready == TopicsReady(partitions={source: expected, out: expected}, created=(source, out))
    for topic in (source, out):
        assert len((await _described(admin_client, topic))["partitions"]) == expected
    assert not _records(caplog, logging.WARNING, "")


async def test_stop_ends_the_wait(
    admin: AIOKafkaAdminClient,
    admin_client: AIOKafkaAdminClient,
    fresh_name: FreshName,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    source, out = fresh_name("in"), fresh_name("out")
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        prepare_topics(
            admin,
            input_topics=[source],
            output_topics=[out],
            stop=stop,
            poll_interval_s=POLL_S,
        )
    )
    try:
        await _until(lambda: bool(_records(caplog, logging.WARNING, "")), "the WARNING")
        stop.set()
        with pytest.raises(TopicWaitStopped):
            await asyncio.wait_for(task, WAIT_LIMIT_S)
    finally:
        task.cancel()

    existing = await admin_client.list_topics()
    assert source not in existing
    assert out not in existing  # outputs come after the inputs: nothing was created


async def test_a_refused_creation_names_the_topic_and_the_broker_error(
    admin: AIOKafkaAdminClient, topic_factory: TopicFactory, fresh_name: FreshName
) -> None:
    source = await topic_factory(partitions=1)
    out = fresh_name("out")

    # The test broker has one node: three replicas cannot be placed.
    with pytest.raises(TopicSetupError) as raised:
        await prepare_topics(
            admin, input_topics=[source], output_topics=[out], replication_factor=3
        )

    message = str(raised.value)
    assert "\n" not in message
    assert repr(out) in message
    assert "InvalidReplicationFactor" in message


async def test_an_invalid_topic_name_is_a_setup_error(
    admin: AIOKafkaAdminClient, topic_factory: TopicFactory
) -> None:
    source = await topic_factory(partitions=1)
    bad = "not a valid topic name!"

    with pytest.raises(TopicSetupError, match="InvalidTopic") as raised:
        await prepare_topics(admin, input_topics=[source], output_topics=[bad])

    assert repr(bad) in str(raised.value)
