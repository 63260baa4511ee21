"""The monitoring artefacts against a real Prometheus scraping a real ``lstm-stream run``.

A Prometheus server (the ``prometheus`` binary, scraping every second, evaluating the
project's deploy/prometheus/rules.yml every second) scrapes one exactly-once processor with a
state topic, a tiny device cache and host table (so streams are evicted, spilled to disk and
read back) and input that includes bad records (so dead letters have a reason). Every
recording rule and every dashboard panel query must then return at least one series: a
query that names a metric or label the processor never exports, or that can never have
data, shows up here. The processor's /metrics page also passes ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from kafka_helpers import (
    RunProcess,
    free_port,
    http_get,
    metric_total,
    send_raw,
    synthetic_records,
    tiny_model,
)

__all__ = ["tiny_model"]

ROOT = Path(__file__).resolve().parents[2]
STREAMS, STEPS = 64, 4  # 4x the device cache: evictions, host spills, disk spills
BAD = [b"\xc1not-msgpack-1", b"\xc1not-msgpack-2", b"\x93\x01\x02\x03"]  # undecodable, not a map
QUERY_DEADLINE_S = 45.0


def _queries_module() -> ModuleType:
    """tests/deploy/dashboard_queries.py (the same parsing of the rules and the dashboard as
    the static checks), loaded by path: tests/deploy is not on this folder's import path."""
    path = ROOT / "tests" / "deploy" / "dashboard_queries.py"
    spec = importlib.util.spec_from_file_location("dashboard_queries_live", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Q = _queries_module()


@pytest.fixture
def prometheus(tmp_path: Path, need_tool: Callable[[str], str]) -> Iterator[Callable[[int], str]]:
    """``start(target_port) -> base URL`` of a Prometheus scraping 127.0.0.1:target_port as
    job lstm-stream with the project's rules; stopped after the test."""
    binary = need_tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        port = free_port()
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "900ms",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(Q.RULES)],
            "scrape_configs": [
                {
                    "job_name": "lstm-stream",
                    "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                }
            ],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while http_get(f"{base}/-/ready")[0] != 200:
            if procs[-1].poll() is not None or time.monotonic() > deadline:
                log_text = (tmp_path / "prometheus.log").read_text()
                pytest.fail(f"prometheus did not start:\n{log_text}")
            time.sleep(0.1)  # a synchronous wait on the condition, with a deadline
        return base

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _series(base: str, query: str) -> int | str:
    """The number of series ``query`` returns now, or the error Prometheus gives."""
    status, body = http_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    if status != 200:
        return f"HTTP {status}: {body[:300]}"
    data = json.loads(body)
    if data.get("status") != "success":
        return str(data)
    return len(data["data"]["result"])


async def test_every_recording_rule_and_panel_query_has_data(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Awaitable[str]],
    fresh_name: Callable[[str], str],
    unique_group: str,
    tiny_model: str,
    tmp_path: Path,
    prometheus: Callable[[int], str],
    need_tool: Callable[[str], str],
) -> None:
    promtool = need_tool("promtool")
    source = await topic_factory(partitions=2, prefix="in")
    out = await topic_factory(partitions=2, prefix="out")
    dlq = await topic_factory(partitions=1, prefix="dlq")
    args = [
        "--bootstrap-servers", kafka_bootstrap, "--input-topic", source,
        "--output-topic", out, "--dlq-topic", dlq, "--group-id", unique_group,
        "--model", tiny_model, "--processing-guarantee", "exactly-once",
        "--state-topic", fresh_name("state"), "--state-dir", str(tmp_path / "state"),
        "--max-batch", "16", "--cache-capacity", "16", "--spill-capacity", "16",
        "--commit-interval-ms", "500", "--threads", "1",
    ]  # fmt: skip
    run = RunProcess(args, tmp_path / "run.log")
    try:
        base = prometheus(run.port)
        await run.wait_ready()
        records = synthetic_records(STREAMS, STEPS, seed=5)
        await send_raw(
            kafka_bootstrap,
            source,
            [(s.encode(), v) for s, v in records] + [(b"s0", v) for v in BAD],
        )
        want = len(records)
        await run.wait_until(
            lambda: (
                metric_total(http_get(run.url("/metrics"))[1], "lstm_stream_records_out_total")
                >= want
            ),
            60,
            f"{want} outputs",
        )

        queries = {f"record {name}": name for name in Q.recorded_names()}
        queries.update(
            {
                f"panel {where}": Q.substitute(expr)
                for where, expr in Q.panel_queries(Q.load_dashboard())
            }
        )
        empty: dict[str, int | str] = dict.fromkeys(queries, 0)
        deadline = time.monotonic() + QUERY_DEADLINE_S
        while empty and time.monotonic() < deadline:
            for where in list(empty):
                found = await asyncio.to_thread(_series, base, queries[where])
                if isinstance(found, int) and found > 0:
                    del empty[where]
                else:
                    empty[where] = found
            if empty:
                await asyncio.sleep(1)  # Prometheus scrapes and evaluates once a second
        assert not empty, (
            f"{len(empty)} of {len(queries)} queries returned no series after "
            f"{QUERY_DEADLINE_S:.0f} s:\n"
            + "\n".join(f"  {w}: {queries[w]}  -> {r}" for w, r in empty.items())
        )

        status, body = await asyncio.to_thread(http_get, run.url("/metrics"))
        assert status == 200
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        assert lint.returncode == 0, f"promtool check metrics:\n{lint.stdout}\n{lint.stderr}"
        assert await run.terminate() == 0
    finally:
        run.kill()
