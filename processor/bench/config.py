"""How big a benchmark run is: :class:`Config` and its two sizes, :func:`full_config` (the
committed figures) and :func:`quick_config` (``--quick``), and the :data:`Progress` callback
every section reports through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from processor.bench.harness import Budget

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    """Everything that sizes a benchmark run (see :func:`full_config`, :func:`quick_config`)."""

    models: tuple[str, ...]
    batches: tuple[int, ...]
    # Frame models move ~7 KiB per message: their batch sweep stops here (time, memory).
    frame_max_batch: int
    headline_batch: int
    budget: Budget
    b0_budget: Budget
    predict_budget: Budget  # model.predict is ~50x slower than predict_on_batch
    slice_s: float  # time slice of the round-robin between points that are compared
    interleaved_streams: int
    cached_streams: tuple[int, ...]
    cached_batch: int
    dtypes: tuple[str, ...]
    dtype_models: tuple[str, ...]
    catchup_steps: int
    catchup_streams: tuple[int, ...]  # stream counts B, each with T pending records
    replay_streams: int
    replay_steps_per_file: int
    breakdown_models: tuple[str, ...]
    xla: bool = True  # also measure Engine(jit_compile=True) at the headline batch
    gc_seconds: float = 6.0  # per variant of the GC section
    kafka_records: int = 200_000  # records produced, then drained, end to end
    kafka_repeats: int = 3  # alternating engine-only / end-to-end pairs; medians reported
    kafka_streams: int = 2048
    # Commit intervals of the exactly-once vs at-least-once pairs (same records each); the
    # 1 s pair reuses the durable run above as its at-least-once half.
    eos_intervals_ms: tuple[int, ...] = (100, 1000, 5000)
    # Commit intervals of the read_committed latency runs (each mode once per interval);
    # every run is paced for eos_latency_s or four intervals, whichever is longer.
    eos_latency_intervals_ms: tuple[int, ...] = (100, 1000, 5000)
    eos_latency_s: float = 10.0
    eos_latency_rate: float = 2000.0  # records/s of the paced input (well below capacity)
    restore_streams: int = 100_000  # states restored from a state topic (durable section)
    state_volume_streams: tuple[int, ...] = (1_000, 10_000, 100_000)  # active streams
    # Engine batch sizes of the frames section (seed frame model, seed's way vs engine);
    # empty = the section is not run (--quick: it would double --quick's time).
    frames_batches: tuple[int, ...] = ()
    frames_seed_streams: int = 16  # streams interleaved by the seed's per-frame loop
    # Camera frames through Kafka (cnn_lstm, raw and JPEG records); 0 records = not run.
    frames_kafka_records: int = 20_000
    frames_kafka_streams: int = 256
    # The host-path sections (free model): streams of the engine and replay points (one
    # record per stream per Engine.process call), records per stream of a replay file, and
    # the end-to-end Kafka run's records and streams.
    host_streams: int = 1024
    host_replay_steps: int = 16
    host_kafka_records: int = 200_000
    host_kafka_streams: int = 2048
    agreement_streams: int = 3
    agreement_steps: int = 5
    pool_size: int = 4096
    seed: int = 0
    bootstrap_servers: str | None = None
    quick: bool = False
    skipped: tuple[str, ...] = field(default_factory=tuple)  # points left out, and why

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def full_config(models: Sequence[str], min_time: float | None = None) -> Config:
    """The full run (~10 minutes on 2 cores)."""
    t = 1.0 if min_time is None else min_time
    return Config(
        models=tuple(models),
        batches=(1, 8, 64, 256, 1024, 4096),
        frame_max_batch=1024,
        headline_batch=1024,
        budget=Budget(min_time=t, min_steps=6, warmup_steps=3),
        b0_budget=Budget(min_time=t, min_steps=30, warmup_steps=3),
        predict_budget=Budget(min_time=t, min_steps=6, max_steps=60, warmup_steps=2),
        slice_s=0.1,
        interleaved_streams=16,
        cached_streams=(1024, 100_000, 1_000_000),
        cached_batch=1024,
        dtypes=("float32", "float16", "bfloat16"),
        dtype_models=("lstm2x256", "lstm2x512"),
        catchup_steps=32,
        catchup_streams=(16, 256, 1024),
        replay_streams=1024,
        replay_steps_per_file=16,
        breakdown_models=("lstm2x256", "lstm2x512", "cnn_lstm"),
        frames_batches=(1, 64, 256, 1024),
        skipped=(
            "cnn_lstm batch 4096: a 4096-frame step moves 28 MiB of input and takes about a "
            "second; its sweep stops at 1024",
            "batch sizes 2, 4, 16, 32, 128, 512, 2048 are left out to keep the run under "
            "~15 minutes",
        ),
    )


def quick_config(models: Sequence[str], min_time: float | None = None) -> Config:
    """``--quick``: one small model, a few batch sizes, tiny counts (well under a minute)."""
    t = 0.1 if min_time is None else min_time
    return Config(
        models=tuple(models),
        batches=(1, 64, 1024),
        frame_max_batch=64,
        headline_batch=1024,
        budget=Budget(min_time=t, min_steps=3, warmup_steps=2),
        b0_budget=Budget(min_time=t, min_steps=5, warmup_steps=2),
        predict_budget=Budget(min_time=t, min_steps=2, max_steps=5, warmup_steps=1),
        slice_s=0.05,
        interleaved_streams=4,
        cached_streams=(1024, 16_384),
        cached_batch=1024,
        dtypes=("float32", "float16", "bfloat16"),
        dtype_models=tuple(models[:1]),
        catchup_steps=32,
        catchup_streams=(64,),
        replay_streams=256,
        replay_steps_per_file=16,
        breakdown_models=tuple(models[:1]),
        agreement_steps=4,
        xla=False,
        gc_seconds=1.0,
        kafka_records=10_000,
        kafka_repeats=1,
        kafka_streams=512,
        frames_kafka_records=0,
        eos_intervals_ms=(1000,),
        eos_latency_intervals_ms=(),
        restore_streams=10_000,
        state_volume_streams=(1_000,),
        host_streams=128,
        host_replay_steps=4,
        host_kafka_records=10_000,
        host_kafka_streams=512,
        quick=True,
        skipped=(
            "--quick: one model, batches 1/64/1024, cached streams 1k/16k (not 1M), catch-up "
            "over 64 streams, no XLA variant, ~0.1 s per point, exactly-once at a 1 s commit "
            "interval only and no latency runs: figures are indicative only",
            "--quick: the frames section (seed frame model, seed's way vs engine) is not run",
            "--quick: the host-path sections run at 128 streams (Kafka: 10,000 records of 512 "
            "streams), below their goals' sizes",
        ),
    )
