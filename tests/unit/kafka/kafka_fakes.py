"""In-process fakes of the Kafka clients and a Processor harness over them, shared by the
stage tests and the exactly-once tests (imported as a plain module: pytest puts this
folder on ``sys.path``).

* :class:`FakeConsumer` -- a log of records per partition, handed out by ``getmany``;
* :class:`FakeProducer` -- keeps every sent record per topic, acknowledgements on demand;
* :class:`Harness` -- a Processor started on them with a tiny real model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from processor.codec import decode_output, encode_input
from processor.config.engine_options import EngineOptions
from processor.engine.build import build_engine
from processor.kafka.runtime import Processor
from processor.kafka.settings import Settings
from processor.model import KerasStepModel

IN = "in"
TP0, TP1 = TopicPartition(IN, 0), TopicPartition(IN, 1)
STATE = "lstm-stream-in-state"  # the default state topic of group lstm-stream, topic "in"


def consumer_record(tp: TopicPartition, offset: int, key: bytes | None, value: bytes | None) -> Any:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=1_000 + offset,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=[],
    )


class FakeConsumer:
    """A log of records per partition, handed out by ``getmany`` from each partition's
    position in offset order; ``seek`` moves a position; pause, resume and commits are
    recorded. ``committed_delay`` makes ``committed()`` take that long, like a round trip
    to the group coordinator."""

    def __init__(self, partitions: tuple[TopicPartition, ...] = (TP0, TP1)) -> None:
        self.log: dict[TopicPartition, list[Any]] = {tp: [] for tp in partitions}
        self.read_to = dict.fromkeys(partitions, 0)  # next offset getmany hands out
        self.held: set[TopicPartition] = set()  # partitions getmany hands nothing of (yet)
        self._paused: set[TopicPartition] = set()
        self.pauses: list[set[TopicPartition]] = []
        self.offsets: dict[TopicPartition, int] = {}  # the group's committed offsets
        self.commits: list[dict[TopicPartition, int]] = []
        self.committed_delay = 0.0
        self.arrived = asyncio.Event()

    @property
    def next_offset(self) -> dict[TopicPartition, int]:
        return {tp: len(records) for tp, records in self.log.items()}

    @property
    def buffered(self) -> dict[TopicPartition, list[Any]]:
        """Records not yet handed out, per partition."""
        return {
            tp: [r for r in records[self.read_to[tp] :] if r is not None]
            for tp, records in self.log.items()
        }

    def add(self, tp: TopicPartition, key: bytes | None, value: bytes | None) -> int:
        offset = len(self.log[tp])
        self.log[tp].append(consumer_record(tp, offset, key, value))
        self.arrived.set()
        return offset

    def add_marker(self, tp: TopicPartition) -> int:
        """A transaction's commit marker: it takes an offset (and moves the high watermark)
        but is never handed out; reading past it moves the position, as aiokafka does."""
        offset = len(self.log[tp])
        self.log[tp].append(None)
        return offset

    async def position(self, tp: TopicPartition) -> int:
        return self.read_to[tp]

    def assignment(self) -> set[TopicPartition]:
        return set(self.log)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self._paused |= set(tps)
        self.pauses.append(set(tps))

    def resume(self, *tps: TopicPartition) -> None:
        self._paused -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.read_to[tp] = offset

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.log[tp]) for tp in tps}

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        left = max_records if max_records is not None else 1 << 30
        out: dict[TopicPartition, list[Any]] = {}
        for tp in tps or sorted(self.log):
            if tp in self._paused or tp in self.held or left <= 0:
                continue
            end = self.read_to[tp]
            got = []
            while end < len(self.log[tp]) and len(got) < left:
                if self.log[tp][end] is not None:  # a marker is skipped, not handed out
                    got.append(self.log[tp][end])
                end += 1
            self.read_to[tp] = end
            left -= len(got)
            if got:
                out[tp] = got
        if not out and timeout_ms:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout_ms / 1000)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.offsets.update(offsets)
        self.commits.append(dict(offsets))

    async def committed(self, tp: TopicPartition) -> int | None:
        await asyncio.sleep(self.committed_delay)
        return self.offsets.get(tp)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log[tp])

    async def stop(self) -> None:
        pass


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes | None, list[Any]]] = []

    def append(
        self, *, key: bytes, value: bytes | None, timestamp: int | None, headers: Any = None
    ) -> object:
        # aiokafka's C batch builder takes headers as a list only.
        assert headers is None or type(headers) is list, f"headers {type(headers)}"
        self.records.append((key, value, list(headers or ())))
        return object()

    def close(self) -> None:
        pass


class FakeProducer:
    """Keeps every sent record per topic. Sends resolve at once unless ``hold`` is set:
    then their futures wait until :meth:`release` (acknowledgement order is the test's)."""

    def __init__(self, partitions: int = 2) -> None:
        self.sent: dict[str, list[tuple[int | None, bytes | None, bytes | None, list[Any]]]] = {}
        self._partitions = partitions
        self.hold = False
        self.held: list[asyncio.Future[Any]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self._partitions))

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    def _future(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append(fut)
        else:
            fut.set_result(None)
        return fut

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        for key, value, headers in batch.records:
            self.sent.setdefault(topic, []).append((partition, key, value, headers))
        return self._future()

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> Any:
        self.sent.setdefault(topic, []).append((None, key, value, list(headers or [])))
        return self._future()

    def release(self, index: int) -> None:
        self.held[index].set_result(None)

    async def stop(self) -> None:
        pass


def input_value(stream: str, seq: int, x: float = 0.5) -> bytes:
    return encode_input(stream, seq, np.full(2, x, np.float32))


class Harness:
    """A Processor started on fakes with a tiny real model (2 features, LSTM of 4)."""

    def __init__(self, make_model: Any, **settings: Any) -> None:
        model = make_model(cells=("lstm",), features=2, units=4)
        step_model = KerasStepModel(model.model)
        opts = EngineOptions(model="unused.keras", max_batch=8, cache_capacity=64, threads=0)
        s = Settings(
            input_topics=(IN,),
            output_topic="out",
            engine=opts,
            max_delay_ms=settings.pop("max_delay_ms", 1.0),
            queue_max_records=settings.pop("queue_max_records", 64),
            commit_interval_ms=settings.pop("commit_interval_ms", 50),
            drain_timeout=10.0,
            **settings,
        )
        self.consumer = FakeConsumer()
        self.producer = FakeProducer()
        self.proc = Processor(
            s,
            registry=CollectorRegistry(),
            engine_factory=lambda o: build_engine(o, step_model),
            metrics_server=False,
        )

    async def start(self) -> None:
        await self.proc.start_with(self.consumer, self.producer)  # type: ignore[arg-type]
        await self.proc.group.on_assigned({TP0, TP1})

    def outputs(self) -> list[tuple[str, int]]:
        out = []
        for _, key, value, _ in self.producer.sent.get("out", []):
            rec = decode_output(value)
            assert key == rec["stream"].encode()
            out.append((rec["stream"], rec["seq"]))
        return out


async def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
