"""The metrics endpoint of a running processor: counters move, health and readiness."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from kafka_helpers import (  # type: ignore[import-not-found]
    free_port,
    no_leftover_tasks,
    running,
    send_synthetic,
    settings_for,
    synthetic_records,
    tiny_model,
    wait_for,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["no_leftover_tasks", "tiny_model"]
pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples: dict, name: str) -> float:  # type: ignore[type-arg]
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_metrics_endpoint_shows_counters_moving_during_a_run(
    kafka_bootstrap: str, topic_factory, unique_group: str, tiny_model: str
) -> None:
    """Two scrapes, each after a known number of records was answered: the counters equal
    those numbers, so they moved between the scrapes by exactly the second batch."""
    source = await topic_factory(partitions=2, prefix="in")
    out = await topic_factory(partitions=1, prefix="out")
    port = free_port()
    settings = settings_for(
        kafka_bootstrap, tiny_model, [source], out, unique_group,
        metrics_port=port, metrics_host="127.0.0.1",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    streams, steps = 20, 5
    first_half = synthetic_records(streams, steps, seed=1)
    second_half = synthetic_records(streams, steps, seed=2, start_seq=steps)
    async with running(settings, CollectorRegistry()) as run:
        await wait_for(lambda: run.proc.ready, 60, "readiness", run)
        assert (await asyncio.to_thread(_get, f"{base}/readyz"))[0] == 200
        assert (await asyncio.to_thread(_get, f"{base}/healthz")) == (200, "ok\n")
        scrapes = []
        done = 0
        for half in (first_half, second_half):
            await send_synthetic(kafka_bootstrap, source, half)
            done += len(half)
            await wait_for(lambda n=done: run.proc.stats.outputs >= n, 60, f"{done} outputs", run)
            status, body = await asyncio.to_thread(_get, f"{base}/metrics")
            assert status == 200
            scrapes.append(_samples(body))
        # The lag gauges are refreshed after each periodic commit (every commit interval): a
        # run this short may not have had one since its assignment yet.
        await wait_for(
            lambda: bool(run.proc.metrics.consumer_lag.collect()[0].samples),
            10,
            "the consumer lag gauges",
            run,
        )
        lag = _samples((await asyncio.to_thread(_get, f"{base}/metrics"))[1])
    first, last = scrapes
    for samples, n in ((first, len(first_half)), (last, done)):
        assert _total(samples, "lstm_stream_records_in_total") == n
        assert _total(samples, "lstm_stream_records_out_total") == n
        assert _total(samples, "lstm_stream_end_to_end_latency_seconds_count") == n
    for name in ("lstm_stream_batch_records_count", "lstm_stream_step_seconds_count"):
        assert _total(last, name) > _total(first, name) > 0, name
    assert _total(last, "lstm_stream_batch_records_sum") == done
    assert _total(last, "lstm_stream_active_streams") == streams
    assert _total(last, "lstm_stream_cache_capacity") == settings.engine.cache_capacity
    assert _total(last, "lstm_stream_rebalances_total") >= 1
    assert _total(last, "lstm_stream_assigned_partitions") == 2
    assert any(n == "lstm_stream_consumer_lag_records" for n, _ in lag)
    # The server is gone with the processor.
    with pytest.raises(OSError):
        await asyncio.to_thread(_get, f"{base}/healthz")
