"""What the processor reaches beyond its process: :class:`Network` makes its Kafka
clients, prepares its topics and makes its metrics server.

The :class:`~processor.kafka.runtime.Processor` does all of that through the one
:class:`Network` it is given (the real clients and functions by default): whatever it
talks to is decided there, and the rest of its start (engine, stages, loops) runs the
same against in-process stand-ins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from processor.kafka.durable.topic import prepare_state_topics
from processor.kafka.io.topics import TopicsReady, prepare_topics_with
from processor.obs.server import MetricsServer

__all__ = ["MetricsEndpoint", "Network"]


class MetricsEndpoint(Protocol):
    """What the processor needs of its metrics server
    (:class:`~processor.obs.server.MetricsServer`)."""

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        ...

    def start(self) -> None:
        """Serve from now on."""

    def close(self) -> None:
        """Stop serving; idempotent."""


@dataclass(frozen=True)
class Network:
    """The processor's ways out; each defaults to the real one.

    Attributes:
        consumer, producer, admin: make a client, not yet started, from aiokafka keyword
            arguments (:func:`~processor.kafka.io.clients.client_kwargs`,
            :func:`~processor.kafka.io.clients.admin_kwargs`). ``producer`` also makes the
            exactly-once transactional producers.
        prepare_topics: makes the input and output topics ready through an admin client
            opened with the given keywords, as
            :func:`~processor.kafka.io.topics.prepare_topics_with`.
        prepare_state_topics: makes the state topics ready, as
            :func:`~processor.kafka.durable.topic.prepare_state_topics`.
        metrics_server: makes the ``/metrics`` server (registry positional; ``host``,
            ``port``, ``ready`` as keywords), as :class:`~processor.obs.server.MetricsServer`.
    """

    consumer: Callable[..., AIOKafkaConsumer] = AIOKafkaConsumer
    producer: Callable[..., AIOKafkaProducer] = AIOKafkaProducer
    admin: Callable[..., AIOKafkaAdminClient] = AIOKafkaAdminClient
    prepare_topics: Callable[..., Awaitable[TopicsReady]] = prepare_topics_with
    prepare_state_topics: Callable[..., Awaitable[None]] = prepare_state_topics
    metrics_server: Callable[..., MetricsEndpoint] = MetricsServer
