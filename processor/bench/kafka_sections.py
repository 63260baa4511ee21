"""The sections of ``lstm-stream bench`` that run through a Kafka broker, sized by
:class:`~processor.bench.config.Config`: end to end with exactly-once against
at-least-once (:func:`kafka_end_to_end`), what durable state costs besides throughput
(:func:`durable_state`) and camera frames (:func:`frames_kafka`). The measurements are the
modules that also run on their own (:mod:`processor.bench.kafka`, :mod:`processor.bench.eos`,
:mod:`processor.bench.durable`, :mod:`processor.bench.frames_kafka`); without
``--bootstrap-servers`` a section reports ``not_run``."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from processor.bench.config import Config, Progress
from processor.bench.models import BenchModel
from processor.bench.results import SectionStatus
from processor.kafka.tools.client_logs import quiet_loggers


def kafka_logs_quiet() -> contextlib.AbstractContextManager[None]:
    """The Kafka runtime logs every group event at INFO; the benchmark's own progress lines
    suffice while it runs."""
    return quiet_loggers(("aiokafka", "processor.kafka"))


def kafka_end_to_end(bm: BenchModel, cfg: Config, progress: Progress) -> dict[str, Any]:
    """Produce -> ``lstm-stream run`` (the Kafka runtime, in this process) -> output topic,
    through the broker at ``cfg.bootstrap_servers``, on this benchmark's model (saved to a
    temporary ``.keras`` file, same weights).

    Measured by :func:`processor.bench.kafka.bench_end_to_end` (N records produced to a
    fresh topic first, then timed from the processor's first fetched record until every
    output is visible to a ``read_committed`` reader: acknowledged at-least-once, committed
    exactly-once) and, for the same records and batch size, its engine-only twin
    :func:`processor.bench.kafka.bench_engine_only`. ``msg_per_s`` is the end-to-end rate
    (at-least-once, durable state, 1 s commit interval).

    Each repeat runs, back to back: engine-only, durable at-least-once and exactly-once at
    1 s (when 1000 is in ``cfg.eos_intervals_ms``), no state topic, then an at-least-once /
    exactly-once pair at each other interval of ``cfg.eos_intervals_ms``; which of a pair
    goes first alternates between repeats. Ratios are medians of per-pair ratios. Then one
    read_committed latency run per mode and interval of ``cfg.eos_latency_intervals_ms``
    (:func:`processor.bench.eos.bench_visible_latency`). The exactly-once figures are under
    ``exactly_once``: ``intervals`` (:func:`processor.bench.eos.summarise_pairs` rows),
    ``latency`` and ``eos_over_alos_1s``.
    """
    if cfg.bootstrap_servers is None:
        return {"status": SectionStatus.NOT_RUN, "reason": "no --bootstrap-servers given"}
    try:
        from processor.bench import eos
        from processor.bench import kafka as kafka_bench
        from processor.bench.guarantees import AT_LEAST_ONCE, EXACTLY_ONCE
        from processor.config.engine_options import EngineOptions
    except ImportError as exc:  # the runtime is optional for the rest of the benchmark
        return {"status": SectionStatus.NOT_RUN, "reason": f"Kafka runtime not importable: {exc}"}
    b = cfg.headline_batch
    streams, records = cfg.kafka_streams, cfg.kafka_records
    bootstrap = cfg.bootstrap_servers
    at_1s = 1000 in cfg.eos_intervals_ms
    others = [ms for ms in cfg.eos_intervals_ms if ms != 1000]
    eos_pairs: dict[int, list[tuple[dict[str, Any], dict[str, Any]]]] = {
        ms: [] for ms in cfg.eos_intervals_ms
    }
    latency: list[dict[str, Any]] = []
    with kafka_logs_quiet(), tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{bm.spec.name}.keras")
        bm.keras_model.save(path)
        options = EngineOptions(
            model=path,
            max_batch=b,
            cache_capacity=max(4096, 2 * streams),
            threads=0,  # TensorFlow's pools were sized at start-up; they cannot change now
        )

        def end_to_end(**kw: Any) -> dict[str, Any]:
            return asyncio.run(
                kafka_bench.bench_end_to_end(
                    bootstrap, options, records=records, streams=streams, **kw
                )
            )

        # Alternate the measurements and keep the median run of each: one pair is at the
        # mercy of whatever else the shared machine does during its few seconds.
        pairs = []
        for i in range(cfg.kafka_repeats):
            progress(f"kafka: engine-only on {records:,} records ({i + 1}/{cfg.kafka_repeats})")
            eo = kafka_bench.bench_engine_only(options, records=records, streams=streams)
            ex: dict[str, Any] | None = None
            if at_1s and i % 2:  # which of the pair goes first alternates between repeats
                progress("kafka: end to end exactly-once, 1 s commit interval")
                ex = end_to_end(processing_guarantee=EXACTLY_ONCE)
            progress(f"kafka: end to end through {bootstrap}, durable state")
            ee = end_to_end()
            if at_1s and ex is None:
                progress("kafka: end to end exactly-once, 1 s commit interval")
                ex = end_to_end(processing_guarantee=EXACTLY_ONCE)
            if ex is not None:
                eos_pairs[1000].append((ee, ex))
            progress("kafka: end to end without a state topic")
            es = end_to_end(durable=False)
            pairs.append((eo, ee, es))
            for ms in others:
                progress(f"kafka: at-least-once and exactly-once, {ms} ms commit interval")
                eos_pairs[ms].append(
                    eos.measure_pair(
                        bootstrap,
                        options,
                        records=records,
                        streams=streams,
                        commit_interval_ms=ms,
                        eos_first=bool(i % 2),
                    )
                )
        for ms in cfg.eos_latency_intervals_ms:
            for guarantee in (AT_LEAST_ONCE, EXACTLY_ONCE):
                progress(f"kafka: read_committed latency, {guarantee}, {ms} ms commit interval")
                latency.append(
                    asyncio.run(
                        eos.bench_visible_latency(
                            bootstrap,
                            options,
                            processing_guarantee=guarantee,
                            commit_interval_ms=ms,
                            rate=cfg.eos_latency_rate,
                            seconds=max(cfg.eos_latency_s, 4 * ms / 1000),
                            streams=min(streams, 256),
                        )
                    )
                )

        def median(k: int) -> dict[str, Any]:
            runs = sorted((p[k] for p in pairs), key=lambda r: r["records_per_s"])
            return runs[len(runs) // 2]

        engine_only, e2e, stateless = median(0), median(1), median(2)
        # Per repeat, durable over stateless measured back to back; the median of those.
        costs = sorted(p[1]["records_per_s"] / p[2]["records_per_s"] for p in pairs)
    intervals = [eos.summarise_pairs(ms, eos_pairs[ms]) for ms in sorted(eos_pairs)]
    by_ms = {row["commit_interval_ms"]: row for row in intervals}
    exactly_once: dict[str, Any] = {
        "intervals": intervals,
        "latency": latency,
        "measured_by": "processor.bench.eos",
    }
    if 1000 in by_ms:
        exactly_once["eos_over_alos_1s"] = by_ms[1000]["eos_over_alos"]
    result = {
        "status": SectionStatus.RAN,
        "model": bm.spec.name,
        "bootstrap_servers": bootstrap,
        "records": records,
        "streams": streams,
        "max_batch": b,
        "msg_per_s": round(float(e2e["records_per_s"]), 3),
        "end_to_end": e2e,
        "stateless": stateless,
        "durable_over_stateless": costs[len(costs) // 2],
        "engine_only_same_records": engine_only,
        "exactly_once": exactly_once,
        "measured_by": "processor.bench.kafka.bench_end_to_end",
        "repeats": [
            {
                "engine_only_msg_per_s": round(float(eo["records_per_s"]), 1),
                "end_to_end_msg_per_s": round(float(ee["records_per_s"]), 1),
                "stateless_msg_per_s": round(float(es["records_per_s"]), 1),
            }
            for eo, ee, es in pairs
        ],
    }
    progress(
        f"kafka: {result['msg_per_s']:,.0f} msg/s end to end with durable state, "
        f"{stateless['records_per_s']:,.0f} without; engine-only on the same records "
        f"{engine_only['records_per_s']:,.0f} msg/s"
    )
    for row in intervals:
        progress(
            f"kafka: exactly-once {row['exactly_once']['records_per_s']:,.0f} msg/s vs "
            f"at-least-once {row['at_least_once']['records_per_s']:,.0f} at "
            f"{row['commit_interval_ms']} ms ({row['eos_over_alos']:.1%}, median of pairs)"
        )
    return result


def durable_state(bm: BenchModel, cfg: Config, progress: Progress) -> dict[str, Any]:
    """What durable state costs besides throughput (:mod:`processor.bench.durable`):
    restoring ``cfg.restore_streams`` streams of this model from a state topic, and the
    state bytes/s written against output bytes/s at several active stream counts."""
    if cfg.bootstrap_servers is None:
        return {"status": SectionStatus.NOT_RUN, "reason": "no --bootstrap-servers given"}
    from processor.bench import durable
    from processor.config.engine_options import EngineOptions

    with kafka_logs_quiet(), tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / f"{bm.spec.name}.keras")
        bm.keras_model.save(path)
        options = EngineOptions(
            model=path,
            max_batch=cfg.headline_batch,
            cache_capacity=65_536,
            spill_capacity=131_072,
            threads=0,
        )
        progress(f"durable: restore of {cfg.restore_streams:,} streams")
        restore = asyncio.run(
            durable.bench_restore(cfg.bootstrap_servers, options, streams=cfg.restore_streams)
        )
        progress(
            f"durable: restored {restore['streams_per_s']:,.0f} streams/s "
            f"({restore['mb_per_s']:.1f} MB/s)"
        )
        volume = []
        for streams in cfg.state_volume_streams:
            progress(f"durable: state bytes at {streams:,} active streams")
            volume += durable.bench_state_volume(
                cfg.bootstrap_servers,
                options,
                records=cfg.kafka_records,
                stream_counts=(streams,),
            )
    return {
        "status": SectionStatus.RAN,
        "model": bm.spec.name,
        "restore": restore,
        "state_volume": volume,
        "measured_by": "processor.bench.durable",
    }


def frames_kafka(cfg: Config, progress: Progress) -> dict[str, Any]:
    """Camera frames through Kafka (:mod:`processor.bench.frames_kafka`): ``run`` on
    ``cfg.frames_kafka_records`` 84x84x1 frames sent raw and as JPEG against engine-only
    (``cfg.kafka_repeats`` rounds, median ratios), when there is a broker and records; and
    always the decode stage's cost per frame for raw, JPEG and PNG payloads."""
    from processor.bench import frames_kafka as fk

    progress("frames: decode cost per frame (raw, jpeg, png)")
    out: dict[str, Any] = {"decode": fk.bench_decode_cost()}
    if cfg.bootstrap_servers is None or not cfg.frames_kafka_records:
        why = "no --bootstrap-servers given" if cfg.bootstrap_servers is None else "--quick"
        return out | {"status": SectionStatus.NOT_RUN, "reason": why}
    with kafka_logs_quiet(), tempfile.TemporaryDirectory() as tmp:
        model = fk.save_frames_model(str(Path(tmp) / "cnn_lstm.keras"))
        progress(f"frames: through Kafka, {cfg.frames_kafka_records:,} frames raw and jpeg")
        result = fk.bench_frames_through_kafka(
            cfg.bootstrap_servers,
            model,
            records=cfg.frames_kafka_records,
            streams=cfg.frames_kafka_streams,
            repeat=cfg.kafka_repeats,
            threads=0,  # TensorFlow's pools were sized at start-up; they cannot change now
        )
    return out | result | {"status": SectionStatus.RAN}
