"""The /metrics, /healthz and /readyz HTTP server."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from processor.obs.metrics import Metrics
from processor.obs.server import MetricsServer


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_server_serves_metrics_health_and_readiness() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.records_in.labels("t").inc(7)
    ready = {"value": False}
    server = MetricsServer(reg, host="127.0.0.1", port=0, ready=lambda: ready["value"])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(f"{base}/metrics")
        assert status == 200 and 'lstm_stream_records_in_total{topic="t"} 7.0' in body
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/readyz")[0] == 503
        ready["value"] = True
        assert _get(f"{base}/readyz") == (200, "ready\n")
        assert _get(f"{base}/nope")[0] == 404
    finally:
        server.close()
        server.close()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.port
