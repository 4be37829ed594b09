"""The collector's HTTP server (``mesh-canary collector serve``).

    POST /              a payload-logger CloudEvent (binary or structured mode, or a batch);
                        plain JSON predictions too (no ce- headers)
    POST /predictions   plain JSON: {"id", "version", "prediction", "score"?} or a list
    POST /labels        {"id", "label"}, a list of them, or {"items": [...]}
    GET  /metrics       the model metrics convention per version, and the collector's own
    GET  /unmatched     predictions waiting for a label and labels with no prediction (JSON)
    GET  /healthz

Answers: 200 with what became of each item ({"stored": n, "duplicate": n, ...}); 400 with
{"error": one sentence} for anything malformed (nothing of that request is kept); 411 with
no Content-Length; 413 over ``max_body_bytes``; 503 if the store fails.

Bounds: at most ``max_connections`` connections are served at once (more wait in the
kernel's backlog); each request (from waiting for it on a kept-alive connection to the last
byte of the answer) has ``request_timeout_s``, after which a watchdog shuts the connection;
a body over ``max_body_bytes`` is refused unread; versions and classes are capped by the
store's Limits. Nothing else grows with traffic in memory: rows live in sqlite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from mesh_canary.collector.events import (
    CE_CONTENT_TYPES,
    Malformed,
    parse_cloudevents,
    parse_labels,
    parse_plain,
)
from mesh_canary.collector.export import render
from mesh_canary.collector.store import Limits, Outcome, Store

log = logging.getLogger("mesh_canary.collector")

LISTENING = "listening on "


@dataclass(frozen=True)
class Settings:
    db_path: str = "collector.sqlite"
    retention_s: float = 7 * 86400.0
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 10.0
    max_connections: int = 128
    limits: Limits = field(default_factory=Limits)
    version_label: str = "version"
    expire_every_s: float = 60.0


class _Watchdog:
    """Shuts any connection whose current request has outlived its deadline (one thread for
    all: a timer per request would cost more than the request)."""

    def __init__(self, period_s: float = 0.25) -> None:
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(period_s,), name="collector-watchdog", daemon=True
        )
        self._thread.start()

    def arm(self, conn: socket.socket, deadline: float) -> None:
        with self._lock:
            self._deadlines[conn] = deadline

    def disarm(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            now = time.monotonic()
            with self._lock:
                late = [c for c, d in self._deadlines.items() if d <= now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                with contextlib.suppress(OSError):  # already gone
                    conn.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()


class CollectorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted collector takes its port back

    def __init__(self, address: tuple[str, int], settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.watchdog = _Watchdog()
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # bounded threads: the next connection waits in the backlog
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.watchdog.stop()


class _Handler(BaseHTTPRequestHandler):
    server: CollectorHTTPServer
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per event would cost more than the event

    def handle_one_request(self) -> None:
        watchdog = self.server.watchdog
        watchdog.arm(self.connection, time.monotonic() + self.server.settings.request_timeout_s)
        try:
            super().handle_one_request()
        except OSError:
            self.close_connection = True  # shut by the watchdog, or the client left
        finally:
            watchdog.disarm(self.connection)

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode())

    def _body(self) -> bytes | None:
        """The body, or None once an error was answered (411, 413)."""
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._json(411, {"error": "a Content-Length header is required"})
            return None
        length = int(length_text)
        if length > self.server.settings.max_body_bytes:
            self.close_connection = True  # the body stays unread: the connection cannot be reused
            self._json(
                413,
                {"error": f"the body is {length} bytes; the limit is {self.server.settings.max_body_bytes}"},
            )
            return None
        return self.rfile.read(length)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        store = self.server.store
        if url.path == "/metrics":
            self._send(200, render(store, self.server.settings.version_label), CONTENT_TYPE_LATEST)
        elif url.path == "/unmatched":
            limit = parse_qs(url.query).get("limit", ["20"])[0]
            self._json(200, store.report(min(int(limit), 1000) if limit.isdigit() else 20))
        elif url.path == "/healthz":
            ok = store.healthy()
            self._json(200 if ok else 503, {"status": "ok" if ok else "the store does not answer"})
        else:
            self._json(404, {"error": f"no such path {url.path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path not in ("/", "/events", "/predictions", "/labels"):
            self._json(404, {"error": f"no such path {path}"})
            return
        body = self._body()
        if body is None:
            return
        kind = "label" if path == "/labels" else "prediction"
        store = self.server.store
        received = time.time()
        try:
            try:
                outcome = self._ingest(path, body, received)
            except Malformed as exc:
                store.count_rejected(kind)
                self._json(400, {"error": str(exc)})
                return
        except sqlite3.Error as exc:  # the disk, or a store closed at shutdown
            log.error("the collector's store failed: %s", exc)
            self._json(503, {"error": "the store failed; retry later"})
            return
        self._json(200, outcome.counts)

    def _ingest(self, path: str, body: bytes, received: float) -> Outcome:
        store = self.server.store
        if path == "/labels":
            return store.add_labels(parse_labels(_json_body(body), received))
        content_type = self.headers.get("Content-Type", "")
        is_event = any(h.lower().startswith("ce-") for h in self.headers) or content_type.startswith(
            CE_CONTENT_TYPES
        )
        if path != "/predictions" and is_event:
            parsed = parse_cloudevents(dict(self.headers.items()), body, received)
        else:
            parsed = parse_plain(_json_body(body), received)
        return store.add_predictions(parsed.predictions, parsed.requests)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the body is not JSON") from None


class Collector:
    """The store, the HTTP server and the retention thread; ``start()`` serves in a thread."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.store = Store(settings.db_path, settings.retention_s, settings.limits)
        try:
            self.server = CollectorHTTPServer((host, port), settings, self.store)
        except BaseException:
            self.store.close()
            raise
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return self.server.url

    def _expire_loop(self) -> None:
        while not self._stop.wait(self.settings.expire_every_s):
            try:
                self.store.expire(time.time())
            except sqlite3.Error as exc:
                log.error("retention failed (will retry): %s", exc)

    def start(self) -> Collector:
        self.store.expire(time.time())
        self._threads = [
            threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True),
            threading.Thread(target=self._expire_loop, name="collector-retention", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=10.0)
        self.store.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
