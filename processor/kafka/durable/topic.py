"""Creating and checking the compacted state topics (admin I/O only).

Each input topic has one **state topic** holding the latest state of every stream read from
it (see :mod:`processor.kafka.durable.record`): a record's key is the stream id and its
partition is the input record's partition, so the state topic must have exactly as many
partitions as its input topic, and it must be compacted only: with ``compact,delete`` the
broker would delete the states of quiet streams once they outlive the retention time.

:func:`prepare_state_topics` makes every state topic exist with those properties, creating
a missing one, and refuses (:class:`StateTopicError`, a :class:`ConfigError`: the command
exits with status 2 and one line) one that exists with other properties: it never alters
an existing topic. Like :mod:`processor.kafka.io.topics`, it reads the metadata through
:mod:`processor.kafka.io.metadata`: of all topics, never naming one in a Metadata request,
which would auto-create a missing topic with the broker's defaults on many brokers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from processor.errors import ConfigError
from processor.kafka.io.metadata import (
    SETTLE_TIMEOUT_S,
    TopicSetupError,
    describe_error,
    describe_or_raise,
    resolve_replication,
    wait_settled,
)

__all__ = [
    "STATE_TOPIC_CONFIGS",
    "StateTopicError",
    "default_state_topic",
    "prepare_state_topics",
]

log = logging.getLogger(__name__)

#: Topic configs of a state topic this module creates. ``segment.ms``: the active segment is
#: never compacted, so it is rolled every hour for compaction to reach recent states too.
STATE_TOPIC_CONFIGS: Final[Mapping[str, str]] = {
    "cleanup.policy": "compact",
    "segment.ms": "3600000",
}

_CLEANUP_POLICY: Final = "cleanup.policy"
#: Poll period while a state topic created here gets its leaders and readable configs (which
#: it must within :data:`~processor.kafka.io.metadata.SETTLE_TIMEOUT_S`).
_SETTLE_POLL_S: Final = 0.1


class StateTopicError(ConfigError):
    """A state topic cannot be used as it is (wrong partition count or cleanup policy), or the
    state topic names are inconsistent. One line naming the topic, what it has and what is
    needed; not retriable: fix the topic or choose another name."""


def default_state_topic(group_id: str, input_topic: str) -> str:
    """The state topic of ``input_topic`` when none is configured: one per consumer group,
    since each group keeps its own states."""
    return f"{group_id}-{input_topic}-state"


async def prepare_state_topics(
    admin_kw: dict[str, Any],
    state_topics: Mapping[str, str],
    input_partitions: Mapping[str, int],
    *,
    replication_factor: int = -1,
) -> None:
    """Make every state topic exist, compacted, with its input topic's partition count.

    Called by the runtime once the input topics exist (``input_partitions`` maps each input
    topic to its partition count, e.g. :attr:`processor.kafka.io.topics.TopicsReady.partitions`)
    and before it restores any state. ``state_topics`` maps each input topic to its state
    topic; ``admin_kw`` are ``AIOKafkaAdminClient`` keyword arguments
    (:func:`processor.kafka.io.clients.admin_kwargs`), used for this call only.

    A missing state topic is created with ``cleanup.policy=compact``, ``segment.ms=3600000``,
    the input topic's partition count and ``replication_factor`` (-1: the broker's default).
    One created by another member at the same moment is checked like any existing one.

    Raises :class:`StateTopicError` when two inputs share a state topic, a state topic is also
    an input topic, an input topic's partition count is unknown, the replication factor is
    invalid, or an existing state topic has another partition count or a cleanup policy other
    than exactly ``compact``; :class:`~processor.kafka.io.metadata.TopicSetupError` when the broker
    refuses a creation or its metadata or configs cannot be read.
    """
    needed = _check_arguments(state_topics, input_partitions, replication_factor)
    if not needed:
        return
    admin = AIOKafkaAdminClient(**admin_kw)
    await admin.start()
    try:
        await _prepare(admin, needed, replication_factor)
    finally:
        await admin.close()


def _check_arguments(
    state_topics: Mapping[str, str], input_partitions: Mapping[str, int], replication_factor: int
) -> dict[str, int]:
    """State topic -> partition count it needs; :class:`StateTopicError` for bad arguments."""
    if replication_factor == 0 or replication_factor < -1:
        raise StateTopicError(
            f"state topic replication factor must be -1 (broker default) or >= 1, "
            f"got {replication_factor}"
        )
    owner: dict[str, str] = {}
    needed: dict[str, int] = {}
    for input_topic, state_topic in state_topics.items():
        if not state_topic or not state_topic.strip():
            raise StateTopicError(f"the state topic of input topic {input_topic!r} is empty")
        if state_topic in owner:
            raise StateTopicError(
                f"input topics {owner[state_topic]!r} and {input_topic!r} both use state topic "
                f"{state_topic!r}: each input topic needs its own"
            )
        if state_topic in state_topics or state_topic in input_partitions:
            raise StateTopicError(
                f"state topic {state_topic!r} of input topic {input_topic!r} is an input topic"
            )
        partitions = input_partitions.get(input_topic)
        if partitions is None or partitions < 1:
            raise StateTopicError(
                f"the partition count of input topic {input_topic!r} is unknown "
                f"({partitions!r}): cannot size state topic {state_topic!r}"
            )
        owner[state_topic] = input_topic
        needed[state_topic] = partitions
    return needed


async def _prepare(
    admin: AIOKafkaAdminClient, needed: Mapping[str, int], replication_factor: int
) -> None:
    topics = list(needed)
    state = await describe_or_raise(admin, topics)
    missing = [t for t in topics if t not in state]
    if missing:
        replication = await resolve_replication(admin, replication_factor)
        for topic in missing:
            await _create(admin, topic, needed[topic], replication)
        state = await wait_settled(
            admin,
            missing,
            asyncio.Event(),  # never set: the wait ends at the deadline at the latest
            _SETTLE_POLL_S,
            deadline=time.monotonic() + SETTLE_TIMEOUT_S,
        )
    policies = await _cleanup_policies(admin, topics)
    for topic in topics:
        has = state[topic].partitions
        if has != needed[topic]:
            raise StateTopicError(
                f"state topic {topic!r} has {has} partition(s), its input topic has "
                f"{needed[topic]}: they must be equal (delete the state topic, or use another)"
            )
        policy = policies[topic]
        if policy != "compact":
            raise StateTopicError(
                f"state topic {topic!r} has cleanup.policy={policy}, it needs exactly "
                "cleanup.policy=compact (with delete, retention would drop the states of "
                "quiet streams)"
            )


async def _create(
    admin: AIOKafkaAdminClient, topic: str, partitions: int, replication: int
) -> None:
    """Create one state topic; another client creating it meanwhile is not an error (the
    caller checks the topic afterwards). :class:`TopicSetupError` for any other refusal."""
    new = NewTopic(topic, partitions, replication, topic_configs=dict(STATE_TOPIC_CONFIGS))
    try:
        response = await admin.create_topics([new])
    except KafkaError as exc:
        raise TopicSetupError(
            f"cannot create state topic {topic!r}: {describe_error(exc)}"
        ) from exc
    for entry in response.topic_errors:
        # (topic, error_code) on CreateTopics v0, (topic, error_code, error_message) after.
        code = entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code == 0:
            log.info(
                "created state topic %r: %d partition(s), replication factor %d, %s",
                topic,
                partitions,
                replication,
                ", ".join(f"{k}={v}" for k, v in STATE_TOPIC_CONFIGS.items()),
            )
        elif code == TopicAlreadyExistsError.errno:
            log.info("state topic %r was created by another client meanwhile: checking it", topic)
        else:
            error = for_code(code)
            raise TopicSetupError(
                f"cannot create state topic {topic!r}: {error.__name__} (error code {code}): "
                f"{message or error.message}"
            )


async def _cleanup_policies(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> dict[str, str]:
    """Each topic's ``cleanup.policy`` (only topics known to exist are asked about).

    A topic created a moment ago may briefly be unknown to the broker answering; retriable
    errors are retried for up to :data:`~processor.kafka.io.metadata.SETTLE_TIMEOUT_S`
    seconds, others raise :class:`TopicSetupError`."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t, {_CLEANUP_POLICY: None}) for t in topics
    ]
    while True:
        problem: str
        retriable = True
        try:
            responses = await admin.describe_configs(resources)
        except KafkaError as exc:
            problem, retriable = describe_error(exc), exc.retriable
        else:
            found: dict[str, str] = {}
            errors: list[str] = []
            for response in responses:
                for r in response.to_object()["resources"]:
                    name = r["resource_name"]
                    if r["error_code"]:
                        error = for_code(r["error_code"])
                        retriable = retriable and error.retriable
                        errors.append(f"{name!r}: {error.__name__} {r['error_message'] or ''}")
                        continue
                    for entry in r["config_entries"]:
                        if entry["config_names"] == _CLEANUP_POLICY:
                            found[name] = str(entry["config_value"])
            if not errors and all(t in found for t in topics):
                return found
            problem = (
                "; ".join(errors) or f"no cleanup.policy for {sorted(set(topics) - set(found))}"
            )
        if not retriable or time.monotonic() >= deadline:
            raise TopicSetupError(
                f"cannot read the cleanup.policy of state topic(s) {list(topics)}: {problem}"
            )
        await asyncio.sleep(_SETTLE_POLL_S)
