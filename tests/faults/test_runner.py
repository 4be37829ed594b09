"""Fault matrix, items 3-7: `mesh-canary run --backend istio` as a real subprocess against the
Kubernetes API stand-in (Istio's CRD, a real HTTP API), a small Prometheus on loopback
answering the one istio query, and a webhook receiver recording every announcement.

Each test prints the measured time to a safe state (run pytest with -s to see it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes.client
import pytest
import yaml

from tests.crd_schema import ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
from tests.e2e.test_cluster_e2e import MESH_CANARY, NS, model_rollout, virtual_service
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

RES = "networking.istio.io/v1/virtualservices"
ANNOTATION_OWNER = "mesh-canary.io/owner"  # a literal: this module also runs against older code
VS = "scorer"


@dataclass
class FakeProm:
    """Answers the istio profile's one query. ``mode``: "none" (no series: the step holds),
    "healthy" (both versions clean), "errors" (the candidate answers 30% 5xx); or a callable
    returning the mode, asked at every query."""

    mode: str | Callable[[], str] = "none"
    url: str = ""

    def answer(self) -> dict[str, Any]:
        mode = self.mode() if callable(self.mode) else self.mode
        series: list[dict[str, Any]] = []
        if mode != "none":
            now = time.time()
            for version, bad in (("v1", 0), ("v2", 300 if mode == "errors" else 0)):
                series.append(
                    {
                        "metric": {"destination_version": version, "response_code": "200"},
                        "value": [now, str(1000 - bad)],
                    }
                )
                if bad:
                    series.append(
                        {
                            "metric": {"destination_version": version, "response_code": "503"},
                            "value": [now, str(bad)],
                        }
                    )
        return {"status": "success", "data": {"resultType": "vector", "result": series}}


@dataclass
class Hooks:
    """A webhook receiver: every announcement with the time it arrived."""

    url: str = ""
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [str(a.get("kind")) for _, a in self.received]

    def first(self, kind: str) -> float | None:
        return next((t for t, a in self.received if a.get("kind") == kind), None)


@contextlib.contextmanager
def http_server(handle: Callable[[BaseHTTPRequestHandler], tuple[int, bytes]]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            code, body = handle(self)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Rig:
    kube: KubeStandIn
    prom: FakeProm
    hooks: Hooks
    tmp: pathlib.Path
    custom: Any

    def policy(self, name: str = "policy.yaml", **canary: Any) -> pathlib.Path:
        doc = model_rollout(VS, "v1", "v2", self.prom.url)
        spec = doc["spec"]
        spec["canary"] = {"steps": [25, 50, 100], "minStepDuration": "1s", "maxStepDuration": "10m", **canary}
        spec["analysis"] = {
            "interval": "1s",
            "minRequests": 20,
            "noDataTimeout": "10m",
            "checks": [{"metric": "errorRate", "max": 0.05}],
        }
        spec["metrics"] = {"provider": "prometheus", "profile": "istio", "address": self.prom.url}
        spec["notifications"] = [{"webhook": {"url": self.hooks.url, "format": "json"}}]
        path = self.tmp / name
        path.write_text(yaml.safe_dump(doc))
        return path

    def run(
        self, policy: pathlib.Path, state: str | None = "state.json", log: str = "run.log"
    ) -> subprocess.Popen[str]:
        args = [MESH_CANARY, "run", "-f", str(policy), "--backend", "istio",
                "--kubeconfig", str(self.kube.kubeconfig_path), "--prometheus", self.prom.url, "-o", "json"]  # fmt: skip
        if state is not None:
            args += ["--state", str(self.tmp / state)]
        return subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=(self.tmp / log).open("w"),
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait(
        self, proc: subprocess.Popen[str], what: str, fn: Callable[[], Any], timeout_s: float = 60
    ) -> None:
        """`wait_for`, failing at once (with the run's log) if the run ends first."""
        wait_for(what, lambda: fn() or proc.poll() is not None, timeout_s)
        if not fn():
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {self.log()}")

    def vs(self) -> dict[str, Any]:
        return dict(
            self.custom.get_namespaced_custom_object("networking.istio.io", "v1", NS, "virtualservices", VS)
        )

    def weights(self) -> list[int]:
        return [int(r["weight"]) for r in self.vs()["spec"]["http"][0]["route"]]

    def stored_weights(self) -> list[list[int]]:
        return [
            [int(r["weight"]) for r in v["spec"]["http"][0]["route"]] for v in self.kube.stored(RES, NS, VS)
        ]

    def set_weights(self, stable: int, candidate: int) -> None:
        def person(obj: dict[str, Any]) -> None:
            obj["spec"]["http"][0]["route"][0]["weight"] = stable
            obj["spec"]["http"][0]["route"][1]["weight"] = candidate

        self.kube.write(RES, NS, VS, person)

    def log(self, name: str = "run.log") -> str:
        return (self.tmp / name).read_text()[-3000:]


@pytest.fixture
def rig(tmp_path: pathlib.Path) -> Iterator[Rig]:
    prom = FakeProm()
    hooks = Hooks()

    def answer_prom(req: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        return 200, json.dumps(prom.answer()).encode()

    def receive(req: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        hooks.received.append((time.monotonic(), json.loads(body or b"{}")))
        return 200, b"{}"

    crds = [load_yaml(p) for p in [*ISTIO_CRDS, MODELROLLOUT_CRD]]
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(KubeStandIn(crds, workdir=tmp_path / "kube"))
        prom.url = stack.enter_context(http_server(answer_prom))
        hooks.url = stack.enter_context(http_server(receive)) + "/hook"
        custom: Any = kubernetes.client.CustomObjectsApi(kube.api_client())
        custom.create_namespaced_custom_object(
            "networking.istio.io", "v1", NS, "virtualservices", virtual_service(VS, "v1", "v2")
        )
        procs: list[subprocess.Popen[str]] = []
        r = Rig(kube, prom, hooks, tmp_path, custom)
        original = r.run

        def tracked(*a: Any, **kw: Any) -> subprocess.Popen[str]:
            p = original(*a, **kw)
            procs.append(p)
            return p

        r.run = tracked  # type: ignore[method-assign]
        try:
            yield r
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)


def finish(
    proc: subprocess.Popen[str], rig: Rig, log: str = "run.log", timeout: float = 90
) -> tuple[int, dict[str, Any]]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"`mesh-canary run` did not end within {timeout}s: {rig.log(log)}") from None
    try:
        doc = json.loads(out) if out.strip() else {}
    except ValueError:
        doc = {"raw": out}
    return proc.returncode, doc


def fail_puts(rig: Rig, when: Callable[[dict[str, Any]], bool], status: int) -> None:
    """From now on the stand-in answers ``status`` to every VirtualService PUT for which ``when(body)``."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
            "reason": "Conflict" if status == 409 else "InternalError",
            "message": "the object has been modified" if status == 409 else "etcd is unhappy"}  # fmt: skip

    def install(h: Any) -> None:
        h["put", h.resource(RES), lambda req: isinstance(req.data, dict) and when(req.data)] << status << body

    rig.kube.call(install)


def candidate_weight(vs: dict[str, Any]) -> int:
    return int(vs["spec"]["http"][0]["route"][1]["weight"])


# ---------------------------------------------------------------------------------------------


@pytest.mark.fault(item=3)
def test_a_persons_manual_rollback_is_never_overwritten(rig: Rig) -> None:
    """The VirtualService is set to 100/0 by hand during a step: the run stops Aborted (exit 4),
    writes nothing after the person's edit, and never promotes."""
    proc = rig.run(rig.policy())
    rig.wait(proc, "the first step at 25%", lambda: rig.weights() == [75, 25])
    writes_before = len(rig.stored_weights())
    rig.set_weights(100, 0)
    edited = time.monotonic()
    rig.prom.mode = "healthy"  # the run would now advance, if it did not notice
    code, doc = finish(proc, rig)
    stopped = time.monotonic() - edited
    assert code == 4, rig.log()
    assert doc["outcome"] == "aborted" and doc["phase"] == "Aborted", doc
    assert "moved to 100/0 outside mesh-canary" in doc["reason"] and "nothing written" in doc["reason"]
    after = rig.stored_weights()[writes_before:]
    assert after and all(w == [100, 0] for w in after), "nothing but the person's weights after the edit"
    assert rig.weights() == [100, 0]
    assert "Aborted" in rig.hooks.kinds() and "Promoted" not in rig.hooks.kinds()
    assert ANNOTATION_OWNER not in (rig.vs()["metadata"].get("annotations") or {}), "ownership released"
    assert stopped < 30
    print(f"\nitem 3: stopped (Aborted, nothing written) {stopped:.2f}s after the person's edit")


@pytest.mark.fault(item=4)
def test_ctrl_c_twice_then_rerun_never_promotes(rig: Rig) -> None:
    """SIGINT, then SIGINT again 120-200 ms later while the rollback write is in flight (the
    stand-in takes 0.6 s to answer it); then `run --state` again: it must not promote."""
    at_50 = threading.Event()
    rig.prom.mode = lambda: "none" if at_50.is_set() else "healthy"  # hold at 50% once there
    proc = rig.run(rig.policy())

    def reached_50() -> bool:
        if rig.weights() == [50, 50]:
            at_50.set()
            return True
        return False

    rig.wait(proc, "the second step at 50%", reached_50)

    def slow_down(h: Any) -> None:
        async def slow(request: Any) -> None:
            import asyncio

            await asyncio.sleep(0.6)  # the write lands, but late: the client waits for it

        h["put", h.resource(RES)] >> slow

    rig.kube.call(slow_down)
    first = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(random.uniform(0.12, 0.2))
    proc.send_signal(signal.SIGINT)
    finish(proc, rig)
    wait_for("100/0 on the VirtualService", lambda: rig.weights() == [100, 0], 30)
    safe = time.monotonic() - first
    state = json.loads((rig.tmp / "state.json").read_text())
    assert state["phase"] == "RolledBack", "the rollback was saved before quitting"

    rig.prom.mode = "healthy"  # a rerun that re-advanced would now promote
    code, doc = finish(rig.run(rig.policy(), log="rerun.log"), rig, "rerun.log")
    assert code == 3, rig.log("rerun.log")
    assert doc["outcome"] == "rolled_back"
    assert rig.weights() == [100, 0]
    assert "Promoted" not in rig.hooks.kinds()
    print(f"\nitem 4: 100% stable {safe:.2f}s after the first Ctrl-C; the rerun stays rolled back")


@pytest.mark.fault(item=4)
def test_a_resume_trusts_the_routes_own_rollback_record_over_a_stale_state_file(rig: Rig) -> None:
    """The state file still says 50% (a crash between the rollback write and the save): the
    rerun reads the VirtualService, finds this run's rollback record there, ends rolled back."""
    rig.prom.mode = lambda: "none" if rig_at(rig, 50) else "healthy"
    proc = rig.run(rig.policy())
    rig.wait(proc, "the second step at 50%", lambda: rig.weights() == [50, 50])
    stale = (rig.tmp / "state.json").read_text()
    proc.send_signal(signal.SIGINT)  # one Ctrl-C: rolled back and saved
    code, _ = finish(proc, rig)
    assert code == 3 and rig.weights() == [100, 0]
    (rig.tmp / "state.json").write_text(stale)  # as if the save had never happened
    rig.prom.mode = "healthy"
    started = time.monotonic()
    code, doc = finish(rig.run(rig.policy(), log="rerun.log"), rig, "rerun.log")
    assert code == 3 and doc["outcome"] == "rolled_back", rig.log("rerun.log")
    assert "manual" in doc["failedChecks"], doc
    assert rig.weights() == [100, 0] and "Promoted" not in rig.hooks.kinds()
    print(
        f"\nitem 4: stale state file resumed as rolled back in {time.monotonic() - started:.2f}s (nothing written)"
    )


def rig_at(rig: Rig, candidate: int) -> bool:
    try:
        return rig.weights()[1] == candidate
    except Exception:
        return False


@pytest.mark.fault(item=5)
def test_a_second_run_on_the_same_virtual_service_is_refused(rig: Rig) -> None:
    first = rig.run(rig.policy())
    rig.wait(first, "the first run's step at 25%", lambda: rig.weights() == [75, 25])
    writes = len(rig.kube.stored(RES, NS, VS))
    lax = rig.policy("lax.yaml", steps=[50, 100])
    started = time.monotonic()
    code, _ = finish(rig.run(lax, state="other.json", log="second.log"), rig, "second.log")
    refused = time.monotonic() - started
    assert code == 1, rig.log("second.log")
    assert "is already being rolled out by models/scorer" in rig.log("second.log")
    assert "Traceback" not in rig.log("second.log")
    assert len(rig.kube.stored(RES, NS, VS)) == writes, "the second run wrote nothing"
    assert not (rig.tmp / "other.json").exists()
    first.send_signal(signal.SIGINT)
    code, _ = finish(first, rig)
    assert code == 3 and rig.weights() == [100, 0]
    assert ANNOTATION_OWNER not in (rig.vs()["metadata"].get("annotations") or {})
    print(f"\nitem 5: second run refused in {refused:.2f}s, nothing written")


@pytest.mark.fault(item=6)
@pytest.mark.parametrize("status", [500, 409])
def test_a_step_write_that_keeps_failing_rolls_back_and_announces(rig: Rig, status: int) -> None:
    proc = rig.run(rig.policy())
    rig.wait(proc, "the first step at 25%", lambda: rig.weights() == [75, 25])
    fail_puts(rig, lambda body: candidate_weight(body) > 25, status)  # every later step write
    rig.prom.mode = "healthy"
    since = time.monotonic()
    code, doc = finish(proc, rig)
    safe = time.monotonic() - since
    assert code == 3, rig.log()
    assert doc["outcome"] == "rolled_back" and "could not write 50% to the candidate" in doc["reason"], doc
    assert rig.weights() == [100, 0]
    assert "RolledBack" in rig.hooks.kinds()
    assert safe < 60
    print(f"\nitem 6 (HTTP {status}): 100% stable and announced {safe:.2f}s after the step became due")


@pytest.mark.fault(item=7)
def test_a_failing_rollback_write_is_announced_at_once_and_retried_until_it_goes_through(rig: Rig) -> None:
    failing = threading.Event()
    failing.set()
    proc = rig.run(rig.policy())
    rig.wait(proc, "the first step at 25%", lambda: rig.weights() == [75, 25])
    fail_puts(rig, lambda body: failing.is_set(), 503)
    rig.prom.mode = "errors"
    bad = time.monotonic()
    wait_for("a RollbackFailing announcement", lambda: rig.hooks.first("RollbackFailing"), 30)
    announced = (rig.hooks.first("RollbackFailing") or 0) - bad
    wait_for(
        "the state saying rollback pending",
        lambda: json.loads((rig.tmp / "state.json").read_text()).get("rollbackPending"),
        30,
    )
    assert "RolledBack" not in rig.hooks.kinds() and proc.poll() is None, "not finished while pending"
    assert rig.weights() == [75, 25]
    recovered = time.monotonic()
    failing.clear()
    wait_for("100/0 once the API server recovers", lambda: rig.weights() == [100, 0], 30)
    written = time.monotonic() - recovered
    code, doc = finish(proc, rig)
    assert code == 3 and doc["outcome"] == "rolled_back", rig.log()
    assert "errorRate" in doc["failedChecks"]
    wait_for("the RolledBack announcement", lambda: "RolledBack" in rig.hooks.kinds(), 10)
    assert announced < 30 and written < 30
    print(
        f"\nitem 7: RollbackFailing announced {announced:.2f}s after the failing check; "
        f"100% stable {written:.2f}s after the API server recovered"
    )


@pytest.mark.fault(item=7)
def test_in_the_controller_a_pending_rollback_is_in_the_status_and_holds_no_worker(
    tmp_path: pathlib.Path,
) -> None:
    """The controller with ONE worker: rollout A's rollback write keeps failing (503); its
    status says RollingBack / RollbackPending=True and a RollbackFailing Event is posted at
    once, while rollout B on another VirtualService is still promoted meanwhile. Once the API
    server takes A's write, A ends RolledBack."""
    from mesh_canary.controller import Controller, ControllerSettings, running
    from mesh_canary.core.model import Policy
    from mesh_canary.kube.status import condition
    from mesh_canary.routing.istio import IstioRouter
    from tests.integration.test_controller import Cluster, Metrics
    from tests.integration.test_controller import model_rollout as mr

    crds = [load_yaml(p) for p in [*ISTIO_CRDS, MODELROLLOUT_CRD]]
    with KubeStandIn(crds, workdir=tmp_path / "kube") as kube:
        cluster = Cluster(kube)
        metrics = {"a": Metrics(), "b": Metrics()}
        metrics["a"].error_rate = 0.3

        def backend(policy: Policy) -> tuple[IstioRouter, Metrics]:
            return IstioRouter(policy, cluster.client), metrics[policy.name]

        failing = threading.Event()
        failing.set()

        def install(h: Any) -> None:
            def rollback_of_a(req: Any) -> bool:
                data = req.data if isinstance(req.data, dict) else {}
                routes = (data.get("spec") or {}).get("http") or [{}, {}]
                weights = [r.get("weight") for r in routes[-1].get("route") or []]
                meta = data.get("metadata") or {}
                record = "mesh-canary.io/rollback" in (
                    meta.get("annotations") or {}
                )  # the rollback's own write
                return failing.is_set() and meta.get("name") == "a" and record and weights[-1:] == [0]

            (
                h["put", h.resource(RES), rollback_of_a]
                << 503
                << {"kind": "Status", "code": 503, "message": "busy"}
            )

        kube.call(install)
        for name in ("a", "b"):
            cluster.add_vs(name)
        settings = ControllerSettings(namespaces=NS, workers=1, error_retry_s=0.5)
        ctl = Controller(cluster.client, settings, backend=backend)
        with running(ctl):
            cluster.add_rollout(mr("a"))
            cluster.add_rollout(mr("b"))
            wait_for("A at 20%", lambda: [80, 20] in cluster.vs_history("a"), 30)
            started = time.monotonic()
            wait_for(
                "a RollbackFailing Event",
                lambda: "RollbackFailing" in [e[0] for e in cluster.events("a")],
                30,
            )
            announced = time.monotonic() - started
            status = wait_for(
                "A pending", lambda: (s := cluster.status("a")).get("phase") == "RollingBack" and s, 30
            )
            assert (condition(status, "RollbackPending") or {}).get("status") == "True"
            assert cluster.vs_weights("a") == [80, 20]
            wait_for("B promoted meanwhile", lambda: cluster.status("b").get("phase") == "Succeeded", 90)
            assert cluster.status("a").get("phase") == "RollingBack", "A is still retrying"
            recovered = time.monotonic()
            failing.clear()
            wait_for("A rolled back", lambda: cluster.status("a").get("phase") == "RolledBack", 30)
            written = time.monotonic() - recovered
            assert cluster.vs_weights("a") == [100, 0]
            assert (condition(cluster.status("a"), "RollbackPending") or {}).get("status") == "False"
    print(
        f"\nitem 7 (controller): RollbackFailing Event {announced:.2f}s after A's failed check; "
        f"rolled back {written:.2f}s after the API server recovered; B promoted meanwhile"
    )
