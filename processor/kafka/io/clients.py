"""Kafka client keyword arguments: pass-through settings -> aiokafka constructor keywords.

Options are not re-modelled: each key is an ``AIOKafkaConsumer``/``AIOKafkaProducer``
keyword. A plain key goes to every client whose constructor accepts it (an option neither
accepts is a :class:`ConfigError`, so a typo cannot be silently ignored); ``consumer.KEY``
or ``producer.KEY`` targets one client. String values (from flags and the environment) are
converted to the type of the keyword's default (int, float, bool).

Four pseudo-options build the ``ssl_context`` aiokafka needs (it takes no file paths):
``ssl_cafile``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_password`` (the key's passphrase).

The processor owns a few keywords (group membership, manual commits, serializers) and
refuses overrides of those. ``rebalance_timeout_ms`` defaults to the drain timeout plus
:data:`REBALANCE_MARGIN_MS` (see :func:`client_kwargs`). :func:`admin_kwargs` derives an
``AIOKafkaAdminClient``'s keywords (same cluster, same security settings) from either
client's.

Starting a client is :mod:`processor.kafka.io.bootstrap`'s job.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from processor.config.syntax import parse_bool
from processor.errors import ConfigError

__all__ = [
    "CONSUMER_DEFAULTS",
    "METADATA_MAX_AGE_MS",
    "PRODUCER_DEFAULTS",
    "REBALANCE_MARGIN_MS",
    "admin_kwargs",
    "client_kwargs",
]

#: Metadata refresh interval of both clients (aiokafka's default: 5 minutes). The consumer
#: learns of new partitions of its input topics, and of input topics that appear, only on a
#: refresh, so a short interval lets it pick them up within seconds; a refresh is one small
#: request to one broker.
METADATA_MAX_AGE_MS: Final = 5_000

#: Consumer defaults of the processor (overridable): manual commits are required for the
#: at-least-once guarantee, so enable_auto_commit is not overridable at all.
CONSUMER_DEFAULTS: Final[dict[str, Any]] = {
    "auto_offset_reset": "earliest",  # a new group processes the topic from the start
    "isolation_level": "read_committed",  # never process inputs of aborted transactions
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 1_000,  # notice rebalances quickly (a member joined/left)
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "metadata_max_age_ms": METADATA_MAX_AGE_MS,
}

#: Producer defaults: acks=all so that an acknowledged output survives a broker failure
#: (offsets are committed on that acknowledgement); a little linger and large batches
#: because outputs are sent in bursts of a whole engine batch.
PRODUCER_DEFAULTS: Final[dict[str, Any]] = {
    "acks": "all",
    "linger_ms": 5,
    "max_batch_size": 512 * 1024,
    "max_request_size": 8 * 1024 * 1024,
    "metadata_max_age_ms": METADATA_MAX_AGE_MS,
}

#: rebalance_timeout_ms = drain timeout + this: on revocation the processor waits up to the
#: drain timeout for in-flight work before it commits and rejoins, and the group coordinator
#: must not give up on it (and fence it out of the generation) before that wait ends.
REBALANCE_MARGIN_MS: Final = 15_000

_OWNED: Final = frozenset(
    {
        "bootstrap_servers",
        "group_id",
        "enable_auto_commit",
        "key_serializer",
        "value_serializer",
        "key_deserializer",
        "value_deserializer",
        "transactional_id",
        "transaction_timeout_ms",  # --transaction-timeout-ms
        "loop",
        "topics",
        "partitioner",
    }
)
_SSL_PSEUDO: Final = {
    "ssl_cafile": "cafile",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_password": "password",
}


def _params(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls)  # the constructor's keywords (without self)
    return {n: p for n, p in sig.parameters.items() if n != "self"}


_CONSUMER_PARAMS: Final = _params(AIOKafkaConsumer)
_PRODUCER_PARAMS: Final = _params(AIOKafkaProducer)
# Keywords of AIOKafkaAdminClient that admin_kwargs never copies: ``loop`` and
# ``api_version`` are deprecated no-ops in aiokafka.
_ADMIN_SKIPPED: Final = frozenset({"loop", "api_version"})
_ADMIN_PARAMS: Final = frozenset(set(_params(AIOKafkaAdminClient)) - _ADMIN_SKIPPED)


def _convert(name: str, value: Any, param: inspect.Parameter) -> Any:
    """``name`` is the keyword (for messages and the ``acks`` special case)."""
    # Strings become the type of the keyword's default; typed (TOML) values pass as they are.
    if not isinstance(value, str):
        return value
    default = param.default
    try:
        if isinstance(default, bool):
            return parse_bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError as exc:
        raise ConfigError(f"Kafka option {param.name}={value!r}: {exc}") from None
    if name == "acks" and value.strip().lstrip("-").isdigit():
        return int(value)
    if default is None and value.strip().isdigit():
        return int(value)  # e.g. max_poll_records, rebalance_timeout_ms
    return value


def client_kwargs(
    bootstrap_servers: str,
    group_id: str,
    options: Mapping[str, Any],
    *,
    drain_timeout: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(consumer kwargs, producer kwargs) for the processor's two clients.

    With ``drain_timeout`` (seconds the processor may wait for in-flight work when its
    partitions are revoked), the consumer's ``rebalance_timeout_ms`` defaults to it plus
    :data:`REBALANCE_MARGIN_MS`; one given in ``options`` must exceed it.

    Raises :class:`ConfigError` for an unknown option, a keyword the processor owns, a
    value of the wrong type, or a ``rebalance_timeout_ms`` not above the drain timeout.
    """
    consumer: dict[str, Any] = dict(CONSUMER_DEFAULTS)
    producer: dict[str, Any] = dict(PRODUCER_DEFAULTS)
    ssl: dict[str, dict[str, Any]] = {"consumer": {}, "producer": {}}
    for raw_key, value in options.items():
        target, _, key = raw_key.rpartition(".")
        if target not in ("", "consumer", "producer"):
            raise ConfigError(
                f"Kafka option {raw_key!r}: prefix must be 'consumer.' or 'producer.'"
            )
        targets = ("consumer", "producer") if not target else (target,)
        if key in _OWNED:
            raise ConfigError(f"Kafka option {raw_key!r} is set by lstm-stream itself")
        if key in _SSL_PSEUDO:
            for t in targets:
                ssl[t][_SSL_PSEUDO[key]] = value
            continue
        used = False
        for t, params, kwargs in (
            ("consumer", _CONSUMER_PARAMS, consumer),
            ("producer", _PRODUCER_PARAMS, producer),
        ):
            if t in targets and key in params:
                kwargs[key] = _convert(key, value, params[key])
                used = True
        if not used:
            who = " and ".join(targets)
            raise ConfigError(f"Kafka option {raw_key!r} is not an aiokafka {who} option")
    for t, kwargs in (("consumer", consumer), ("producer", producer)):
        if ssl[t]:
            if "ssl_context" in kwargs:
                raise ConfigError("give either ssl_context or ssl_* file options, not both")
            try:
                kwargs["ssl_context"] = create_ssl_context(**ssl[t])
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot build the SSL context: {exc}") from None
    if drain_timeout is not None:
        drain_ms = int(drain_timeout * 1000)
        given = consumer.get("rebalance_timeout_ms")
        if given is None:
            consumer["rebalance_timeout_ms"] = drain_ms + REBALANCE_MARGIN_MS
        elif not isinstance(given, int) or isinstance(given, bool) or given <= drain_ms:
            raise ConfigError(
                f"Kafka option rebalance_timeout_ms={given!r} must be an integer above the "
                f"drain timeout ({drain_ms} ms): on revocation the processor waits up to the "
                "drain timeout before it rejoins the group, and the coordinator would evict "
                f"it first (default: drain timeout + {REBALANCE_MARGIN_MS} ms)"
            )
    consumer.update(bootstrap_servers=bootstrap_servers, group_id=group_id)
    consumer["enable_auto_commit"] = False
    producer["bootstrap_servers"] = bootstrap_servers
    return consumer, producer


def admin_kwargs(client_kw: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a consumer's or producer's keyword arguments that
    ``AIOKafkaAdminClient`` accepts: ``bootstrap_servers``, ``client_id``, the timeouts and
    every security option (``security_protocol``, ``ssl_context``, ``sasl_*``). Everything
    else (group, fetch and batching options...) is dropped. Pure; the input is not modified.
    """
    return {key: value for key, value in client_kw.items() if key in _ADMIN_PARAMS}
