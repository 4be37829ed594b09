"""The collector's HTTP/1.1 front end: one asyncio event loop (no thread per connection),
requests parsed by ``httptools`` (llhttp, the parser of Node.js and uvicorn). The loop is
uvloop's (libuv) when it imports, else asyncio's own (``new_event_loop``): the same
behaviour, uvloop costs less CPU per request.

Keep-alive and pipelining: a connection's requests are handed to the handler as they are
parsed, and their answers are written in request order as they become ready (a handler may
answer later, from the loop thread: ``HTTPServer.call_soon_threadsafe``).

Bounds, all per connection unless said:
- a request's head (request line and headers) is at most ``MAX_HEAD_BYTES`` (431 beyond);
- a body needs a Content-Length (411) of at most ``max_body_bytes`` (413, refused unread);
  after either answer the connection is closed;
- at most ``MAX_IN_FLIGHT`` pipelined requests wait for their answers; reading pauses beyond;
- each request, from waiting for it on a kept-alive connection to its answer being written,
  has ``request_timeout_s``; a sweep (every ``SWEEP_S``) aborts connections past it, so a
  client that stalls (slowloris) holds its connection for that long at most;
- at most ``max_connections`` connections are served at once; more wait in the kernel's
  backlog (the next one is accepted when one closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any, cast

import httptools

MAX_HEAD_BYTES = 64 * 1024
MAX_IN_FLIGHT = 64
SWEEP_S = 0.25
BODY_METHODS = (b"POST", b"PUT", b"PATCH")


@dataclass(slots=True)
class Request:
    method: str
    target: str  # the path and the query, as sent
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes


# An answer: (status, body, content type). A handler calls ``respond`` exactly once, in the
# loop's thread (now or later).
Respond = Callable[[int, bytes, str], None]
Handler = Callable[[Request, Respond], None]


def new_event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """(a new event loop, "uvloop" or "asyncio"): uvloop's if it imports (a wheel for this
    platform), else the standard library's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), "uvloop"


def json_answer(respond: Respond, status: int, body: Any) -> None:
    respond(status, json.dumps(body).encode(), "application/json")


class _Refuse(Exception):
    """Raised inside the parser's callbacks to stop reading a connection that was answered."""


class _Slot:
    """One request's place in its connection's order of answers."""

    __slots__ = ("close", "data")

    def __init__(self, close: bool) -> None:
        self.data: bytes | None = None
        self.close = close


class _Connection(asyncio.Protocol):
    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._slots: deque[_Slot] = deque()
        self._parsed: list[tuple[Request, _Slot]] = []
        self._target = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._in_head = True
        self._head_bytes = 0  # bytes received while a head is incomplete (it may never end)
        self._head_size = 0
        self._closing = False  # nothing more is read: the last slot's answer closes
        self._paused = False
        self._held = False  # in the server's held list: answers to write once a group is done
        self.deadline = 0.0

    # --- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.deadline = self._loop.time() + self._server.request_timeout_s
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._slots.clear()
        self._server.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refuse):
                raise
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self._closing:
            self._refuse(431, f"the request's head is over {MAX_HEAD_BYTES} bytes")
        parsed, self._parsed = self._parsed, []
        handler = self._server.handler
        for request, slot in parsed:
            handler(request, partial(self._answer, slot))
        if len(self._slots) > MAX_IN_FLIGHT and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    # --- the parser's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._target = b""
        self._headers = {}
        self._body = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._in_head = False
        headers = self._headers
        if self._head_size > MAX_HEAD_BYTES:
            self._refuse(431, f"the request's head is over {MAX_HEAD_BYTES} bytes")
            raise _Refuse
        length = headers.get("content-length")
        if self._parser.get_method() in BODY_METHODS and (
            length is None or not length.isdigit() or "transfer-encoding" in headers
        ):
            self._refuse(411, "a Content-Length header is required")
            raise _Refuse
        limit = self._server.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            self._refuse(413, f"the body is {int(length)} bytes; the limit is {limit}")
            raise _Refuse  # the body stays unread: the connection cannot be reused
        if headers.get("expect", "").lower() == "100-continue" and not self._slots and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        slot = _Slot(close=not self._parser.should_keep_alive())
        self._slots.append(slot)
        request = Request(
            self._parser.get_method().decode("ascii"),
            self._target.decode("latin-1"),
            self._headers,
            b"".join(self._body),
        )
        self._parsed.append((request, slot))
        if slot.close:  # the client asked to close after this answer: read no further
            self._closing = True
            raise _Refuse

    # --- answers -------------------------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        """Answer an error after the answers already due, then close; read nothing more."""
        self._closing = True
        slot = _Slot(close=True)
        self._slots.append(slot)
        self._answer(slot, status, json.dumps({"error": reason}).encode(), "application/json")

    def _answer(self, slot: _Slot, status: int, body: bytes, content_type: str) -> None:
        server = self._server
        slot.data = server.response(status, body, content_type, slot.close)
        held = server.held
        if held is None:
            self._flush()
        elif not self._held:  # the server writes it after the others of its group
            self._held = True
            held.append(self)

    def _flush(self) -> None:
        self._held = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        out = []
        close = False
        slots = self._slots
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            out.append(slot.data)
            if slot.close:
                close = True
                slots.clear()
        if not out:
            return
        transport.write(b"".join(out) if len(out) > 1 else out[0])  # type: ignore[arg-type]
        self._server.writes += 1
        self.deadline = self._loop.time() + self._server.request_timeout_s  # the next request's
        if close:
            transport.close()
        elif self._paused and len(slots) <= MAX_IN_FLIGHT // 2:
            self._paused = False
            transport.resume_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HTTPServer:
    """Binds at construction (the port is known at once); ``serve_forever()`` runs the loop
    in the calling thread until ``shutdown()``."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: Handler,
        *,
        max_body_bytes: int,
        request_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.connections: set[_Connection] = set()
        self.loop, self.loop_kind = new_event_loop()
        self._sock = socket.create_server(address, backlog=max(128, max_connections))  # SO_REUSEADDR
        self._sock.setblocking(False)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        self._free: asyncio.Semaphore | None = None
        self._stopping = asyncio.Event()  # bound to the loop at its first use, in serve_forever
        self._serving = threading.Event()
        self._stopped = threading.Event()
        self._date = b""
        self._heads: dict[tuple[int, str, bool], bytes] = {}
        self.held: list[_Connection] | None = None  # while answers are held (hold_answers)
        self.writes = 0  # transport writes of answers (a pipelined group's answers go in one)

    @contextlib.contextmanager
    def hold_answers(self) -> Iterator[None]:
        """Answers given inside are written when it ends, each connection's in one write
        (a group of pipelined requests answered together: one send, not one per answer)."""
        held: list[_Connection] = []
        self.held = held
        try:
            yield
        finally:
            self.held = None
            for connection in held:
                connection._flush()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` in the loop's thread (answers from other threads)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: shut down
            self.loop.call_soon_threadsafe(callback, *args)

    def response(self, status: int, body: bytes, content_type: str, close: bool) -> bytes:
        key = (status, content_type, close)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
                + ("Connection: close\r\n" if close else "")
            ).encode("latin-1")
        return b"%s%sContent-Length: %d\r\n\r\n%s" % (head, self._date, len(body), body)

    def connection_closed(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if self._free is not None:
            self._free.release()

    def serve_forever(self) -> None:
        self._serving.set()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            self._stopped.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop serving (open connections are cut) and wait for ``serve_forever`` to return."""
        self.call_soon_threadsafe(self._stopping.set)  # runs once the loop does, if not yet
        if self._serving.is_set():
            self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        self._sock.close()

    async def _serve(self) -> None:
        self._free = asyncio.Semaphore(self.max_connections)
        self._tick()
        accepting = asyncio.ensure_future(self._accept())
        try:
            await self._stopping.wait()
        finally:
            accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accepting
            for connection in list(self.connections):
                connection.abort()
            await asyncio.sleep(0)  # let connection_lost run

    async def _accept(self) -> None:
        assert self._free is not None
        while True:
            await self._free.acquire()
            try:
                conn, _ = await self.loop.sock_accept(self._sock)
            except BaseException:
                self._free.release()
                raise
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await self.loop.connect_accepted_socket(partial(_Connection, self), conn)
            except OSError:  # the client left already
                conn.close()
                self._free.release()

    def _tick(self) -> None:
        """Every SWEEP_S: the Date header, and abort connections past their deadline."""
        self._date = b"Date: %s\r\n" % email.utils.formatdate(usegmt=True).encode()
        now = self.loop.time()
        for connection in [c for c in self.connections if c.deadline <= now]:
            connection.abort()
        self.loop.call_later(SWEEP_S, self._tick)
