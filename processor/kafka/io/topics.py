"""Making sure the processor's topics exist before its consumer joins the group.

A consumer that joins its group while an input topic does not exist is assigned no partition
of it, and aiokafka only notices the topic at its next metadata refresh. The runtime therefore
calls :func:`prepare_topics` with an admin client before it creates its consumer and producer:

* missing **input** topics are created when ``create_inputs`` is true; otherwise they are
  waited for (one WARNING naming them, one INFO when they all exist) until they exist or the
  ``stop`` event is set (:class:`~processor.kafka.io.metadata.TopicWaitStopped`);
* missing **output** topics (outputs and dead letters) are created, by default with as many
  partitions as the first input topic;
* a topic that already exists is never altered, whatever its partition count;
* a topic created by another client at the same moment is simply used;
* every other broker refusal (authorisation, invalid name, replication factor larger than the
  cluster...) raises :class:`~processor.kafka.io.metadata.TopicSetupError` naming the topic and
  the broker's error.

The metadata is read as :mod:`processor.kafka.io.metadata` reads it (all topics, never one by
name, so that no broker auto-creates a missing topic); a topic the client may not describe
therefore looks missing, and the waiting message says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from processor.errors import ConfigError
from processor.kafka.io.metadata import (
    SETTLE_TIMEOUT_S,
    TopicSetupError,
    TopicState,
    describe_error,
    describe_or_raise,
    resolve_replication,
    wait_settled,
)

__all__ = [
    "DEFAULT_WAIT_HINT",
    "TopicsReady",
    "prepare_topics",
    "prepare_topics_with",
]

log = logging.getLogger(__name__)

#: What the waiting WARNING tells the operator to do about missing input topics.
DEFAULT_WAIT_HINT: Final = "create them, or start with --create-input-topics"

#: Poll period while waiting for a new topic's leaders (bounded by ``poll_interval_s``).
_SETTLE_POLL_S: Final = 0.1


@dataclass(frozen=True)
class TopicsReady:
    """What :func:`prepare_topics` found and did.

    ``partitions`` maps every input and output topic to its partition count, ``created`` names
    the topics this call created (in creation order), ``waited_s`` is how long it waited for
    missing input topics (0.0 when none was missing).
    """

    partitions: Mapping[str, int]
    created: tuple[str, ...] = ()
    waited_s: float = 0.0


async def prepare_topics(
    admin: AIOKafkaAdminClient,
    *,
    input_topics: Sequence[str],
    output_topics: Sequence[str],
    partitions: int = -1,
    replication_factor: int = -1,
    create_inputs: bool = False,
    stop: asyncio.Event | None = None,
    poll_interval_s: float = 1.0,
    wait_hint: str = DEFAULT_WAIT_HINT,
) -> TopicsReady:
    """Make every input and output topic exist; return their partition counts.

    Called by the runtime with a started admin client, before its consumer is created, so that
    the consumer's first group join sees every input partition. Steps:

    1. Input topics that are missing are created when ``create_inputs`` is true (with
       ``partitions`` partitions, 1 when it is -1). Otherwise one WARNING names them and
       ``wait_hint``; the metadata is then read every ``poll_interval_s`` seconds until all
       of them exist with a leader for every partition (one INFO line), or until ``stop`` is
       set, which raises :class:`~processor.kafka.io.metadata.TopicWaitStopped`. There is
       no deadline on this wait.
    2. Output topics (``output_topics``: outputs and dead letters) that are missing are
       created with ``partitions`` partitions; -1 means as many as the first input topic has
       (1 without input topics).

    ``replication_factor`` -1 means the broker's ``default.replication.factor``, or, when that
    cannot be read, min(3, number of brokers). One INFO line is logged per created topic.
    Existing topics are never changed. A topic another client creates at the same moment is
    used as it is. A topic this call created (or that just appeared) is awaited until every
    partition has a leader, for at most 30 s.

    Raises :class:`ConfigError` for invalid arguments, :class:`TopicSetupError` when the
    broker refuses a creation (authorisation, invalid name or replication factor...), the
    metadata cannot be read, or a new topic gets no leaders in time, and
    :class:`~processor.kafka.io.metadata.TopicWaitStopped` when ``stop`` is set while it waits.
    """
    inputs = _unique(input_topics, "input")
    outputs = [t for t in _unique(output_topics, "output") if t not in inputs]
    if partitions == 0 or partitions < -1:
        raise ConfigError(f"topic partitions must be -1 (automatic) or >= 1, got {partitions}")
    if replication_factor == 0 or replication_factor < -1:
        raise ConfigError(
            f"topic replication factor must be -1 (broker default) or >= 1, "
            f"got {replication_factor}"
        )
    if not poll_interval_s > 0:
        raise ConfigError(f"poll_interval_s must be > 0, got {poll_interval_s}")
    stop = stop if stop is not None else asyncio.Event()
    settle_poll_s = min(_SETTLE_POLL_S, poll_interval_s)
    all_topics = [*inputs, *outputs]
    created: list[str] = []
    replication: list[int] = []  # resolved once, on the first creation

    async def create(topics: list[str], count: int) -> dict[str, TopicState]:
        if not replication:
            replication.append(await resolve_replication(admin, replication_factor))
        made = await _create_topics(admin, topics, count, replication[0])
        created.extend(made)
        return await wait_settled(
            admin, topics, stop, settle_poll_s, deadline=time.monotonic() + SETTLE_TIMEOUT_S
        )

    state = await describe_or_raise(admin, all_topics)
    waited_s = 0.0
    missing_inputs = [t for t in inputs if t not in state]
    if missing_inputs and create_inputs:
        state.update(await create(missing_inputs, partitions if partitions > 0 else 1))
    elif missing_inputs:
        log.warning(
            "input topic(s) %s do not exist yet (or this client may not describe them): "
            "waiting for them (%s)",
            missing_inputs,
            wait_hint,
        )
        started = time.monotonic()
        state = await wait_settled(admin, missing_inputs, stop, poll_interval_s, deadline=None)
        waited_s = time.monotonic() - started
        log.info(
            "input topic(s) %s exist now (after %.1f s): partitions %s",
            missing_inputs,
            waited_s,
            {t: state[t].partitions for t in missing_inputs},
        )

    missing_outputs = [t for t in outputs if t not in state]
    if missing_outputs:
        if partitions > 0:
            count = partitions
        elif inputs:
            count = state[inputs[0]].partitions
        else:
            count = 1
        state.update(await create(missing_outputs, count))

    return TopicsReady(
        partitions={t: state[t].partitions for t in all_topics},
        created=tuple(created),
        waited_s=waited_s,
    )


def _unique(topics: Sequence[str], role: str) -> list[str]:
    """The topics in order without repeats; :class:`ConfigError` for a blank name (a bare
    ``str`` would be iterated character by character, so it is refused too)."""
    if isinstance(topics, str):
        raise ConfigError(f"{role} topics must be a sequence of names, not the string {topics!r}")
    out: list[str] = []
    for topic in topics:
        if not topic or not topic.strip():
            raise ConfigError(f"{role} topic names must not be empty: {list(topics)!r}")
        if topic not in out:
            out.append(topic)
    return out


async def _create_topics(
    admin: AIOKafkaAdminClient, topics: Sequence[str], partitions: int, replication: int
) -> list[str]:
    """Create ``topics``; return those this call created (a topic that already exists was
    created concurrently by another client and is not an error). Logs one INFO per creation.
    Raises :class:`TopicSetupError` naming every topic the broker refused and why."""
    new = [NewTopic(t, partitions, replication) for t in topics]
    try:
        response = await admin.create_topics(new)
    except KafkaError as exc:
        raise TopicSetupError(
            f"cannot create topic(s) {list(topics)}: {describe_error(exc)}"
        ) from exc
    made: list[str] = []
    failures: list[str] = []
    for entry in response.topic_errors:
        # (topic, error_code) on CreateTopics v0, (topic, error_code, error_message) after.
        topic, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        if code == 0:
            made.append(topic)
            log.info(
                "created topic %r: %d partition(s), replication factor %d",
                topic,
                partitions,
                replication,
            )
        elif code == TopicAlreadyExistsError.errno:
            log.info("topic %r was created by another client meanwhile: using it", topic)
        else:
            error = for_code(code)
            failures.append(
                f"cannot create topic {topic!r}: {error.__name__} (error code {code}): "
                f"{message or error.message}"
            )
    if failures:
        raise TopicSetupError("; ".join(failures))
    return made


async def prepare_topics_with(admin_kw: Mapping[str, Any], **kw: Any) -> TopicsReady:
    """:func:`prepare_topics` through an admin client opened with ``admin_kw`` (see
    :func:`admin_kwargs`) for this call only, and closed whatever happens."""
    admin = AIOKafkaAdminClient(**admin_kw)
    await admin.start()
    try:
        return await prepare_topics(admin, **kw)
    finally:
        await admin.close()
