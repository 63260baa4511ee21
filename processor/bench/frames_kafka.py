"""Camera frames through Kafka: ``run`` on 84x84x1 uint8 frames sent raw (7 KB records) and
as JPEG, against the engine alone on the same number of frames, and the decode stage's cost
per frame for raw, JPEG and PNG payloads.

Method. The model is the benchmark's ``cnn_lstm`` (a DQN-style encoder feeding a 2x512
LSTM, :mod:`processor.bench.models`), saved to a ``.keras`` file. The end-to-end figures come
from :func:`processor.bench.kafka.bench_end_to_end` (produce first, then time the processor
from its first fetched record to its last acknowledged output) with ``encoding`` raw and
jpeg; the engine-only figure from :func:`processor.bench.kafka.bench_engine_only`. The pairs
run back to back, and the ratios are per pair, so load changes between pairs cancel out.

The decode cost is :meth:`processor.codec.RecordDecoder.decode_many` over the same frames
(a moving bar over low noise, as ``produce --kind frames`` makes them) encoded each way, per
frame, best of a few repeats.

``lstm-stream bench --bootstrap-servers HOST:PORT`` runs it as part of its Kafka section
(``results["kafka"]["frames"]``); on its own::

    python -m processor.bench.frames_kafka --bootstrap-servers 127.0.0.1:19092
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from processor.config.engine_options import EngineOptions
from processor.engine.threads import configure_threads

__all__ = ["ENCODINGS", "bench_decode_cost", "bench_frames_through_kafka", "main"]

log = logging.getLogger(__name__)

#: Payload encodings of the decode-cost measurement.
ENCODINGS: Final = ("raw", "jpeg", "png")
#: The shape of a camera frame in these measurements.
FRAME_SHAPE: Final = (84, 84, 1)


def save_frames_model(path: str) -> str:
    """Save the benchmark's ``cnn_lstm`` model (seeded random weights) to ``path``."""
    from processor.bench import models

    models.load("cnn_lstm").keras_model.save(path)
    return path


def bench_decode_cost(frames: int = 512, repeats: int = 3) -> list[dict[str, Any]]:
    """Per encoding of :data:`ENCODINGS`: the record size and the decode stage's cost per
    frame (``decode_many`` over ``frames`` records, best of ``repeats``)."""
    from processor.codec import RecordDecoder
    from processor.codec.images import encode_image_input
    from processor.demo.synthetic import SyntheticInput

    xs = SyntheticInput("frames", FRAME_SHAPE, frames).step(0)
    keys = [f"s{i}".encode() for i in range(frames)]
    decoder = RecordDecoder(FRAME_SHAPE, "uint8")
    rows = []
    for encoding in ENCODINGS:
        values = [encode_image_input(f"s{i}", 0, xs[i], encoding) for i in range(frames)]
        decoded = decoder.decode_many(values, keys)
        bad = [r for r in decoded if not hasattr(r, "x")]
        if bad:
            raise RuntimeError(f"{encoding} frames did not decode: {bad[0]!r}")
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            decoder.decode_many(values, keys)
            best = min(best, time.perf_counter() - t0)
        rows.append(
            {
                "encoding": encoding,
                "record_bytes": statistics.mean(len(v) for v in values),
                "decode_us_per_frame": best / frames * 1e6,
            }
        )
    return rows


def bench_frames_through_kafka(
    bootstrap: str,
    model: str,
    *,
    records: int,
    streams: int,
    partitions: int = 4,
    repeat: int = 1,
    threads: int = 2,
) -> dict[str, Any]:
    """``repeat`` rounds of engine-only, raw and JPEG end to end on ``records`` frames of
    ``streams`` streams; returns the rounds and, per encoding, the median ratio of end to
    end over engine-only (taken per round) with the median round's figures."""
    from processor.bench.kafka import bench_end_to_end, bench_engine_only

    options = EngineOptions(
        model=model, max_batch=256, cache_capacity=max(1024, 2 * streams), threads=threads
    )
    rounds = []
    for _ in range(max(1, repeat)):
        engine = bench_engine_only(options, records=records, streams=streams)
        row: dict[str, Any] = {"engine_only": engine}
        for encoding in ("raw", "jpeg"):
            e2e = asyncio.run(
                bench_end_to_end(
                    bootstrap,
                    options,
                    records=records,
                    streams=streams,
                    partitions=partitions,
                    encoding=encoding,
                )
            )
            row[encoding] = e2e
            row[f"{encoding}_over_engine"] = e2e["records_per_s"] / engine["records_per_s"]
        rounds.append(row)
    summary = {
        f"{enc}_over_engine": statistics.median(r[f"{enc}_over_engine"] for r in rounds)
        for enc in ("raw", "jpeg")
    }
    return {
        "model": "cnn_lstm",
        "records": records,
        "streams": streams,
        "rounds": rounds,
        **summary,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m processor.bench.frames_kafka``: prints one JSON object, returns 0."""
    from processor.bench.kafka_setup import module_parser

    parser = module_parser("python -m processor.bench.frames_kafka", __doc__)
    parser.set_defaults(records=20_000, streams=256)
    parser.add_argument("--repeat", type=int, default=1, help="rounds (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    configure_threads(args.threads, 1)  # before anything runs TensorFlow
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or save_frames_model(str(Path(tmp) / "cnn_lstm.keras"))
        result = bench_frames_through_kafka(
            args.bootstrap_servers,
            model,
            records=args.records,
            streams=args.streams,
            repeat=args.repeat,
            threads=args.threads,
        )
    result["decode"] = bench_decode_cost()
    print(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
