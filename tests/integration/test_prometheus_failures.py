"""How the Prometheus MetricsSource fails: never raising, never a silent pass.

Each failure gives an Observation whose ``problem`` says what went wrong in its own words
(down, slow, an error answer, a version without series, NaN), which the engine turns into
"no data" and, past noDataTimeout, into a rollback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prom_fixtures import DEFAULT_CHECKS, PrometheusServer, backfilled_prometheus, make_policy, openmetrics

from mesh_canary.core import engine
from mesh_canary.core.engine import Phase
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict
from mesh_canary.localmesh.prometheus import free_port
from mesh_canary.metrics.prometheus import PrometheusMetricsSource

pytestmark = pytest.mark.integration

T0 = 1_700_000_000
SINCE, NOW = T0 + 300, T0 + 600
RATIO = Check(
    metric="custom",
    name="ratio",
    query='sum(increase(istio_requests_total{destination_version="{{ version }}",response_code="429"}'
    '[{{ window }}])) / sum(increase(istio_requests_total{destination_version="{{ version }}",'
    'response_code="429"}[{{ window }}]))',
    max=1,
)


@dataclass
class FakeAnswer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay_s: float = 0.0
    hits: int = 0
    release: threading.Event = field(default_factory=threading.Event)


@contextmanager
def fake_prometheus(answer: FakeAnswer) -> Iterator[str]:
    """A tiny HTTP server on loopback that answers every query with ``answer``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer.hits += 1
            if answer.delay_s:
                answer.release.wait(answer.delay_s)
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
            except OSError:
                pass  # the client gave up (timeout): nothing to answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        answer.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def read(
    url: str, checks: Sequence[Check] = DEFAULT_CHECKS, timeout_s: float = 2.0, **kw: object
) -> tuple[Observation, PrometheusMetricsSource]:
    src = PrometheusMetricsSource(make_policy(checks, **kw), url=url, timeout_s=timeout_s)
    return src.read(SINCE, NOW), src


# --- without a real Prometheus: down, slow, odd answers ---------------------------------------


def test_prometheus_down_is_reported_as_unreachable_after_one_attempt() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    obs, src = read(url)
    assert (
        obs.problem
        == f"Prometheus at {url} is unreachable: connection refused (query for istio_requests_total)"
    )
    assert (obs.stable.requests, obs.candidate.requests) == (0, 0)
    assert src.last_read_queries == 1  # the other query is not sent to a server that is down


def test_slow_prometheus_times_out_with_the_configured_timeout() -> None:
    answer = FakeAnswer(delay_s=10, body=b'{"status":"success","data":{"resultType":"vector","result":[]}}')
    with fake_prometheus(answer) as url:
        started = time.monotonic()
        obs, src = read(url, timeout_s=0.3)
        waited = time.monotonic() - started
    assert obs.problem == f"Prometheus did not answer within 0.3s ({url}) (query for istio_requests_total)"
    assert waited < 5, "the read must give up at the timeout, not wait for the answer"
    assert answer.hits == 1 and src.last_read_queries == 1


def test_error_answer_reports_prometheus_error_type_without_retrying() -> None:
    body = b'{"status":"error","errorType":"bad_data","error":"invalid parameter \\"query\\": parse error"}'
    answer = FakeAnswer(status=400, body=body)
    with fake_prometheus(answer) as url:
        obs, src = read(url)
    # Only the status and Prometheus's errorType enum: the error text is the server's words
    # and never reaches a status, Event or notification.
    assert obs.problem == (
        "Prometheus answered HTTP 400 Bad Request (bad_data: it rejected the query) "
        "(query for istio_requests_total); "
        "Prometheus answered HTTP 400 Bad Request (bad_data: it rejected the query) "
        "(query for istio_request_duration_milliseconds_bucket)"
    )
    assert answer.hits == src.queries_per_read == 2  # one request per query: no retries


def test_5xx_from_a_proxy_is_an_error_answer_and_is_not_retried() -> None:
    answer = FakeAnswer(status=503, body=b"upstream connect error", content_type="text/plain")
    with fake_prometheus(answer) as url:
        obs, _ = read(url, checks=DEFAULT_CHECKS[:1])
    assert obs.problem == (
        f"Prometheus answered HTTP 503 Service Unavailable ({url}) (query for istio_requests_total)"
    )
    # A retry with backoff would hold a rollback decision hostage to a sick server.
    assert answer.hits == 1


def test_an_answer_that_is_not_prometheus_json_is_reported() -> None:
    answer = FakeAnswer(body=b"<html>login</html>", content_type="text/html")
    with fake_prometheus(answer) as url:
        obs, _ = read(url, checks=DEFAULT_CHECKS[:1])
    assert (
        obs.problem
        == f"Prometheus sent an answer that is not its JSON API ({url}) (query for istio_requests_total)"
    )


# --- against a real Prometheus: no series, NaN, a bad query -----------------------------------


def counter(
    version: str, code: str, per_step: float
) -> tuple[str, dict[str, str], list[tuple[float, float]]]:
    labels = {
        "reporter": "destination",
        "destination_service_name": "fraud-scorer",
        "destination_service_namespace": "models",
        "destination_version": version,
        "response_code": code,
    }
    return ("istio_requests_total", labels, [(T0 + 15 * k, per_step * k) for k in range(41)])


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    nan = (
        "istio_requests_total",
        counter("vnan", "200", 0)[1],
        [(T0 + 15 * k, float("nan")) for k in range(41)],
    )
    text = openmetrics(
        [
            counter("v1", "200", 10),
            counter("v1", "500", 1),
            counter("v2", "500", 1),
            counter("v1", "429", 0),
            nan,
        ]
    )
    with backfilled_prometheus(text) as server:
        yield server


def test_no_series_for_the_candidate_is_no_data(prometheus: PrometheusServer) -> None:
    obs, _ = read(prometheus.url, checks=DEFAULT_CHECKS[:1], candidate="v9")
    assert obs.problem == (
        'no istio_requests_total series for the candidate (destination_version="v9") in the last 300s'
    )
    assert obs.stable.requests == 220  # what there is, is still shown


def test_no_series_for_either_version_points_at_the_configuration(prometheus: PrometheusServer) -> None:
    obs, _ = read(prometheus.url, checks=DEFAULT_CHECKS[:1], host="frauds-corer")
    assert obs.problem is not None
    assert obs.problem.startswith(
        'no istio_requests_total series for either version (destination_version=~"v1|v2")'
    )


def test_nan_values_are_not_numbers(prometheus: PrometheusServer) -> None:
    obs, _ = read(prometheus.url, checks=DEFAULT_CHECKS[:1], candidate="vnan")
    assert (
        obs.problem
        == 'istio_requests_total is NaN for the candidate (destination_version="vnan"): not a number'
    )
    obs, _ = read(prometheus.url, checks=[RATIO], candidate="v3")
    assert obs.problem == (
        "custom check 'ratio' is nan for the stable (v1): not a number (a division by zero?); "
        "custom check 'ratio' returned no data for the candidate (v3) in the last 300s"
    )


def test_a_bad_custom_query_gets_prometheus_parse_error(prometheus: PrometheusServer) -> None:
    bad = Check(
        metric="custom", name="broken", query='sum(rate(x{version="{{ version }}"}[{{ window }}])', max=1
    )
    obs, src = read(prometheus.url, checks=[DEFAULT_CHECKS[0], bad])
    assert obs.problem is not None
    assert obs.problem.startswith(
        "Prometheus answered HTTP 400 Bad Request (bad_data: it rejected the query)"
    )
    assert "(query for broken)" in obs.problem
    assert obs.stable.requests == 220  # the good query's answer is kept
    assert src.last_read_queries == 3


def test_every_failure_has_its_own_message(prometheus: PrometheusServer) -> None:
    problems = [
        read(f"http://127.0.0.1:{free_port()}")[0].problem,
        read(prometheus.url, checks=DEFAULT_CHECKS[:1], candidate="v9")[0].problem,
        read(prometheus.url, checks=DEFAULT_CHECKS[:1], candidate="vnan")[0].problem,
        read(prometheus.url, checks=[RATIO])[0].problem,
    ]
    with fake_prometheus(FakeAnswer(delay_s=10)) as url:
        problems.append(read(url, timeout_s=0.2)[0].problem)
    with fake_prometheus(
        FakeAnswer(status=422, body=b'{"status":"error","errorType":"execution","error":"x"}')
    ) as url:
        problems.append(read(url, checks=DEFAULT_CHECKS[:1])[0].problem)
    assert all(problems) and len(set(problems)) == len(problems)
    kinds = ["unreachable", "no istio_requests_total series", "NaN", "nan", "did not answer", "HTTP 422"]
    assert all(kind in p for kind, p in zip(kinds, problems, strict=True))  # type: ignore[operator]


class MustNotJudge:
    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        raise AssertionError("an observation with a problem must never be judged")


def test_the_engine_holds_then_rolls_back_on_prometheus_problems() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    policy = make_policy(DEFAULT_CHECKS)
    src = PrometheusMetricsSource(policy, url=url, timeout_s=1)
    state = engine.start(policy, now=0.0).state
    held = engine.tick(policy, state, src.read(0.0, 30.0), 30.0, MustNotJudge())
    assert held.state.phase is Phase.PROGRESSING and not held.weight_writes
    assert {r.verdict for r in held.state.checks} == {Verdict.INCONCLUSIVE}
    assert all("unreachable: connection refused" in r.reason for r in held.state.checks)
    later = policy.analysis.no_data_timeout_s + 1
    rolled = engine.tick(policy, held.state, src.read(later - 30, later), later, MustNotJudge())
    assert rolled.state.phase is Phase.ROLLED_BACK
    assert rolled.weight_writes[0].rollback and "no data: Prometheus at" in (rolled.state.reason or "")
