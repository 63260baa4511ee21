"""Making sure the processor's topics exist before its consumer joins the group.

A consumer that joins its group while an input topic does not exist is assigned no partition
of it, and aiokafka only notices the topic at its next metadata refresh. The runtime therefore
calls :func:`prepare_topics` with an admin client before it creates its consumer and producer:

* missing **input** topics are created when ``create_inputs`` is true; otherwise they are
  waited for (one WARNING naming them, one INFO when they all exist) until they exist or the
  ``stop`` event is set (:class:`TopicWaitStopped`);
* missing **output** topics (outputs and dead letters) are created, by default with as many
  partitions as the first input topic;
* a topic that already exists is never altered, whatever its partition count;
* a topic created by another client at the same moment is simply used;
* every other broker refusal (authorisation, invalid name, replication factor larger than the
  cluster...) raises :class:`TopicSetupError` naming the topic and the broker's error.

Topic metadata is always read for *all* topics (a Metadata request without a topic list):
a Metadata request that names a missing topic makes a broker with
``auto.create.topics.enable=true`` (Kafka's default) create it with the broker's defaults,
which would defeat both the wait and the chosen partition count. The price is that a topic the
client may not describe looks missing; the waiting message says so.

:func:`admin_kwargs` turns the keyword arguments of the processor's consumer (or producer) into
those of an ``AIOKafkaAdminClient`` for the same cluster with the same security settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from processor.errors import ConfigError, LstmStreamError

__all__ = [
    "DEFAULT_WAIT_HINT",
    "TopicSetupError",
    "TopicWaitStopped",
    "TopicsReady",
    "admin_kwargs",
    "describe_error",
    "describe_or_raise",
    "prepare_topics",
    "prepare_topics_with",
    "resolve_replication",
    "wait_settled",
]

log = logging.getLogger(__name__)

#: What the waiting WARNING tells the operator to do about missing input topics.
DEFAULT_WAIT_HINT: Final = "create them, or start with --create-input-topics"

#: A freshly created or freshly appeared topic must show a leader for every partition within
#: this many seconds (brokers learn about new topics asynchronously, usually in milliseconds).
_SETTLE_TIMEOUT_S: Final = 30.0
#: Poll period while waiting for a new topic's leaders (bounded by ``poll_interval_s``).
_SETTLE_POLL_S: Final = 0.1
#: Upper bound of the replication factor chosen when the broker's default cannot be read.
_FALLBACK_MAX_REPLICATION: Final = 3

# Keywords of AIOKafkaAdminClient that admin_kwargs never copies: ``loop`` and
# ``api_version`` are deprecated no-ops in aiokafka.
_ADMIN_SKIPPED: Final = frozenset({"loop", "api_version"})
_ADMIN_PARAMS: Final = frozenset(
    name for name in inspect.signature(AIOKafkaAdminClient).parameters if name not in _ADMIN_SKIPPED
)


class TopicSetupError(LstmStreamError):
    """A topic cannot be created or its metadata cannot be read; the message names the topic
    and the broker's error. Not retriable as such: fix the permissions or the settings."""


class TopicWaitStopped(LstmStreamError):
    """The stop event was set before every input topic existed. Not a failure: nothing was
    consumed, and the caller should shut down cleanly."""


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


@dataclass(frozen=True)
class _Topic:
    """One topic as the cluster metadata shows it."""

    partitions: int
    leaders: bool  # every partition has a leader (a new topic's may not have one yet)

    @property
    def settled(self) -> bool:
        return self.partitions > 0 and self.leaders


def admin_kwargs(client_kw: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a consumer's or producer's keyword arguments that
    ``AIOKafkaAdminClient`` accepts: ``bootstrap_servers``, ``client_id``, the timeouts and
    every security option (``security_protocol``, ``ssl_context``, ``sasl_*``). Everything
    else (group, fetch and batching options...) is dropped. Pure; the input is not modified.
    """
    return {key: value for key, value in client_kw.items() if key in _ADMIN_PARAMS}


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
       set, which raises :class:`TopicWaitStopped`. There is no deadline on this wait.
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
    :class:`TopicWaitStopped` when ``stop`` is set while it waits.
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

    async def create(topics: list[str], count: int) -> dict[str, _Topic]:
        if not replication:
            replication.append(await resolve_replication(admin, replication_factor))
        made = await _create(admin, topics, count, replication[0])
        created.extend(made)
        return await wait_settled(
            admin, topics, stop, settle_poll_s, deadline=time.monotonic() + _SETTLE_TIMEOUT_S
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


async def _describe(admin: AIOKafkaAdminClient) -> dict[str, _Topic]:
    """Every topic of the cluster that this client may describe, by name.

    Reads the metadata of all topics on purpose: see the module docstring (naming a missing
    topic would make the broker auto-create it). Raises the aiokafka error as it is.
    """
    described = await admin.describe_topics()
    out: dict[str, _Topic] = {}
    for entry in described:
        if entry["error_code"] == UnknownTopicOrPartitionError.errno:
            continue
        parts = entry["partitions"] or []
        out[entry["topic"]] = _Topic(
            partitions=len(parts), leaders=all(p["leader"] >= 0 for p in parts)
        )
    return out


async def describe_or_raise(admin: AIOKafkaAdminClient, topics: Sequence[str]) -> dict[str, _Topic]:
    """:func:`_describe`, with any aiokafka error as a :class:`TopicSetupError` naming
    ``topics`` (the ones the caller needs)."""
    try:
        return await _describe(admin)
    except KafkaError as exc:
        raise TopicSetupError(
            f"cannot read the metadata of topic(s) {list(topics)}: {describe_error(exc)}"
        ) from exc


async def wait_settled(
    admin: AIOKafkaAdminClient,
    topics: Sequence[str],
    stop: asyncio.Event,
    interval_s: float,
    *,
    deadline: float | None,
) -> dict[str, _Topic]:
    """Poll the metadata until every topic in ``topics`` exists with a leader for each
    partition; return the last metadata read (all topics).

    Retriable metadata errors (the broker briefly unreachable...) are retried: the first of a
    series is logged as a WARNING, the rest at DEBUG. Raises :class:`TopicWaitStopped` when
    ``stop`` is set, :class:`TopicSetupError` on a non-retriable error or at ``deadline``
    (a ``time.monotonic()`` value; None waits without limit).
    """
    failing = False
    state: dict[str, _Topic] = {}
    while True:
        if stop.is_set():
            raise TopicWaitStopped(f"stopped while waiting for topic(s) {list(topics)}")
        try:
            state = await _describe(admin)
        except KafkaError as exc:
            if not exc.retriable:
                raise TopicSetupError(
                    f"cannot read the metadata of topic(s) {list(topics)}: {describe_error(exc)}"
                ) from exc
            log.log(
                logging.DEBUG if failing else logging.WARNING,
                "reading the topic metadata failed (%s): retrying",
                describe_error(exc),
            )
            failing = True
        else:
            failing = False
            if all(t in state and state[t].settled for t in topics):
                return state
        if deadline is not None and time.monotonic() >= deadline:
            waiting = [t for t in topics if not (t in state and state[t].settled)]
            raise TopicSetupError(
                f"topic(s) {waiting} have no leader for every partition "
                f"{_SETTLE_TIMEOUT_S:.0f} s after their creation"
            )
        # The poll period doubles as the reaction time to ``stop``.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


async def _create(
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


async def resolve_replication(admin: AIOKafkaAdminClient, requested: int) -> int:
    """``requested``, or for -1 the broker's ``default.replication.factor``; when that cannot
    be read (no permission to describe broker configs...), min(3, number of brokers)."""
    if requested > 0:
        return requested
    try:
        cluster = await admin.describe_cluster()
    except KafkaError as exc:
        raise TopicSetupError(f"cannot describe the cluster: {describe_error(exc)}") from exc
    brokers = [b["node_id"] for b in cluster["brokers"]]
    fallback = max(1, min(_FALLBACK_MAX_REPLICATION, len(brokers)))
    if not brokers:
        return fallback
    key = "default.replication.factor"
    reason: str
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]), {key: None})]
        )
        resources = [r for response in responses for r in response.to_object()["resources"]]
        values = [
            e["config_value"]
            for r in resources
            if r["error_code"] == 0
            for e in r["config_entries"]
            if e["config_names"] == key
        ]
        if values and str(values[0]).strip().isdigit() and int(values[0]) > 0:
            return int(values[0])
        errors = [
            f"{for_code(r['error_code']).__name__}: {r['error_message']}"
            for r in resources
            if r["error_code"]
        ]
        reason = "; ".join(errors) or f"no usable value in {values!r}"
    except KafkaError as exc:
        reason = describe_error(exc)
    log.info("cannot read the broker's %s (%s): using replication factor %d", key, reason, fallback)
    return fallback


def describe_error(exc: BaseException) -> str:
    """``ErrorClass: text`` on one line (aiokafka errors often have no text)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def prepare_topics_with(admin_kw: Mapping[str, Any], **kw: Any) -> TopicsReady:
    """:func:`prepare_topics` through an admin client opened with ``admin_kw`` (see
    :func:`admin_kwargs`) for this call only, and closed whatever happens."""
    admin = AIOKafkaAdminClient(**admin_kw)
    await admin.start()
    try:
        return await prepare_topics(admin, **kw)
    finally:
        await admin.close()
