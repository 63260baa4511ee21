"""Two processors in one consumer group share the partitions and together produce every
output; a rebalance keeps the states of partitions that stay and restarts the streams of
partitions that move (the documented at-least-once limitation without a state topic)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from kafka_helpers import (  # type: ignore[import-not-found]
    no_leftover_tasks,
    outputs_by_key,
    read_topic,
    reference_outputs,
    running,
    send_raw,
    settings_for,
    synthetic_records,
    tiny_model,
    wait_for,
)

from processor.options import build_engine
from processor.tools import produce

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

STREAMS = 32
PHASE = 10  # steps per phase


async def test_two_members_share_partitions_and_produce_every_output(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    source = await topic_factory(partitions=4, prefix="in")
    out = await topic_factory(partitions=2, prefix="out")
    phase1 = synthetic_records(STREAMS, PHASE, seed=5)
    phase2 = synthetic_records(STREAMS, PHASE, seed=6, start_seq=PHASE)
    settings = settings_for(kafka_bootstrap, tiny_model, [source], out, unique_group)

    async with running(settings) as a:
        sent1 = await send_raw(kafka_bootstrap, source, [(s.encode(), v) for s, v in phase1])
        await wait_for(lambda: a.proc.stats.outputs >= len(phase1), 60, "phase 1 on A", a)
        assert len(a.proc._ownership.owned) == 4

        async with running(settings) as b:
            await wait_for(
                lambda: (
                    a.proc.ready
                    and b.proc.ready
                    and len(a.proc._ownership.owned) == 2
                    and len(b.proc._ownership.owned) == 2
                ),
                60,
                "a balanced assignment",
                b,
            )
            kept = {tp.partition for tp in a.proc._ownership.owned}
            a_before = a.proc.stats.outputs
            sent2 = await send_raw(kafka_bootstrap, source, [(s.encode(), v) for s, v in phase2])
            await wait_for(
                lambda: a.proc.stats.outputs - a_before + b.proc.stats.outputs >= len(phase2),
                60,
                "phase 2 on A and B",
                b,
            )
            a_phase2 = a.proc.stats.outputs - a_before
            b_phase2 = b.proc.stats.outputs
    assert a_phase2 > 0 and b_phase2 > 0, (a_phase2, b_phase2)
    assert a.proc.stats.assignments == 2 and b.proc.stats.assignments == 1

    partition_of = {s.key.decode(): s.partition for s in sent1 + sent2 if s.key is not None}
    total = len(phase1) + len(phase2)
    got = outputs_by_key(await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total))
    expected = {(f"s{i}", seq) for i in range(STREAMS) for seq in range(2 * PHASE)}
    assert set(got) == expected
    assert all(len(ys) == 1 for ys in got.values()), "a record was processed twice"

    full = reference_outputs(tiny_model, [v for _, v in phase1 + phase2])
    fresh = reference_outputs(tiny_model, [v for _, v in phase2])
    moved = 0
    for (stream, seq), (y,) in got.items():
        stays = partition_of[stream] in kept
        if seq < PHASE or stays:
            # Phase 1 everywhere, and streams whose partition stayed on A: continuous state.
            np.testing.assert_allclose(y, full[(stream, seq)], rtol=1e-5, atol=1e-6)
        else:
            # Moved to B: restarted from the initial state at its first phase-2 record.
            np.testing.assert_allclose(y, fresh[(stream, seq)], rtol=1e-5, atol=1e-6)
            moved += 1
    assert moved > 0


async def test_members_joining_and_leaving_mid_stream_lose_nothing(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    """Rebalances while records are queued and in flight (a slow engine keeps the pipeline
    full): B joins mid-stream, then A leaves mid-stream. Every input still gets an output
    (at-least-once: duplicates allowed, none lost), nothing is dead-lettered."""
    source = await topic_factory(partitions=4, prefix="in")
    out = await topic_factory(partitions=2, prefix="out")
    streams, steps = 24, 100

    def slow_engine(options):  # type: ignore[no-untyped-def]
        engine = build_engine(options)
        inner = engine.process

        def process(batch):  # type: ignore[no-untyped-def]
            time.sleep(0.01)
            return inner(batch)

        engine.process = process  # type: ignore[method-assign]
        return engine

    settings = settings_for(
        kafka_bootstrap, tiny_model, [source], out, unique_group,
        max_batch=16, queue_max_records=64, queue_low_records=16,
    )  # fmt: skip
    producing = asyncio.create_task(
        produce(kafka_bootstrap, source, streams=streams, shape=(4,), count=streams * steps,
                rate=600)
    )  # fmt: skip
    async with running(settings, engine_factory=slow_engine) as a:
        await wait_for(lambda: a.proc.stats.outputs > 200, 60, "A under way", a)
        async with running(settings, engine_factory=slow_engine) as b:
            await wait_for(lambda: b.proc.stats.outputs > 200, 60, "B under way", b)
            assert not producing.done(), "input finished before the rebalances"
            a.stop.set()  # A leaves mid-stream: B takes over its partitions
            await asyncio.wait_for(a.task, 60)
            await producing
            await wait_for(
                lambda: a.proc.stats.outputs + b.proc.stats.outputs >= streams * steps,
                90,
                "every record processed",
                b,
            )
    assert a.proc.stats.assignments >= 2 and b.proc.stats.assignments >= 2
    assert a.proc.stats.dead_letters == b.proc.stats.dead_letters == 0
    total = a.proc.stats.outputs + b.proc.stats.outputs
    got = outputs_by_key(await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total))
    expected = {(f"s{i}", seq) for i in range(streams) for seq in range(steps)}
    assert set(got) == expected
