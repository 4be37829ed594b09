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

How: one asyncio event loop, in one thread, serves every connection (keep-alive and
pipelining; http.py), parses each request and commits their writes in groups
(``GroupCommit``): every request that arrived while the previous commit ran goes into the
next transaction together. A request is answered (2xx, or 400 for a malformed one, which
is counted in the same transaction) only after the transaction holding it committed. The
retention thread is the only other one touching the store (under the store's lock).

Bounds: at most ``max_connections`` connections are served at once (more wait in the
kernel's backlog); each request (from waiting for it on a kept-alive connection to its
answer) has ``request_timeout_s``, after which its connection is cut; a body over
``max_body_bytes`` is refused unread; at most ``MAX_GROUP`` writes go in one transaction;
versions and classes are capped by the store's Limits. Nothing else grows with traffic in
memory: rows live in sqlite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST

from mesh_canary.collector.events import Malformed, parse_event_request, parse_labels, parse_plain
from mesh_canary.collector.export import render
from mesh_canary.collector.http import HTTPServer, Request, Respond, json_answer
from mesh_canary.collector.store import Labels, Limits, Outcome, Predictions, Refused, Rejected, Store, Write

log = logging.getLogger("mesh_canary.collector")

LISTENING = "listening on "
POST_PATHS = ("/", "/events", "/predictions", "/labels")
MAX_GROUP = 1000  # writes in one transaction at most (a commit's latency stays bounded)
STORE_FAILED = {"error": "the store failed; retry later"}

Result = Outcome | Refused | Exception
Done = Callable[[Result], None]


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


class GroupCommit:
    """Group commit on the event loop's thread: the writes submitted while the loop handles
    one round of ready connections are committed together in ONE transaction, run as the
    loop's next callback; requests that arrive while that commit runs wait in the kernel's
    buffers and go into the next one. Each write's ``done(result)`` is called only after
    its transaction committed. A store error fails the whole group: each ``done`` gets the
    exception. (A writer thread would cost more CPU than the commit saves: sqlite releases
    the GIL at every statement, and two busy threads then hand it back and forth.)"""

    def __init__(
        self,
        store: Store,
        call_soon: Callable[..., object],
        answering: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self._store = store
        self._call_soon = call_soon
        self._answering = answering  # around a group's answers (the server holds its writes)
        self._queue: list[tuple[Write, Done]] = []
        self.groups = 0
        self.writes = 0

    def submit(self, write: Write, done: Done) -> None:
        self._queue.append((write, done))
        if len(self._queue) == 1:
            self._call_soon(self._commit)

    def _commit(self) -> None:
        group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        if self._queue:
            self._call_soon(self._commit)
        results: list[Result]
        try:
            results = list(self._store.write([w for w, _ in group]))
        except Exception as exc:  # sqlite3.Error: the disk, or a store closed at shutdown
            log.error("the collector's store failed: %s", exc)
            results = [exc] * len(group)
        self.groups += 1
        self.writes += len(group)
        with self._answering():
            for (_, done), result in zip(group, results, strict=True):
                done(result)


class CollectorHTTPServer(HTTPServer):
    """The collector's routes on the HTTP front end, its writes through one GroupCommit."""

    def __init__(self, address: tuple[str, int], settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        super().__init__(
            address,
            self.handle,
            max_body_bytes=settings.max_body_bytes,
            request_timeout_s=settings.request_timeout_s,
            max_connections=settings.max_connections,
        )
        self.writer = GroupCommit(store, self.loop.call_soon, self.hold_answers)

    def handle(self, request: Request, respond: Respond) -> None:
        path, _, query = request.target.partition("?")
        if request.method == "POST":
            self._post(path, request, respond)
        elif request.method == "GET":
            self._get(path, query, respond)
        else:
            json_answer(respond, 501, {"error": f"method {request.method} is not supported"})

    def _get(self, path: str, query: str, respond: Respond) -> None:
        store = self.store
        if path == "/metrics":
            self._read(
                respond, lambda: (200, render(store, self.settings.version_label), CONTENT_TYPE_LATEST)
            )
        elif path == "/unmatched":
            limit = parse_qs(query).get("limit", ["20"])[0]
            n = min(int(limit), 1000) if limit.isdigit() else 20
            self._read(respond, lambda: (200, json.dumps(store.report(n)).encode(), "application/json"))
        elif path == "/healthz":
            self._read(respond, self._health)
        else:
            json_answer(respond, 404, {"error": f"no such path {path}"})

    def _health(self) -> tuple[int, bytes, str]:
        ok = self.store.healthy()
        body = {"status": "ok" if ok else "the store does not answer"}
        return 200 if ok else 503, json.dumps(body).encode(), "application/json"

    def _read(self, respond: Respond, read: Callable[[], tuple[int, bytes, str]]) -> None:
        try:
            respond(*read())
        except sqlite3.Error as exc:
            log.error("the collector's store failed: %s", exc)
            json_answer(respond, 503, STORE_FAILED)

    def _post(self, path: str, request: Request, respond: Respond) -> None:
        if path not in POST_PATHS:
            json_answer(respond, 404, {"error": f"no such path {path}"})
            return
        try:
            write: Write = self._parse(path, request, time.time())
        except Malformed as exc:
            reason = str(exc)
            write = Rejected("label" if path == "/labels" else "prediction")
            self.writer.submit(write, lambda result: _answer(respond, result, reason))
            return
        self.writer.submit(write, lambda result: _answer(respond, result))

    def _parse(self, path: str, request: Request, received: float) -> Write:
        if path == "/labels":
            return Labels(parse_labels(_json_body(request.body), received))
        parsed = (
            None if path == "/predictions" else parse_event_request(request.headers, request.body, received)
        )
        if parsed is None:
            parsed = parse_plain(_json_body(request.body), received)
        return Predictions(parsed.predictions, parsed.requests)


def _answer(respond: Respond, result: Result, malformed: str | None = None) -> None:
    """The answer once the request's transaction committed (or failed)."""
    if isinstance(result, Refused):
        json_answer(respond, 400, {"error": str(result)})
    elif isinstance(result, Exception):
        json_answer(respond, 503, STORE_FAILED)
    elif malformed is not None:
        json_answer(respond, 400, {"error": malformed})
    else:
        respond(200, _counts_body(result.counts), "application/json")


_COUNTS_BODIES: dict[tuple[tuple[str, int], ...], bytes] = {}  # {"stored": 1} and the like


def _counts_body(counts: dict[str, int]) -> bytes:
    """The JSON of an outcome's counts; the few common ones encoded once (at most 1,024 kept)."""
    key = tuple(counts.items())
    body = _COUNTS_BODIES.get(key)
    if body is None:
        body = json.dumps(counts).encode()
        if len(_COUNTS_BODIES) < 1024:
            _COUNTS_BODIES[key] = body
    return body


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
            threading.Thread(target=self.server.serve_forever, name="collector-http", daemon=True),
            threading.Thread(target=self._expire_loop, name="collector-retention", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()  # the writer commits what it was given, then ends
        for thread in self._threads:
            thread.join(timeout=10.0)
        with contextlib.suppress(sqlite3.Error):
            self.store.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
