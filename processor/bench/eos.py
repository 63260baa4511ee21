"""What exactly-once processing costs: throughput against at-least-once, and the latency a
``read_committed`` reader of the output topic sees in each mode.

* Throughput: :func:`processor.bench.kafka.bench_end_to_end` with
  ``processing_guarantee="exactly-once"`` against the same run at ``"at-least-once"`` (both
  with the state topic), at several commit intervals; the timer of an exactly-once run stops
  when its last output is *committed* (see
  :func:`processor.bench.guarantees.outputs_committed`), not when the broker
  acknowledged it.
* Latency (:func:`bench_visible_latency`): a paced input (records carry ``ts`` = the wall
  clock in ms when they are made; outputs copy it), the processor, and a reader of the output
  topic with ``isolation_level="read_committed"``, all in this process; one latency per output
  = the wall clock when the reader got it minus its ``ts``. In exactly-once mode an output
  becomes visible only when the transaction of its commit interval commits, so the latency
  includes up to one interval of waiting plus the commit.

``lstm-stream bench --bootstrap-servers HOST:PORT`` runs both in its Kafka section
(:func:`processor.bench.kafka_sections.kafka_end_to_end`); the module also runs on its own::

    python -m processor.bench.eos --bootstrap-servers 127.0.0.1:19092 --repeat 3

which prints one JSON object.

The pure helpers (:func:`percentiles`, :func:`median_ratio`,
:func:`processor.bench.guarantees.outputs_committed`) are used by the measurements and
tested without a broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from processor.bench.guarantees import AT_LEAST_ONCE, EXACTLY_ONCE, transaction_timeout_for
from processor.bench.kafka import bench_end_to_end, bench_engine_only
from processor.bench.kafka_setup import (
    bench_topics,
    make_lstm_model,
    module_parser,
    synthetic_steps,
)
from processor.config.engine_options import EngineOptions
from processor.engine.threads import configure_threads

__all__ = [
    "bench_visible_latency",
    "main",
    "measure_pair",
    "median_ratio",
    "percentiles",
    "summarise_pairs",
]

log = logging.getLogger(__name__)

#: How often the paced producer sends: every tick the records due by then go out together.
_TICK_S: Final = 0.01


def percentiles(samples: Iterable[float], qs: Sequence[float] = (50.0, 99.0)) -> dict[str, float]:
    """``{"p50": ..., "p99": ...}`` (one key ``p<q>`` per ``q`` of ``qs``, ``q`` printed
    without a trailing ``.0``) of ``samples`` by linear interpolation between the closest
    ranks (numpy's default method), plus ``count``, ``mean`` and ``max``. With no samples
    every figure is NaN and ``count`` 0. Raises :class:`ValueError` for a ``q`` outside
    [0, 100]."""
    data = np.asarray(list(samples), dtype=np.float64)
    for q in qs:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile {q} is outside [0, 100]")
    names = [f"p{q:g}" for q in qs]
    if data.size == 0:
        return {**dict.fromkeys(names, math.nan), "count": 0, "mean": math.nan, "max": math.nan}
    values = np.percentile(data, list(qs))
    out: dict[str, float] = {n: float(v) for n, v in zip(names, values, strict=True)}
    out.update(count=int(data.size), mean=float(data.mean()), max=float(data.max()))
    return out


def median_ratio(pairs: Iterable[tuple[float, float]]) -> float:
    """The median over ``(numerator, denominator)`` pairs of numerator / denominator: each
    pair was measured back to back, so load that changes between pairs cancels out. NaN when
    there are no pairs or a denominator is not positive."""
    ratios = []
    for num, den in pairs:
        if not den > 0:
            return math.nan
        ratios.append(num / den)
    return statistics.median(ratios) if ratios else math.nan


def measure_pair(
    bootstrap: str,
    options: EngineOptions,
    *,
    records: int,
    streams: int,
    commit_interval_ms: int,
    eos_first: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One at-least-once and one exactly-once run of
    :func:`processor.bench.kafka.bench_end_to_end` on the same number of records at
    ``commit_interval_ms`` (both with the state topic), back to back, the exactly-once one
    first when ``eos_first`` (alternate it between repeats so that a drift of the machine's
    load favours neither). Returns ``(at_least_once, exactly_once)``."""

    def one(guarantee: str) -> dict[str, Any]:
        return asyncio.run(
            bench_end_to_end(
                bootstrap,
                options,
                records=records,
                streams=streams,
                commit_interval_ms=commit_interval_ms,
                processing_guarantee=guarantee,
            )
        )

    if eos_first:
        eos = one(EXACTLY_ONCE)
        return one(AT_LEAST_ONCE), eos
    alos = one(AT_LEAST_ONCE)
    return alos, one(EXACTLY_ONCE)


def summarise_pairs(
    commit_interval_ms: int, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> dict[str, Any]:
    """The report's row for one commit interval from ``(at_least_once, exactly_once)`` runs
    of :func:`processor.bench.kafka.bench_end_to_end` (each with ``records_per_s``):
    ``eos_over_alos`` is the :func:`median_ratio` of the pairs; ``at_least_once`` and
    ``exactly_once`` are the median run of each mode (by ``records_per_s``; the upper one of
    an even count); ``pairs`` lists each pair's two rates and ratio. Raises
    :class:`ValueError` without pairs."""
    if not pairs:
        raise ValueError("summarise_pairs needs at least one pair")

    def median_run(k: int) -> dict[str, Any]:
        runs = sorted((p[k] for p in pairs), key=lambda r: float(r["records_per_s"]))
        return dict(runs[len(runs) // 2])

    rates = [(float(e["records_per_s"]), float(a["records_per_s"])) for a, e in pairs]
    return {
        "commit_interval_ms": commit_interval_ms,
        "records": int(pairs[0][0]["records"]),
        "eos_over_alos": median_ratio(rates),
        "at_least_once": median_run(0),
        "exactly_once": median_run(1),
        "pairs": [
            {
                "at_least_once_msg_per_s": round(alos, 1),
                "exactly_once_msg_per_s": round(eos, 1),
                "ratio": eos / alos if alos > 0 else math.nan,
            }
            for eos, alos in rates
        ],
    }


async def bench_visible_latency(
    bootstrap: str,
    options: EngineOptions,
    *,
    processing_guarantee: str,
    commit_interval_ms: int,
    rate: float = 2000.0,
    seconds: float = 10.0,
    warmup_s: float = 2.0,
    streams: int = 256,
    partitions: int = 4,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """End-to-end latency as a ``read_committed`` reader of the output topic sees it.

    Fresh input, output and dead-letter topics (``partitions`` each; the state topic is the
    default one) are created; the processor is started in this process with
    ``processing_guarantee`` and ``commit_interval_ms`` and, once it owns its partitions, a
    producer writes ``rate`` records/s of ``streams`` streams (step-major, ``ts`` = the wall
    clock in ms when each tick's records are made) for ``seconds`` s, while a reader with
    ``isolation_level="read_committed"`` reads the output topic from its beginning. A
    latency is the wall clock when the reader's fetch returned minus the output's ``ts``;
    outputs of records made in the first ``warmup_s`` s are left out. All three share this
    process's event loop, so the figures include its scheduling delays (alike in both
    modes).

    Returns ``processing_guarantee``, ``commit_interval_ms``, ``rate``, ``seconds``,
    ``records`` (produced), ``received`` (outputs read), and the latency figures in ms from
    :func:`percentiles` (``p50_ms``, ``p99_ms``, ``mean_ms``, ``max_ms``, ``samples``).
    Raises :class:`TimeoutError` when the reader has not received every output within
    ``timeout_s`` s after the last record was produced, and what the processor raises if it
    fails. The topics are deleted afterwards.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from prometheus_client import CollectorRegistry

    from processor.codec import decode_output, encode_input
    from processor.kafka.io.clients import client_kwargs
    from processor.kafka.io.output import OutputWriter
    from processor.kafka.runtime import Processor
    from processor.kafka.settings import Settings
    from processor.model import load_step_model

    if options.model is None:
        raise ValueError("bench_visible_latency needs options.model")
    async with bench_topics(bootstrap, "bench-lat", partitions) as topics:
        source, out, dlq, group, _ = topics
        model = load_step_model(options.model)
        settings = Settings(
            bootstrap_servers=bootstrap,
            input_topics=(source,),
            output_topic=out,
            dlq_topic=dlq,
            group_id=group,
            engine=options,
            commit_interval_ms=commit_interval_ms,
            processing_guarantee=processing_guarantee,
            transaction_timeout_ms=transaction_timeout_for(commit_interval_ms),
        )
        proc = Processor(settings, registry=CollectorRegistry(), metrics_server=False)
        stop = asyncio.Event()
        task = asyncio.create_task(proc.run(stop))
        reader = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await reader.start()
        latencies: list[float] = []
        received = 0
        t_measure_ms = math.inf  # outputs of records made before this are warm-up

        async def read() -> None:
            nonlocal received
            while True:
                batches = await reader.getmany(timeout_ms=100, max_records=10_000)
                now_ms = time.time() * 1000.0  # one receive time per fetch
                for records in batches.values():
                    for r in records:
                        received += 1
                        ts = decode_output(r.value or b"").get("ts")
                        if ts is not None and ts >= t_measure_ms:
                            latencies.append(now_ms - ts)

        async def until(done: Any, what: str, deadline: float) -> None:
            while not done():
                if task.done():
                    await task  # the processor stopped early: raise its error
                    raise RuntimeError(f"the processor stopped before {what}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {what} within the deadline")
                await asyncio.sleep(0.01)

        reading: asyncio.Task[None] | None = None
        _, producer_kw = client_kwargs(bootstrap, "unused", {})
        producer = AIOKafkaProducer(**producer_kw)
        await producer.start()
        try:
            await until(lambda: proc.ready, "assignment", time.monotonic() + timeout_s)
            tps = [TopicPartition(out, p) for p in range(partitions)]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            reading = asyncio.create_task(read())
            writer = OutputWriter(producer, source)
            names = [f"s{i}" for i in range(streams)]
            steps = synthetic_steps(streams, tuple(model.input_shape), model.input_dtype)
            xs, seq, i = next(steps), 0, 0
            pending: list[asyncio.Future[Any]] = []
            sent = 0
            t0 = time.monotonic()
            t_measure_ms = time.time() * 1000.0 + warmup_s * 1000.0
            while (elapsed := time.monotonic() - t0) < seconds:
                due = int(rate * elapsed) - sent
                if due > 0:
                    ts = int(time.time() * 1000)
                    batch = []
                    for _ in range(due):
                        batch.append((names[i], encode_input(names[i], seq, xs[i], ts=ts)))
                        i += 1
                        if i == streams:  # the next step of every stream
                            xs, seq, i = next(steps), seq + 1, 0
                    pending += await writer.write(batch)
                    sent += due
                    for f in pending:
                        if f.done():
                            f.result()  # a failed send raises here
                    pending = [f for f in pending if not f.done()]
                await asyncio.sleep(_TICK_S)
            await producer.flush()
            await asyncio.gather(*pending)
            await until(
                lambda: received >= sent, f"{sent} outputs read", time.monotonic() + timeout_s
            )
        finally:
            stop.set()
            try:
                await task
            finally:
                if reading is not None:
                    reading.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
                await reader.stop()
                await producer.stop()
        figures = percentiles(latencies)
        return {
            "processing_guarantee": processing_guarantee,
            "commit_interval_ms": commit_interval_ms,
            "rate": rate,
            "seconds": seconds,
            "warmup_s": warmup_s,
            "streams": streams,
            "partitions": partitions,
            "records": sent,
            "received": received,
            "samples": figures["count"],
            "p50_ms": figures["p50"],
            "p99_ms": figures["p99"],
            "mean_ms": figures["mean"],
            "max_ms": figures["max"],
        }


def _say(msg: str) -> None:
    """A progress line on stderr (stdout carries the JSON result)."""
    print(f"eos bench: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m processor.bench.eos``: prints one JSON object, returns 0."""
    parser = module_parser("python -m processor.bench.eos", __doc__)
    parser.add_argument(
        "--intervals-ms",
        type=int,
        nargs="+",
        default=[100, 1000, 5000],
        help="commit intervals (default 100 1000 5000)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="pairs per interval (default 1)")
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=10.0,
        help="paced seconds of each latency run (default 10; 0 = no latency runs)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_threads(args.threads, 1)  # before anything runs TensorFlow
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_lstm_model(str(Path(tmp) / "lstm2x256.keras"))
        options = EngineOptions(
            model=model,
            max_batch=1024,
            cache_capacity=max(4096, args.streams * 2),
            threads=args.threads,
        )
        engine = bench_engine_only(options, records=args.records, streams=args.streams)
        intervals = []
        for interval in args.intervals_ms:
            pairs = []
            for i in range(max(1, args.repeat)):
                pairs.append(
                    measure_pair(
                        args.bootstrap_servers,
                        options,
                        records=args.records,
                        streams=args.streams,
                        commit_interval_ms=interval,
                        eos_first=bool(i % 2),
                    )
                )
                alos, eos = (p["records_per_s"] for p in pairs[-1])
                _say(f"{interval} ms pair {i + 1}: {alos:,.0f} vs {eos:,.0f} msg/s")
            intervals.append(summarise_pairs(interval, pairs))
        latency = []
        if args.latency_seconds > 0:
            for interval in args.intervals_ms:
                for guarantee in (AT_LEAST_ONCE, EXACTLY_ONCE):
                    _say(f"latency, {guarantee}, {interval} ms")
                    latency.append(
                        asyncio.run(
                            bench_visible_latency(
                                args.bootstrap_servers,
                                options,
                                processing_guarantee=guarantee,
                                commit_interval_ms=interval,
                                seconds=max(args.latency_seconds, 4 * interval / 1000),
                            )
                        )
                    )
    print(
        json.dumps(
            {"engine_only": engine, "intervals": intervals, "latency": latency},
            indent=2,
            default=float,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
