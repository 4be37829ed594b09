"""prometheus-api-client over a transport with a total deadline (issue 8, item 1).

``PrometheusConnect`` sends through a ``requests.Session``; requests bounds each socket read,
not the whole answer, so on its own a trickling server holds a query forever.
``deadline_requests.DeadlineAdapter`` is the Session's transport: requests' ``timeout`` becomes
a total deadline, nothing is retried, no redirect is followed, and nothing the server says
leaks into the reason. Real HTTP servers on 127.0.0.1 (tests.faults.test_metrics's).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import requests
import requests.adapters
from prometheus_api_client.prometheus_connect import PrometheusConnect

from mesh_canary.localmesh.prometheus import free_port
from mesh_canary.metrics.deadline_http import DeadlineClient
from mesh_canary.metrics.deadline_requests import (
    AnswerTooLarge,
    CannotConnect,
    DeadlineAdapter,
    NotHTTP,
    deadline_session,
)
from mesh_canary.metrics.prometheus import PrometheusMetricsSource
from tests.faults.test_metrics import (
    NOW,
    SINCE,
    Seen,
    answer,
    http_server,
    in_thread,
    trickle_body,
    trickle_headers,
    vector,
)
from tests.integration.prom_fixtures import DEFAULT_CHECKS, make_policy


def connect(url: str, adapter: DeadlineAdapter | None = None) -> PrometheusConnect:
    """PrometheusConnect whose Session sends only through ``adapter`` (as the source builds it)."""
    adapter = adapter or DeadlineAdapter()
    session = deadline_session(adapter)
    prom = PrometheusConnect(url, session=session)
    session.mount(url, adapter)  # over the retrying urllib3 adapter PrometheusConnect mounts
    return prom


def outcome(fn: Any) -> Any:
    """What ``fn()`` raised (or returned)."""
    try:
        return fn()
    except Exception as err:
        return err


@pytest.mark.fault(item=1)
@pytest.mark.parametrize("behaviour", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_prometheus_connect_over_the_adapter_ends_by_its_timeout(behaviour: Any) -> None:
    with http_server(behaviour) as (url, _seen):
        # The library's own transport: timeout=2 bounds each read; a byte a second never trips it.
        plain = PrometheusConnect(url, retry=requests.adapters.Retry(total=0))
        stuck = threading.Thread(
            target=outcome, args=(lambda: plain.custom_query("up", timeout=2),), daemon=True
        )
        stuck.start()
        stuck.join(4)  # twice its timeout, and the server cannot be done: it never finishes
        assert stuck.is_alive(), "plain requests is expected to hold on (the fault this transport fixes)"

        err, took = in_thread(lambda: outcome(lambda: connect(url).custom_query("up", timeout=2)), limit_s=40)
    assert isinstance(err, requests.Timeout), err
    assert took < 30, "bounded: the timeout is a total deadline over the adapter"


@pytest.mark.fault(item=1)
def test_the_source_sends_through_prometheus_connect_and_its_transport() -> None:
    # A transport swapped in, as for httpx: every request of a read reaches it (none goes to
    # the closed port through urllib3), with the read's time left as its timeout.
    class Fake(requests.adapters.BaseAdapter):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[tuple[requests.PreparedRequest, Any]] = []

        def send(
            self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None, **_: Any
        ) -> requests.Response:
            self.sent.append((request, timeout))
            response = requests.Response()
            response.status_code = 200
            response._content = vector(("v1", "90"), ("v2", "10"))
            response.request, response.url = request, str(request.url)
            return response

        def close(self) -> None:
            pass

    fake = Fake()
    url = f"http://127.0.0.1:{free_port()}/prom"
    source = PrometheusMetricsSource(make_policy(DEFAULT_CHECKS[:1]), url=url, timeout_s=3, transport=fake)
    obs = source.read(SINCE, NOW)
    assert obs.problem is None
    assert (obs.stable.requests, obs.candidate.requests) == (90, 10)
    [(request, timeout)] = fake.sent
    assert request.method == "GET"
    assert str(request.url).startswith(f"{url}/api/v1/query?query=sum+by")
    assert str(request.url).endswith(f"&time={NOW:.3f}")
    assert 0 < timeout <= source.read_budget_s == 3
    with pytest.raises(ValueError, match="not both"):
        PrometheusMetricsSource(
            make_policy(DEFAULT_CHECKS[:1]), url=url, client=DeadlineClient(), transport=fake
        )


@pytest.mark.fault(item=1)
def test_a_redirect_is_the_answer_not_followed() -> None:
    with http_server(answer(200, vector(("v1", "1"), ("v2", "1")))) as (elsewhere, other):

        def bounce(h: BaseHTTPRequestHandler, seen: Seen) -> None:
            h.send_response(302)
            h.send_header("Location", f"{elsewhere}{h.path}")
            h.send_header("Content-Length", "0")
            h.end_headers()

        with http_server(bounce) as (url, seen):
            obs = PrometheusMetricsSource(make_policy(DEFAULT_CHECKS[:1]), url=url).read(SINCE, NOW)
    assert obs.problem == f"Prometheus answered HTTP 302 Found ({url}) (query for istio_requests_total)"
    assert (len(seen.requests), len(other.requests)) == (1, 0)


@pytest.mark.fault(item=1)
def test_the_adapter_maps_failures_to_requests_errors() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    refused = outcome(lambda: connect(closed).custom_query("up", timeout=5))
    assert isinstance(refused, CannotConnect) and isinstance(refused, requests.ConnectionError)
    assert str(refused) == "connection refused"

    def not_http(h: BaseHTTPRequestHandler, seen: Seen) -> None:
        h.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    with http_server(not_http) as (url, _seen):
        assert isinstance(outcome(lambda: connect(url).custom_query("up", timeout=5)), NotHTTP)
        obs = PrometheusMetricsSource(make_policy(DEFAULT_CHECKS[:1]), url=url).read(SINCE, NOW)
    assert obs.problem == f"Prometheus did not answer in HTTP ({url}) (query for istio_requests_total)"

    with http_server(answer(200, b"[" + b"0," * 100 + b"0]")) as (url, _seen):
        small = DeadlineAdapter(DeadlineClient(max_body_bytes=100))
        too_large = outcome(lambda: connect(url, small).custom_query("up", timeout=5))
    assert isinstance(too_large, AnswerTooLarge) and isinstance(too_large, requests.RequestException)

    adapter = DeadlineAdapter()
    request = requests.Request("GET", closed).prepare()
    with pytest.raises(ValueError, match="one total timeout"):
        adapter.send(request, timeout=(1.0, 1.0))
    with pytest.raises(requests.RequestException, match="GET requests without a body only"):
        adapter.send(requests.Request("POST", closed, data=b"x").prepare(), timeout=1.0)


@pytest.mark.fault(item=1)
def test_the_answer_is_whole_plain_and_in_standard_words() -> None:
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()

    def picky(h: BaseHTTPRequestHandler, seen: Seen) -> None:
        # Compresses when asked: this transport does not undo compression, so must not ask.
        gz = "gzip" in (h.headers.get("Accept-Encoding") or "")
        data = gzip.compress(body) if gz else body
        h.wfile.write(
            b"HTTP/1.1 200 token=LEAKED-REASON\r\nContent-Type: application/json; charset=utf-8\r\n"
        )
        h.wfile.write(b"Content-Encoding: gzip\r\n" if gz else b"")
        h.wfile.write(f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    with http_server(picky) as (url, seen):
        creds = url.replace("http://", "http://user:p%40ss@")
        session = requests.Session()  # requests' defaults (Accept-Encoding: gzip, ...) included
        session.mount("http://", DeadlineAdapter())
        started = time.monotonic()
        response = session.get(f"{creds}/api/v1/query", params={"query": "up"}, timeout=5)
        assert time.monotonic() - started < 30
        assert connect(url).custom_query("up", timeout=5) == []
    assert response.status_code == 200 and response.reason == "OK"
    assert response.json() == json.loads(body)
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.encoding == "utf-8"
    sent = seen.requests[0]["headers"]
    assert "Accept-Encoding" not in sent
    assert sent["Authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss, once
    assert seen.requests[0]["path"] == "/api/v1/query?query=up"
    assert seen.requests[1]["headers"]["User-Agent"] == "mesh-canary"
    assert seen.requests[1]["headers"]["Accept"] == "application/json"
