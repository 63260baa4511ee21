"""User tools around the Kafka processor: ``lstm-stream produce`` and ``lstm-stream tail``.

``produce`` is a load generator: N synthetic streams -- float32 sensor vectors (a noisy
sine per stream) or uint8 frames (a moving bright bar over noise) -- written in the input
wire format (:func:`processor.codec.encode_input`) with key = stream id and ``seq``
increasing per stream, at a target rate for a duration or a count.

``tail`` decodes and prints output records (:func:`processor.codec.decode_output`) or
dead-letter records (original bytes plus the ``lstm-stream.*`` headers) from a topic.

The async functions :func:`produce` and :func:`tail` are the library form (tests and the
benchmark use them); ``main_produce``/``main_tail`` are the commands.

Both commands take the Kafka client options ``run`` takes, from the same sources with the
same precedence (:func:`kafka_options_from`): ``--kafka-option KEY=VALUE`` flags over
``LSTM_STREAM_KAFKA_<KEY>`` variables over the ``[kafka]`` table of a TOML file
(``--config`` or ``LSTM_STREAM_CONFIG``; the file ``run`` reads works, its other keys are
``run``'s and ignored here). Exit codes: 0 done, 2 invalid settings, 3 Kafka unreachable or
refusing the TLS/SASL settings (one error line, see :class:`~processor.errors.KafkaAccessError`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from processor.codec import ENCODINGS, decode_output, encode_image_input, encode_input
from processor.codec.images import image_size
from processor.config import declare as config
from processor.config.declare import CONFIG_ENV, option, options_of
from processor.demo.synthetic import SyntheticInput
from processor.errors import BadRecord, ConfigError, KafkaAccessError

__all__ = [
    "CONFIG_ENV",
    "KafkaSources",
    "ProduceStats",
    "SyntheticInput",
    "add_produce_arguments",
    "add_tail_arguments",
    "kafka_options_from",
    "main_produce",
    "main_tail",
    "produce",
    "tail",
]

log = logging.getLogger(__name__)

_DLQ_PREFIX = "lstm-stream."


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be ints like 32 or 84,84,1: {text!r}"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"shape must be positive ints, got {text!r}")
    return shape


@dataclass(frozen=True)
class KafkaSources:
    """The Kafka client options of ``produce`` and ``tail``, declared as ``run`` declares
    its own (same flag, variables and TOML table; see :mod:`processor.config.declare`)."""

    # option() returns a dataclasses.field; for a map, one with default_factory=dict.
    kafka: dict[str, Any] = option(  # noqa: RUF009
        {},
        "pass an option to the aiokafka client (repeatable), as run's --kafka-option, e.g. "
        "security_protocol=SASL_SSL, sasl_mechanism=SCRAM-SHA-512, sasl_plain_username=U, "
        "sasl_plain_password=P, ssl_cafile=PATH. Secret values are never logged",
        flag="--kafka-option",
    )


def _add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """``--kafka-option`` (layered: its help names the variables and the table, never their
    values) and ``--config``."""
    config.add_arguments(parser, options_of(KafkaSources), layered=True)
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,  # the help states the default itself
        metavar="FILE",
        help="TOML file whose [kafka] table (sub-tables [kafka.consumer], [kafka.producer]) "
        "holds Kafka client options; run's file works, its other keys are ignored "
        f"[env {CONFIG_ENV}] (default: none)",
    )


def kafka_options_from(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Kafka client options of a ``produce``/``tail`` command line: ``--kafka-option``
    flags over ``LSTM_STREAM_KAFKA_<KEY>`` variables (``environ``, default ``os.environ``)
    over the ``[kafka]`` table of the ``--config``/``LSTM_STREAM_CONFIG`` file, merged key by
    key (:func:`processor.config.declare.resolve`, as ``run`` merges them). Only that table of the
    file is read. :class:`ConfigError` for an unreadable file, a ``kafka`` key that is not a
    table, or a flag without ``=``."""
    env = os.environ if environ is None else environ
    path = getattr(args, "config", None) or env.get(CONFIG_ENV) or None
    table: dict[str, Any] = {}
    if path:
        data = config.load_toml(path)
        if "kafka" in data:
            table["kafka"] = data["kafka"]
    given = {"kafka": args.kafka} if getattr(args, "kafka", None) else {}
    values = config.resolve(
        options_of(KafkaSources), given, env, table, table_name=f"config file {path!r}"
    )
    return dict(values.get("kafka", {}))


# ---- produce ----------------------------------------------------------------------------


@dataclass
class ProduceStats:
    records: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")


async def produce(
    bootstrap_servers: str,
    topic: str,
    *,
    streams: int,
    shape: tuple[int, ...],
    kind: str = "sensor",
    count: int | None = None,
    duration: float | None = None,
    rate: float = 0.0,
    seed: int = 0,
    start_seq: int = 0,
    stream_prefix: str = "s",
    with_ts: bool = True,
    kafka_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    encoding: str = "raw",
    quality: int = 90,
) -> ProduceStats:
    """Produce synthetic input records; stops after ``count`` records or ``duration``
    seconds (whichever is given; both: the first reached). ``rate`` records/s in total
    (0 = as fast as possible). Records go step by step: every stream's seq k before any
    stream's seq k+1. Returns when every record is acknowledged.

    ``encoding`` ``jpeg`` or ``png`` (frames only) writes each frame's ``x`` as that image
    (JPEG at ``quality``) with the record's ``encoding`` field; ``raw`` writes tensor bytes.
    ``ConfigError`` for an encoding other kinds or shapes cannot take or invalid Kafka
    options; :class:`KafkaAccessError` when the producer cannot bootstrap (unreachable,
    authentication or TLS verification failed)."""
    from aiokafka import AIOKafkaProducer

    from processor.kafka.io.clients import client_kwargs, start_client
    from processor.kafka.io.output import OutputWriter

    if count is None and duration is None:
        raise ConfigError("give a record count or a duration")
    if encoding not in ENCODINGS:
        raise ConfigError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if encoding != "raw" and (kind != "frames" or image_size(shape) is None):
        raise ConfigError(
            f"--encoding {encoding} needs --kind frames and an image shape (H,W or H,W,C), "
            f"got {kind} {list(shape)}"
        )
    if encoding == "jpeg" and not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be 1..100, got {quality}")
    _, producer_kw = client_kwargs(bootstrap_servers, "unused", kafka_options or {})
    producer = AIOKafkaProducer(**producer_kw)
    await start_client(producer, producer_kw, kafka_options)
    gen = SyntheticInput(kind, shape, streams, seed)
    names = [f"{stream_prefix}{i}" for i in range(streams)]
    writer = OutputWriter(producer, topic)
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    t0 = time.monotonic()
    seq = start_seq
    try:
        while True:
            elapsed = time.monotonic() - t0
            if duration is not None and elapsed >= duration:
                break
            if count is not None and sent >= count:
                break
            xs = gen.step(seq)
            n = streams if count is None else min(streams, count - sent)
            ts = int(time.time() * 1000) if with_ts else None
            if encoding == "raw":
                pairs = [(names[i], encode_input(names[i], seq, xs[i], ts=ts)) for i in range(n)]
            else:
                pairs = [
                    (
                        names[i],
                        encode_image_input(names[i], seq, xs[i], encoding, quality=quality, ts=ts),
                    )
                    for i in range(n)
                ]
            pending += await writer.write(pairs)
            sent += n
            seq += 1
            if len(pending) > 256:  # bound what is outstanding
                await asyncio.gather(*pending)
                pending.clear()
            if progress is not None:
                progress(sent)
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return ProduceStats(sent, time.monotonic() - t0)


def add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lstm-stream produce`` (each help states its default)."""
    parser.add_argument(
        "--bootstrap-servers", default="localhost:9092", help="Kafka bootstrap servers"
    )
    parser.add_argument("--topic", required=True, help="input topic to write to (required)")
    parser.add_argument("--streams", type=int, default=100, help="number of streams")
    parser.add_argument(
        "--kind",
        choices=("sensor", "frames"),
        default="sensor",
        help="sensor: float32 vectors (noisy sines); frames: uint8 images",
    )
    parser.add_argument(
        "--shape",
        type=_parse_shape,
        default=None,
        help="per-step shape, e.g. 32 or 84,84,1 (default: from --model, else "
        "32 for sensor and 84,84,1 for frames)",
    )
    parser.add_argument(
        "--model", default=None, help="take the per-step shape from this model's input"
    )
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="raw",
        help="frames only: jpeg or png writes each x as that compressed image (the record's "
        "encoding field); raw (default) writes tensor bytes",
    )
    parser.add_argument(
        "--quality",
        type=int,
        default=90,
        help="JPEG quality 1..100 for --encoding jpeg (default 90)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="records per second in total; 0 = as fast as possible",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds to produce for (ignored when --count is given)",
    )
    parser.add_argument(
        "--count", type=int, default=None, help="total records to produce (default: use --duration)"
    )
    parser.add_argument("--start-seq", type=int, default=0, help="first seq of every stream")
    parser.add_argument("--stream-prefix", default="s", help="stream ids are PREFIX0..PREFIXn-1")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    parser.add_argument(
        "--no-ts",
        action="store_true",
        default=False,
        help="omit the ts field (latency then uses the Kafka timestamp)",
    )
    _add_kafka_arguments(parser)


def main_produce(args: argparse.Namespace) -> int:
    """``lstm-stream produce``; prints a summary line; returns the exit code (module doc)."""
    shape: tuple[int, ...] | None = args.shape
    kind: str = args.kind
    try:
        kafka_options = kafka_options_from(args)
        if shape is None and args.model:
            from processor.model.protocol import load_step_model

            model = load_step_model(args.model)
            shape = tuple(model.input_shape)
            if np.dtype(model.input_dtype) == np.uint8:
                kind = "frames"
        if shape is None:
            shape = (32,) if kind == "sensor" else (84, 84, 1)
        stats = asyncio.run(
            produce(
                args.bootstrap_servers,
                args.topic,
                streams=args.streams,
                shape=shape,
                kind=kind,
                count=args.count,
                duration=None if args.count is not None else args.duration,
                rate=args.rate,
                seed=args.seed,
                start_seq=args.start_seq,
                stream_prefix=args.stream_prefix,
                with_ts=not args.no_ts,
                kafka_options=kafka_options,
                encoding=args.encoding,
                quality=args.quality,
            )
        )
    except ConfigError as exc:
        print(f"lstm-stream produce: {exc}", file=sys.stderr)
        return 2
    except KafkaAccessError as exc:
        print(f"lstm-stream produce: {exc}", file=sys.stderr)
        return KafkaAccessError.exit_code
    print(
        f"produced {stats.records} records ({kind}, shape {list(shape)}, {args.streams} "
        f"streams) to {args.topic} in {stats.seconds:.2f}s = {stats.rate:.0f} records/s"
    )
    return 0


# ---- tail -------------------------------------------------------------------------------


def describe_record(record: Any, kind: str = "auto") -> dict[str, Any]:
    """A printable dict of one consumed record: an output's fields, or a dead letter's
    reason, detail, source and original size. ``kind`` is output, dlq or auto (dead
    letters are recognised by their ``lstm-stream.reason`` header)."""
    headers = {k: v for k, v in (record.headers or ())}
    is_dlq = kind == "dlq" or (kind == "auto" and f"{_DLQ_PREFIX}reason" in headers)
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
            kind="dlq",
            reason=h("reason"),
            detail=h("detail"),
            source=f"{h('source.topic')}/{h('source.partition')}@{h('source.offset')}",
            value_bytes=len(record.value or b""),
        )
        return base
    try:
        out = decode_output(record.value or b"")
    except BadRecord as exc:
        base.update(kind="undecodable", reason=exc.reason, detail=exc.detail)
        return base
    y = out["y"]
    base.update(
        kind="output",
        stream=out["stream"],
        seq=out["seq"],
        shape=out["shape"],
        y=[round(float(v), 6) for v in np.ravel(y)[:16]],
        ts=out.get("ts"),
    )
    if y.size > 16:
        base["y_truncated"] = int(y.size)
    return base


async def tail(
    bootstrap_servers: str,
    topic: str,
    *,
    max_records: int | None = None,
    from_beginning: bool = False,
    idle_timeout: float | None = None,
    kind: str = "auto",
    out: Callable[[dict[str, Any]], None] | None = None,
    kafka_options: dict[str, Any] | None = None,
) -> int:
    """Print (or pass to ``out``) decoded records of every partition of ``topic``; stops
    after ``max_records``, or after ``idle_timeout`` seconds without a record. Returns how
    many records were seen. No consumer group: nothing is committed. :class:`ConfigError`
    for invalid Kafka options or a missing topic; :class:`KafkaAccessError` when the consumer
    cannot bootstrap."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from processor.kafka.io.clients import client_kwargs, start_client

    consumer_kw, _ = client_kwargs(bootstrap_servers, "unused", kafka_options or {})
    consumer_kw["group_id"] = None
    consumer_kw["auto_offset_reset"] = "earliest" if from_beginning else "latest"
    consumer = AIOKafkaConsumer(**consumer_kw)
    await start_client(consumer, consumer_kw, kafka_options)
    seen = 0
    emit = out or (lambda d: print(json.dumps(d), flush=True))
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()  # no public refresh API
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            raise ConfigError(f"topic {topic!r} does not exist")
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


def add_tail_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lstm-stream tail`` (each help states its default)."""
    parser.add_argument(
        "--bootstrap-servers", default="localhost:9092", help="Kafka bootstrap servers"
    )
    parser.add_argument(
        "--topic", required=True, help="output or dead-letter topic to read (required)"
    )
    parser.add_argument(
        "--kind",
        choices=("auto", "output", "dlq"),
        default="auto",
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
        help="stop after this many seconds without a record (default: never)",
    )
    _add_kafka_arguments(parser)


def main_tail(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """``lstm-stream tail``: one JSON object per record on stdout; returns the exit code
    (module doc)."""
    stream = stdout or sys.stdout

    def emit(d: dict[str, Any]) -> None:
        stream.write(json.dumps(d) + "\n")
        stream.flush()

    try:
        kafka_options = kafka_options_from(args)
        asyncio.run(
            tail(
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
    except ConfigError as exc:
        print(f"lstm-stream tail: {exc}", file=sys.stderr)
        return 2
    except KafkaAccessError as exc:
        print(f"lstm-stream tail: {exc}", file=sys.stderr)
        return KafkaAccessError.exit_code
    except KeyboardInterrupt:
        return 0
    return 0
