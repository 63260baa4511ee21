"""Records ``lstm-stream run`` writes to a real broker are what schemas/asyncapi.yaml says:
every output, dead letter and state record (and tombstone) read back from its topic is
exactly one of its channel's messages (payload against the referenced JSON Schema, key
against the Kafka binding's key schema, headers against the headers schema), and a dead
letter carries the rejected value and source its headers and payload describe.

The validator, :class:`AsyncApiContract`, lives in ``tests/deploy/test_deploy_asyncapi.py``
(which checks the document itself) and is loaded from there by path.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import msgpack
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from kafka_helpers import (
    FEATURES,
    no_leftover_tasks,
    read_topic,
    running,
    settings_for,
    tiny_model,
    wait_for,
)
from prometheus_client import CollectorRegistry

from processor.codec import encode_input
from processor.kafka.io.output import DLQ_HEADERS

__all__ = ["no_leftover_tasks", "tiny_model"]  # fixtures used by name below
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

ROOT = Path(__file__).resolve().parents[2]
MAX_RECORD_BYTES = 4096
DLQ_MAX_VALUE_BYTES = 32


def _contract_module() -> ModuleType:
    """tests/deploy/test_deploy_asyncapi.py as a module (under a name of its own, so that
    pytest collecting that file is not affected)."""
    name = "lstm_stream_asyncapi_contract"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "tests" / "deploy" / "test_deploy_asyncapi.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _x(value: float) -> np.ndarray:
    return np.full(FEATURES, value, np.float32)


#: Bad input records: (expected reason, key, value, headers). The not_a_map value is longer
#: than DLQ_MAX_VALUE_BYTES (cut), the oversize one longer than MAX_RECORD_BYTES (omitted).
BAD: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = [
    ("undecodable", b"bad-0", b"\xc1 not msgpack", []),
    ("not_a_map", b"bad-1", msgpack.packb(list(range(40))), []),
    ("missing_key", None, encode_input("nokey", 0, _x(1)), []),
    ("bad_stream_id", b"\xff\xfe", encode_input("x", 0, _x(1), include_stream=False), []),
    ("shape_mismatch", b"bad-4", encode_input("bad-4", 0, _x(1)[:2]), [("trace", b"t-4")]),
    ("oversize", b"bad-5", encode_input("bad-5", 0, np.zeros(2000, np.float32)), []),
]


async def test_records_on_every_topic_are_the_messages_the_asyncapi_document_describes(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    fresh_name: Callable[[str], str],
    unique_group: str,
    tiny_model: str,
) -> None:
    contract = _contract_module().AsyncApiContract()
    source = await topic_factory(partitions=2, prefix="in")
    out = await topic_factory(partitions=2, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    state = fresh_name("state")  # created by the processor, deleted after the test
    streams, steps = 4, 3
    plan: list[tuple[str | None, bytes | None, bytes, list[tuple[str, bytes]]]] = []
    for seq in range(steps):
        for i in range(streams):
            end = i == 0 and seq == steps - 1  # s0 ends: its state becomes a tombstone
            x, ts = _x(seq + i / 10), 1_700_000_000_000 + seq
            plan.append((None, f"s{i}".encode(), encode_input(f"s{i}", seq, x, ts=ts, end=end), []))
        plan.append(BAD[seq * 2])
        plan.append(BAD[seq * 2 + 1])

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    try:
        futures = [await producer.send(source, key=k, value=v, headers=h) for _, k, v, h in plan]
        sent = [await f for f in futures]
    finally:
        await producer.stop()
    where = {(m.partition, m.offset): item for m, item in zip(sent, plan, strict=True)}
    good = sum(reason is None for reason, *_ in plan)

    settings = settings_for(
        kafka_bootstrap,
        tiny_model,
        [source],
        out,
        unique_group,
        dlq_topic=dlq,
        state_topic=state,
        max_record_bytes=MAX_RECORD_BYTES,
        dlq_max_value_bytes=DLQ_MAX_VALUE_BYTES,
    )
    async with running(settings, CollectorRegistry()) as run:
        proc = run.proc
        await wait_for(
            lambda: proc.stats.outputs + proc.stats.dead_letters >= len(plan),
            30,
            "every record handled",
            run,
        )
    stats = run.proc.stats
    # Stopped gracefully: the last checkpoint (states of every stream) is written.
    assert (stats.outputs, stats.dead_letters) == (good, len(BAD))

    outputs = await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= good)
    assert len(outputs) == good
    for r in outputs:
        assert contract.match("output", r.key, r.value, r.headers) == "outputRecord"
        assert not r.headers  # the document: no headers
        assert msgpack.unpackb(r.value)["stream"].encode() == r.key

    letters = await read_topic(kafka_bootstrap, dlq, until=lambda rs: len(rs) >= len(BAD))
    assert len(letters) == len(BAD)
    seen = set()
    for r in letters:
        assert contract.match("deadLetter", r.key, r.value, r.headers) == "deadLetter"
        ours = {name: value.decode() for name, value in r.headers if name.startswith("lstm")}
        at = (int(ours[DLQ_HEADERS["partition"]]), int(ours[DLQ_HEADERS["offset"]]))
        reason, key, value, original_headers = where[at]
        seen.add(reason)
        assert ours[DLQ_HEADERS["reason"]] == reason
        assert ours[DLQ_HEADERS["topic"]] == source
        assert r.key == key
        # The original headers come first, then the processor's.
        assert list(r.headers[: len(original_headers)]) == original_headers
        # The payload: the original bytes, bounded as the document says.
        kept = b"" if reason == "oversize" else value[:DLQ_MAX_VALUE_BYTES]
        assert r.value == kept
        truncated = ours.get(DLQ_HEADERS["value_truncated"])
        assert truncated == (str(len(value)) if len(kept) < len(value) else None)
    assert seen == {reason for reason, *_ in BAD}

    stream_ids = {f"s{i}".encode() for i in range(streams)}
    states = await read_topic(
        kafka_bootstrap, state, until=lambda rs: {r.key for r in rs} >= stream_ids
    )
    last = {}
    for r in sorted(states, key=lambda r: (r.partition, r.offset)):
        kind = contract.match("state", r.key, r.value, r.headers)
        last[r.key] = (kind, r)
    assert set(last) == stream_ids
    for key, (kind, r) in last.items():
        if key == b"s0":
            assert kind == "stateTombstone"
        else:
            assert kind == "stateRecord" and not r.headers
            record = msgpack.unpackb(r.value)
            assert record["seq"] == steps - 1 and record["src"][:2] == [source, r.partition]
