"""The Kafka host path on the free model: ``lstm-stream run`` end to end
(:func:`processor.bench.kafka.bench_end_to_end`) against Kafka's own producer benchmark,
``org.apache.kafka.tools.ProducerPerformance``, on the same broker with records of the same
size, and aiokafka's own per-record floors: ``AIOKafkaConsumer.getmany`` over pre-produced
records and ``BatchBuilder.append`` without sending. What a leaner record path could at best
reach with aiokafka is bounded by those two floors; the goal ``host_kafka`` judges the first
ratio.

ProducerPerformance runs from the project's Kafka jars (:data:`KAFKA_LIBS`, collected by
``deploy/kafka-local/kafka.sh``) as a subprocess, with the runtime's producer settings
(:func:`producer_props`); its own summary line gives the rate, so the JVM's start is not in it.
Run by ``lstm-stream bench --bootstrap-servers HOST:PORT`` (:func:`host_kafka`); without a
broker the section reports ``not_run``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

from processor.bench.config import Config, Progress
from processor.bench.goals import HOST_KAFKA_STREAMS, HOST_MODEL
from processor.bench.harness import Budget, measure
from processor.bench.kafka_sections import kafka_logs_quiet
from processor.bench.kafka_setup import bench_topics, produce_records, synthetic_steps
from processor.bench.models import load
from processor.bench.results import SectionStatus

#: The Kafka jars ``deploy/kafka-local/kafka.sh`` collects (in a source checkout).
KAFKA_LIBS: Final = Path(__file__).resolve().parents[2] / "deploy" / "kafka-local" / "libs"
PRODUCER_PERFORMANCE: Final = "org.apache.kafka.tools.ProducerPerformance"

#: Partitions of every topic of the section (as the ``kafka`` goal's run).
_PARTITIONS: Final = 4
#: How long one ``getmany`` waits for records (the runtime's fetch stage waits as long).
_FETCH_TIMEOUT_MS: Final = 100
#: Records appended per timed call of the ``BatchBuilder.append`` floor.
_APPEND_RECORDS: Final = 20_000
#: ProducerPerformance runs back to back; the faster is kept (the stricter floor: one run on
#: a shared machine varies by a third from the next).
_PP_RUNS: Final = 2
#: The most seconds ProducerPerformance or the ``getmany`` floor may take.
_TIMEOUT_S: Final = 300.0

_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency"
)


class FloorUnavailable(Exception):
    """A floor cannot be measured on this machine (no Java, no Kafka jars)."""


def producer_props(bootstrap: str) -> list[str]:
    """ProducerPerformance's ``--producer-props``: the broker and the runtime's producer
    settings (:data:`processor.kafka.io.clients.PRODUCER_DEFAULTS`: acks, linger, batch
    size), so that both sides batch alike."""
    from processor.kafka.io.clients import PRODUCER_DEFAULTS as d

    return [
        f"bootstrap.servers={bootstrap}",
        f"acks={d['acks']}",
        f"linger.ms={d['linger_ms']}",
        f"batch.size={d['max_batch_size']}",
    ]


def parse_producer_performance(stdout: str) -> dict[str, float]:
    """``records``, ``records_per_s``, ``mb_per_s``, ``latency_avg_ms`` and
    ``latency_max_ms`` from ProducerPerformance's summary (its last line with ``records
    sent``); raises ``ValueError`` when there is none."""
    for line in reversed(stdout.splitlines()):
        m = _SUMMARY.search(line)
        if m:
            return {
                "records": int(m["records"]),
                "records_per_s": float(m["rate"]),
                "mb_per_s": float(m["mb"]),
                "latency_avg_ms": float(m["avg"]),
                "latency_max_ms": float(m["max"]),
            }
    raise ValueError(f"no ProducerPerformance summary in its output: {stdout[-300:]!r}")


def producer_performance(
    bootstrap: str, topic: str, *, records: int, record_size: int, libs: Path = KAFKA_LIBS
) -> dict[str, Any]:
    """Run ProducerPerformance (``--throughput -1``: as fast as it can) writing ``records``
    records of ``record_size`` value bytes to ``topic``; its summary
    (:func:`parse_producer_performance`) and the command. Raises :class:`FloorUnavailable`
    without Java or the jars, ``RuntimeError`` when it fails."""
    if shutil.which("java") is None:
        raise FloorUnavailable("no java on the PATH")
    if not any(libs.glob("kafka-tools-*.jar")):
        raise FloorUnavailable(
            f"no Kafka jars in {libs} (deploy/kafka-local/kafka.sh collects them)"
        )
    cmd = [
        "java",
        "-cp",
        str(libs / "*"),
        PRODUCER_PERFORMANCE,
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        *producer_props(bootstrap),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    if proc.returncode:
        raise RuntimeError(f"ProducerPerformance exited {proc.returncode}: {proc.stderr[-500:]}")
    return {**parse_producer_performance(proc.stdout), "record_size": record_size, "command": cmd}


async def getmany_floor(bootstrap: str, topic: str, records: int) -> dict[str, Any]:
    """Records/s of ``AIOKafkaConsumer.getmany`` reading ``records`` records of ``topic``
    from the beginning, with the runtime's fetch settings and nothing done with them. Timed
    from the first record returned (as the end-to-end timer starts at the first fetched
    record): one record is taken first, so the first fetch has arrived but its records,
    parsed only when ``getmany`` hands them out, are still to be counted."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from processor.kafka.io.clients import CONSUMER_DEFAULTS as d

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=d["isolation_level"],
        max_partition_fetch_bytes=d["max_partition_fetch_bytes"],
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(_PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + _TIMEOUT_S
        got, t0 = 0, time.perf_counter()
        while got < records:
            if time.monotonic() > deadline:
                raise TimeoutError(f"getmany read {got} of {records} records")
            # The first record alone, then everything buffered per call.
            limit = 1 if not got else None
            batches = await consumer.getmany(timeout_ms=_FETCH_TIMEOUT_MS, max_records=limit)
            n = sum(len(b) for b in batches.values())
            if n and not got:
                t0 = time.perf_counter()
            got += n
        seconds = time.perf_counter() - t0
    finally:
        await consumer.stop()
    counted = got - 1
    return {"records": counted, "seconds": seconds, "records_per_s": counted / seconds}


async def append_floor(
    bootstrap: str, items: list[tuple[bytes, bytes]], budget: Budget
) -> dict[str, Any]:
    """Records/s of ``BatchBuilder.append(key=, value=, timestamp=None)`` (batches from
    ``producer.create_batch()``, a new one whenever one is full; nothing sent) over
    ``items``, one timed call per pass over them (median-based rate, see
    :class:`~processor.bench.harness.Timing`)."""
    from aiokafka import AIOKafkaProducer

    from processor.kafka.io.clients import PRODUCER_DEFAULTS as d

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=d["max_batch_size"])
    await producer.start()  # the batch format follows the broker's API version
    try:

        def fill(_: Any) -> None:
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)

        timing = measure(fill, lambda i: i, lambda _: len(items), budget)
    finally:
        await producer.stop()
    return {**timing.summary(), "records_per_call": len(items)}


def _records(count: int, streams: int, shape: tuple[int, ...]) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) pairs like those that
    :func:`~processor.bench.kafka_setup.produce_records` writes (step-major, with a ``ts``)."""
    from processor.codec import encode_input

    names = [f"s{i}" for i in range(streams)]
    ts = int(time.time() * 1000)
    out: list[tuple[bytes, bytes]] = []
    for seq, xs in enumerate(synthetic_steps(streams, shape, "float32")):
        for i in range(min(streams, count - len(out))):
            out.append((names[i].encode(), encode_input(names[i], seq, xs[i], ts=ts)))
        if len(out) >= count:
            return out
    return out


async def _floors(
    cfg: Config, record_size: int, shape: tuple[int, ...], progress: Progress
) -> dict[str, Any]:
    """ProducerPerformance, the ``getmany`` floor and the ``append`` floor, on fresh topics."""
    bootstrap = cfg.bootstrap_servers or ""
    records, streams = cfg.host_kafka_records, cfg.host_kafka_streams
    out: dict[str, Any] = {}
    async with bench_topics(bootstrap, "host", _PARTITIONS, with_state=False) as topics:
        progress(
            f"host kafka: ProducerPerformance x{_PP_RUNS}, {records:,} records of {record_size} B"
        )
        try:
            runs = [
                await asyncio.to_thread(
                    producer_performance,
                    bootstrap,
                    topics.out,
                    records=records,
                    record_size=record_size,
                )
                for _ in range(_PP_RUNS)
            ]
            best = max(runs, key=lambda r: r["records_per_s"])
            out["producer_performance"] = {
                **best,
                "runs_records_per_s": [r["records_per_s"] for r in runs],
            }
        except FloorUnavailable as exc:
            out["producer_performance"] = {"not_run": str(exc)}
        progress(f"host kafka: getmany over {records:,} pre-produced records")
        await produce_records(
            bootstrap, topics.source, records=records, streams=streams, shape=shape
        )
        out["getmany"] = await getmany_floor(bootstrap, topics.source, records)
    progress("host kafka: BatchBuilder.append without sending")
    items = _records(min(records, _APPEND_RECORDS), streams, shape)
    budget = Budget(min_time=cfg.budget.min_time, min_steps=3, warmup_steps=1)
    out["batch_append"] = await append_floor(bootstrap, items, budget)
    return out


def host_kafka(cfg: Config, progress: Progress) -> dict[str, Any]:
    """``run`` with the free model end to end (``cfg.host_kafka_records`` records of
    ``cfg.host_kafka_streams`` streams, at-least-once with durable state, as the ``kafka``
    goal's run), then on the same broker ProducerPerformance with records of the real mean
    value size of those records (twice; the faster is kept, the runs' rates are in
    ``runs_records_per_s``), aiokafka's ``getmany`` over as many pre-produced records and
    ``BatchBuilder.append``. ``run_over_producer_performance`` is the ratio the goal
    judges; ``goal_sizes`` says whether the run used the goal's stream count."""
    if cfg.bootstrap_servers is None:
        return {"status": SectionStatus.NOT_RUN, "reason": "no --bootstrap-servers given"}
    from processor.bench import kafka as kafka_bench
    from processor.config.engine_options import EngineOptions

    bm = load(HOST_MODEL, cfg.seed)
    records, streams = cfg.host_kafka_records, cfg.host_kafka_streams
    shape = tuple(bm.step_model.input_shape)
    with kafka_logs_quiet(), tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{HOST_MODEL}.keras")
        bm.keras_model.save(path)
        options = EngineOptions(
            model=path,
            max_batch=cfg.headline_batch,
            cache_capacity=max(4096, 2 * streams),
            threads=0,  # TensorFlow's pools were sized at start-up; they cannot change now
        )
        progress(f"host kafka: run end to end on the free model, {records:,} records")
        e2e = asyncio.run(
            kafka_bench.bench_end_to_end(
                cfg.bootstrap_servers, options, records=records, streams=streams
            )
        )
        value_bytes = e2e["input_bytes"] / records
        floors = asyncio.run(_floors(cfg, round(value_bytes), shape, progress))
    pp = floors["producer_performance"]
    result: dict[str, Any] = {
        "status": SectionStatus.RAN,
        "model": HOST_MODEL,
        "records": records,
        "streams": streams,
        "goal_sizes": streams == HOST_KAFKA_STREAMS,
        "value_bytes_per_record": round(value_bytes, 1),
        "key_bytes_per_record": round(float(np.mean([len(f"s{i}") for i in range(streams)])), 1),
        "msg_per_s": e2e["records_per_s"],
        "end_to_end": e2e,
        **floors,
    }
    if "records_per_s" in pp:
        result["run_over_producer_performance"] = e2e["records_per_s"] / pp["records_per_s"]
    progress(
        f"host kafka: run {e2e['records_per_s']:,.0f} records/s; ProducerPerformance "
        f"{pp.get('records_per_s', float('nan')):,.0f}; getmany "
        f"{floors['getmany']['records_per_s']:,.0f}; BatchBuilder.append "
        f"{floors['batch_append']['msg_per_s_median']:,.0f}"
    )
    return result
