"""HTTP GET with a total deadline: every outside call a metrics read makes ends by a fixed time.

httpx/httpcore/requests timeouts bound each socket operation, not the whole answer: a server
that sends its headers and then one byte a second (or a header a second) holds a request for
as long as it likes. Here every step of a request (name resolution, connect, TLS handshake,
each write and each read) gets at most the time left until the request's deadline, so the
request ends by that deadline whatever the server does, and the caller gets
``DeadlineExceeded`` instead of waiting.

Built on httpcore's public network-backend interface (the transport under httpx), wrapping
its standard synchronous backend. No retries: one bounded attempt per call; the caller (the
engine, next tick) decides whether to ask again. ``deadline_requests.DeadlineAdapter`` puts it
under a ``requests.Session`` (for prometheus-api-client).
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

import mesh_canary.errors as errors

__all__ = [
    "Answer",
    "DeadlineClient",
    "DeadlineExceeded",
    "SharedClients",
    "TooLarge",
    "Unreachable",
    "origin",
]

# Far above any answer a metrics read needs, far below what would hurt the process.
MAX_BODY_BYTES = 32 * 1024 * 1024


class DeadlineExceeded(errors.Unreachable):
    """The deadline passed before the whole answer arrived."""


class Unreachable(errors.Unreachable):
    """No connection could be made (refused, no route, name does not resolve, TLS failed)."""


class TooLarge(errors.CouldNotWork):
    """The answer is larger than the client accepts."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    # The answer's headers (names and values as latin-1 text), for callers that need them.
    headers: tuple[tuple[str, str], ...] = ()


Remaining = Callable[[], float]


class DeadlineClient:
    """GETs that end by a deadline (``time.monotonic()`` seconds), over a keep-alive pool.

    Thread-safe: each thread's request carries its own deadline. ``verify`` is as for httpx
    (True, a CA bundle path, or an ``ssl.SSLContext``). Proxies come from the usual
    environment variables (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``), as with requests.
    Credentials in the URL (``https://user:pass@host``) are sent as HTTP Basic auth.
    """

    def __init__(
        self,
        verify: ssl.SSLContext | str | bool = True,
        max_body_bytes: int = MAX_BODY_BYTES,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.headers = dict(headers or {})
        self._local = threading.local()
        self._backend = _DeadlineBackend(self._remaining)
        self._verify = verify
        # Made at the first https request: a TLS context with the CA bundle costs ~0.8 MiB and
        # ~45 ms of CPU, for nothing when every address is plain http.
        self._ssl: ssl.SSLContext | None = None
        # One pool per (proxy, scheme): a plain-http pool never holds a TLS context.
        self._pools: dict[tuple[str | None, str], httpcore.ConnectionPool] = {}
        self._lock = threading.Lock()

    def get(
        self,
        url: str,
        params: Mapping[str, str] | None,
        deadline: float,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """The answer to ``GET url?params``, read whole by ``deadline`` (see `send`)."""
        return self.send("GET", url, params, deadline, headers)

    def send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        deadline: float,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> Answer:
        """The answer to ``METHOD url?params`` (sending ``content``), read whole by ``deadline``.

        ``params`` None keeps the query already in ``url``. ``headers`` are sent too (the
        client's own ``headers`` win). Raises DeadlineExceeded, Unreachable, TooLarge, or
        httpcore.ProtocolError (the server does not speak HTTP). Never waits past the
        deadline, whatever the server does.
        """
        target = httpx.URL(url) if params is None else httpx.URL(url, params=dict(params))
        return self.request(method, target, deadline, headers, content or b"")

    def request(
        self,
        method: str,
        target: httpx.URL,
        deadline: float,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
    ) -> Answer:
        """``method target`` with ``content``, answered whole by ``deadline`` (see `send`; the
        notifiers POST through it with a parsed URL)."""
        headers = {
            "Accept": "application/json",
            "User-Agent": "mesh-canary",
            **(headers or {}),
            **self.headers,
        }
        if content:
            headers.setdefault("Content-Length", str(len(content)))
        if target.username or target.password:
            pair = f"{target.username}:{target.password}".encode()
            headers.setdefault("Authorization", "Basic " + base64.b64encode(pair).decode())
        self._local.deadline = deadline
        try:
            left = self._remaining()
            extensions = {"timeout": {"connect": left, "read": left, "write": left, "pool": left}}
            pool = self._pool_for(target)
            with pool.stream(
                method,
                httpcore.URL(
                    scheme=target.raw_scheme, host=target.raw_host, port=target.port, target=target.raw_path
                ),
                headers=list(headers.items()),
                content=content or None,
                extensions=extensions,
            ) as response:
                body = bytearray()
                for chunk in response.iter_stream():
                    body += chunk
                    if len(body) > self.max_body_bytes:
                        raise TooLarge(f"the answer is larger than {self.max_body_bytes // 2**20} MiB")
                names = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]
                return Answer(response.status, bytes(body), tuple(names))
        except (httpcore.TimeoutException, _Late):
            raise DeadlineExceeded from None
        except (httpcore.ConnectError, ssl.SSLError) as err:
            raise Unreachable(_reason(err)) from None
        except httpcore.NetworkError as err:
            # The connection broke mid-answer; if the deadline had passed, that is the cause.
            if self._remaining() <= 0:
                raise DeadlineExceeded from None
            raise Unreachable(_reason(err)) from None
        finally:
            self._local.deadline = None

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _remaining(self) -> float:
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return math.inf
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Late
        return left

    def _ssl_context(self) -> ssl.SSLContext:
        """The client's TLS context (made once, at the first https request; callers hold ``_lock``)."""
        if self._ssl is None:
            verify = self._verify
            if isinstance(verify, str):  # a CA bundle file or directory
                is_dir = os.path.isdir(verify)
                verify = ssl.create_default_context(
                    cafile=None if is_dir else verify, capath=verify if is_dir else None
                )
            self._ssl = httpx.create_ssl_context(verify=verify)
        return self._ssl

    def _pool_for(self, url: httpx.URL) -> httpcore.ConnectionPool:
        proxy = _env_proxy(url)
        # A proxy may be reached over https whatever the target's scheme.
        tls = url.scheme == "https" or (proxy or "").startswith("https://")
        key = (proxy, "https" if tls else "http")
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                common: dict[str, Any] = {
                    # None: httpcore would make its own default context for an https URL; a
                    # plain-http pool is never given one, so it never reaches TLS.
                    "ssl_context": self._ssl_context() if tls else None,
                    "max_connections": 8,
                    "retries": 0,
                    "network_backend": self._backend,
                }
                if proxy is None:
                    pool = httpcore.ConnectionPool(**common)
                else:
                    purl = httpx.URL(proxy)
                    auth = (purl.username, purl.password) if purl.username else None
                    pool = httpcore.HTTPProxy(
                        proxy_url=httpcore.URL(
                            scheme=purl.raw_scheme, host=purl.raw_host, port=purl.port, target=b"/"
                        ),
                        proxy_auth=auth,
                        **common,
                    )
                self._pools[key] = pool
            return pool


class SharedClients:
    """One ``DeadlineClient`` (its keep-alive pools and TLS context) per key, shared by every
    user of that key in the process and closed when the last one lets go.

    A thousand rollouts reading one Prometheus then hold one client and a few connections,
    not a thousand of each. Every request still carries its own total deadline (the client
    keeps it per thread), and credentials in a URL are sent per request, never kept by the
    client, so sharing one between addresses of the same origin mixes nothing.
    """

    def __init__(self, make: Callable[[], DeadlineClient] = DeadlineClient) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[DeadlineClient, int]] = {}

    def acquire(self, key: str) -> DeadlineClient:
        """The client for ``key`` (made at the first call); give it back with `release`."""
        with self._lock:
            client, users = self._clients.get(key) or (self._make(), 0)
            self._clients[key] = (client, users + 1)
            return client

    def release(self, key: str) -> None:
        """One user of ``key`` is done; the last one closes the client."""
        with self._lock:
            client, users = self._clients.get(key) or (None, 0)
            if client is None:
                return
            if users > 1:
                self._clients[key] = (client, users - 1)
                return
            del self._clients[key]
        client.close()

    def users(self, key: str) -> int:
        with self._lock:
            return self._clients.get(key, (None, 0))[1]


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, without credentials or path (a `SharedClients` key)."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


class _Late(Exception):
    """Raised inside a socket step when no time is left (becomes DeadlineExceeded)."""


def _env_proxy(url: httpx.URL) -> str | None:
    """The environment's proxy for ``url`` (HTTP proxies only), None for a direct connection."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme)
    if not proxy or not proxy.startswith(("http://", "https://")):
        return None
    if urllib.request.proxy_bypass(url.host):  # NO_PROXY
        return None
    return proxy


def _reason(err: BaseException) -> str:
    """A short reason for a failed connection, without echoing anything the server sent."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "the name does not resolve"
        if isinstance(seen, ssl.SSLCertVerificationError):
            return "its TLS certificate is not trusted"
        if isinstance(seen, ssl.SSLError):
            return "the TLS handshake failed"
        if isinstance(seen, ConnectionResetError) or "reset" in str(seen).lower():
            return "the connection was reset"
        seen = seen.__cause__ or seen.__context__
    return "the connection failed"


# --- the network backend: every socket step is clamped to the time left ----------------------


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, remaining: Remaining) -> None:
        self._inner = inner
        self._remaining = remaining

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout, self._remaining))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout, self._remaining))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout, self._remaining))
        return _DeadlineStream(inner, self._remaining)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, remaining: Remaining) -> None:
        self._inner = httpcore.SyncBackend()
        self._remaining = remaining

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in _resolve(host, port, _clamp(timeout, self._remaining)):
            try:
                stream = self._inner.connect_tcp(
                    address, port, _clamp(timeout, self._remaining), local_address, socket_options
                )
                return _DeadlineStream(stream, self._remaining)
            except httpcore.ConnectError as err:  # try the next address, as create_connection does
                last = err
        raise last or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, _clamp(timeout, self._remaining), socket_options)
        return _DeadlineStream(stream, self._remaining)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(min(seconds, self._remaining()))


def _clamp(timeout: float | None, remaining: Remaining) -> float:
    left = remaining()  # raises _Late when nothing is left
    return left if timeout is None else min(timeout, left)


def _resolve(host: str, port: int, timeout: float) -> list[str]:
    """The host's addresses; name resolution (which no socket timeout bounds) gets ``timeout`` too."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    box: list[Any] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as err:  # OSError, or UnicodeError for a name IDNA cannot encode
            box.append(err)
        finally:
            done.set()

    # A daemon thread: a resolver that hangs past the deadline is left behind, not waited for.
    threading.Thread(target=work, name="resolve", daemon=True).start()
    if not done.wait(timeout):
        raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout:g}s")
    if isinstance(box[0], Exception):
        raise httpcore.ConnectError(str(box[0])) from box[0]
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in box[0]:
        if sockaddr[0] not in seen:
            seen.append(str(sockaddr[0]))
    return seen
