"""The controller's part of the fault matrix (issue 8, items 1, 9, 10, 11 and 12).

Real parts: the Kubernetes API stand-in (over HTTP, through the official client), the real
IstioRouter and PrometheusMetricsSource, real misbehaving HTTP servers on 127.0.0.1 (a
Prometheus that trickles one byte a second, one that serves a bad candidate's counts, a
webhook receiver), and for the secrets test a real `mesh-canary controller` process. The
only fake is in the wedge test: a MetricsSource (the Protocol) that never returns, which is
what no deadline can catch and what /livez exists for.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import kubernetes.client
import pytest
from click.testing import CliRunner

from mesh_canary.cli import main as cli_main
from mesh_canary.controller import Controller, ControllerSettings, MetricsAddress, address_key, parse_addr
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.kube.status import condition
from mesh_canary.localmesh.prometheus import free_port
from mesh_canary.routing.istio import IstioRouter
from tests.conftest import model_rollout as shared_rollout
from tests.conftest import virtual_service
from tests.integration.test_controller import HOLD, wait_reconciles
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

NS = "models"
MR = ("mesh-canary.io", "v1alpha1")
VS = ("networking.istio.io", "v1")
VS_RES = "networking.istio.io/v1/virtualservices"
MESH_CANARY = str(pathlib.Path(sys.executable).parent / "mesh-canary")
TOKEN = "tok3n-VERY-recognisable-9f41c2"


# --------------------------------------------------------------------------- real HTTP servers


@dataclass
class Recorded:
    """What one of the test's HTTP servers saw."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)  # method, path
    open_now: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hits(self) -> int:
        with self.lock:
            return len(self.requests)


Responder = Callable[[BaseHTTPRequestHandler, Recorded], None]


@contextlib.contextmanager
def http_server(respond: Responder) -> Iterator[tuple[str, Recorded]]:
    """A threaded HTTP server on 127.0.0.1 that records every request and answers with ``respond``."""
    rec = Recorded()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with rec.lock:
                rec.requests.append((self.command, self.path, dict(self.headers), body))
                rec.open_now += 1
            try:
                respond(self, rec)
            except OSError:
                pass  # the client gave up
            finally:
                with rec.lock:
                    rec.open_now -= 1

        do_GET = do_POST = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", rec
    finally:
        rec.stop.set()
        server.shutdown()
        server.server_close()


def send_json(handler: BaseHTTPRequestHandler, doc: Any, status: int = 200) -> None:
    body = json.dumps(doc).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def trickle(handler: BaseHTTPRequestHandler, rec: Recorded) -> None:
    """Headers at once, then one byte a second: every socket read succeeds, the answer never ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000000")
    handler.end_headers()
    handler.wfile.write(b'{"status":"success","data":')
    handler.wfile.flush()
    while not rec.stop.wait(1.0):
        handler.wfile.write(b" ")
        handler.wfile.flush()
    handler.close_connection = True


def bad_candidate(versions: dict[str, tuple[float, float]], drop_first: int = 0) -> Responder:
    """A Prometheus whose traffic query answers ``version -> (requests, 5xx)`` for every version
    (after hanging up without an answer on the first ``drop_first`` requests)."""

    def respond(handler: BaseHTTPRequestHandler, rec: Recorded) -> None:
        if rec.hits <= drop_first:
            handler.close_connection = True
            return
        at = time.time()
        result = []
        for version, (requests, errors) in versions.items():
            for code, n in (("200", requests - errors), ("500", errors)):
                result.append(
                    {"metric": {"destination_version": version, "response_code": code}, "value": [at, str(n)]}
                )
        send_json(handler, {"status": "success", "data": {"resultType": "vector", "result": result}})

    return respond


def accept(handler: BaseHTTPRequestHandler, rec: Recorded) -> None:
    send_json(handler, {"ok": True})


# --------------------------------------------------------------------------- the cluster


def model_rollout(name: str, candidate: str = "2.0", **spec: Any) -> dict[str, Any]:
    """The shared document, with a noDataTimeout that outlasts this module's slow servers."""
    analysis = {"noDataTimeout": "120s", **spec.pop("analysis", {})}
    return shared_rollout(name, candidate, analysis=analysis, **spec)


class Cluster:
    def __init__(self, kube: KubeStandIn) -> None:
        self.kube = kube
        self.client = kube.api_client()
        self.custom: Any = kubernetes.client.CustomObjectsApi(self.client)
        self.core: Any = kubernetes.client.CoreV1Api(self.client)

    def add_vs(self, name: str, namespace: str = NS) -> None:
        self.custom.create_namespaced_custom_object(
            *VS, namespace, "virtualservices", virtual_service(name, namespace)
        )

    def add_rollout(self, doc: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(*MR, NS, "modelrollouts", doc)

    def rollout(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(*MR, NS, "modelrollouts", name))

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.rollout(name).get("status") or {})

    def vs_history(self, name: str, namespace: str = NS) -> list[list[int]]:
        out: list[list[int]] = []
        for v in self.kube.stored(VS_RES, namespace, name):
            weights = [r.get("weight", 0) for r in v["spec"]["http"][0]["route"]]
            if not out or out[-1] != weights:
                out.append(weights)
        return out

    def events(self, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(NS).items if e.involved_object.name == name]

    def event_reasons(self, name: str) -> list[str]:
        return [e.reason for e in self.events(name)]


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    return Cluster(kube_api)


@contextlib.contextmanager
def running(ctl: Controller) -> Iterator[Controller]:
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop(timeout_s=20)


def phase_is(cluster: Cluster, name: str, *phases: str) -> Callable[[], bool]:
    return lambda: cluster.status(name).get("phase") in phases


def policy_valid_false(cluster: Cluster, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        c = condition(cluster.status(name), "PolicyValid")
        return c if c is not None and c["status"] == "False" else None

    return check


# --------------------------------------------------------------------------- item 1


@pytest.mark.fault(item=1)
def test_two_trickling_prometheus_rollouts_do_not_starve_a_third_with_a_bad_candidate(
    cluster: Cluster,
) -> None:
    """Two rollouts read from Prometheus servers that send headers, then a byte a second; with
    two workers, a third rollout whose candidate answers 30% errors is still rolled back at once."""
    with (
        # One server each: reads of one Prometheus at one instant are shared (one query for
        # both rollouts), and this test needs both workers inside a read of their own.
        http_server(trickle) as (slow_a_url, slow_a),
        http_server(trickle) as (slow_b_url, slow_b),
        http_server(bad_candidate({"1.0": (2000, 0), "2.0": (2000, 600)})) as (bad_url, bad),
    ):
        ctl = Controller(
            cluster.client,
            ControllerSettings(
                namespaces=NS,
                prometheus_url=bad_url,
                allowed_metrics_addresses=[slow_a_url, slow_b_url],
                workers=2,
                watch_timeout_s=5,
                error_retry_s=0.5,
            ),
        )
        for name, url in (("slow-a", slow_a_url), ("slow-b", slow_b_url)):
            cluster.add_vs(name)
            cluster.add_rollout(model_rollout(name, metrics={"address": url, "timeout": "2s"}))
        try:
            ctl.start()
            # Both workers are now inside a read that (without a total deadline) never ends.
            wait_for(
                "a read stuck on each trickling Prometheus",
                lambda: slow_a.open_now >= 1 and slow_b.open_now >= 1,
                30,
            )
            cluster.add_vs("bad")
            created = time.monotonic()
            cluster.add_rollout(model_rollout("bad"))
            wait_for("the bad candidate rolled back", phase_is(cluster, "bad", "RolledBack"), 60)
            safe_after = time.monotonic() - created
        finally:
            slow_a.stop.set()  # let the stuck reads end, so that stop() does not wait for them
            slow_b.stop.set()
            ctl.stop(timeout_s=20)
    assert cluster.vs_history("bad") == [[100, 0], [80, 20], [100, 0]]
    status = cluster.status("bad")
    assert status["weights"]["candidate"] == 0 and "errorRate" in status["reason"]
    assert bad.hits >= 1
    # Bounded, not forever: the first analysis is due 1 s after the start, a worker frees up
    # within --slow-after (5 s) of the slow reads; 60 s is a generous bound on a loaded machine.
    print(f"\nitem 1: bad candidate 100% stable {safe_after:.1f}s after its rollout was created")
    assert safe_after < 60


class WedgedMetrics:
    """A MetricsSource (the Protocol) whose read never returns until released: a wedge no deadline catches."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reads = 0

    def read(self, since: float, now: float) -> Observation:
        self.reads += 1
        self.release.wait()
        return Observation(since=since, at=now, problem="released")


class HealthyMetrics:
    def read(self, since: float, now: float) -> Observation:
        return Observation(
            since=since, at=now, stable=VersionCounts(requests=2000), candidate=VersionCounts(requests=2000)
        )


@pytest.mark.fault(item=1)
def test_a_wedged_reconcile_fails_livez_and_does_not_hold_the_only_worker(cluster: Cluster) -> None:
    wedged = WedgedMetrics()

    def backend(policy: Policy) -> tuple[IstioRouter, Any]:
        metrics = wedged if policy.name == "wedged" else HealthyMetrics()
        return IstioRouter(policy, cluster.client, backoff_s=0.01), metrics

    for name in ("wedged", "healthy"):
        cluster.add_vs(name)
    ctl = Controller(
        cluster.client,
        ControllerSettings(
            namespaces=NS,
            workers=1,
            slow_after_s=1.0,
            stuck_after_s=4.0,
            metrics_addr="127.0.0.1:0",
            watch_timeout_s=5,
            error_retry_s=0.5,
        ),
        backend=backend,
    )
    try:
        ctl.start()
        livez = f"http://127.0.0.1:{ctl.metrics_port}/livez"
        wait_for("/livez 200 while nothing is stuck", lambda: httpx.get(livez, timeout=5).status_code == 200)
        cluster.add_rollout(model_rollout("wedged"))
        wait_for("the wedged read", lambda: wedged.reads >= 1)
        wedged_at = time.monotonic()
        # The only worker is inside the wedged read: the other rollout still runs to the end.
        cluster.add_rollout(model_rollout("healthy"))
        wait_for("the healthy rollout promoted", phase_is(cluster, "healthy", "Succeeded"), 60)
        failed = wait_for(
            "/livez to fail", lambda: (r := httpx.get(livez, timeout=5)).status_code == 503 and r.text, 60
        )
        detected_after = time.monotonic() - wedged_at
        assert "stuck" in failed and "models/wedged" in failed
        metrics = httpx.get(f"http://127.0.0.1:{ctl.metrics_port}/metrics", timeout=5).text
        assert 'mesh_canary_reconciles_in_flight{state="stuck"} 1.0' in metrics
        wedged.release.set()
        wait_for("/livez healthy again", lambda: httpx.get(livez, timeout=5).status_code == 200, 30)
    finally:
        wedged.release.set()
        ctl.stop(timeout_s=20)
    print(f"\nitem 1: /livez failed {detected_after:.1f}s after the reconcile wedged (stuck_after 4s)")
    assert cluster.vs_history("healthy") == [[100, 0], [80, 20], [50, 50], [0, 100]]


# --------------------------------------------------------------------------- item 9


@pytest.mark.fault(item=9)
def test_a_rollout_naming_another_namespaces_virtual_service_changes_nothing_there(
    cluster: Cluster,
) -> None:
    cluster.add_vs("payments", namespace="other-team")
    before = cluster.kube.stored(VS_RES, "other-team", "payments")
    cluster.add_rollout(
        model_rollout("hijack", virtualService={"name": "payments", "namespace": "other-team"})
    )
    cluster.add_vs("sentinel")  # a valid rollout that keeps the controller turning
    cluster.add_rollout(model_rollout("sentinel", analysis={"interval": "1s"}, canary=HOLD))
    settings = ControllerSettings(namespaces=NS, watch_timeout_s=5, error_retry_s=0.5)
    with running(Controller(cluster.client, settings)) as ctl:
        started = time.monotonic()
        valid = wait_for("PolicyValid=False", policy_valid_false(cluster, "hijack"))
        print(
            f"\nitem 9: refused (PolicyValid=False) {time.monotonic() - started:.1f}s after start; nothing written"
        )
        wait_for("the InvalidPolicy Event", lambda: "InvalidPolicy" in cluster.event_reasons("hijack"))
        wait_reconciles(ctl, 6)  # several of the controller's turns: still nothing may happen
    assert "spec.virtualService.namespace" in valid["message"] and "other-team" in valid["message"]
    assert cluster.status("hijack")["phase"] == "Invalid"
    # The other team's VirtualService: byte for byte what it was, never written.
    assert cluster.kube.stored(VS_RES, "other-team", "payments") == before
    [event] = [e for e in cluster.events("hijack") if e.reason == "InvalidPolicy"]
    assert event.type == "Warning" and "namespace" in event.message


@pytest.mark.fault(item=9)
def test_cross_namespace_routes_only_with_the_operators_flag(cluster: Cluster) -> None:
    cluster.add_vs("payments", namespace="shared-routes")
    cluster.add_rollout(
        model_rollout("payments", virtualService={"name": "payments", "namespace": "shared-routes"})
    )

    def backend(policy: Policy) -> tuple[IstioRouter, HealthyMetrics]:
        return IstioRouter(policy, cluster.client, backoff_s=0.01), HealthyMetrics()

    ctl = Controller(
        cluster.client,
        ControllerSettings(namespaces=NS, allow_cross_namespace=True, watch_timeout_s=5, error_retry_s=0.5),
        backend=backend,
    )
    with running(ctl):
        wait_for("promotion", phase_is(cluster, "payments", "Succeeded"), 60)
    assert cluster.vs_history("payments", namespace="shared-routes")[-1] == [0, 100]


# --------------------------------------------------------------------------- item 10


@pytest.mark.fault(item=10)
def test_a_metrics_address_the_controller_was_not_given_is_rejected_and_never_contacted(
    cluster: Cluster,
) -> None:
    with (
        http_server(bad_candidate({"1.0": (2000, 0), "2.0": (2000, 0)})) as (allowed_url, allowed),
        http_server(bad_candidate({"1.0": (2000, 0), "2.0": (2000, 0)})) as (probe_url, probe),
    ):
        cluster.add_vs("ssrf")
        cluster.add_vs("swallow")
        cluster.add_vs("sentinel")
        cluster.add_rollout(model_rollout("ssrf", metrics={"address": probe_url}))
        # A `?` that would swallow the API path of the allowed Prometheus itself.
        cluster.add_rollout(model_rollout("swallow", metrics={"address": f"{allowed_url}/x?y="}))
        # A valid rollout on the allowed Prometheus: its analyses are the clock the refused
        # two would have run on, had they been let through.
        cluster.add_rollout(model_rollout("sentinel"))
        settings = ControllerSettings(namespaces=NS, prometheus_url=allowed_url, watch_timeout_s=5)
        with running(Controller(cluster.client, settings)):
            started = time.monotonic()
            for name in ("ssrf", "swallow"):
                valid = wait_for(f"PolicyValid=False on {name}", policy_valid_false(cluster, name))
                assert "spec.metrics.address" in valid["message"] and "not a Prometheus" in valid["message"]
                wait_for(
                    "the InvalidPolicy Event", lambda n=name: "InvalidPolicy" in cluster.event_reasons(n)
                )
            print(f"\nitem 10: both refused {time.monotonic() - started:.1f}s after start; never contacted")
            ticks = int((cluster.status("sentinel").get("rollout") or {}).get("ticks") or 0)
            wait_for(
                "two more analyses of the sentinel",
                lambda: int((cluster.status("sentinel").get("rollout") or {}).get("ticks") or 0) >= ticks + 2,
                60,
            )
    assert probe.hits == 0
    paths = [path for _, path, _, _ in allowed.requests]
    assert paths and all(path.startswith("/api/v1/") for path in paths), paths
    assert cluster.vs_history("ssrf") == [[100, 0]] and cluster.vs_history("swallow") == [[100, 0]]


@pytest.mark.fault(item=10)
def test_an_api_error_body_never_reaches_the_status_or_the_events(cluster: Cluster) -> None:
    secret = "SECRET-IN-AN-ERROR-BODY-77ab"
    cluster.add_vs("fraud-scorer")
    # Every write of the VirtualService answers 500 with an HTML page carrying a secret.
    cluster.kube.call(
        lambda h: h["put", h.resource(VS_RES)] << 500 << f"<html><body>{secret}</body></html>".encode()
    )

    def backend(policy: Policy) -> tuple[IstioRouter, HealthyMetrics]:
        return IstioRouter(policy, cluster.client, backoff_s=0.01), HealthyMetrics()

    cluster.add_rollout(model_rollout("fraud-scorer"))
    with running(
        Controller(
            cluster.client,
            ControllerSettings(namespaces=NS, watch_timeout_s=5, error_retry_s=0.5),
            backend=backend,
        )
    ):
        wait_for("a ReconcileError Event", lambda: "ReconcileError" in cluster.event_reasons("fraud-scorer"))
        ready = wait_for(
            "Ready=False",
            lambda: (
                (c := condition(cluster.status("fraud-scorer"), "Ready")) and c["status"] == "False" and c
            ),
        )
    assert "HTTP 500" in ready["message"]
    assert secret not in json.dumps(cluster.rollout("fraud-scorer"))
    assert all(secret not in (e.message or "") for e in cluster.events("fraud-scorer"))
    assert cluster.vs_history("fraud-scorer") == [[100, 0]]


# --------------------------------------------------------------------------- item 11


def controller_process(
    kubeconfig: pathlib.Path, log_path: pathlib.Path, *args: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [
                MESH_CANARY,
                "--debug",  # the noisiest logging there is: still no secret
                "controller",
                "--kubeconfig",
                str(kubeconfig),
                "--namespace",
                NS,
                "--metrics-addr",
                f"127.0.0.1:{port}",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc, port


@pytest.mark.fault(item=11)
def test_a_token_in_a_webhook_secret_and_a_metrics_url_appears_nowhere(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    with (
        # Hangs up twice first: "Prometheus at <URL> is unreachable" must not show the URL's password.
        http_server(bad_candidate({"1.0": (2000, 0), "2.0": (2000, 600)}, drop_first=2)) as (prom_url, prom),
        http_server(accept) as (hook_url, hook),
    ):
        webhook = f"{hook_url}/hooks/{TOKEN}?token={TOKEN}"
        cluster.core.create_namespaced_secret(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "alerts", "namespace": NS},
                "data": {"url": base64.b64encode(webhook.encode()).decode()},
            },
        )
        authed = prom_url.replace("http://", f"http://reader:{TOKEN}@")
        cluster.add_vs("fraud-scorer")
        cluster.add_rollout(
            model_rollout(
                "fraud-scorer",
                metrics={"address": prom_url},  # no credentials in the spec: the controller has them
                notifications=[
                    {
                        "webhook": {
                            "urlFrom": {"secretKeyRef": {"name": "alerts", "key": "url"}},
                            "format": "json",
                        }
                    }
                ],
            )
        )
        log_path = tmp_path / "controller.log"
        proc, port = controller_process(cluster.kube.kubeconfig_path, log_path, "--prometheus", authed)
        try:
            wait_for(
                "the controller's /readyz",
                lambda: (
                    proc.poll() is None
                    and httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
                ),
                30,
            )
            ready_at = time.monotonic()
            wait_for("the rollback", phase_is(cluster, "fraud-scorer", "RolledBack"), 60)
            print(f"\nitem 11: rolled back {time.monotonic() - ready_at:.1f}s after the controller was ready")
            wait_for(
                "the RolledBack webhook",
                lambda: any(b"RolledBack" in body for _, _, _, body in hook.requests),
                30,
            )
        finally:
            proc.terminate()
            proc.wait(30)
        # The credentials and the webhook were really used...
        expected_auth = "Basic " + base64.b64encode(f"reader:{TOKEN}".encode()).decode()
        assert any(headers.get("Authorization") == expected_auth for _, _, headers, _ in prom.requests)
        assert all(path.startswith(f"/hooks/{TOKEN}") for _, path, _, _ in hook.requests)
    # ... and the token is in none of: the logs, the status, the Events, the payloads.
    logs = log_path.read_text()
    assert "RolledBack" in logs or "rolled back" in logs.lower()
    assert TOKEN not in logs
    # Every version of the ModelRollout the controller ever wrote, not only the last.
    for version in cluster.kube.stored("mesh-canary.io/v1alpha1/modelrollouts", NS, "fraud-scorer"):
        assert TOKEN not in json.dumps(version)
    events = cluster.events("fraud-scorer")
    assert "RolledBack" in [e.reason for e in events]
    assert TOKEN not in json.dumps([cluster.client.sanitize_for_serialization(e) for e in events])
    assert all(TOKEN.encode() not in body for _, _, _, body in hook.requests)
    assert cluster.vs_history("fraud-scorer")[-1] == [100, 0]


# --------------------------------------------------------------------------- item 12


@pytest.mark.fault(item=12)
def test_probes_bind_loopback_unless_told_otherwise(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            MESH_CANARY,
            "controller",
            "--kubeconfig",
            str(cluster.kube.kubeconfig_path),
            "--namespace",
            NS,
            "--metrics-addr",
            f":{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            "/livez on loopback",
            lambda: httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200,
        )
        listening = pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]
        local = {line.split()[1] for line in listening if line.split()[3] == "0A"}  # 0A: LISTEN
        assert f"0100007F:{port:04X}" in local  # 127.0.0.1
        assert f"00000000:{port:04X}" not in local  # not 0.0.0.0
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.fault(item=12)
def test_the_bind_address_is_loopback_unless_given() -> None:
    assert parse_addr(":8080") == ("127.0.0.1", 8080)
    assert parse_addr(":8080", "0.0.0.0") == ("0.0.0.0", 8080)
    assert parse_addr("10.0.0.7:9000", "0.0.0.0") == ("10.0.0.7", 9000)
    assert parse_addr("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", ":http", ":70000"):
        with pytest.raises(ValueError, match="--metrics-addr"):
            parse_addr(bad)


@pytest.mark.fault(item=10)
def test_metrics_addresses_match_on_scheme_host_port_and_path_only() -> None:
    assert address_key("HTTP://Prom.example:80/") == address_key("http://prom.example") is not None
    assert address_key("http://reader:pw@prom:9090/base/") == address_key("http://prom:9090/base")
    assert address_key("https://prom") != address_key("http://prom")
    assert address_key("http://prom:9090/other") != address_key("http://prom:9090")
    for bad in (
        "http://prom:9090/?x=",
        "http://prom:9090/#f",
        "ftp://prom",
        "prom:9090",
        "http://:9090",
        "http://p:x",
    ):
        assert address_key(bad) is None, bad
    configured = MetricsAddress.parse(f"https://reader:{TOKEN}-m@prom.example:9443")
    assert TOKEN not in str(configured) and configured.url.endswith("@prom.example:9443")


@pytest.mark.fault(item=10)
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--allow-metrics-address", "http://prom:9090/api/v1/query?x="], "not an http(s) URL"),
        (["--prometheus", "file:///etc/passwd"], "not an http(s) URL"),
        (["--namespace", "models,Other_Team"], "not a Kubernetes namespace"),
        (["--slow-after", "10m"], "--slow-after"),
        (["--workers", "8", "--max-workers", "2"], "--max-workers"),
        (["--metrics-addr", "8080"], "--metrics-addr"),
    ],
)
def test_bad_controller_options_are_exit_2_with_one_sentence(args: list[str], says: str) -> None:
    result = CliRunner().invoke(cli_main, ["controller", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output


@pytest.mark.fault(item=1)
def test_sigterm_ends_the_controller_on_time_while_a_read_is_stuck(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    """A pod is killed 30 s after SIGTERM: a reconcile stuck on Prometheus must not hold the exit."""
    with http_server(trickle) as (slow_url, slow):
        cluster.add_vs("fraud-scorer")
        cluster.add_rollout(model_rollout("fraud-scorer", metrics={"address": slow_url, "timeout": "2s"}))
        log_path = tmp_path / "controller.log"
        proc, _ = controller_process(cluster.kube.kubeconfig_path, log_path, "--prometheus", slow_url)
        try:
            wait_for("a read on the trickling Prometheus", lambda: slow.open_now >= 1, 30)
            asked = time.monotonic()
            proc.terminate()
            code = proc.wait(90)
            took = time.monotonic() - asked
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"\nitem 1: SIGTERM with a read in flight: exited {code} after {took:.1f}s")
    # It waits up to 20 s for the reads in flight (inside the pod's 30 s grace period), then
    # exits; 60 s is a generous bound for "on time, not never" on a loaded machine.
    assert code == 0 and took < 60, log_path.read_text()[-2000:]
