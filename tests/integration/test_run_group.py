"""Two processors in one consumer group share the partitions and together produce every
output, each stream's in seq order; a rebalance keeps the states of partitions that stay, and
the streams of partitions that move carry on from the state the old owner checkpointed."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from kafka_helpers import (  # type: ignore[import-not-found]
    SteppedProducer,
    assert_outputs_in_seq_order,
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

from processor.engine.build import build_engine

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
        assert len(a.proc.ownership.owned) == 4

        async with running(settings) as b:
            await wait_for(
                lambda: (
                    a.proc.ready
                    and b.proc.ready
                    and len(a.proc.ownership.owned) == 2
                    and len(b.proc.ownership.owned) == 2
                ),
                60,
                "a balanced assignment",
                b,
            )
            kept = {tp.partition for tp in a.proc.ownership.owned}
            # However many rounds the rebalance took (a slow member can make it two), the
            # group is settled now; the phase-2 references below hold only if it stays so.
            settled = (a.proc.stats.assignments, b.proc.stats.assignments)
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
            assert (a.proc.stats.assignments, b.proc.stats.assignments) == settled, (
                "the group rebalanced again during phase 2"
            )
    assert a_phase2 > 0 and b_phase2 > 0, (a_phase2, b_phase2)
    # A was assigned alone, then again when B joined; B at least once.
    assert settled[0] >= 2 and settled[1] >= 1, settled

    partition_of = {s.key.decode(): s.partition for s in sent1 + sent2 if s.key is not None}
    total = len(phase1) + len(phase2)
    records = await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total)
    got = outputs_by_key(records)
    expected = {(f"s{i}", seq) for i in range(STREAMS) for seq in range(2 * PHASE)}
    assert set(got) == expected
    assert all(len(ys) == 1 for ys in got.values()), "a record was processed twice"
    # Phase 2 of a moved stream came from B, after A's phase 1 outputs: still in seq order.
    order = assert_outputs_in_seq_order(records)
    assert all(seqs == list(range(2 * PHASE)) for seqs in order.values())

    # Every stream's state is continuous, also across the move of its partition to B: B
    # restored it from the state topic (A checkpointed it on revocation).
    full = reference_outputs(tiny_model, [v for _, v in phase1 + phase2])
    moved = 0
    for (stream, seq), (y,) in got.items():
        np.testing.assert_allclose(y, full[(stream, seq)], rtol=1e-5, atol=1e-6)
        moved += seq >= PHASE and partition_of[stream] not in kept
    assert moved > 0


async def test_members_joining_and_leaving_mid_stream_lose_nothing(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    """Rebalances while records are queued and in flight: input arrives faster than one
    member's slow engine takes it (so the pipeline stays full and paused) for as long as the
    test runs: B joins mid-stream, then A leaves mid-stream. Every input still gets an
    output (at-least-once: re-deliveries allowed, none lost), each stream's first outputs in
    seq order, nothing is dead-lettered."""
    source = await topic_factory(partitions=4, prefix="in")
    out = await topic_factory(partitions=2, prefix="out")
    streams = 24
    # One member: at most 16 records per 0.1 s (160/s); the input: 24 records per ~0.1 s.
    batch_delay_s, step_interval_s = 0.1, 0.1

    def slow_engine(options):  # type: ignore[no-untyped-def]
        engine = build_engine(options)
        inner = engine.process

        def process(batch):  # type: ignore[no-untyped-def]
            time.sleep(batch_delay_s)
            return inner(batch)

        engine.process = process  # type: ignore[method-assign]
        return engine

    settings = settings_for(
        kafka_bootstrap, tiny_model, [source], out, unique_group,
        max_batch=16, queue_max_records=64, queue_low_records=16,
    )  # fmt: skip
    producing = SteppedProducer(kafka_bootstrap, source, streams, step_interval_s)
    try:
        async with running(settings, engine_factory=slow_engine) as a:
            await wait_for(lambda: a.proc.stats.outputs > 200, 60, "A under way", a)
            async with running(settings, engine_factory=slow_engine) as b:
                await wait_for(
                    lambda: b.proc.stats.outputs > 200 and len(a.proc.ownership.owned) < 4,
                    60,
                    "B under way",
                    b,
                )
                # The pipeline was full (paused at the high-water mark) when B joined.
                assert a.proc.stats.pauses >= 1
                assert not producing.task.done(), producing.task
                a.stop.set()  # A leaves mid-stream: B takes over its partitions
                await asyncio.wait_for(a.task, 60)
                await wait_for(
                    lambda: b.proc.ready and len(b.proc.ownership.owned) == 4, 60, "B alone", b
                )
                # Input still arrives after the second rebalance.
                await producing.wait_steps(producing.steps + 2)
                steps = await producing.stop()
                await wait_for(
                    lambda: a.proc.stats.outputs + b.proc.stats.outputs >= streams * steps,
                    120,
                    "every record processed",
                    b,
                )
    finally:
        await producing.stop()
    assert a.proc.stats.assignments >= 2 and b.proc.stats.assignments >= 2
    assert a.proc.stats.dead_letters == b.proc.stats.dead_letters == 0
    total = a.proc.stats.outputs + b.proc.stats.outputs
    records = await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total)
    got = outputs_by_key(records)
    expected = {(f"s{i}", seq) for i in range(streams) for seq in range(steps)}
    assert set(got) == expected
    order = assert_outputs_in_seq_order(records, redelivered=True)
    assert set(order) == {f"s{i}" for i in range(streams)}
