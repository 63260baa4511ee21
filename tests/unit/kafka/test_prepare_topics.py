"""prepare_topics' decisions against a scripted admin client, and admin_kwargs.

The broker's own behaviour (creation, waiting, real refusals) is covered by
tests/integration/test_topics.py; these tests cover what a single-node test broker cannot
show: refusals for lack of permission, a concurrent creation, the replication factor when the
broker's default cannot be read, and transient metadata errors during a wait.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from processor.errors import ConfigError
from processor.kafka.io.clients import admin_kwargs, client_kwargs
from processor.kafka.io.metadata import TopicSetupError, TopicWaitStopped
from processor.kafka.io.topics import prepare_topics

LOGGER = "processor.kafka.io.topics"
#: Where the metadata reads log their retries.
METADATA_LOGGER = "processor.kafka.io.metadata"


class ScriptedAdmin:
    """The part of AIOKafkaAdminClient that prepare_topics uses, over an in-memory cluster.

    ``topics``: name -> partition count. ``refuse``: name -> (error code, message) returned by
    CreateTopics. ``race``: name -> partition count another client creates just before this
    client's CreateTopics reaches the broker. ``describe_failures``: call number (from 1) ->
    the error that describe_topics call raises. ``appear_after``: name -> the describe_topics
    call from which on the topic exists (with 2 partitions).
    """

    def __init__(
        self,
        topics: dict[str, int] | None = None,
        *,
        brokers: int = 1,
        default_replication: str | None = "1",
        configs_error: Exception | None = None,
        refuse: dict[str, tuple[int, str]] | None = None,
        race: dict[str, int] | None = None,
        describe_failures: dict[int, Exception] | None = None,
        appear_after: dict[str, int] | None = None,
    ) -> None:
        self.topics = dict(topics or {})
        self.brokers = brokers
        self.default_replication = default_replication
        self.configs_error = configs_error
        self.refuse = refuse or {}
        self.race = race or {}
        self.describe_failures = describe_failures or {}
        self.appear_after = appear_after or {}
        self.describes = 0
        self.created: list[NewTopic] = []
        self.config_requests = 0

    async def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        # Naming a topic would let a broker auto-create it: prepare_topics must never do so.
        assert topics is None, f"describe_topics named {topics}"
        self.describes += 1
        if self.describes in self.describe_failures:
            raise self.describe_failures[self.describes]
        for name, calls in self.appear_after.items():
            if self.describes >= calls:
                self.topics.setdefault(name, 2)
        return [
            {
                "error_code": 0,
                "topic": name,
                "is_internal": False,
                "partitions": [
                    {"error_code": 0, "partition": i, "leader": 1, "replicas": [1], "isr": [1]}
                    for i in range(count)
                ],
            }
            for name, count in self.topics.items()
        ]

    async def create_topics(self, new_topics: list[NewTopic]) -> SimpleNamespace:
        errors: list[tuple[str, int, str | None]] = []
        for topic in new_topics:
            if topic.name in self.refuse:
                errors.append((topic.name, *self.refuse[topic.name]))
                continue
            if topic.name in self.race:
                self.topics[topic.name] = self.race[topic.name]
            if topic.name in self.topics:
                errors.append((topic.name, 36, f"Topic '{topic.name}' already exists."))
                continue
            self.created.append(topic)
            self.topics[topic.name] = topic.num_partitions
            errors.append((topic.name, 0, None))
        return SimpleNamespace(topic_errors=errors)

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": i + 1} for i in range(self.brokers)], "controller_id": 1}

    async def describe_configs(self, resources: list[Any]) -> list[SimpleNamespace]:
        self.config_requests += 1
        if self.configs_error is not None:
            raise self.configs_error
        entries = []
        if self.default_replication is not None:
            entries.append(
                {
                    "config_names": "default.replication.factor",
                    "config_value": self.default_replication,
                }
            )
        resource = {
            "error_code": 0,
            "error_message": "",
            "resource_type": 4,
            "resource_name": "1",
            "config_entries": entries,
        }
        return [SimpleNamespace(to_object=lambda: {"resources": [resource]})]


async def _prepare(admin: ScriptedAdmin, **kwargs: Any) -> Any:
    kwargs.setdefault("poll_interval_s", 0.001)
    return await prepare_topics(admin, **kwargs)


async def test_admin_kwargs_keeps_the_connection_and_security_options() -> None:
    options = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "secret",
        "client_id": "lstm",
        "request_timeout_ms": "12000",
    }
    consumer_kw, _ = client_kwargs("broker:9092", "group", options, drain_timeout=5.0)

    kw = admin_kwargs(consumer_kw)

    assert kw["bootstrap_servers"] == "broker:9092"
    for key in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "client_id"):
        assert kw[key] == options[key]
    assert kw["sasl_plain_password"] == "secret"
    assert kw["request_timeout_ms"] == 12000
    for key in ("group_id", "enable_auto_commit", "rebalance_timeout_ms", "auto_offset_reset"):
        assert key not in kw
    client = AIOKafkaAdminClient(**kw)  # every key is a keyword the admin client accepts
    await client.close()


def test_admin_kwargs_drops_deprecated_keywords_and_does_not_modify_its_input() -> None:
    given = {"bootstrap_servers": "b:1", "loop": object(), "api_version": "auto", "x": 1}

    assert admin_kwargs(given) == {"bootstrap_servers": "b:1"}
    assert set(given) == {"bootstrap_servers", "loop", "api_version", "x"}


async def test_a_concurrent_creation_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    admin = ScriptedAdmin({"in": 4}, race={"out": 7})

    ready = await _prepare(admin, input_topics=["in"], output_topics=["out", "dlq"])

    assert dict(ready.partitions) == {"in": 4, "out": 7, "dlq": 4}
    assert ready.created == ("dlq",)
    assert any("'out' was created by another client" in r.getMessage() for r in caplog.records)


async def test_an_authorisation_refusal_names_the_topic_and_the_error() -> None:
    admin = ScriptedAdmin(
        {"in": 1},
        refuse={"dlq": (29, "Authorization failed.")},
    )

    with pytest.raises(TopicSetupError) as raised:
        await _prepare(admin, input_topics=["in"], output_topics=["out", "dlq"])

    message = str(raised.value)
    assert message == (
        "cannot create topic 'dlq': TopicAuthorizationFailedError (error code 29): "
        "Authorization failed."
    )
    assert [t.name for t in admin.created] == ["out"]


async def test_a_failing_create_request_is_a_setup_error() -> None:
    admin = ScriptedAdmin({"in": 1})

    async def refuse(new_topics: list[NewTopic]) -> None:
        raise ClusterAuthorizationFailedError()

    admin.create_topics = refuse  # type: ignore[method-assign,assignment]
    with pytest.raises(TopicSetupError, match=r"\['out'\]: ClusterAuthorizationFailedError"):
        await _prepare(admin, input_topics=["in"], output_topics=["out"])


@pytest.mark.parametrize(
    ("admin_args", "expected"),
    [
        ({"default_replication": "2"}, 2),
        ({"brokers": 5, "configs_error": ClusterAuthorizationFailedError()}, 3),
        ({"brokers": 2, "configs_error": ClusterAuthorizationFailedError()}, 2),
        ({"brokers": 4, "default_replication": None}, 3),
    ],
)
async def test_the_default_replication_factor(admin_args: dict[str, Any], expected: int) -> None:
    admin = ScriptedAdmin({"in": 1}, **admin_args)

    await _prepare(admin, input_topics=["in"], output_topics=["out", "dlq"])

    assert [(t.name, t.replication_factor) for t in admin.created] == [
        ("out", expected),
        ("dlq", expected),
    ]
    assert admin.config_requests == 1  # read once for all the topics created


async def test_an_explicit_replication_factor_is_used_as_given() -> None:
    admin = ScriptedAdmin({"in": 1}, default_replication="3")

    await _prepare(admin, input_topics=["in"], output_topics=["out"], replication_factor=2)

    assert [t.replication_factor for t in admin.created] == [2]
    assert admin.config_requests == 0


async def test_nothing_to_create_asks_for_no_configuration() -> None:
    admin = ScriptedAdmin({"in": 3, "out": 1})

    ready = await _prepare(admin, input_topics=["in"], output_topics=["out"], partitions=6)

    assert dict(ready.partitions) == {"in": 3, "out": 1}
    assert admin.created == []
    assert admin.config_requests == 0


async def test_without_inputs_outputs_get_one_partition() -> None:
    admin = ScriptedAdmin()

    ready = await _prepare(admin, input_topics=[], output_topics=["out"])

    assert dict(ready.partitions) == {"out": 1}


async def test_a_topic_listed_as_input_and_output_is_an_input() -> None:
    admin = ScriptedAdmin()

    with pytest.raises(TopicWaitStopped):
        await _prepare(
            admin, input_topics=["t"], output_topics=["t"], stop=_set_event(), partitions=2
        )

    assert admin.created == []


async def test_a_set_stop_event_ends_the_wait_at_once() -> None:
    admin = ScriptedAdmin()

    with pytest.raises(TopicWaitStopped, match=r"\['in'\]"):
        await _prepare(admin, input_topics=["in"], output_topics=["out"], stop=_set_event())

    assert admin.created == []


async def test_transient_metadata_errors_while_waiting_are_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=METADATA_LOGGER)
    # The first describe finds "in" missing; the next three fail; the fifth finds "in".
    admin = ScriptedAdmin(
        appear_after={"in": 5},
        describe_failures={n: KafkaConnectionError("broker unreachable") for n in (2, 3, 4)},
    )

    ready = await _prepare(admin, input_topics=["in"], output_topics=["out"])

    assert dict(ready.partitions) == {"in": 2, "out": 2}
    retries = [r for r in caplog.records if "reading the topic metadata failed" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.WARNING, logging.DEBUG, logging.DEBUG]


async def test_a_non_retriable_metadata_error_is_a_setup_error() -> None:
    admin = ScriptedAdmin(describe_failures={1: TopicAuthorizationFailedError()})

    with pytest.raises(TopicSetupError, match="TopicAuthorizationFailedError"):
        await _prepare(admin, input_topics=["in"], output_topics=["out"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"partitions": 0},
        {"partitions": -2},
        {"replication_factor": 0},
        {"poll_interval_s": 0.0},
        {"input_topics": "in"},
        {"output_topics": ["out", " "]},
    ],
)
async def test_invalid_arguments_are_config_errors(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"input_topics": ["in"], "output_topics": ["out"]} | kwargs
    admin = ScriptedAdmin({"in": 1})

    with pytest.raises(ConfigError):
        await prepare_topics(admin, **args)

    assert admin.describes == 0


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event
