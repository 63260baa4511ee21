"""A state topic written by one model and read by another with other state names or shapes:
``run`` refuses with one line (``--on-state-mismatch refuse``, the default) or starts those
streams from the initial state (``reset``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka_helpers import (  # type: ignore[import-not-found]
    RunProcess,
    no_leftover_tasks,
    outputs_by_key,
    read_topic,
    reference_outputs,
    running,
    save_lstm_model,
    send_synthetic,
    settings_for,
    synthetic_records,
    tiny_model,
    wait_for,
)

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = [pytest.mark.usefixtures("no_leftover_tasks"), pytest.mark.slow]

STREAMS, STEPS = 6, 3


@pytest.fixture(scope="module")
def wider_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Like ``tiny_model`` with LSTM(16): the same inputs, other state shapes."""
    return save_lstm_model(tmp_path_factory.mktemp("models") / "wider.keras", 16, seed=12)


async def _checkpoint_states_of(
    bootstrap: str, model: str, source: str, out: str, group: str
) -> list[tuple[str, bytes]]:
    """Run ``model`` over the first records until they are answered, then stop (a last
    checkpoint): the state topic then holds that model's states."""
    first = synthetic_records(STREAMS, STEPS)
    await send_synthetic(bootstrap, source, first)
    settings = settings_for(bootstrap, model, [source], out, group)
    async with running(settings) as run:
        await wait_for(lambda: run.proc.stats.outputs >= len(first), 60, "first outputs", run)
    return first


async def test_a_state_topic_of_another_model_is_refused_with_one_line(
    kafka_bootstrap: str,
    tiny_model: str,
    wider_model: str,
    topic_factory: Any,
    unique_group: str,
    tmp_path: Path,
) -> None:
    topic = await topic_factory(partitions=2)
    out = f"{topic}-out"
    await _checkpoint_states_of(kafka_bootstrap, tiny_model, topic, out, unique_group)
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", topic,
        "--output-topic", out, "--group-id", unique_group, "--model", wider_model,
        "--threads", "1",
    ]  # fmt: skip
    proc = RunProcess(args, tmp_path / "run.log")
    try:
        rc = await proc.wait(timeout=120)
    finally:
        proc.kill()
    text = proc.text()
    assert rc != 0, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, text  # one line says it all
    (line,) = errors
    assert "holds states of another model" in line
    assert f"{unique_group}-{topic}-state" in line  # which topic
    assert "[8]" in line and "[16]" in line  # what differs: the state shapes
    assert "--on-state-mismatch reset" in line  # and the way out


async def test_reset_starts_the_streams_of_another_model_from_the_initial_state(
    kafka_bootstrap: str,
    tiny_model: str,
    wider_model: str,
    topic_factory: Any,
    unique_group: str,
) -> None:
    topic = await topic_factory(partitions=2)
    out = f"{topic}-out"
    await _checkpoint_states_of(kafka_bootstrap, tiny_model, topic, out, unique_group)
    later = synthetic_records(STREAMS, STEPS, seed=1, start_seq=STEPS)
    await send_synthetic(kafka_bootstrap, topic, later)
    settings = settings_for(
        kafka_bootstrap,
        wider_model,
        [topic],
        out,
        unique_group,
        on_state_mismatch="reset",
    )
    async with running(settings) as run:
        await wait_for(lambda: run.proc.stats.outputs >= len(later), 60, "later outputs", run)
        skipped = run.proc.metrics.restore_skipped.labels("model_mismatch")._value.get()
    assert skipped == STREAMS  # one state record per stream, all of the other model
    records = await read_topic(
        kafka_bootstrap, out, until=lambda rs: len(rs) >= 2 * STREAMS * STEPS
    )
    got = {k: v for k, v in outputs_by_key(records).items() if k[1] >= STEPS}
    # The wider model saw only the later records, each stream from its initial state.
    fresh = reference_outputs(wider_model, [v for _, v in later])
    assert set(got) == set(fresh)
    for key, (y,) in got.items():
        np.testing.assert_allclose(y, fresh[key], rtol=1e-5, atol=1e-6)
