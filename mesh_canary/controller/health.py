"""``/livez``, ``/readyz`` and ``/metrics`` on ``--metrics-addr`` (HTTP, one thread per request).

The server knows nothing of the controller: it asks three callables, each answering
(ok, text) or the metrics' exposition, so that what is healthy is decided in one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from mesh_canary.controller.settings import DEFAULT_BIND_ADDRESS, parse_addr

Probe = Callable[[], tuple[bool, str]]


class HealthServer:
    """Serves the probes and the metrics until `stop`."""

    def __init__(
        self,
        addr: str,
        *,
        liveness: Probe,
        readiness: Probe,
        metrics: Callable[[], bytes],
        bind_address: str = DEFAULT_BIND_ADDRESS,
    ) -> None:
        host, port = parse_addr(addr, bind_address)
        probes = {"/livez": liveness, "/readyz": readiness}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                probe = probes.get(path)
                if probe is not None:
                    ok, text = probe()
                    self._send(200 if ok else 503, text.encode(), "text/plain")
                elif path == "/metrics":
                    self._send(200, metrics(), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
