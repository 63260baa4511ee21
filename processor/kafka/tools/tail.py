"""``lstm-stream tail``: decode and print the records of an output or dead-letter topic.

Output records are decoded (:func:`processor.codec.decode_output`); dead letters (original
bytes plus the ``lstm-stream.*`` headers) are shown by their headers. One JSON object per
record on stdout.

A topic that does not exist yet is waited for, as ``run`` waits for its input topics (one
WARNING naming it, one INFO when it exists; ``run`` creates its output topics when it starts),
until ``--idle-timeout`` runs out. Its metadata is read through
:mod:`processor.kafka.io.metadata`, which never names a topic and so never makes a broker
auto-create it.

:func:`tail` is the library form; :func:`add_arguments`/:func:`main` are the command. The
Kafka client flags come from :mod:`processor.kafka.tools.flags`. Exit codes: 0 done, 1 the
topic's metadata cannot be read, 2 invalid settings or a topic that did not appear in time,
3 Kafka unreachable or refusing the TLS/SASL settings (one error line, see
:class:`~processor.errors.KafkaAccessError`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from enum import StrEnum
from typing import Any, TextIO

import numpy as np

from processor.codec import decode_output
from processor.errors import BadRecord, ConfigError, LstmStreamError
from processor.kafka.tools.client_logs import quiet_client_logs
from processor.kafka.tools.flags import add_kafka_arguments, kafka_options_from, report_failure

__all__ = [
    "Decoding",
    "RecordKind",
    "add_arguments",
    "describe_record",
    "main",
    "tail",
    "wait_for_topic",
]

log = logging.getLogger(__name__)

_DLQ_PREFIX = "lstm-stream."
#: How often the metadata is read while waiting for a missing topic.
_WAIT_POLL_S = 1.0


class Decoding(StrEnum):
    """How ``tail`` decodes the records (``--kind``)."""

    AUTO = "auto"  # dead letters recognised by their ``lstm-stream.reason`` header
    OUTPUT = "output"
    DLQ = "dlq"


class RecordKind(StrEnum):
    """What a printed record turned out to be (its ``kind`` field)."""

    OUTPUT = "output"
    DLQ = "dlq"
    UNDECODABLE = "undecodable"  # not an output record: its reason and detail are shown


def describe_record(record: Any, kind: Decoding = Decoding.AUTO) -> dict[str, Any]:
    """A printable dict of one consumed record: an output's fields, or a dead letter's
    reason, detail, source and original size. ``kind`` is output, dlq or auto (dead
    letters are recognised by their ``lstm-stream.reason`` header)."""
    headers = {k: v for k, v in (record.headers or ())}
    is_dlq = kind == Decoding.DLQ or (kind == Decoding.AUTO and f"{_DLQ_PREFIX}reason" in headers)
    base: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
    }
    if is_dlq:

        def h(name: str) -> str | None:
            v = headers.get(f"{_DLQ_PREFIX}{name}")
            return v.decode("utf-8", "replace") if v is not None else None

        base.update(
            kind=RecordKind.DLQ,
            reason=h("reason"),
            detail=h("detail"),
            source=f"{h('source.topic')}/{h('source.partition')}@{h('source.offset')}",
            value_bytes=len(record.value or b""),
        )
        return base
    try:
        out = decode_output(record.value or b"")
    except BadRecord as exc:
        base.update(kind=RecordKind.UNDECODABLE, reason=exc.reason, detail=exc.detail)
        return base
    y = out["y"]
    base.update(
        kind=RecordKind.OUTPUT,
        stream=out["stream"],
        seq=out["seq"],
        shape=out["shape"],
        y=[round(float(v), 6) for v in np.ravel(y)[:16]],
        ts=out.get("ts"),
    )
    if y.size > 16:
        base["y_truncated"] = int(y.size)
    return base


async def wait_for_topic(
    admin_kw: Mapping[str, Any], topic: str, timeout: float | None = None
) -> int:
    """The partition count of ``topic``, once it exists with a leader for every partition.

    Reads the metadata with an admin client opened with ``admin_kw``
    (:func:`processor.kafka.io.clients.admin_kwargs`) for this call only. A missing topic is
    announced by one WARNING and awaited (one INFO when it exists), for at most ``timeout``
    seconds (None: without limit), after which :class:`ConfigError` says it does not exist.
    :class:`~processor.kafka.io.metadata.TopicSetupError` when the metadata cannot be read.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    from processor.kafka.io.metadata import TopicWaitStopped, describe_or_raise, wait_settled

    admin = AIOKafkaAdminClient(**admin_kw)
    await admin.start()
    try:
        state = await describe_or_raise(admin, [topic])
        if topic in state and state[topic].settled:
            return state[topic].partitions
        log.warning(
            "topic %r does not exist yet (or this client may not describe it): waiting for it "
            "(lstm-stream run creates its output topics when it starts)",
            topic,
        )
        stop = asyncio.Event()
        started = time.monotonic()
        timer = (
            asyncio.get_running_loop().call_later(timeout, stop.set)
            if timeout is not None
            else None
        )
        try:
            state = await wait_settled(admin, [topic], stop, _WAIT_POLL_S, deadline=None)
        except TopicWaitStopped:
            raise ConfigError(
                f"topic {topic!r} does not exist (waited {time.monotonic() - started:.1f} s)"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
        log.info(
            "topic %r exists now (after %.1f s): %d partition(s)",
            topic,
            time.monotonic() - started,
            state[topic].partitions,
        )
        return state[topic].partitions
    finally:
        await admin.close()


async def tail(
    bootstrap_servers: str,
    topic: str,
    *,
    max_records: int | None = None,
    from_beginning: bool = False,
    idle_timeout: float | None = None,
    kind: Decoding = Decoding.AUTO,
    out: Callable[[dict[str, Any]], None] | None = None,
    kafka_options: dict[str, Any] | None = None,
) -> int:
    """Print (or pass to ``out``) decoded records of every partition of ``topic``; stops
    after ``max_records``, or after ``idle_timeout`` seconds without a record. Returns how
    many records were seen. No consumer group: nothing is committed.

    A missing topic is waited for (:func:`wait_for_topic`), for at most ``idle_timeout``
    seconds. :class:`ConfigError` for invalid Kafka options or a topic that did not appear
    in that time; :class:`KafkaAccessError` when the consumer cannot bootstrap;
    :class:`~processor.kafka.io.metadata.TopicSetupError` when the topic's metadata cannot
    be read."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from processor.kafka.io.bootstrap import start_client
    from processor.kafka.io.clients import admin_kwargs, client_kwargs

    consumer_kw, _ = client_kwargs(bootstrap_servers, "unused", kafka_options or {})
    consumer_kw["group_id"] = None
    consumer_kw["auto_offset_reset"] = "earliest" if from_beginning else "latest"
    consumer = AIOKafkaConsumer(**consumer_kw)
    await start_client(consumer, consumer_kw, kafka_options)
    seen = 0
    emit = out or (lambda d: print(json.dumps(d), flush=True))
    try:
        # The consumer's bootstrap metadata may list no topic at all: when it does not know
        # the topic, the admin client reads all topics' metadata (never naming this one).
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            count = await wait_for_topic(admin_kwargs(consumer_kw), topic, idle_timeout)
            parts = set(range(count))
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        last = time.monotonic()
        while max_records is None or seen < max_records:
            batch = await consumer.getmany(timeout_ms=200)
            got = [r for records in batch.values() for r in records]
            if not got:
                if idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    break
                continue
            last = time.monotonic()
            for r in got:
                if max_records is not None and seen >= max_records:
                    break
                emit(describe_record(r, kind))
                seen += 1
    finally:
        await consumer.stop()
    return seen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lstm-stream tail`` (each help states its default)."""
    parser.add_argument(
        "--bootstrap-servers", default="localhost:9092", help="Kafka bootstrap servers"
    )
    parser.add_argument(
        "--topic", required=True, help="output or dead-letter topic to read (required)"
    )
    parser.add_argument(
        "--kind",
        type=Decoding,
        choices=list(Decoding),
        default=Decoding.AUTO,
        help="how to decode: auto recognises dead letters by their headers",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=None,
        help="stop after this many records (default: no limit)",
    )
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        default=False,
        help="start at the oldest record instead of only new ones",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="stop after this many seconds without a record, or without the topic (default: never)",
    )
    add_kafka_arguments(parser)


def main(
    args: argparse.Namespace,
    stdout: TextIO | None = None,
    *,
    run: Callable[..., Coroutine[Any, Any, int]] = tail,
) -> int:
    """``lstm-stream tail``: one JSON object per record on ``stdout`` (default
    ``sys.stdout``); returns the exit code (module doc). The Kafka client libraries log
    WARNING and above only (:mod:`.client_logs`). ``run`` is called as :func:`tail` is
    (tests stand in for Kafka with it)."""
    stream = stdout or sys.stdout

    def emit(d: dict[str, Any]) -> None:
        stream.write(json.dumps(d) + "\n")
        stream.flush()

    try:
        kafka_options = kafka_options_from(args)
        with quiet_client_logs(show=logging.getLogger().isEnabledFor(logging.DEBUG)):
            asyncio.run(
                run(
                    args.bootstrap_servers,
                    args.topic,
                    max_records=args.max_records,
                    from_beginning=args.from_beginning,
                    idle_timeout=args.idle_timeout,
                    kind=args.kind,
                    out=emit,
                    kafka_options=kafka_options,
                )
            )
    except LstmStreamError as exc:
        return report_failure("tail", exc)
    except KeyboardInterrupt:
        return 0
    return 0
