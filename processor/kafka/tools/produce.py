"""``lstm-stream produce``: a load generator writing synthetic input records to Kafka.

N synthetic streams -- float32 sensor vectors (a noisy sine per stream) or uint8 frames (a
moving bright bar over noise, :class:`processor.demo.synthetic.SyntheticInput`) -- written in
the input wire format (:func:`processor.codec.encode_input`) with key = stream id and
``seq`` increasing per stream, at a target rate for a duration or a count.

A topic that does not exist yet is created first
(:func:`processor.kafka.io.topics.prepare_topics`, one INFO line naming it), with
``--partitions`` partitions; an existing one is used as it is. Sending to a missing topic
instead would have the broker auto-create it with its defaults, and aiokafka log an ERROR
while it does.

:func:`produce` is the library form (tests use it); :func:`add_arguments`/:func:`main` are
the command. The Kafka client flags come from :mod:`processor.kafka.tools.flags`. Exit
codes: 0 done, 1 the topic cannot be created or read, 2 invalid settings, 3 Kafka
unreachable or refusing the TLS/SASL settings (one error line, see
:class:`~processor.errors.KafkaAccessError`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from processor.codec import ENCODINGS, encode_image_input, encode_input
from processor.codec.images import image_size
from processor.demo.synthetic import SyntheticInput
from processor.errors import ConfigError, LstmStreamError
from processor.kafka.tools.client_logs import quiet_client_logs
from processor.kafka.tools.flags import add_kafka_arguments, kafka_options_from, report_failure

if TYPE_CHECKING:
    from processor.model import StepModel

__all__ = ["ProduceStats", "add_arguments", "main", "produce"]


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


@dataclass
class ProduceStats:
    """What :func:`produce` wrote: ``records`` acknowledged in ``seconds``."""

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
    partitions: int = 1,
) -> ProduceStats:
    """Produce synthetic input records; stops after ``count`` records or ``duration``
    seconds (whichever is given; both: the first reached). ``rate`` records/s in total
    (0 = as fast as possible). Records go step by step: every stream's seq k before any
    stream's seq k+1. Returns when every record is acknowledged.

    ``encoding`` ``jpeg`` or ``png`` (frames only) writes each frame's ``x`` as that image
    (JPEG at ``quality``) with the record's ``encoding`` field; ``raw`` writes tensor bytes.

    A missing ``topic`` is created with ``partitions`` partitions (and the broker's default
    replication factor) before the first record; an existing one is used as it is.

    ``ConfigError`` for an encoding other kinds or shapes cannot take, a partition count
    below 1 or invalid Kafka options; :class:`KafkaAccessError` when the producer cannot
    bootstrap (unreachable, authentication or TLS verification failed);
    :class:`~processor.kafka.io.metadata.TopicSetupError` when the topic cannot be created
    or its metadata read."""
    from aiokafka import AIOKafkaProducer

    from processor.kafka.io.bootstrap import start_client
    from processor.kafka.io.clients import admin_kwargs, client_kwargs
    from processor.kafka.io.output import OutputWriter
    from processor.kafka.io.topics import prepare_topics_with

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
    if partitions < 1:
        raise ConfigError(f"the topic's partition count must be >= 1, got {partitions}")
    _, producer_kw = client_kwargs(bootstrap_servers, "unused", kafka_options or {})
    producer = AIOKafkaProducer(**producer_kw)
    # Started first: a wrong address or password is reported as one explained line.
    await start_client(producer, producer_kw, kafka_options)
    gen = SyntheticInput(kind, shape, streams, seed)
    names = [f"{stream_prefix}{i}" for i in range(streams)]
    writer = OutputWriter(producer, topic)
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        await prepare_topics_with(
            admin_kwargs(producer_kw),
            input_topics=(),
            output_topics=(topic,),
            partitions=partitions,
        )
        t0 = time.monotonic()
        seq = start_seq
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="partitions of the topic if it does not exist yet (produce creates it; an "
        "existing topic is used as it is)",
    )
    add_kafka_arguments(parser)


def _load_step_model(path: str) -> StepModel:
    from processor.model import load_step_model  # TensorFlow: only for --model

    return load_step_model(path)


def main(
    args: argparse.Namespace,
    *,
    run: Callable[..., Coroutine[Any, Any, ProduceStats]] = produce,
    load_model: Callable[[str], StepModel] = _load_step_model,
) -> int:
    """``lstm-stream produce``; prints a summary line; returns the exit code (module doc).
    The Kafka client libraries log WARNING and above only (:mod:`.client_logs`).

    ``run`` is called as :func:`produce` is, ``load_model`` with ``--model``'s path (for the
    per-step shape); both are there for tests that stand in for Kafka or TensorFlow."""
    shape: tuple[int, ...] | None = args.shape
    kind: str = args.kind
    try:
        kafka_options = kafka_options_from(args)
        if shape is None and args.model:
            model = load_model(args.model)
            shape = tuple(model.input_shape)
            if np.dtype(model.input_dtype) == np.uint8:
                kind = "frames"
        if shape is None:
            shape = (32,) if kind == "sensor" else (84, 84, 1)
        with quiet_client_logs(show=logging.getLogger().isEnabledFor(logging.DEBUG)):
            stats = asyncio.run(
                run(
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
                    partitions=args.partitions,
                )
            )
    except LstmStreamError as exc:
        return report_failure("produce", exc)
    print(
        f"produced {stats.records} records ({kind}, shape {list(shape)}, {args.streams} "
        f"streams) to {args.topic} in {stats.seconds:.2f}s = {stats.rate:.0f} records/s"
    )
    return 0
