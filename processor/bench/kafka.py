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
(:func:`processor.bench.kafka_sections.kafka_end_to_end`); the module also runs on its own::

    python -m processor.bench.kafka --bootstrap-servers 127.0.0.1:19092

which prints one JSON object. With ``--repeat N`` the two measurements alternate N times and
the reported ratio is the median of the N per-pair ratios (the machine is shared: a pair's two
figures are taken close together).

The input is produced with :func:`processor.bench.kafka_setup.produce_records`, into the
fresh topics of :func:`processor.bench.kafka_setup.bench_topics`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from aiokafka import TopicPartition

from processor.bench.guarantees import EXACTLY_ONCE, outputs_committed, transaction_timeout_for
from processor.bench.kafka_setup import (
    bench_topics,
    make_lstm_model,
    module_parser,
    produce_records,
    synthetic_steps,
)
from processor.config.engine_options import EngineOptions
from processor.engine.build import build_engine
from processor.engine.threads import configure_threads
from processor.records import Record

__all__ = ["bench_end_to_end", "bench_engine_only", "main"]

log = logging.getLogger(__name__)

#: How often the end-to-end timer looks at the processor's counters. Reading them collects
#: the runtime's metrics on the event loop the processor also runs on, so polling much faster
#: would take time from the thing measured; 10 ms is < 0.1% of a run of several seconds.
_POLL_S: Final = 0.01


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
    :func:`processor.bench.guarantees.transaction_timeout_for` the interval).

    The timer runs from the processor's first fetched record until every output is visible
    to a ``read_committed`` reader: at-least-once, until the last output is acknowledged;
    exactly-once, further until the last transaction has committed
    (:func:`processor.bench.guarantees.outputs_committed` over the group's committed offsets and
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
    ``encoding`` (raw, jpeg, png: see :func:`processor.bench.kafka_setup.produce_records`)
    and ``input_bytes`` (the input topic's size) describe the records. Raises
    :class:`TimeoutError` when the processor has not written and committed every output
    within ``timeout_s`` seconds of starting, and what the processor raises if it fails."""
    from prometheus_client import CollectorRegistry

    from processor.kafka.runtime import Processor
    from processor.kafka.settings import Settings
    from processor.model import load_step_model

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
    (exactly-once runs, see :func:`processor.bench.guarantees.outputs_committed`): the group's
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
