"""Reading the cluster's topic metadata: which topics exist, waiting until they do, and
the replication factor a new topic gets.

Topic metadata is always read for *all* topics (a Metadata request without a topic list):
a Metadata request that names a missing topic makes a broker with
``auto.create.topics.enable=true`` (Kafka's default) create it with the broker's defaults,
which would defeat both a wait and a chosen partition count. The price is that a topic the
client may not describe looks missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError, for_code

from processor.errors import LstmStreamError

__all__ = [
    "SETTLE_TIMEOUT_S",
    "TopicSetupError",
    "TopicState",
    "TopicWaitStopped",
    "describe_error",
    "describe_or_raise",
    "read_topics",
    "resolve_replication",
    "wait_settled",
]

log = logging.getLogger(__name__)

#: A freshly created or freshly appeared topic must show a leader for every partition within
#: this many seconds (brokers learn about new topics asynchronously, usually in milliseconds);
#: the deadline callers give :func:`wait_settled` for such a topic.
SETTLE_TIMEOUT_S: Final = 30.0
#: Upper bound of the replication factor chosen when the broker's default cannot be read.
_FALLBACK_MAX_REPLICATION: Final = 3


class TopicSetupError(LstmStreamError):
    """A topic cannot be created or its metadata cannot be read; the message names the topic
    and the broker's error. Not retriable as such: fix the permissions or the settings."""


class TopicWaitStopped(LstmStreamError):
    """The stop event was set before every awaited topic existed. Not a failure: nothing was
    consumed, and the caller should shut down cleanly."""


@dataclass(frozen=True)
class TopicState:
    """One topic as the cluster metadata shows it."""

    partitions: int
    leaders: bool  # every partition has a leader (a new topic's may not have one yet)

    @property
    def settled(self) -> bool:
        return self.partitions > 0 and self.leaders


async def read_topics(admin: AIOKafkaAdminClient) -> dict[str, TopicState]:
    """Every topic of the cluster that this client may describe, by name.

    Reads the metadata of all topics on purpose: see the module docstring (naming a missing
    topic would make the broker auto-create it). Raises the aiokafka error as it is.
    """
    described = await admin.describe_topics()
    out: dict[str, TopicState] = {}
    for entry in described:
        if entry["error_code"] == UnknownTopicOrPartitionError.errno:
            continue
        parts = entry["partitions"] or []
        out[entry["topic"]] = TopicState(
            partitions=len(parts), leaders=all(p["leader"] >= 0 for p in parts)
        )
    return out


async def describe_or_raise(
    admin: AIOKafkaAdminClient, topics: Sequence[str]
) -> dict[str, TopicState]:
    """:func:`read_topics`, with any aiokafka error as a :class:`TopicSetupError` naming
    ``topics`` (the ones the caller needs)."""
    try:
        return await read_topics(admin)
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
) -> dict[str, TopicState]:
    """Poll the metadata until every topic in ``topics`` exists with a leader for each
    partition; return the last metadata read (all topics).

    Retriable metadata errors (the broker briefly unreachable...) are retried: the first of a
    series is logged as a WARNING, the rest at DEBUG. Raises :class:`TopicWaitStopped` when
    ``stop`` is set, :class:`TopicSetupError` on a non-retriable error or at ``deadline``
    (a ``time.monotonic()`` value; None waits without limit).
    """
    failing = False
    state: dict[str, TopicState] = {}
    while True:
        if stop.is_set():
            raise TopicWaitStopped(f"stopped while waiting for topic(s) {list(topics)}")
        try:
            state = await read_topics(admin)
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
                f"{SETTLE_TIMEOUT_S:.0f} s after their creation"
            )
        # The poll period doubles as the reaction time to ``stop``.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)


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
