"""What the Kafka benchmarks set up around a run: a random-weight LSTM model file
(:func:`make_lstm_model`), synthetic model input (:func:`synthetic_steps`), input records
produced to a topic the way the runtime writes (:func:`produce_records`), a run's fresh
topics (:func:`bench_topics`) and the command line the modules that run alone share
(:func:`module_parser`).

The records are made from the wire-format encoder (:func:`processor.codec.encode_input`)
and written with the runtime's own :class:`~processor.kafka.io.output.OutputWriter` and
producer settings, so the benchmarks depend on the library, not on any command of the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, NamedTuple

import numpy as np

#: Outstanding produce batches before the producer waits for acknowledgements (bounds memory).
_MAX_PENDING_BATCHES: Final = 256


def make_lstm_model(path: str, *, features: int = 32, units: int = 256, layers: int = 2,
                    head: int = 8, seed: int = 0) -> str:  # fmt: skip
    """Save a random-weight LSTM stack (the benchmark's 2x256-on-32 by default) to ``path``
    (a ``.keras`` file) and return ``path``."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, features))
    h = inp
    for _ in range(layers):
        h = keras.layers.LSTM(units, return_sequences=True)(h)
    keras.Model(inp, keras.layers.Dense(head)(h)).save(path)
    return path


def synthetic_steps(
    streams: int, shape: tuple[int, ...], dtype: str, *, seed: int = 1
) -> Iterator[np.ndarray]:
    """Endless steps of synthetic input, one ``[streams, *shape]`` array of ``dtype`` per
    step: standard-normal values for float dtypes, uniform over the range for integer ones
    (frames). Deterministic for a seed; the values only need to be valid model input."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    while True:
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            yield rng.integers(info.min, info.max, (streams, *shape), dtype=dt, endpoint=True)
        else:
            yield rng.standard_normal((streams, *shape), dtype=np.float32).astype(dt, copy=False)


async def produce_records(
    bootstrap: str,
    topic: str,
    *,
    records: int,
    streams: int,
    shape: tuple[int, ...],
    dtype: str = "float32",
    stream_prefix: str = "s",
    encoding: str = "raw",
) -> tuple[float, int]:
    """Write ``records`` input records of ``streams`` streams (ids ``{stream_prefix}0..``,
    key = stream id, ``seq`` from 0, step-major, ``ts`` = now) to ``topic``, as fast as the
    broker takes them. Returns the produce rate in records/s once every record is
    acknowledged, and the records' bytes (values); raises what aiokafka raises when a send
    fails.

    ``encoding`` ``jpeg`` or ``png`` sends uint8 image steps as camera frames
    (:func:`processor.codec.images.encode_image_input`); their content is that of ``produce
    --kind frames`` (a moving bar over low noise), which compresses like a camera image
    rather than like uniform noise.

    Uses the runtime's producer settings (:func:`processor.kafka.io.clients.client_kwargs`) and
    its batching writer, so the records reach the broker in the same way outputs do."""
    from aiokafka import AIOKafkaProducer

    from processor.codec import encode_input
    from processor.codec.images import encode_image_input
    from processor.demo.synthetic import SyntheticInput
    from processor.kafka.io.clients import client_kwargs
    from processor.kafka.io.output import OutputWriter

    _, producer_kw = client_kwargs(bootstrap, "unused", {})
    producer = AIOKafkaProducer(**producer_kw)
    await producer.start()
    names = [f"{stream_prefix}{i}" for i in range(streams)]
    writer = OutputWriter(producer, topic)
    pending: list[asyncio.Future[Any]] = []
    sent = size = 0
    t0 = time.perf_counter()
    steps: Iterator[np.ndarray] = synthetic_steps(streams, shape, dtype)
    if encoding != "raw":
        frames = SyntheticInput("frames", shape, streams)
        steps = (frames.step(seq) for seq in itertools.count())

    def encode(stream: str, seq: int, x: np.ndarray, ts: int) -> bytes:
        if encoding == "raw":
            return encode_input(stream, seq, x, ts=ts)
        return encode_image_input(stream, seq, x, encoding, ts=ts)

    try:
        for seq, xs in enumerate(steps):
            if sent >= records:
                break
            n = min(streams, records - sent)
            ts = int(time.time() * 1000)
            batch = [(names[i], encode(names[i], seq, xs[i], ts)) for i in range(n)]
            size += sum(len(v) for _, v in batch)
            pending += await writer.write(batch)
            sent += n
            if len(pending) > _MAX_PENDING_BATCHES:
                await asyncio.gather(*pending)
                pending.clear()
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    seconds = time.perf_counter() - t0
    return (sent / seconds if seconds > 0 else float("inf")), size


class BenchTopics(NamedTuple):
    """The names of one bench run's topics and group (see :func:`bench_topics`)."""

    source: str
    out: str
    dlq: str
    group: str
    state: str  # the group's default state topic, made by the processor when it is durable


@contextlib.asynccontextmanager
async def bench_topics(
    bootstrap: str, prefix: str, partitions: int, *, with_state: bool = True
) -> AsyncIterator[BenchTopics]:
    """Fresh input, output and dead-letter topics named ``<prefix>-in-<tag>``,
    ``<prefix>-out-<tag>`` and ``<prefix>-out-<tag>-dlq`` (a random tag; ``partitions`` each,
    created and every partition with a leader before this yields), the group
    ``<prefix>-<tag>`` and its default state topic's name. On exit they are deleted, the
    state topic too when ``with_state`` (the processor created it)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from processor.kafka.io.topics import prepare_topics

    tag = uuid.uuid4().hex[:8]
    source, out, group = f"{prefix}-in-{tag}", f"{prefix}-out-{tag}", f"{prefix}-{tag}"
    topics = BenchTopics(source, out, f"{out}-dlq", group, f"{group}-{source}-state")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Returns once every partition of the new topics has a leader.
        await prepare_topics(
            admin,
            input_topics=(source,),
            output_topics=(out, topics.dlq),
            partitions=partitions,
            create_inputs=True,
        )
        yield topics
    finally:
        try:
            await admin.delete_topics(
                [source, out, topics.dlq, *([topics.state] if with_state else [])]
            )
        finally:
            await admin.close()


def module_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments every Kafka benchmark module's own command line shares: broker, model,
    records, streams, TensorFlow threads."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap-servers", required=True, help="a broker to use")
    parser.add_argument(
        "--model", default=None, help="model file (default: a random 2x256 LSTM on 32 features)"
    )
    parser.add_argument("--records", type=int, default=200_000, help="records (default 200000)")
    parser.add_argument("--streams", type=int, default=2048, help="streams (default 2048)")
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op threads (default 2)")
    return parser
