"""``lstm-stream run`` on JPEG-encoded frames against a real broker: records written by
``produce --kind frames --encoding jpeg`` are decoded in the batch decode stage and every one
is answered, with outputs equal to replaying the same decoded frames as raw uint8 records;
a corrupt image and a decompression bomb go to the dead-letter topic with their reasons."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgpack
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
    wait_for,
)
from prometheus_client import CollectorRegistry

from processor.codec import RecordDecoder, encode_frame, encode_image_input, encode_input
from processor.demo.synthetic import SyntheticInput
from processor.kafka.io.output import DLQ_HEADERS
from processor.kafka.tools.produce import produce

__all__ = ["no_leftover_tasks"]  # fixture used by name below
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

SHAPE = (84, 84, 1)
STREAMS = 6
STEPS = 5
SEED = 3


@pytest.fixture(scope="module")
def frames_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny TimeDistributed CNN + LSTM on 84x84x1 uint8 frames, seeded, saved as .keras."""
    import keras

    keras.utils.set_random_seed(5)
    td = keras.layers.TimeDistributed
    inp = keras.Input((None, *SHAPE), dtype="uint8")
    h = td(keras.layers.Rescaling(1.0 / 255.0))(inp)
    h = td(keras.layers.Conv2D(4, 4, strides=4, activation="relu"))(h)
    h = td(keras.layers.Conv2D(4, 3, strides=3, activation="relu"))(h)
    h = td(keras.layers.Flatten())(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    h = keras.layers.LSTM(8, return_sequences=True)(h)
    out = keras.layers.Dense(2)(h)
    path = tmp_path_factory.mktemp("models") / "frames.keras"
    keras.Model(inp, out).save(path)
    return str(path)


def decoded_frames_as_raw_records() -> list[bytes]:
    """The frames ``produce`` writes (same generator, seed and order), JPEG-encoded and
    decoded again, as raw uint8 records: the reference the run must match."""
    gen = SyntheticInput("frames", SHAPE, STREAMS, SEED)
    decoder = RecordDecoder(SHAPE, "uint8")
    records = []
    for seq in range(STEPS):
        for i, x in enumerate(gen.step(seq)):
            jpeg = decoder.decode(encode_image_input(f"s{i}", seq, x, "jpeg"))
            records.append(encode_input(f"s{i}", seq, jpeg.x))
    return records


async def test_jpeg_frames_are_answered_like_their_decoded_pixels(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    unique_group: str,
    frames_model: str,
) -> None:
    source = await topic_factory(partitions=2, prefix="frames")
    out = await topic_factory(partitions=2, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    total = STREAMS * STEPS
    stats = await produce(
        kafka_bootstrap,
        source,
        streams=STREAMS,
        shape=SHAPE,
        kind="frames",
        count=total,
        seed=SEED,
        encoding="jpeg",
    )
    assert stats.records == total
    good = encode_frame(SyntheticInput("frames", SHAPE, 1, 9).step(0)[0], "jpeg")
    corrupt = good[:200] + bytes(len(good) - 200)  # header intact, scan zeroed
    bomb = bytearray(good)
    sof = bomb.find(b"\xff\xc0")
    bomb[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") * 2
    bad = {
        b"bad-corrupt": (corrupt, "image_undecodable"),
        b"bad-bomb": (bytes(bomb), "image_too_large"),
    }
    sent = await send_raw(
        kafka_bootstrap,
        source,
        [(key, _jpeg_record(key.decode(), data)) for key, (data, _) in bad.items()],
    )
    assert len(sent) == len(bad)

    registry = CollectorRegistry()
    settings = settings_for(
        kafka_bootstrap, frames_model, [source], out, unique_group, dlq_topic=dlq
    )
    async with running(settings, registry) as run:
        await wait_for(
            lambda: run.proc.stats.outputs + run.proc.stats.dead_letters >= total + len(bad),
            60,
            "every record answered",
            run,
        )
    proc = run.proc
    assert (proc.stats.outputs, proc.stats.dead_letters) == (total, len(bad))

    outputs = outputs_by_key(
        await read_topic(kafka_bootstrap, out, until=lambda rs: len(rs) >= total)
    )
    reference = reference_outputs(frames_model, decoded_frames_as_raw_records())
    assert set(outputs) == set(reference) and len(reference) == total
    for key, ys in outputs.items():
        assert len(ys) == 1, key
        np.testing.assert_allclose(ys[0], reference[key], rtol=1e-4, atol=1e-5, err_msg=str(key))

    letters = await read_topic(kafka_bootstrap, dlq, until=lambda rs: len(rs) >= len(bad))
    assert len(letters) == len(bad)
    for r in letters:
        headers = {k: v.decode() for k, v in r.headers}
        assert r.key is not None
        data, reason = bad[r.key]
        assert headers[DLQ_HEADERS["reason"]] == reason, headers
        assert headers[DLQ_HEADERS["detail"]]
        assert r.value == _jpeg_record(r.key.decode(), data)


def _jpeg_record(stream: str, data: bytes) -> bytes:
    packed: bytes = msgpack.packb(
        {"stream": stream, "seq": 0, "x": data, "encoding": "jpeg"}, use_bin_type=True
    )
    return packed
