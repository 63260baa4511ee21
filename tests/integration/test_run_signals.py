"""``lstm-stream run`` as a subprocess: SIGTERM while input is still arriving drains,
commits exactly what it produced and exits 0; a restart then completes the work -- every
input has exactly one output (nothing lost, and after a graceful stop nothing re-delivered),
and each stream's outputs are in seq order."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka_helpers import (  # type: ignore[import-not-found]
    RunProcess,
    SteppedProducer,
    assert_outputs_in_seq_order,
    no_leftover_tasks,
    outputs_by_key,
    read_topic,
    tiny_model,
)

from processor.codec import decode_output

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

STREAMS = 40
STEP_INTERVAL_S = 0.08  # one record per stream per step: ~500 records/s


async def test_sigterm_drains_commits_and_exits_0_and_a_restart_loses_nothing(
    kafka_bootstrap: str,
    topic_factory,
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    admin_client: AIOKafkaAdminClient,
) -> None:
    source = await topic_factory(partitions=3, prefix="in")
    out = await topic_factory(partitions=3, prefix="out")
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source, "--output-topic", out,
        "--group-id", unique_group, "--model", tiny_model, "--max-batch", "64",
        "--cache-capacity", "1024", "--queue-max-records", "512", "--commit-interval-ms",
        "200", "--threads", "1", "--log-level", "INFO",
    ]  # fmt: skip

    first = RunProcess(args, tmp_path / "run1.log")
    producing: SteppedProducer | None = None
    try:
        await first.wait_ready()
        producing = SteppedProducer(kafka_bootstrap, source, STREAMS, STEP_INTERVAL_S)
        # SIGTERM once the processor is under way, while input is still being produced.
        deadline = time.monotonic() + 60
        while await first.outputs_acked() < 300:
            assert time.monotonic() < deadline, first.text()
            assert not producing.task.done(), producing.task
            await asyncio.sleep(0.1)
        rc = await first.terminate()
        # Input that arrives after the stop: only the restart can answer it.
        await producing.wait_steps(producing.steps + 2)
    finally:
        steps = await producing.stop() if producing is not None else 0
        first.kill()
    log1 = first.log.read_text()
    assert rc == 0, log1[-5000:]
    assert "SIGTERM received: draining" in log1
    assert "drained:" in log1 and "stopped cleanly" in log1
    total = STREAMS * steps

    def seen(records: list) -> set[tuple[str, int]]:  # type: ignore[type-arg]
        return {(d["stream"], d["seq"]) for d in map(decode_output, (r.value for r in records))}

    first_outputs = await read_topic(kafka_bootstrap, out, until=lambda rs: True, settle=1.0)
    partial = seen(first_outputs)
    assert_outputs_in_seq_order(first_outputs)
    # Under way (>= 300 outputs) and not past the end: at least two steps came after the exit.
    assert 300 <= len(partial) <= total - 2 * STREAMS, (len(partial), total)

    # The graceful stop committed exactly what it produced: per input partition, the
    # committed offset is the end of the prefix of records that got outputs, and the first
    # run's outputs are exactly the inputs below the committed offsets.
    inputs = await read_topic(kafka_bootstrap, source, until=lambda rs: len(rs) >= total)
    where = {(d["stream"], d["seq"]): (r.partition, r.offset) for r, d in _decoded(inputs)}
    committed = {
        tp.partition: meta.offset
        for tp, meta in (await admin_client.list_consumer_group_offsets(unique_group)).items()
        if tp.topic == source
    }
    for p in range(3):
        done = sorted(where[k][1] for k in partial if where[k][0] == p)
        assert done == list(range(len(done))), f"partition {p}: outputs not a prefix"
        assert max(committed.get(p, 0), 0) == len(done), (p, committed, len(done))
    below = {k for k, (p, offset) in where.items() if offset < max(committed.get(p, 0), 0)}
    assert below == partial

    second = RunProcess(args, tmp_path / "run2.log")
    try:
        await second.wait_ready()
        records = await read_topic(
            kafka_bootstrap, out, until=lambda rs: len(seen(rs)) >= total, timeout=90
        )
        rc2 = await second.terminate()
    finally:
        second.kill()
    assert rc2 == 0, second.log.read_text()[-5000:]
    got = outputs_by_key(records)
    expected = {(f"s{i}", seq) for i in range(STREAMS) for seq in range(steps)}
    assert set(got) == expected  # every input has an output, nothing else
    duplicates = {k: len(v) for k, v in got.items() if len(v) > 1}
    # The restart resumed at the committed offsets: nothing was delivered twice.
    assert duplicates == {}
    # Each stream's outputs in seq order across both runs (the restart continued after the
    # first run's last output of the stream, in the same partition).
    order = assert_outputs_in_seq_order(records)
    assert all(seqs == list(range(steps)) for seqs in order.values())


def _decoded(records: list) -> list:  # type: ignore[type-arg]
    """(record, decoded input map) for every record of an input topic."""
    return [(r, msgpack.unpackb(r.value, raw=False)) for r in records]
