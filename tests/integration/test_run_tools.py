"""The user tools against a real broker: ``lstm-stream produce`` writes valid input records
(key = stream id, seq increasing per stream) and ``lstm-stream tail`` decodes outputs and
dead letters."""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import redirect_stdout

import msgpack
import pytest
from kafka_helpers import (  # type: ignore[import-not-found]
    no_leftover_tasks,
    read_topic,
    running,
    send_raw,
    settings_for,
    tiny_model,
    wait_for,
)

from processor.cli import main as cli_main
from processor.codec import RecordDecoder

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run ``lstm-stream ARGV`` in this process (in a thread: it runs its own event loop)."""
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(argv)
    return rc, buf.getvalue()


async def test_produce_then_run_then_tail_outputs_and_dead_letters(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    source = await topic_factory(partitions=2, prefix="in")
    out = await topic_factory(partitions=1, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    rc, text = await asyncio.to_thread(
        _cli,
        ["produce", "--bootstrap-servers", kafka_bootstrap, "--topic", source, "--model",
         tiny_model, "--streams", "6", "--count", "30", "--rate", "0"],
    )  # fmt: skip
    assert rc == 0 and "produced 30 records" in text, text

    inputs = await read_topic(kafka_bootstrap, source, until=lambda rs: len(rs) >= 30)
    decoder = RecordDecoder((4,), "float32")
    per_stream: dict[str, list[int]] = {}
    for r in sorted(inputs, key=lambda r: (r.partition, r.offset)):
        rec = decoder.decode(r.value, r.key)  # valid wire format, key = stream id
        per_stream.setdefault(rec.stream, []).append(rec.seq)
    assert sorted(per_stream) == [f"s{i}" for i in range(6)]
    assert all(seqs == list(range(5)) for seqs in per_stream.values()), per_stream

    await send_raw(kafka_bootstrap, source, [(b"s0", msgpack.packb([1, 2]))])
    settings = settings_for(kafka_bootstrap, tiny_model, [source], out, unique_group,
                            dlq_topic=dlq)  # fmt: skip
    async with running(settings) as run:
        await wait_for(lambda: run.proc.stats.outputs + run.proc.stats.dead_letters >= 31, 60,
                       "outputs and the dead letter", run)  # fmt: skip

    rc, text = await asyncio.to_thread(
        _cli,
        ["tail", "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--from-beginning",
         "--max-records", "30", "--idle-timeout", "20"],
    )  # fmt: skip
    rows = [json.loads(line) for line in text.splitlines()]
    assert rc == 0 and len(rows) == 30
    assert all(r["kind"] == "output" and r["key"] == r["stream"] for r in rows)
    assert {(r["stream"], r["seq"]) for r in rows} == {
        (f"s{i}", s) for i in range(6) for s in range(5)
    }
    assert all(len(r["y"]) == 2 and r["shape"] == [2] for r in rows)
    # One output partition: tail prints it in offset order, each stream's outputs by seq.
    out_order: dict[str, list[int]] = {}
    for r in rows:
        out_order.setdefault(r["stream"], []).append(r["seq"])
    assert out_order == {f"s{i}": list(range(5)) for i in range(6)}, out_order

    rc, text = await asyncio.to_thread(
        _cli,
        ["tail", "--bootstrap-servers", kafka_bootstrap, "--topic", dlq, "--from-beginning",
         "--max-records", "1", "--idle-timeout", "20"],
    )  # fmt: skip
    [letter] = [json.loads(line) for line in text.splitlines()]
    assert rc == 0 and letter["kind"] == "dlq" and letter["reason"] == "not_a_map"
    assert letter["key"] == "s0" and letter["source"].startswith(f"{source}/")
