"""What durable stream state costs: restore speed, and state bytes against output bytes.

* :func:`bench_restore`: a state topic holding ``streams`` states (one record each, written
  the way checkpoints write them) is restored into a fresh engine's cache by the runtime's
  own :class:`~processor.kafka.durable.recovery.Recovery`; streams/s and MB/s.
* :func:`bench_state_volume`: the Kafka runtime end to end with durable state at several
  numbers of active streams (same records per run): state bytes/s written to the state topic
  against output bytes/s (:func:`processor.bench.kafka.bench_end_to_end`).

``lstm-stream bench --bootstrap-servers HOST:PORT`` runs both in its Kafka section; the module
also runs on its own (``python -m processor.bench.durable --bootstrap-servers ...``, one JSON
object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from processor.config.engine_options import EngineOptions
from processor.engine.threads import configure_threads

__all__ = ["bench_restore", "bench_state_volume", "main"]

log = logging.getLogger(__name__)


async def bench_restore(
    bootstrap: str,
    options: EngineOptions,
    *,
    streams: int,
    partitions: int = 4,
) -> dict[str, Any]:
    """Write one state record for each of ``streams`` streams (random states of the model
    of ``options``) to a fresh state topic of ``partitions`` partitions, then time
    :meth:`Recovery.recover` of all its partitions into a fresh engine (built and warmed up
    before). Returns ``streams``, ``bytes``, ``seconds``, ``streams_per_s``, ``mb_per_s``
    and ``state_bytes_per_stream``; the topic is deleted afterwards."""
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from prometheus_client import CollectorRegistry

    from processor.engine.build import build_engine
    from processor.engine.pipeline import Pipeline, StalePolicy
    from processor.kafka.checkpoint.states import StateWriter
    from processor.kafka.durable.record import StateRecordCodec
    from processor.kafka.durable.recovery import Recovery
    from processor.kafka.durable.topic import prepare_state_topics
    from processor.obs.metrics import Metrics
    from processor.state.cache import StreamState

    tag = uuid.uuid4().hex[:8]
    source, state_topic = f"bench-in-{tag}", f"bench-state-{tag}"
    pipeline = Pipeline(lambda: build_engine(options), stale=StalePolicy.SKIP, warmup=True)
    await asyncio.wrap_future(pipeline.start())
    admin_kw = {"bootstrap_servers": bootstrap}
    admin = AIOKafkaAdminClient(**admin_kw)
    await admin.start()
    try:
        await prepare_state_topics(admin_kw, {source: state_topic}, {source: partitions})
        model = pipeline.engine.model
        codec = StateRecordCodec(model.state_spec, options.state_dtype, model.identity)
        rng = np.random.default_rng(0)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
        )
        await producer.start()
        size = 0
        try:
            writer = StateWriter(producer, {source: state_topic})
            chunk = 10_000
            for start in range(0, streams, chunk):
                by_tp: dict[Any, list[tuple[str, bytes | None]]] = {}
                for i in range(start, min(streams, start + chunk)):
                    arrays = tuple(
                        rng.standard_normal(s.shape).astype(np.float32) for s in model.state_spec
                    )
                    tp = TopicPartition(source, i % partitions)
                    value = codec.encode(StreamState(arrays, 7), (source, tp.partition, 100))
                    by_tp.setdefault(tp, []).append((f"s{i}", value))
                futures, n = await writer.write(by_tp, {})
                size += n
                await asyncio.gather(*futures)
        finally:
            await producer.stop()
        recovery = Recovery(
            consumer_kw=admin_kw,
            state_topics={source: state_topic},
            pipeline=pipeline,
            codec=codec,
            reset_on_mismatch=False,
            metrics=Metrics(CollectorRegistry()),
        )
        t0 = time.perf_counter()
        await recovery.recover([TopicPartition(source, p) for p in range(partitions)])
        seconds = time.perf_counter() - t0
        seqs = await asyncio.wrap_future(pipeline.last_seqs([f"s{i}" for i in range(streams)]))
        loaded = sum(seq == 7 for seq in seqs)
        if loaded != streams:
            raise RuntimeError(f"restored {loaded} of {streams} streams")
        return {
            "streams": streams,
            "partitions": partitions,
            "bytes": size,
            "seconds": seconds,
            "streams_per_s": streams / seconds,
            "mb_per_s": size / seconds / 1e6,
            "state_bytes_per_stream": size / streams,
        }
    finally:
        try:
            await admin.delete_topics([state_topic])
        finally:
            await admin.close()
            await asyncio.get_running_loop().run_in_executor(None, pipeline.close)


def bench_state_volume(
    bootstrap: str,
    options: EngineOptions,
    *,
    records: int,
    stream_counts: tuple[int, ...] = (1_000, 10_000, 100_000),
    commit_interval_ms: int = 1000,
) -> list[dict[str, Any]]:
    """Per stream count: the durable end-to-end run's state bytes/s and output bytes/s
    (``records`` records each; each stream's records step-major)."""
    from processor.bench.kafka import bench_end_to_end

    out = []
    for streams in stream_counts:
        run = asyncio.run(
            bench_end_to_end(
                bootstrap,
                options,
                records=max(records, streams),
                streams=streams,
                commit_interval_ms=commit_interval_ms,
            )
        )
        out.append(
            {
                "streams": streams,
                "records": run["records"],
                "records_per_s": run["records_per_s"],
                "state_bytes_per_s": run["state_bytes_per_s"],
                "output_bytes_per_s": run["output_bytes_per_s"],
                "state_over_output": run["state_bytes_per_s"] / run["output_bytes_per_s"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m processor.bench.durable``: prints one JSON object, returns 0."""
    from processor.bench.kafka_setup import make_lstm_model

    parser = argparse.ArgumentParser(
        prog="python -m processor.bench.durable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap-servers", required=True, help="a broker to use")
    parser.add_argument("--streams", type=int, default=100_000, help="restore: streams")
    parser.add_argument(
        "--records", type=int, default=100_000, help="state volume: records per run"
    )
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_threads(args.threads, 1)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_lstm_model(str(Path(tmp) / "lstm2x256.keras"))
        options = EngineOptions(model=model, max_batch=1024, cache_capacity=65_536, threads=0)
        restore = asyncio.run(bench_restore(args.bootstrap_servers, options, streams=args.streams))
        volume = bench_state_volume(args.bootstrap_servers, options, records=args.records)
    print(json.dumps({"restore": restore, "state_volume": volume}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
