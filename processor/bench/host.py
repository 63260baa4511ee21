"""The host path on the free model, each figure against a floor measured in the same
alternating time slices. The free model (``free`` in :mod:`processor.bench.models`, an
LSTM(4)) does almost no arithmetic, so what these sections measure is the work around the
model step: Python per record, the codec, the engine's bookkeeping.

* :func:`host_engine`: ``Engine.process`` of one record per stream against the step-only
  floor, the engine's own compiled gather -> step -> scatter called on pre-assembled slot,
  mask and input tensors (and the same floor compiled with XLA);
* :func:`host_replay`: :func:`processor.replay.replay` over in-memory files against the
  codec floor, msgpack alone unpacking the same bytes and packing outputs of the same shape.

The goals ``host_engine`` and ``host_replay`` judge them; the Kafka twin is
:mod:`processor.bench.host_kafka`. ``lstm-stream bench`` runs all three; they also run on
their own, and print their verdicts and figures as one JSON object::

    python -m processor.bench.host [--quick] [--bootstrap-servers 127.0.0.1:19092]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import tensorflow as tf

import processor  # noqa: F401  (TF environment defaults)
from processor import codec
from processor.bench import baselines as bl
from processor.bench.config import Config, Progress, full_config, quick_config
from processor.bench.goals import HOST_MODEL, HOST_STREAMS
from processor.bench.harness import Budget, Job, measure_alternating
from processor.bench.models import input_pool, load
from processor.bench.results import SectionStatus
from processor.bench.runner import EngineRunner, engine_counters, stream_names
from processor.engine.engine import Engine
from processor.engine.threads import configure_threads
from processor.records import Record
from processor.state.cache import StateCache

#: Where the engine keeps its compiled gather -> step -> scatter (the floor calls it directly;
#: the benchmark reads it, it does not change the engine).
_STEP_FN = "_step_fn"


def host_engine(cfg: Config, progress: Progress) -> dict[str, Any]:
    """``Engine.process`` on the free model, batches of ``cfg.host_streams`` records (one
    per stream per call), against the step-only floor: the same engine's compiled step
    called on tensors made once (no grouping, cache lookups, input packing or Output
    objects), read back to the host as the engine does. With ``cfg.xla`` also the floor of
    an XLA-compiled engine (``jit_compile=True``). All points alternate in time slices.

    Returns per point the timing summary, ``process_ms_p50``, ``floor_ms_p50``
    (``floor_xla_ms_p50``), ``process_over_floor`` (the rate ratio the goal judges) and
    ``bookkeeping_us_per_record`` (``(process - floor) / records`` at the medians);
    ``goal_sizes`` says whether the run used the goal's stream count."""
    bm = load(HOST_MODEL, cfg.seed)
    n = cfg.host_streams
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    runner = EngineRunner(bm, capacity=n, max_batch=n)
    step_fn = getattr(runner.engine, _STEP_FN, None)
    if step_fn is None:
        runner.close()
        return {"status": SectionStatus.NOT_RUN, "reason": "Engine._step_fn is gone"}
    device = runner.cache.device
    with tf.device(device):  # where the engine makes its step's tensors
        x = tf.constant(np.stack([pool[k % len(pool)] for k in range(n)]))
        slots = tf.constant(np.arange(n, dtype=np.int32))
        fresh = tf.constant(np.zeros(n, bool))
        run_init = tf.constant(False)

    def floor(name: str, fn: Callable[..., Any]) -> Job:
        def call(_: Any) -> Any:
            with tf.device(device):
                return fn(x, slots, fresh, run_init).numpy()

        return Job(name, call, lambda i: i, cfg.budget, messages=lambda _: n)

    jobs = [
        runner.job("process", runner.step_maker(stream_names(n), pool), cfg.budget),
        floor("step_floor", step_fn),
    ]
    if cfg.xla:
        # Not warmed up by bucket: only the floor's one shape is compiled (in its warm-up).
        xla = Engine(
            bm.step_model,
            StateCache(bm.step_model.state_spec, n, spill_capacity=0),
            max_batch=n,
            jit_compile=True,
        )
        jobs.append(floor("step_floor_xla", getattr(xla, _STEP_FN)))
    done = measure_alternating(jobs, cfg.slice_s)
    p_ms = done["process"].timing.percentile_ms(50)
    f_ms = done["step_floor"].timing.percentile_ms(50)
    result: dict[str, Any] = {
        "status": SectionStatus.RAN,
        "model": HOST_MODEL,
        "streams": n,
        "batch": n,
        "goal_sizes": n == HOST_STREAMS,
        "process": {
            **done["process"].timing.summary(),
            **engine_counters(done["process"], runner),
        },
        "step_floor": done["step_floor"].timing.summary(),
        "process_ms_p50": round(p_ms, 4),
        "floor_ms_p50": round(f_ms, 4),
        "process_over_floor": f_ms / p_ms,
        "bookkeeping_us_per_record": round((p_ms - f_ms) * 1e3 / n, 3),
    }
    if "step_floor_xla" in done:
        result["step_floor_xla"] = done["step_floor_xla"].timing.summary()
        result["floor_xla_ms_p50"] = round(done["step_floor_xla"].timing.percentile_ms(50), 4)
    runner.close()
    progress(
        f"host engine: process {p_ms:.3f} ms vs step floor {f_ms:.3f} ms per batch of {n} "
        f"({result['process_over_floor']:.0%}; {result['bookkeeping_us_per_record']} us of "
        "bookkeeping per record)"
    )
    return result


def output_dicts(
    streams: Sequence[str], steps: int, y_shape: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Maps shaped like the output records of ``steps`` records of each of ``streams``, in
    the key order :func:`processor.codec.encode_output` writes (no ``ts``: replay's inputs
    here carry none)."""
    y = np.zeros(y_shape, "<f4").tobytes()
    shape = list(y_shape)
    return [
        {"stream": s, "seq": k, "y": y, "shape": shape, "dtype": "float32"}
        for k in range(steps)
        for s in streams
    ]


def unpack_all(data: bytes) -> int:
    """How many msgpack objects ``data`` holds, each unpacked (``msgpack.Unpacker``)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return sum(1 for _ in unpacker)


def pack_all(outputs: Sequence[dict[str, Any]]) -> int:
    """``msgpack.packb`` of every map of ``outputs``; the bytes packed."""
    packb = msgpack.packb
    return sum(len(packb(o, use_bin_type=True)) for o in outputs)


def host_replay(cfg: Config, progress: Progress) -> dict[str, Any]:
    """:func:`processor.replay.replay` of the free model over in-memory files of
    ``codec.encode_input`` records (``cfg.host_streams`` streams, ``cfg.host_replay_steps``
    records each per file; the replay section's way), against the codec floor on the same
    file: ``msgpack.Unpacker`` over its bytes and ``msgpack.packb`` of one output-shaped map
    per record (:func:`output_dicts`); the floor's two halves are timed alone too. All
    alternate in time slices.

    Returns the timing summaries, ``replay_over_codec`` (the rate ratio the goal judges),
    ``unpack_us_per_record``, ``pack_us_per_output``, ``input_bytes_per_record`` and
    ``goal_sizes``."""
    from processor.replay import replay

    bm = load(HOST_MODEL, cfg.seed)
    r, steps = cfg.host_streams, cfg.host_replay_steps
    pool = input_pool(bm.spec, cfg.pool_size, seed=cfg.seed)
    streams = stream_names(r, "r")
    feed = bl.Feed(streams, pool)
    runner = EngineRunner(bm, capacity=r, max_batch=min(cfg.headline_batch, r))

    def encode(records: Sequence[Record]) -> bytes:
        return b"".join(codec.encode_input(x.stream, x.seq, x.x) for x in records)

    def replay_input(i: int) -> tuple[bytes, int]:
        recs = feed.backlog(i, steps, runner.take_seqs(steps))
        return encode(recs), len(recs)

    def run_replay(arg: tuple[bytes, int]) -> None:
        data, count = arg
        stats = replay(runner.engine, io.BytesIO(data), io.BytesIO(), io.BytesIO())
        if stats.outputs != count:
            raise RuntimeError(f"replay gave {stats.outputs} outputs for {count} records")

    # The floor's input: a file like replay's (its seqs do not matter to msgpack).
    data = encode(feed.backlog(0, steps, 0))
    outputs = output_dicts(streams, steps, tuple(bm.step_model.output_shape))
    per_call = r * steps

    budget = Budget(min_time=cfg.budget.min_time, min_steps=3, warmup_steps=1)

    def floor(name: str, fn: Callable[[], Any]) -> Job:
        return Job(name, lambda _: fn(), lambda i: i, budget, messages=lambda _: per_call)

    jobs = [
        runner.job("replay", replay_input, budget, call=run_replay, messages=lambda a: a[1]),
        floor("codec_floor", lambda: (unpack_all(data), pack_all(outputs))),
        floor("unpack", lambda: unpack_all(data)),
        floor("pack", lambda: pack_all(outputs)),
    ]
    done = measure_alternating(jobs, cfg.slice_s)
    rp, cf = done["replay"].timing, done["codec_floor"].timing
    result: dict[str, Any] = {
        "status": SectionStatus.RAN,
        "model": HOST_MODEL,
        "streams": r,
        "records_per_file": per_call,
        "goal_sizes": r == HOST_STREAMS,
        "input_bytes_per_record": round(len(data) / per_call, 1),
        "replay": {
            **rp.summary(),
            "retraces_in_timed_region": engine_counters(done["replay"], runner)[
                "retraces_in_timed_region"
            ],
        },
        "codec_floor": cf.summary(),
        "replay_over_codec": rp.msg_per_s_median / cf.msg_per_s_median,
        "unpack_us_per_record": round(1e6 / done["unpack"].timing.msg_per_s_median, 3),
        "pack_us_per_output": round(1e6 / done["pack"].timing.msg_per_s_median, 3),
    }
    runner.close()
    progress(
        f"host replay: {rp.msg_per_s_median:,.0f} msg/s vs the codec floor "
        f"{cf.msg_per_s_median:,.0f} msg/s ({result['replay_over_codec']:.0%})"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m processor.bench.host``: the host-path sections at the full sizes (or
    ``--quick``'s), the Kafka part only with ``--bootstrap-servers``; prints one JSON object
    (``goals`` and each section's figures), returns 0."""
    parser = argparse.ArgumentParser(
        prog="python -m processor.bench.host",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap-servers", default=None, help="a broker (default: no Kafka)")
    parser.add_argument("--quick", action="store_true", help="--quick's sizes (indicative only)")
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads (default 2)")
    args = parser.parse_args(argv)
    # Before anything runs TensorFlow: the pools are fixed at its first use.
    configure_threads(args.threads, 1)
    from processor.bench import host_kafka, host_verdicts

    make = quick_config if args.quick else full_config
    cfg = replace(make([HOST_MODEL]), bootstrap_servers=args.bootstrap_servers)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = {
        "host_engine": host_engine(cfg, say),
        "host_replay": host_replay(cfg, say),
        "host_kafka": host_kafka.host_kafka(cfg, say),
    }
    goals = [
        host_verdicts.host_engine(results["host_engine"]),
        host_verdicts.host_replay(results["host_replay"]),
        host_verdicts.host_kafka(results["host_kafka"]),
    ]
    print(json.dumps({"goals": goals, **results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
