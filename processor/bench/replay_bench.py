"""Replay's cost: :func:`processor.replay.replay` (decode -> engine -> encode) over
in-memory files, next to its parts measured alone."""

from __future__ import annotations

import gc
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

import processor  # noqa: F401  (TF environment defaults)
from processor import codec
from processor.bench import baselines as bl
from processor.bench.config import Config, Progress
from processor.bench.harness import Budget, Job, measure_alternating
from processor.bench.models import BenchModel, input_pool
from processor.bench.runner import EngineRunner, engine_counters, stream_names
from processor.records import Output, Record


def replay_bench(bm: BenchModel, cfg: Config, progress: Progress) -> dict[str, Any]:
    """:func:`processor.replay.replay` over in-memory files of ``codec.encode_input``
    records (``replay_streams`` streams, ``replay_steps_per_file`` records each per file),
    alternating with: the same with Python's default GC (see :func:`measure_alternating`);
    the same engine work on
    the same records already decoded, in the groups replay forms; the decoder alone; the
    output encoder alone."""
    from processor.replay import GROUP_RECORDS, replay

    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    r, steps = cfg.replay_streams, cfg.replay_steps_per_file
    b = min(cfg.headline_batch, r)
    streams = stream_names(r, "r")
    feed = bl.Feed(streams, pool)
    rp = EngineRunner(bm, capacity=r, max_batch=b)
    same = EngineRunner(bm, capacity=r, max_batch=b)

    def records_of(i: int, runner: EngineRunner) -> list[Record]:
        return feed.backlog(i, steps, runner.take_seqs(steps))

    def encode(records: Sequence[Record]) -> bytes:
        return b"".join(codec.encode_input(x.stream, x.seq, x.x) for x in records)

    sizes: list[int] = []

    def replay_input(i: int) -> tuple[bytes, int]:
        recs = records_of(i, rp)
        data = encode(recs)
        sizes.append(len(data))
        return data, len(recs)

    dead = [0]

    def run_replay(arg: tuple[bytes, int]) -> None:
        data, n = arg
        stats = replay(rp.engine, io.BytesIO(data), io.BytesIO(), io.BytesIO())
        dead[0] += stats.dead_letters
        if stats.outputs != n:
            raise RuntimeError(f"replay gave {stats.outputs} outputs for {n} records")

    def in_groups(records: list[Record]) -> list[Output]:
        outs: list[Output] = []
        for start in range(0, len(records), GROUP_RECORDS):
            outs.extend(same.method.process(records[start : start + GROUP_RECORDS]))
        return outs

    decoder = codec.RecordDecoder(bm.step_model.input_shape, bm.step_model.input_dtype)
    frames = [
        f.raw or b"" for f in codec.iter_framed(io.BytesIO(encode(feed.backlog(0, steps))), 1 << 24)
    ]
    sample_out = [
        Output(s, 0, np.zeros(bm.step_model.output_shape, np.float32)) for s in streams
    ] * steps
    budget = Budget(min_time=cfg.budget.min_time, min_steps=3, warmup_steps=1)
    rp_frozen = EngineRunner(bm, capacity=r, max_batch=b)

    def replay_input_frozen(i: int) -> tuple[bytes, int]:
        recs = records_of(i, rp_frozen)
        return encode(recs), len(recs)

    def run_replay_frozen(arg: tuple[bytes, int]) -> None:
        data, n = arg
        stats = replay(rp_frozen.engine, io.BytesIO(data), io.BytesIO(), io.BytesIO())
        if stats.outputs != n:
            raise RuntimeError(f"replay gave {stats.outputs} outputs for {n} records")

    # replay() with the start-up objects not frozen (`lstm-stream replay` freezes them; a
    # library caller may not): full collections then walk them all (unfrozen for its slices
    # only).
    frozen = rp_frozen.job(
        "replay_default_gc",
        replay_input_frozen,
        budget,
        call=run_replay_frozen,
        messages=lambda a: a[1],
    )
    frozen.enter, frozen.leave = gc.unfreeze, gc.freeze
    jobs = [
        rp.job("replay", replay_input, budget, call=run_replay, messages=lambda a: a[1]),
        frozen,
        same.job("engine_same_groups", lambda i: records_of(i, same), budget, call=in_groups),
        Job("decode", lambda fs: [decoder.decode(f) for f in fs], lambda i: frames, budget),
        Job(
            "encode", lambda os: [codec.encode_output(o) for o in os], lambda i: sample_out, budget
        ),
    ]
    done = measure_alternating(jobs, cfg.slice_s)
    result = {
        "model": bm.spec.name,
        "streams": r,
        "records_per_file": r * steps,
        "group_records": GROUP_RECORDS,
        "max_batch": b,
        "input_bytes_per_record": round(sum(sizes) / max(1, len(sizes)) / (r * steps), 1),
        "dead_letters": dead[0],
        **done["replay"].timing.summary(),
        **{
            k: v
            for k, v in engine_counters(done["replay"], rp).items()
            if k == "retraces_in_timed_region"
        },
        "engine_same_groups": {
            **done["engine_same_groups"].timing.summary(),
            **engine_counters(done["engine_same_groups"], same),
        },
        "replay_default_gc": {
            **done["replay_default_gc"].timing.summary(),
            **engine_counters(done["replay_default_gc"], rp_frozen),
        },
        "decode_us_per_record": round(1e6 / done["decode"].timing.msg_per_s_median, 3),
        "encode_us_per_output": round(1e6 / done["encode"].timing.msg_per_s_median, 3),
    }
    rp.close()
    rp_frozen.close()
    same.close()
    progress(
        f"replay: {result['msg_per_s_median']:,.0f} msg/s; engine same groups "
        f"{result['engine_same_groups']['msg_per_s_median']:,.0f} msg/s; decode "
        f"{result['decode_us_per_record']} us/record, encode {result['encode_us_per_output']} "
        "us/output"
    )
    return result
