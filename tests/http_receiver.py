"""A real HTTP receiver on 127.0.0.1 (stdlib http.server in a thread) for the notifier tests.

It records every POST (path, content type, JSON body, and its place in a shared journal) and
answers by path: ``/ok`` 200, ``/fail`` 500, ``/hang`` waits until released; any other path
answers as ``mode`` says (``ok`` 200, ``accepted`` 202, ``fail`` 500, ``hang``), so a test can
make a receiver break and recover.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG_LIMIT_S = 30.0  # a hanging answer is bounded: teardown releases it anyway


@dataclass
class Received:
    path: str
    content_type: str
    body: Any


@dataclass
class Receiver:
    url: str
    posts: list[Received] = field(default_factory=list)
    mode: str = "ok"
    release: threading.Event = field(default_factory=threading.Event)  # lets hanging answers go
    arrived: threading.Condition = field(default_factory=threading.Condition)
    journal: list[tuple[str, Any]] | None = None  # shared with the test: what happened in which order
    answered: int = 0  # posts answered so far

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.posts) >= count, timeout_s), (
                f"the receiver got {len(self.posts)} posts, expected {count}"
            )
            return list(self.posts)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "hang":
            self.release.clear()
        else:
            self.release.set()

    def code_for(self, path: str) -> int | None:
        """The status to answer with; None: hang until released."""
        by_path = {"/ok": "ok", "/fail": "fail", "/hang": "hang"}.get(path, self.mode)
        return {"ok": 200, "accepted": 202, "fail": 500, "hang": None}[by_path]


def serve() -> Iterator[Receiver]:
    """A started receiver (a generator for a pytest fixture); stopped and released at the end."""
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = state["receiver"]
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null")
            code = rec.code_for(self.path)
            with rec.arrived:
                rec.posts.append(Received(self.path, self.headers.get("Content-Type", ""), body))
                if rec.journal is not None:
                    rec.journal.append(("post", body))
                rec.arrived.notify_all()
            if code is None:
                rec.release.wait(HANG_LIMIT_S)
                code = rec.code_for("/ok" if self.path == "/hang" else self.path) or 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            rec.answered += 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state["receiver"] = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}")
    # A short poll interval: shutdown() returns within it.
    thread = threading.Thread(
        target=lambda: server.serve_forever(poll_interval=0.05), name="webhook-receiver", daemon=True
    )
    thread.start()
    try:
        yield state["receiver"]
    finally:
        state["receiver"].release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)
