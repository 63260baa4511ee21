"""End-to-end throughput of the Kafka runtime (``lstm-stream run``) through a real broker,
next to the engine alone on the same model in the same process.

Method: produce N synthetic records of S streams (step-major: every stream's seq k before any
stream's seq k+1) to a fresh input topic first, then start the processor in this process
(engine built and warmed up, group joined) and time from its first fetched record until
every output is visible to a ``read_committed`` reader of the output topic: at-least-once,
the broker's acknowledgement of the last output; exactly-once, the commit of the last
transaction (the group's committed offsets at the end of the input and no transaction left
open on the output topic), which comes up to one commit interval after the last
acknowledgement. The engine-only figure runs the same number of pre-made records through
``Engine.process`` in chunks of ``max_batch`` (no Kafka, no decoding or encoding).

``lstm-stream bench --bootstrap-servers HOST:PORT`` runs both as its Kafka section
(:func:`processor.bench.sweeps.kafka_end_to_end`); the module also runs on its own::

    python -m processor.bench.kafka --bootstrap-servers 127.0.0.1:19092

which prints one JSON object. With ``--repeat N`` the two measurements alternate N times and
the reported ratio is the median of the N per-pair ratios (the machine is shared: a pair's two
figures are taken close together).

The records are made here from the wire-format encoder (:func:`processor.codec.encode_input`)
and written with the runtime's own :class:`~processor.kafka.io.output.OutputWriter` and producer
settings, so the benchmark depends on the library, not on any command of the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
from aiokafka import TopicPartition

from processor.config.engine_options import EngineOptions
from processor.engine.build import build_engine
from processor.engine.threads import configure_threads
from processor.records import Record

__all__ = [
    "bench_end_to_end",
    "bench_engine_only",
    "main",
    "make_lstm_model",
    "module_parser",
    "produce_records",
    "synthetic_steps",
]

log = logging.getLogger(__name__)

#: How often the end-to-end timer looks at the processor's counters. Reading them collects
#: the runtime's metrics on the event loop the processor also runs on, so polling much faster
#: would take time from the thing measured; 10 ms is < 0.1% of a run of several seconds.
_POLL_S: Final = 0.01

#: Outstanding produce batches before the producer waits for acknowledgements (bounds memory).
_MAX_PENDING_BATCHES: Final = 256


def make_lstm_model(path: str, *, features: int = 32, units: int = 256, layers: int = 2,
                    head: int = 8, seed: int = 0) -> str:  # fmt: skip
    """Save a random-weight LSTM stack (the benchmark's 2x256-on-32 by default) to ``path``
    (a ``.keras`` file) and return ``path``."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, features))
    h = inp
    for _ in range(layers):
        h = keras.layers.LSTM(units, return_sequences=True)(h)
    keras.Model(inp, keras.layers.Dense(head)(h)).save(path)
    return path


def synthetic_steps(
    streams: int, shape: tuple[int, ...], dtype: str, *, seed: int = 1
) -> Iterator[np.ndarray]:
    """Endless steps of synthetic input, one ``[streams, *shape]`` array of ``dtype`` per
    step: standard-normal values for float dtypes, uniform over the range for integer ones
    (frames). Deterministic for a seed; the values only need to be valid model input."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    while True:
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            yield rng.integers(info.min, info.max, (streams, *shape), dtype=dt, endpoint=True)
        else:
            yield rng.standard_normal((streams, *shape), dtype=np.float32).astype(dt, copy=False)


async def produce_records(
    bootstrap: str,
    topic: str,
    *,
    records: int,
    streams: int,
    shape: tuple[int, ...],
    dtype: str = "float32",
    stream_prefix: str = "s",
    encoding: str = "raw",
) -> tuple[float, int]:
    """Write ``records`` input records of ``streams`` streams (ids ``{stream_prefix}0..``,
    key = stream id, ``seq`` from 0, step-major, ``ts`` = now) to ``topic``, as fast as the
    broker takes them. Returns the produce rate in records/s once every record is
    acknowledged, and the records' bytes (values); raises what aiokafka raises when a send
    fails.

    ``encoding`` ``jpeg`` or ``png`` sends uint8 image steps as camera frames
    (:func:`processor.codec.images.encode_image_input`); their content is that of ``produce
    --kind frames`` (a moving bar over low noise), which compresses like a camera image
    rather than like uniform noise.

    Uses the runtime's producer settings (:func:`processor.kafka.io.clients.client_kwargs`) and
    its batching writer, so the records reach the broker in the same way outputs do."""
    from aiokafka import AIOKafkaProducer

    from processor.codec import encode_input
    from processor.codec.images import encode_image_input
    from processor.demo.synthetic import SyntheticInput
    from processor.kafka.io.clients import client_kwargs
    from processor.kafka.io.output import OutputWriter

    _, producer_kw = client_kwargs(bootstrap, "unused", {})
    producer = AIOKafkaProducer(**producer_kw)
    await producer.start()
    names = [f"{stream_prefix}{i}" for i in range(streams)]
    writer = OutputWriter(producer, topic)
    pending: list[asyncio.Future[Any]] = []
    sent = size = 0
    t0 = time.perf_counter()
    steps: Iterator[np.ndarray] = synthetic_steps(streams, shape, dtype)
    if encoding != "raw":
        frames = SyntheticInput("frames", shape, streams)
        steps = (frames.step(seq) for seq in itertools.count())

    def encode(stream: str, seq: int, x: np.ndarray, ts: int) -> bytes:
        if encoding == "raw":
            return encode_input(stream, seq, x, ts=ts)
        return encode_image_input(stream, seq, x, encoding, ts=ts)

    try:
        for seq, xs in enumerate(steps):
            if sent >= records:
                break
            n = min(streams, records - sent)
            ts = int(time.time() * 1000)
            batch = [(names[i], encode(names[i], seq, xs[i], ts)) for i in range(n)]
            size += sum(len(v) for _, v in batch)
            pending += await writer.write(batch)
            sent += n
            if len(pending) > _MAX_PENDING_BATCHES:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = time.perf_counter() - t0
    return (sent / seconds if seconds > 0 else float("inf")), size


def bench_engine_only(options: EngineOptions, *, records: int, streams: int) -> dict[str, Any]:
    """Records/s of ``Engine.process`` alone over ``records`` pre-made records of
    ``streams`` streams, step-major, in chunks of ``options.max_batch`` (engine built from
    ``options`` and warmed up first, outside the timed region). Returns ``records``,
    ``seconds`` and ``records_per_s``."""
    engine = build_engine(options)
    engine.warmup()
    shape = tuple(engine.model.input_shape)
    names = [f"s{i}" for i in range(streams)]
    recs: list[Record] = []
    steps = synthetic_steps(streams, shape, engine.model.input_dtype)
    for t in range(-(-records // streams)):
        xs = next(steps)
        recs.extend(Record(names[i], t, xs[i]) for i in range(streams))
    recs = recs[:records]
    b = options.max_batch
    t0 = time.perf_counter()
    for start in range(0, len(recs), b):
        engine.process(recs[start : start + b])
    seconds = time.perf_counter() - t0
    return {"records": len(recs), "seconds": seconds, "records_per_s": len(recs) / seconds}


class BenchTopics(NamedTuple):
    """The names of one bench run's topics and group (see :func:`bench_topics`)."""

    source: str
    out: str
    dlq: str
    group: str
    state: str  # the group's default state topic, made by the processor when it is durable


@contextlib.asynccontextmanager
async def bench_topics(
    bootstrap: str, prefix: str, partitions: int, *, with_state: bool = True
) -> AsyncIterator[BenchTopics]:
    """Fresh input, output and dead-letter topics named ``<prefix>-in-<tag>``,
    ``<prefix>-out-<tag>`` and ``<prefix>-out-<tag>-dlq`` (a random tag; ``partitions`` each,
    created and every partition with a leader before this yields), the group
    ``<prefix>-<tag>`` and its default state topic's name. On exit they are deleted, the
    state topic too when ``with_state`` (the processor created it)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from processor.kafka.io.topics import prepare_topics

    tag = uuid.uuid4().hex[:8]
    source, out, group = f"{prefix}-in-{tag}", f"{prefix}-out-{tag}", f"{prefix}-{tag}"
    topics = BenchTopics(source, out, f"{out}-dlq", group, f"{group}-{source}-state")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Returns once every partition of the new topics has a leader.
        await prepare_topics(
            admin,
            input_topics=(source,),
            output_topics=(out, topics.dlq),
            partitions=partitions,
            create_inputs=True,
        )
        yield topics
    finally:
        try:
            await admin.delete_topics(
                [source, out, topics.dlq, *([topics.state] if with_state else [])]
            )
        finally:
            await admin.close()


async def bench_end_to_end(
    bootstrap: str,
    options: EngineOptions,
    *,
    records: int,
    streams: int,
    partitions: int = 4,
    max_delay_ms: float = 5.0,
    queue_max_records: int = 16_384,
    commit_interval_ms: int = 1000,
    durable: bool = True,
    processing_guarantee: str = "at-least-once",
    encoding: str = "raw",
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Produce ``records`` first, then time the processor draining them (see the module
    docstring). Input, output, dead-letter and (``durable``) state topics are fresh (random
    names, ``partitions`` partitions each), created before producing and deleted afterwards.
    ``durable`` False runs without a state topic (``--state-topic none``);
    ``processing_guarantee`` is the runtime's ``--processing-guarantee`` (``"exactly-once"``
    needs ``durable``; its transaction timeout is
    :func:`processor.bench.eos.transaction_timeout_for` the interval).

    The timer runs from the processor's first fetched record until every output is visible
    to a ``read_committed`` reader: at-least-once, until the last output is acknowledged;
    exactly-once, further until the last transaction has committed
    (:func:`processor.bench.eos.outputs_committed` over the group's committed offsets and
    the output topic's last stable offsets, polled every 10 ms), so the wait for the end of
    the last commit interval is inside it.

    Returns ``records``, ``seconds``, ``records_per_s`` (the end-to-end rate),
    ``ack_seconds`` (first fetch to the last output acknowledged; ``seconds`` minus it is
    the wait for the last commit), ``processing_guarantee``, ``commit_interval_ms``,
    ``produce_records_per_s``, ``batches``, ``mean_batch``, ``pauses``,
    ``engine_busy_fraction``, ``partitions``, ``output_bytes_per_s`` and, durable,
    ``state_bytes_per_s``, ``state_records``, ``checkpoints`` and
    ``checkpoint_seconds_mean``; exactly-once also ``transactions_committed``,
    ``transactions_aborted``, ``transaction_seconds_mean`` (ending one partition's
    transaction) and ``transaction_seconds_share`` (their sum over ``seconds``);
    ``encoding`` (raw, jpeg, png: see :func:`produce_records`) and ``input_bytes`` (the
    input topic's size) describe the records. Raises
    :class:`TimeoutError` when the processor has not written and committed every output
    within ``timeout_s`` seconds of starting, and what the processor raises if it fails."""
    from prometheus_client import CollectorRegistry

    from processor.bench.eos import EXACTLY_ONCE, outputs_committed, transaction_timeout_for
    from processor.kafka.runtime import Processor
    from processor.kafka.settings import Settings
    from processor.model.protocol import load_step_model

    if options.model is None:
        raise ValueError("bench_end_to_end needs options.model")
    exactly_once = processing_guarantee == EXACTLY_ONCE
    async with bench_topics(bootstrap, "bench", partitions, with_state=durable) as topics:
        source, out, dlq, group, _ = topics
        model = load_step_model(options.model)
        produced, input_bytes = await produce_records(
            bootstrap,
            source,
            records=records,
            streams=streams,
            shape=tuple(model.input_shape),
            dtype=model.input_dtype,
            encoding=encoding,
        )
        settings = Settings(
            bootstrap_servers=bootstrap,
            input_topics=(source,),
            output_topic=out,
            dlq_topic=dlq,
            group_id=group,
            engine=options,
            max_delay_ms=max_delay_ms,
            queue_max_records=queue_max_records,
            commit_interval_ms=commit_interval_ms,
            state_topic="" if durable else "none",
            processing_guarantee=processing_guarantee,
            transaction_timeout_ms=transaction_timeout_for(commit_interval_ms),
        )
        registry = CollectorRegistry()
        proc = Processor(settings, registry=registry, metrics_server=False)
        stop = asyncio.Event()
        task = asyncio.create_task(proc.run(stop))
        deadline = time.monotonic() + timeout_s

        async def until(done: Callable[[], bool | Awaitable[bool]], what: str) -> None:
            while not await _truth(done()):
                if task.done():
                    await task  # the processor stopped early: raise its error
                    raise RuntimeError(f"the processor stopped before {what}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
                await asyncio.sleep(_POLL_S)

        visible = _Visibility(bootstrap, group, source, out, partitions) if exactly_once else None
        try:
            if visible is not None:  # its clients connect outside the timed region
                await visible.start()
            await until(lambda: proc.stats.records_in > 0, "first record fetched")
            t0 = time.perf_counter()
            await until(lambda: proc.stats.outputs >= records, f"{records} outputs written")
            ack_seconds = time.perf_counter() - t0
            if visible is not None:
                await until(lambda: visible.check(outputs_committed), "last transaction committed")
            seconds = time.perf_counter() - t0
        finally:
            stop.set()
            try:
                await task
            finally:
                if visible is not None:
                    await visible.close()
        stats = proc.stats
        busy = registry.get_sample_value("lstm_stream_step_seconds_sum") or 0.0

        def total(name: str) -> float:
            return registry.get_sample_value(name) or 0.0

        extra: dict[str, Any] = {}
        if durable:
            checkpoints = total("lstm_stream_checkpoint_seconds_count")
            extra = {
                "state_bytes_per_s": total("lstm_stream_state_bytes_total") / seconds,
                "state_records": total("lstm_stream_state_records_total"),
                "checkpoints": checkpoints,
                "checkpoint_seconds_mean": (
                    total("lstm_stream_checkpoint_seconds_sum") / checkpoints
                    if checkpoints
                    else None
                ),
            }
        if exactly_once:
            ended = total("lstm_stream_transaction_seconds_count")
            tx_seconds = total("lstm_stream_transaction_seconds_sum")
            extra |= {
                "transactions_committed": _sample(
                    registry, "lstm_stream_transactions_total", result="committed"
                ),
                "transactions_aborted": _sample(
                    registry, "lstm_stream_transactions_total", result="aborted"
                ),
                "transaction_seconds_mean": tx_seconds / ended if ended else None,
                "transaction_seconds_share": tx_seconds / seconds,
            }
        return {
            **extra,
            "output_bytes_per_s": await _topic_bytes(bootstrap, out, partitions) / seconds,
            "encoding": encoding,
            "input_bytes": input_bytes,
            "records": records,
            "seconds": seconds,
            "records_per_s": records / seconds,
            "ack_seconds": ack_seconds,
            "processing_guarantee": processing_guarantee,
            "commit_interval_ms": commit_interval_ms,
            "produce_records_per_s": produced,
            "batches": stats.batches,
            "mean_batch": stats.records_in / max(1, stats.batches),
            "pauses": stats.pauses,
            # Share of the timed window the engine thread spent in Engine.process: near 1
            # means compute-bound, well below 1 means the Kafka/event-loop side limits.
            "engine_busy_fraction": busy / seconds,
            "partitions": partitions,
        }


async def _truth(value: bool | Awaitable[bool]) -> bool:
    """``value``, awaited first when it is awaitable (a check that asks the broker)."""
    return bool(await value) if isinstance(value, Awaitable) else value


def _sample(registry: Any, name: str, **labels: str) -> float:
    """A labelled sample of ``registry``, 0 when the runtime does not export it."""
    return float(registry.get_sample_value(name, labels) or 0.0)


class _Visibility:
    """Whether every output of the drained input is visible to a ``read_committed`` reader
    (exactly-once runs, see :func:`processor.bench.eos.outputs_committed`): the group's
    committed offsets against the input's end offsets, and the output topic's last stable
    offsets (a ``read_committed`` consumer's end offsets) against its end offsets. The input
    is complete before the processor starts, so its end offsets are read once."""

    def __init__(self, bootstrap: str, group: str, source: str, out: str, partitions: int):
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self._group = group
        self._inputs = [TopicPartition(source, p) for p in range(partitions)]
        self._outputs = [TopicPartition(out, p) for p in range(partitions)]
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._stable = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
        )
        self._latest = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._input_ends: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await self._admin.start()
        await self._stable.start()
        await self._latest.start()
        self._input_ends = await self._latest.end_offsets(self._inputs)

    async def check(self, committed_through: Any) -> bool:
        """``committed_through(committed, input_ends, output_stable, output_ends)`` on the
        broker's figures now."""
        offsets = await self._admin.list_consumer_group_offsets(
            self._group, partitions=self._inputs
        )
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        if any(committed.get(tp, -1) < end for tp, end in self._input_ends.items()):
            return False  # skip the two other requests while the last commit is pending
        # The end offsets first: a stable offset read after them cannot claim a marker that
        # the end offset does not include yet.
        ends = await self._latest.end_offsets(self._outputs)
        stable = await self._stable.end_offsets(self._outputs)
        return bool(committed_through(committed, self._input_ends, stable, ends))

    async def close(self) -> None:
        for close in (self._stable.stop, self._latest.stop, self._admin.close):
            try:
                await close()
            except Exception:  # closing after a failed run: the run's own error matters
                log.debug("closing a visibility client failed", exc_info=True)


async def _topic_bytes(bootstrap: str, topic: str, partitions: int) -> int:
    """Key and value bytes of every record in ``topic`` (``partitions`` partitions), read
    once from the beginning."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        size = 0
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return size
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                size += sum(len(r.key or b"") + len(r.value or b"") for r in records)
    finally:
        await consumer.stop()


def module_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments every Kafka benchmark module's own command line shares: broker, model,
    records, streams, TensorFlow threads."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap-servers", required=True, help="a broker to use")
    parser.add_argument(
        "--model", default=None, help="model file (default: a random 2x256 LSTM on 32 features)"
    )
    parser.add_argument("--records", type=int, default=200_000, help="records (default 200000)")
    parser.add_argument("--streams", type=int, default=2048, help="streams (default 2048)")
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m processor.bench.kafka``: prints one JSON object, returns 0."""
    parser = module_parser("python -m processor.bench.kafka", __doc__)
    parser.add_argument("--partitions", type=int, default=4, help="input partitions (default 4)")
    parser.add_argument("--max-batch", type=int, default=1024, help="max batch (default 1024)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="engine-only/end-to-end pairs to run back to back (default 1); the ratio is "
        "taken per pair and the median reported, so load changes between pairs cancel out",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Before anything runs TensorFlow (building the default model does): the pools are fixed
    # at TensorFlow's first use, and --threads would otherwise be silently ignored.
    configure_threads(args.threads, 1)
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_lstm_model(str(Path(tmp) / "lstm2x256.keras"))
        options = EngineOptions(
            model=model,
            max_batch=args.max_batch,
            cache_capacity=max(4096, args.streams * 2),
            threads=args.threads,
        )
        for _ in range(max(1, args.repeat)):
            engine = bench_engine_only(options, records=args.records, streams=args.streams)
            e2e = asyncio.run(
                bench_end_to_end(
                    args.bootstrap_servers,
                    options,
                    records=args.records,
                    streams=args.streams,
                    partitions=args.partitions,
                )
            )
            ratio = e2e["records_per_s"] / engine["records_per_s"]
            pairs.append({"engine_only": engine, "end_to_end": e2e, "ratio": ratio})
    result: dict[str, Any] = {
        "model": args.model or "lstm 2x256 on 32 features, Dense(8) head (random weights)",
        "streams": args.streams,
        "max_batch": args.max_batch,
        "threads": args.threads,
        "engine_only": pairs[-1]["engine_only"],
        "end_to_end": pairs[-1]["end_to_end"],
        "end_to_end_over_engine": statistics.median(p["ratio"] for p in pairs),
    }
    if len(pairs) > 1:
        result["pairs"] = [
            {
                "engine_only_records_per_s": p["engine_only"]["records_per_s"],
                "end_to_end_records_per_s": p["end_to_end"]["records_per_s"],
                "ratio": p["ratio"],
            }
            for p in pairs
        ]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
