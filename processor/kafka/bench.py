"""End-to-end throughput of ``lstm-stream run`` through a real broker, next to the engine
alone on the same model in the same process.

Method: build the model (default: 2x256 LSTM on 32 features, Dense(8) head, random
weights), produce N synthetic records to a fresh input topic first, then start the
processor (engine built and warmed up, group joined) and time from its first fetched record
to the broker's acknowledgement of its last output. The engine-only figure runs the same
number of pre-decoded records through ``Engine.process`` in batches of ``max_batch`` (no
Kafka, no decoding or encoding).

    python -m processor.kafka.bench --bootstrap-servers 127.0.0.1:19092

Prints one JSON object. With ``--repeat N`` the two measurements alternate N times and the
reported ratio is the median of the N per-pair ratios (the machine is shared: a pair's two
figures are taken close together). Intended to be folded into ``lstm-stream bench`` later.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from processor.engine import configure_threads
from processor.options import EngineOptions, build_engine
from processor.records import Record
from processor.settings import Settings

__all__ = ["bench_end_to_end", "bench_engine_only", "main", "make_lstm_model"]

log = logging.getLogger(__name__)


def make_lstm_model(path: str, *, features: int = 32, units: int = 256, layers: int = 2,
                    head: int = 8, seed: int = 0) -> str:  # fmt: skip
    """Save a random-weight LSTM stack (the benchmark's 2x256-on-32 by default)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, features))
    h = inp
    for _ in range(layers):
        h = keras.layers.LSTM(units, return_sequences=True)(h)
    keras.Model(inp, keras.layers.Dense(head)(h)).save(path)
    return path


def bench_engine_only(options: EngineOptions, *, records: int, streams: int) -> dict[str, Any]:
    """Records/s of ``Engine.process`` alone over ``records`` pre-decoded records of
    ``streams`` streams, step-major, in chunks of ``options.max_batch``."""
    engine = build_engine(options)
    engine.warmup()
    shape = tuple(engine.model.input_shape)
    rng = np.random.default_rng(1)
    steps = -(-records // streams)
    names = [f"s{i}" for i in range(streams)]
    recs: list[Record] = []
    for t in range(steps):
        xs = rng.standard_normal((streams, *shape)).astype(np.float32)
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
) -> dict[str, Any]:
    """Produce ``records`` first, then time the processor draining them (see module doc)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from prometheus_client import CollectorRegistry

    from processor.kafka.runtime import Processor
    from processor.tools import produce

    assert options.model is not None
    tag = uuid.uuid4().hex[:8]
    source, out = f"bench-in-{tag}", f"bench-out-{tag}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(source, partitions, 1), NewTopic(out, partitions, 1),
             NewTopic(f"{out}-dlq", 1, 1)]
        )  # fmt: skip
        await asyncio.sleep(1.0)  # leaders elected (single broker: fast)
        from processor.model import load_step_model

        shape = tuple(load_step_model(options.model).input_shape)
        produced = await produce(bootstrap, source, streams=streams, shape=shape, count=records)
        settings = Settings(
            bootstrap_servers=bootstrap,
            input_topics=(source,),
            output_topic=out,
            group_id=f"bench-{tag}",
            model=options.model,
            max_batch=options.max_batch,
            cache_capacity=options.cache_capacity,
            threads=options.threads,
            max_delay_ms=max_delay_ms,
            queue_max_records=queue_max_records,
        )
        registry = CollectorRegistry()
        proc = Processor(settings, registry=registry)
        stop = asyncio.Event()
        task = asyncio.create_task(proc.run(stop))
        try:
            while proc.stats.records_in == 0:
                if task.done():
                    await task
                await asyncio.sleep(0.002)
            t0 = time.perf_counter()
            while proc.stats.outputs < records:
                if task.done():
                    await task
                await asyncio.sleep(0.002)
            seconds = time.perf_counter() - t0
        finally:
            stop.set()
            await task
        stats = proc.stats
        busy = registry.get_sample_value("lstm_stream_step_seconds_sum") or 0.0
        return {
            "records": records,
            "seconds": seconds,
            "records_per_s": records / seconds,
            "produce_records_per_s": produced.rate,
            "batches": stats.batches,
            "mean_batch": stats.records_in / max(1, stats.batches),
            "pauses": stats.pauses,
            # Share of the timed window the engine thread spent in Engine.process: near 1
            # means compute-bound, well below 1 means the Kafka/event-loop side limits.
            "engine_busy_fraction": busy / seconds,
            "partitions": partitions,
        }
    finally:
        try:
            await admin.delete_topics([source, out, f"{out}-dlq"])
        finally:
            await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processor.kafka.bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--bootstrap-servers", required=True, help="a broker to use")
    parser.add_argument(
        "--model", default=None, help="model file (default: a random 2x256 LSTM on 32 features)"
    )
    parser.add_argument("--records", type=int, default=200_000, help="records (default 200000)")
    parser.add_argument("--streams", type=int, default=2048, help="streams (default 2048)")
    parser.add_argument("--partitions", type=int, default=4, help="input partitions (default 4)")
    parser.add_argument("--max-batch", type=int, default=1024, help="max batch (default 1024)")
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads (default 2)")
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="engine-only/end-to-end pairs to run back to back (default 1); the ratio is "
        "taken per pair and the median reported, so load changes between pairs cancel out",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Before anything runs TensorFlow (building the default model does): the pools are fixed
    # at TensorFlow's first use, and --threads would otherwise be silently ignored.
    configure_threads(args.threads, 1)
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_lstm_model(str(Path(tmp) / "lstm2x256.keras"))
        options = EngineOptions(
            model=model, max_batch=args.max_batch, cache_capacity=max(4096, args.streams * 2),
            threads=args.threads,
        )  # fmt: skip
        for _ in range(max(1, args.repeat)):
            engine = bench_engine_only(options, records=args.records, streams=args.streams)
            e2e = asyncio.run(
                bench_end_to_end(
                    args.bootstrap_servers, options, records=args.records,
                    streams=args.streams, partitions=args.partitions,
                )
            )  # fmt: skip
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
