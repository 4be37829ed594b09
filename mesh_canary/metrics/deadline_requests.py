"""A requests transport adapter whose every request ends by a TOTAL deadline.

requests (and so ``prometheus-api-client``, which sends through a ``requests.Session``)
bounds each socket read, not the whole answer: a server that trickles its answer a byte a
second holds a request as long as it likes. ``DeadlineAdapter`` is a
``requests.adapters.BaseAdapter`` (the transport layer of a Session, as a transport is for
httpx) that sends through ``deadline_http.DeadlineClient`` instead of urllib3, so requests'
``timeout=`` becomes a total deadline for the whole request: connect, TLS, sending, and
reading the whole answer.

``deadline_session`` builds a Session that only ever sends through it: no retries (one
bounded attempt; the engine asks again next tick), redirects not followed (a ``3xx`` is the
answer, so an address cannot be bounced somewhere else), no ``.netrc`` and no environment
CA bundle (``DeadlineClient`` has its own TLS settings and reads the proxy variables itself).
"""

from __future__ import annotations

import http
import math
import time
from collections.abc import Mapping
from typing import Any

import httpcore
import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from mesh_canary.metrics.deadline_http import DeadlineClient, DeadlineExceeded, TooLarge, Unreachable

__all__ = ["AnswerTooLarge", "CannotConnect", "DeadlineAdapter", "NotHTTP", "deadline_session"]

# When a caller gives no timeout: still a deadline (every outside call has one).
DEFAULT_TIMEOUT_S = 10.0

# Managed by the connection (or, for Accept-Encoding, asking for a compression this
# transport does not undo): never forwarded from the request.
_NOT_FORWARDED = frozenset(
    {"accept-encoding", "connection", "content-length", "host", "keep-alive", "te", "transfer-encoding"}
)


class CannotConnect(requests.ConnectionError):
    """No connection could be made; the message is a short fixed reason (``connection refused``)."""


class NotHTTP(requests.ConnectionError):
    """The server answered with something that is not HTTP."""


class AnswerTooLarge(requests.RequestException):
    """The answer is larger than the client accepts."""


class DeadlineAdapter(requests.adapters.BaseAdapter):
    """Sends a Session's GET requests through ``client``, each whole by its ``timeout``.

    ``timeout`` (seconds, one number) is the total time the request may take, answer
    included; None means ``default_timeout_s``. Errors are requests' own kinds: ``Timeout`` (no
    whole answer in time), ``CannotConnect`` (a ConnectionError: refused, no route, the name
    does not resolve, TLS failed; its message is a short fixed reason such as ``connection
    refused``), ``NotHTTP`` (a ConnectionError) and ``AnswerTooLarge`` (a RequestException). The Response carries the status,
    the headers and the whole body; its ``reason`` is the standard phrase for the status,
    never the server's own words. ``close`` closes the client only when the adapter made it
    (a client given to it may be shared: its owner closes it).
    """

    def __init__(
        self, client: DeadlineClient | None = None, default_timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        super().__init__()
        self._owns_client = client is None
        self.client = client if client is not None else DeadlineClient()
        self.default_timeout_s = default_timeout_s

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        # verify/cert/proxies are the client's (DeadlineClient's TLS settings, proxy variables).
        deadline = time.monotonic() + _total(timeout, self.default_timeout_s)
        if request.method != "GET" or request.body:
            raise requests.RequestException(
                f"DeadlineAdapter sends GET requests without a body only, not {request.method}",
                request=request,
            )
        headers = {k: str(v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        try:
            answer = self.client.get(str(request.url), None, deadline, headers)
        except DeadlineExceeded:
            raise requests.Timeout("no whole answer within the deadline", request=request) from None
        except Unreachable as err:
            raise CannotConnect(str(err), request=request) from None
        except TooLarge as err:
            raise AnswerTooLarge(str(err), request=request) from None
        except (httpcore.ProtocolError, httpcore.UnsupportedProtocol):
            raise NotHTTP("the server did not answer in HTTP", request=request) from None
        response = requests.Response()
        response.status_code = answer.status
        response.headers = CaseInsensitiveDict(dict(answer.headers))
        response.encoding = get_encoding_from_headers(response.headers)
        response.reason = _phrase(answer.status)
        response._content = answer.body  # the whole body is already here: nothing to stream
        response._content_consumed = True
        response.url = str(request.url)
        response.request = request
        response.connection = self  # type: ignore[assignment]  # requests types it as HTTPAdapter; any adapter works
        return response

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


class _NoRedirects(requests.Session):
    """A Session that never follows a redirect: the 3xx itself is the answer."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


def deadline_session(
    adapter: requests.adapters.BaseAdapter, prefixes: tuple[str, ...] = ()
) -> requests.Session:
    """A Session that sends every http(s) request (and each of ``prefixes``) through ``adapter``.

    Its only default headers are ``Accept: application/json`` and ``User-Agent: mesh-canary``.
    A library that mounts its own adapter on the Session afterwards (prometheus-api-client
    mounts a retrying urllib3 one on its URL) must have ``adapter`` mounted again over it.
    """
    session = _NoRedirects()
    session.trust_env = False  # no .netrc credentials, no REQUESTS_CA_BUNDLE: the client decides
    session.headers = CaseInsensitiveDict({"Accept": "application/json", "User-Agent": "mesh-canary"})
    for prefix in ("http://", "https://", *prefixes):
        session.mount(prefix, adapter)
    return session


def _total(timeout: Any, default: float) -> float:
    """The request's total deadline in seconds from requests' ``timeout`` argument."""
    if timeout is None:
        return default
    if isinstance(timeout, tuple):
        raise ValueError("DeadlineAdapter takes one total timeout in seconds, not a (connect, read) pair")
    total = float(timeout)
    if not math.isfinite(total) or total < 0:
        raise ValueError(f"the timeout must be a number of seconds >= 0, not {timeout!r}")
    return total


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""
