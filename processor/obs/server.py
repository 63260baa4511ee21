"""The HTTP server of ``/metrics``, ``/healthz`` (the process is alive) and ``/readyz``
(assigned and running), from a thread with the standard library's WSGI server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not keep the process alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP from a daemon thread.

    ``ready`` is called on each ``/readyz`` request (from the server thread: it must only
    read simple state). ``port=0`` binds an ephemeral port (see :attr:`port`); the CLI uses
    0 to mean "no server" and does not create one.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "0.0.0.0",
        port: int = 0,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.server_address[1])

    def _app(self) -> Callable[..., Iterable[bytes]]:
        metrics_app = make_wsgi_app(self._registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                try:
                    ready = bool(self._ready())
                except Exception:  # a failing probe means "not ready", never a 500 loop
                    log.exception("readiness check failed")
                    ready = False
                status = "200 OK" if ready else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [b"ready\n" if ready else b"not ready\n"]
            if path in ("/metrics", "/"):
                result: Iterable[bytes] = metrics_app(environ, start_response)
                return result
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]

        return app

    def start(self) -> None:
        """Bind and serve from a daemon thread. Raises ``OSError`` if the port is taken."""
        if self._server is not None:
            return
        server = make_server(
            self._host,
            self._requested_port,
            self._app(),
            server_class=_Server,
            handler_class=_QuietHandler,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="lstm-metrics-http", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
