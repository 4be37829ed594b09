"""The fault matrix, metrics side: a slow or lying metrics server never holds traffic on a
candidate, never passes a check for a version it did not measure, never gets its words into
a status, and a credential in the Prometheus URL never appears anywhere.

Real parts: misbehaving HTTP servers on 127.0.0.1 (threads in the test), a real Prometheus
(backfilled), the Kubernetes API stand-in, and `mesh-canary run` as a subprocess.
"""

from __future__ import annotations

import base64
import contextlib
import json
import pathlib
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes.client
import pytest
import yaml

from mesh_canary.core import engine
from mesh_canary.core.engine import Phase
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import Verdict
from mesh_canary.core.weights import Weights
from mesh_canary.localmesh.prometheus import free_port
from mesh_canary.metrics.deadline_http import DeadlineClient
from mesh_canary.metrics.local import LocalMetricsSource
from mesh_canary.metrics.prometheus import MetricsAddressError, PrometheusMetricsSource
from mesh_canary.protocols import Announcement
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import MemoryStateStore
from tests.conftest import model_rollout as shared_rollout
from tests.crd_schema import ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
from tests.e2e.test_cluster_e2e import MESH_CANARY, NS, virtual_service
from tests.integration.prom_fixtures import DEFAULT_CHECKS, backfilled_prometheus, make_policy, openmetrics
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

T0 = 1_700_000_000
SINCE, NOW = T0 + 300, T0 + 600
SECRET = "PROMTOKEN-7f3a9c1e"  # recognisable: must never appear in any output
HOOK_SECRET = "HOOKTOKEN-b81d55"


# --- misbehaving HTTP servers ------------------------------------------------------------------


@dataclass
class Seen:
    """What a test server received."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


Behaviour = Callable[[BaseHTTPRequestHandler, Seen], None]


@contextlib.contextmanager
def http_server(behaviour: Behaviour) -> Iterator[tuple[str, Seen]]:
    """A real HTTP server on loopback whose every request is answered by ``behaviour``."""
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            with contextlib.suppress(OSError):  # the client gave up: nothing to answer
                behaviour(self, seen)

        do_GET = do_POST = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        seen.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def trickle_body(h: BaseHTTPRequestHandler, seen: Seen) -> None:
    """Headers at once, then one byte of a promised megabyte every second."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "1000000")
    h.end_headers()
    h.wfile.flush()
    while not seen.stop.wait(1.0):
        h.wfile.write(b" ")
        h.wfile.flush()


def trickle_headers(h: BaseHTTPRequestHandler, seen: Seen) -> None:
    """A status line, then one byte of an endless header every second."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    h.wfile.flush()
    while not seen.stop.wait(1.0):
        h.wfile.write(b"a")
        h.wfile.flush()


def answer(status: int, body: bytes, content_type: str = "application/json") -> Behaviour:
    def behave(h: BaseHTTPRequestHandler, seen: Seen) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return behave


def in_thread(fn: Callable[[], Any], limit_s: float) -> tuple[Any, float]:
    """``fn()``'s result and how long it took; fails (instead of hanging) after ``limit_s``."""
    box: list[Any] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    worker.start()
    worker.join(limit_s)
    assert not worker.is_alive(), f"still waiting after {limit_s}s: the call has no total deadline"
    return box[0], time.monotonic() - started


# --- item 1: a slow Prometheus hangs the rollout forever ----------------------------------------


@pytest.mark.fault(item=1)
@pytest.mark.parametrize("behaviour", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_a_trickling_prometheus_is_no_data_after_the_timeout(behaviour: Behaviour) -> None:
    with http_server(behaviour) as (url, seen):
        source = PrometheusMetricsSource(make_policy(DEFAULT_CHECKS), url=url, timeout_s=2)
        obs, took = in_thread(lambda: source.read(SINCE, NOW), limit_s=40)
    assert obs.problem == f"Prometheus did not answer within 2s ({url}) (query for istio_requests_total)"
    assert took < 30, "bounded: the 2s deadline holds for the whole answer, not per byte"
    assert len(seen.requests) == 1, "a server that is this slow is not asked again in the same read"


@pytest.mark.fault(item=1)
def test_one_read_shares_one_deadline_across_its_queries() -> None:
    # Each answer takes 1.5s, within the 2s timeout; the read's two queries share one 2s
    # budget, so the second is cut short rather than the read taking 2 x 1.5s (or, with
    # seven queries, 7 x 2s).
    def slow(h: BaseHTTPRequestHandler, seen: Seen) -> None:
        seen.stop.wait(1.5)
        answer(200, vector(("v1", "10"), ("v2", "10")))(h, seen)

    with http_server(slow) as (url, _seen):
        policy = make_policy(DEFAULT_CHECKS)
        policy = replace(policy, analysis=replace(policy.analysis, interval_s=1.0))
        source = PrometheusMetricsSource(policy, url=url, timeout_s=2)
        obs, took = in_thread(lambda: source.read(SINCE, NOW), limit_s=40)
    assert source.read_budget_s == 2.0
    assert obs.problem == (
        f"Prometheus did not answer within 2s ({url}) (query for istio_request_duration_milliseconds_bucket)"
    )
    assert obs.stable.requests == 10, "the first answer, in time, is kept"
    assert took < 30


@pytest.mark.fault(item=1)
def test_a_trickling_model_server_cannot_hold_a_local_scrape() -> None:
    with http_server(trickle_body) as (url, _seen):
        source = LocalMetricsSource(url, {"v1": f"{url}/metrics"}, "v1", "v2", timeout_s=2)
        obs, took = in_thread(lambda: source.read(0.0, 1.0), limit_s=40)
    assert obs.problem == f"Envoy at {url}/stats/prometheus did not answer within 2s"
    assert took < 30


def rollout_policy(address: str, hook: str | None = None, **spec: Any) -> dict[str, Any]:
    """The shared document for ``scorer``: one 50% step, short deadlines, Prometheus at ``address``."""
    doc = shared_rollout(
        "scorer",
        metrics_versions=True,
        prometheus=address,
        canary={"steps": [50, 100], "minStepDuration": "5s"},
        analysis={
            "interval": "3s",
            "minRequests": 20,
            "noDataTimeout": "9s",
            "checks": [{"metric": "errorRate", "max": 0.05, "maxIncrease": 0.03}],
        },
        metrics={"timeout": "2s"},
        **spec,
    )
    if hook is not None:
        doc["spec"]["notifications"] = [{"webhook": {"url": hook, "format": "json"}}]
    return doc


@contextlib.contextmanager
def cluster(tmp_path: pathlib.Path) -> Iterator[tuple[KubeStandIn, Any]]:
    """The API stand-in holding a VirtualService ``scorer`` at 100/0."""
    crds = [load_yaml(p) for p in [*ISTIO_CRDS, MODELROLLOUT_CRD]]
    with KubeStandIn(crds, workdir=tmp_path) as kube:
        custom: Any = kubernetes.client.CustomObjectsApi(kube.api_client())
        custom.create_namespaced_custom_object(
            "networking.istio.io", "v1", NS, "virtualservices", virtual_service("scorer", "v1", "v2")
        )
        yield kube, custom


def weights(custom: Any) -> list[int]:
    vs = custom.get_namespaced_custom_object("networking.istio.io", "v1", NS, "virtualservices", "scorer")
    return [int(r["weight"]) for r in vs["spec"]["http"][0]["route"]]


def run_cli(
    kube: KubeStandIn, policy: pathlib.Path, *args: str, debug: bool = False
) -> subprocess.Popen[str]:
    """``mesh-canary run --backend istio`` against the stand-in, as a subprocess."""
    return subprocess.Popen(
        [MESH_CANARY, *(["--debug"] if debug else []), "run", "-f", str(policy), "--backend", "istio",
         "--kubeconfig", str(kube.kubeconfig_path), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.fault(item=1)
def test_a_trickling_prometheus_cannot_hold_the_candidate_at_50(tmp_path: pathlib.Path) -> None:
    """`run` against a Prometheus that trickles: the rollout rolls back on noDataTimeout."""
    with cluster(tmp_path) as (kube, custom), http_server(trickle_body) as (prom, _seen):
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(rollout_policy(prom)))
        proc = run_cli(kube, policy, "-o", "json", "--state", str(tmp_path / "state.json"))
        try:
            wait_for("the 50% step", lambda: weights(custom) == [50, 50], 60, every_s=0.05)
            at_50 = time.monotonic()
            wait_for("the rollback to 100/0", lambda: weights(custom) == [100, 0], 90, every_s=0.05)
            safe_after = time.monotonic() - at_50
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 3, err[-2000:]
    doc = json.loads(out)
    assert doc["outcome"] == "rolled_back"
    assert "no data" in doc["reason"] and "did not answer within 2s" in doc["reason"]
    # noDataTimeout is 9s, the interval 3s and a read at most 2s: safe well within 30s.
    assert safe_after < 30, f"traffic safe after {safe_after:.1f}s"
    print(f"\nitem 1: 100% stable {safe_after:.1f}s after the 50% step (noDataTimeout 9s)")


@pytest.mark.fault(item=1)
def test_a_tick_with_a_trickling_prometheus_returns_within_the_read_budget(tmp_path: pathlib.Path) -> None:
    """What a controller worker calls: ``tick_once`` with the real adapters (the Istio router on
    the API stand-in, the Prometheus source) returns within one read budget, so a slow
    Prometheus holds a worker for seconds at a time, never for good, and the engine's
    deadlines fire on time."""
    from mesh_canary.core.policy import load_policy_text
    from mesh_canary.notify import LogNotifier
    from mesh_canary.routing.istio import IstioRouter
    from mesh_canary.run.clock import SystemClock

    with cluster(tmp_path) as (kube, custom), http_server(trickle_body) as (prom, _seen):
        policy = load_policy_text(yaml.safe_dump(rollout_policy(prom)), "policy.yaml")
        source = PrometheusMetricsSource(policy)
        runner = RolloutRunner(
            policy,
            IstioRouter(policy, kube.api_client()),
            source,
            MemoryStateStore(),
            LogNotifier(),
            SystemClock(),
        )
        runner.start_or_resume()
        assert weights(custom) == [50, 50]
        ticks: list[float] = []
        started = time.monotonic()
        while runner.state is not None and not runner.state.terminal and time.monotonic() - started < 120:
            _state, took = in_thread(runner.tick_once, limit_s=60)
            ticks.append(took)
        assert runner.state is not None and runner.state.phase is Phase.ROLLED_BACK
        assert weights(custom) == [100, 0]
    assert source.read_budget_s == 2.0
    assert max(ticks) < 30, f"a tick took {max(ticks):.1f}s: bounded by the 2s read budget"
    print(
        f"\nitem 1 (tick): {len(ticks)} ticks, longest {max(ticks):.2f}s, rolled back after {sum(ticks):.1f}s"
    )


# --- item 8: fail-open in custom checks ----------------------------------------------------------


@pytest.fixture(scope="module")
def stable_only_prometheus() -> Iterator[str]:
    """A real Prometheus holding a custom metric for stable (v1) only: the candidate has none."""
    samples = [(T0 + 15 * k, 0.5 * k) for k in range(41)]
    text = openmetrics([("model_score_total", {"version": "v1"}, samples)])
    with backfilled_prometheus(text) as server:
        yield server.url


STABLE_ONLY = Check(
    metric="custom",
    name="score",
    query='sum by (version) (increase(model_score_total{version=~"v1|v2"}[{{ window }}]))',
    max=1000,
)


@pytest.mark.fault(item=8)
def test_a_custom_query_with_only_stables_series_is_no_data_never_a_pass(
    stable_only_prometheus: str,
) -> None:
    policy = make_policy([STABLE_ONLY])
    source = PrometheusMetricsSource(policy, url=stable_only_prometheus)
    obs = source.read(SINCE, NOW)
    assert obs.candidate.custom == {}, "the candidate is never credited with stable's value"
    assert obs.problem == (
        "custom check 'score' has no series for the candidate (v2); "
        "a query without {{ version }} must return one series per version"
    )
    # Through the engine: held as inconclusive, then rolled back past noDataTimeout.
    state = engine.start(policy, now=0.0).state
    held = engine.tick(policy, state, obs, 30.0, engine_judge())
    assert held.state.phase is Phase.PROGRESSING and not held.weight_writes
    assert {r.verdict for r in held.state.checks} == {Verdict.INCONCLUSIVE}
    later = policy.analysis.no_data_timeout_s + 1
    rolled = engine.tick(policy, held.state, obs, later, engine_judge())
    assert rolled.state.phase is Phase.ROLLED_BACK and rolled.weight_writes[0].weights.candidate == 0


@pytest.mark.fault(item=8)
def test_run_rolls_back_instead_of_promoting_on_stables_series_alone(tmp_path: pathlib.Path) -> None:
    """`mesh-canary run` with a custom check whose query returns only stable's series (the
    candidate emits no such metric): before, the candidate was credited with stable's value
    and promoted; now it is no data for the check, and the rollout rolls back at noDataTimeout."""

    def stable_only(h: BaseHTTPRequestHandler, seen: Seen) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query)["query"][0]
        if "model_score_total" in query:  # the custom check: stable's series only
            result = [{"metric": {"version": "v1"}, "value": [time.time(), "5"]}]
        else:  # requests and errors: both versions healthy, plenty of traffic
            result = [
                {
                    "metric": {"envoy_cluster_name": v, "envoy_response_code_class": "2"},
                    "value": [time.time(), "500"],
                }
                for v in ("v1", "v2")
            ]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
        answer(200, body.encode())(h, seen)

    check = {
        "metric": "custom",
        "name": "score",
        "query": 'sum by (version) (increase(model_score_total{version=~"v1|v2"}[{{ window }}]))',
        "max": 1000,
    }
    with cluster(tmp_path) as (kube, custom), http_server(stable_only) as (prom, _seen):
        doc = rollout_policy(prom)
        doc["spec"]["analysis"]["checks"].append(check)
        doc["spec"]["canary"]["minStepDuration"] = "3s"
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(doc))
        started = time.monotonic()
        proc = run_cli(kube, policy, "-o", "json")
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - started
        assert proc.returncode == 3, f"exit {proc.returncode}: {out[-1500:]} {err[-1500:]}"
        assert weights(custom) == [100, 0]
    result = json.loads(out)
    assert result["outcome"] == "rolled_back"
    assert "custom check 'score' has no series for the candidate (v2)" in result["reason"]
    print(f"\nitem 8: rolled back {took:.1f}s after start (noDataTimeout 9s); never promoted")


def engine_judge() -> Any:
    from mesh_canary.run.runner import default_judge

    return default_judge()


def vector(*pairs: tuple[str, str]) -> bytes:
    result = [{"metric": {"destination_version": v}, "value": [T0, x]} for v, x in pairs]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


@pytest.mark.fault(item=8)
@pytest.mark.parametrize(
    ("candidate_value", "why"),
    [
        ("1e308", "implausibly large"),
        ("1e18", "implausibly large"),
        ("-50", "a count cannot be negative"),
        ("+Inf", "not a number"),
        ("NaN", "not a number"),
        ("lots", "not a number"),
    ],
)
def test_absurd_counts_are_no_data_never_numbers_the_judge_trusts(candidate_value: str, why: str) -> None:
    body = vector(("v1", "1000"), ("v2", candidate_value))
    with http_server(answer(200, body)) as (url, _seen):
        obs = PrometheusMetricsSource(make_policy(DEFAULT_CHECKS[:1]), url=url).read(SINCE, NOW)
    assert obs.problem is not None and why in obs.problem and "candidate" in obs.problem
    assert obs.candidate.requests == 0
    assert "lots" not in obs.problem, "the server's text is not copied"


# --- item 10: disclosure and a '?' in the address -------------------------------------------------


@pytest.mark.fault(item=10)
@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (400, json.dumps({"status": "error", "errorType": "bad_data", "error": f"oops {SECRET}"}), "application/json"),
        (400, json.dumps({"status": "error", "errorType": f"x{SECRET}", "error": "e"}), "application/json"),
        (503, f"<html><body>internal token {SECRET}</body></html>", "text/html"),
        (200, f"<html>login page {SECRET}</html>", "text/html"),
        (200, json.dumps({"status": "success", "data": {"resultType": SECRET, "result": []}}), "application/json"),
        (200, json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1, SECRET]}}),
         "application/json"),
        (200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"destination_version": "v2"}, "value": [1, SECRET]}]}}), "application/json"),
    ],
)  # fmt: skip
def test_no_response_body_reaches_a_problem(status: int, body: str, content_type: str) -> None:
    custom = Check(metric="custom", name="c", query='sum(x{v="{{ version }}"})', max=1)
    with http_server(answer(status, body.encode(), content_type)) as (url, _seen):
        obs = PrometheusMetricsSource(make_policy([DEFAULT_CHECKS[0], custom]), url=url).read(SINCE, NOW)
    assert obs.problem is not None
    assert SECRET not in obs.problem and "oops" not in obs.problem and "login" not in obs.problem


@pytest.mark.fault(item=10)
@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("http://127.0.0.1:9090/?x=", "has a query string"),
        ("http://127.0.0.1:9090?", "has a query string"),
        ("http://127.0.0.1:9090/#frag", "has a fragment"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("gopher://127.0.0.1:70/", "must start with http:// or https://"),
        ("http:///api", "names no host"),
        ("http://127.0.0.1:99999", "has an invalid port"),
        ("http://127.0.0.1:9090/ x", "spaces or control characters"),
        (f"http://u:{SECRET}@127.0.0.1:9090/?q", "has a query string"),
    ],
)
def test_an_unusable_metrics_address_is_rejected_when_the_source_is_built(address: str, says: str) -> None:
    with pytest.raises(MetricsAddressError) as caught:
        PrometheusMetricsSource(make_policy(DEFAULT_CHECKS, address=address))
    assert says in str(caught.value) and str(caught.value).startswith("spec.metrics.address: ")
    assert SECRET not in str(caught.value)


@pytest.mark.fault(item=10)
def test_run_refuses_a_question_mark_in_the_address_with_exit_2_and_changes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    with cluster(tmp_path) as (kube, custom):
        writes = len(kube.stored("networking.istio.io/v1/virtualservices", NS, "scorer"))
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(rollout_policy("http://127.0.0.1:9090/?tenant=a")))
        proc = run_cli(kube, policy)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert err.strip().splitlines() == [
            "spec.metrics.address: 'http://127.0.0.1:9090/?tenant=a' has a query string ('?...'): the API "
            "path would be appended after it; give the address without '?'"
        ]
        assert weights(custom) == [100, 0]
        assert len(kube.stored("networking.istio.io/v1/virtualservices", NS, "scorer")) == writes


# --- item 11: a credential in the Prometheus URL never appears anywhere ---------------------------


@pytest.mark.fault(item=11)
@pytest.mark.parametrize("prometheus", ["answers 503 quoting the token", "is down"])
def test_prometheus_credentials_never_appear_in_any_output(tmp_path: pathlib.Path, prometheus: str) -> None:
    leaky = answer(503, f"<html>bad gateway for {SECRET}</html>".encode(), "text/html")
    with (
        cluster(tmp_path) as (kube, custom),
        http_server(leaky) as (prom, prom_seen),
        http_server(answer(200, b"{}")) as (hook, hook_seen),
    ):
        host = (
            prom.removeprefix("http://") if prometheus.startswith("answers") else f"127.0.0.1:{free_port()}"
        )
        address = f"http://mc-user:{SECRET}@{host}"
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(rollout_policy(address, hook=f"{hook}/notify?token={HOOK_SECRET}")))
        state = tmp_path / "state.json"
        proc = run_cli(kube, policy, "--state", str(state), "-o", "json", debug=True)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err[-3000:]
        assert weights(custom) == [100, 0]
        doc = json.loads(out)
        assert doc["outcome"] == "rolled_back" and "***@" in doc["reason"], doc["reason"]
        wait_for(
            "the RolledBack notification", lambda: any(b"RolledBack" in r["body"] for r in hook_seen.requests)
        )
        payloads = [r["body"].decode() for r in hook_seen.requests]
        if prometheus.startswith("answers"):
            # The credentials still work: sent as HTTP Basic auth, only never shown.
            expected = "Basic " + base64.b64encode(f"mc-user:{SECRET}".encode()).decode()
            assert {r["headers"].get("Authorization") for r in prom_seen.requests} == {expected}
        for where, text in [("stdout", out), ("stderr", err), ("state file", state.read_text()),
                            *[(f"webhook payload {i}", p) for i, p in enumerate(payloads)]]:  # fmt: skip
            assert SECRET not in text, f"the Prometheus token leaked into {where}: {text[-1500:]}"
            assert HOOK_SECRET not in text, f"the webhook token leaked into {where}"
            assert "bad gateway" not in text, f"the server's answer was copied into {where}"


# --- item 11, the runner: whatever a metrics source says passes through redaction -------------


class _Router:
    def __init__(self) -> None:
        self.weights = Weights(100, 0)

    def set_weights(self, weights: Weights) -> None:
        self.weights = weights

    def get_weights(self) -> Weights:
        return self.weights


class _Notes:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def notify(self, announcement: Announcement) -> None:
        self.messages.append(json.dumps(announcement.__dict__, default=str))


class _LeakySource:
    """A third-party source that breaks the rules: raises, or names its URL with credentials."""

    def __init__(self, raises: bool) -> None:
        self.raises = raises

    def read(self, since: float, now: float) -> Observation:
        url = f"http://mc-user:{SECRET}@prometheus:9090"
        if self.raises:
            raise RuntimeError(f"cannot reach {url}: got <html>{SECRET}</html>")
        return Observation(since=since, at=now, problem=f"Prometheus at {url} is unreachable")


@pytest.mark.fault(item=11)
@pytest.mark.parametrize("raises", [True, False], ids=["raises", "reports"])
def test_the_runner_never_lets_a_sources_secret_into_state_or_notifications(raises: bool) -> None:
    policy = make_policy(DEFAULT_CHECKS)
    clock = VirtualClock()
    store = MemoryStateStore()
    notes = _Notes()
    runner = RolloutRunner(policy, _Router(), _LeakySource(raises), store, notes, clock)
    runner.start_or_resume()
    clock.sleep(policy.analysis.no_data_timeout_s + 1)
    state = runner.tick_once()
    assert state.phase is Phase.ROLLED_BACK and "no data" in state.reason
    shown = json.dumps(state.to_dict()) + json.dumps(store.load()) + "".join(notes.messages)
    assert SECRET not in shown


@pytest.fixture
def tls_files(tmp_path: pathlib.Path) -> tuple[str, str]:
    """A self-signed certificate for ``localhost`` (cert, key), made with the openssl CLI."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.mark.fault(item=1)
def test_the_deadline_holds_over_https_and_names_that_resolve(tls_files: tuple[str, str]) -> None:
    import ssl

    cert, key = tls_files
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with contextlib.suppress(OSError):
                trickle_body(self, seen)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"https://localhost:{server.server_address[1]}"
        policy = make_policy(DEFAULT_CHECKS)
        trusted = PrometheusMetricsSource(policy, url=url, timeout_s=2, client=DeadlineClient(verify=cert))
        obs, took = in_thread(lambda: trusted.read(SINCE, NOW), limit_s=40)
        assert obs.problem == f"Prometheus did not answer within 2s ({url}) (query for istio_requests_total)"
        assert took < 30
        untrusted = PrometheusMetricsSource(policy, url=url, timeout_s=2)
        obs, _ = in_thread(lambda: untrusted.read(SINCE, NOW), limit_s=40)
        assert obs.problem == (
            f"Prometheus at {url} is unreachable: its TLS certificate is not trusted "
            "(query for istio_requests_total)"
        )
    finally:
        seen.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
