"""The controller against the Kubernetes API stand-in, through the official client over HTTP.

The controller runs in this process (a few threads) with the real IstioRouter, the real
status store and Event notifier; only the metrics are a fake MetricsSource (the Protocol),
so that a test decides whether a candidate is healthy. Intervals are 1 s.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import pytest

from mesh_canary.controller import Controller, ControllerSettings
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.kube.status import FINALIZER, condition
from mesh_canary.routing.istio import IstioRouter
from tests.conftest import NS, model_rollout
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MR = ("mesh-canary.io", "v1alpha1")
VS = ("networking.istio.io", "v1")


class Metrics:
    """A MetricsSource whose candidate is healthy until told otherwise."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.error_rate = 0.0
        self.requests = 2000.0
        self.delay_s = delay_s
        self.gate = gate  # set: reads return; unset: every read hangs until it is
        self.reads = 0

    def read(self, since: float, now: float) -> Observation:
        self.reads += 1
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow Prometheus
        if self.gate is not None:
            self.gate.wait()  # a Prometheus that does not answer until the test lets it
        n = self.requests
        return Observation(
            since=since,
            at=now,
            stable=VersionCounts(requests=n),
            candidate=VersionCounts(requests=n, errors=n * self.error_rate),
        )


class SpyRouter:
    """The real IstioRouter, with every set_weights call recorded (to prove what was written when)."""

    def __init__(self, inner: IstioRouter, log: list[tuple[str, Weights]]) -> None:
        self.inner = inner
        self.log = log

    def set_weights(self, weights: Weights) -> None:
        self.inner.set_weights(weights)
        self.log.append((self.inner.name, weights))

    def get_weights(self) -> Weights:
        return self.inner.get_weights()


class Cluster:
    def __init__(self, kube: KubeStandIn) -> None:
        self.kube = kube
        self.client = kube.api_client()
        self.custom: Any = kubernetes.client.CustomObjectsApi(self.client)
        self.core: Any = kubernetes.client.CoreV1Api(self.client)
        self.metrics: dict[str, Metrics] = {}  # by candidate version
        self.writes: list[tuple[str, Weights]] = []

    def backend(self, policy: Policy) -> tuple[SpyRouter, Metrics]:
        metrics = self.metrics.setdefault(policy.candidate.version, Metrics())
        return SpyRouter(IstioRouter(policy, self.client, backoff_s=0.01), self.writes), metrics

    def controller(self, **kw: Any) -> Controller:
        kw.setdefault("namespaces", NS)
        kw.setdefault("watch_timeout_s", 5)
        kw.setdefault("error_retry_s", 0.5)
        return Controller(self.client, ControllerSettings(**kw), backend=self.backend)

    def add_vs(self, name: str = "fraud-scorer") -> None:
        self.custom.create_namespaced_custom_object(*VS, NS, "virtualservices", virtual_service(name))

    def add_rollout(self, doc: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(*MR, NS, "modelrollouts", doc)

    def rollout(self, name: str = "fraud-scorer") -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(*MR, NS, "modelrollouts", name))

    def status(self, name: str = "fraud-scorer") -> dict[str, Any]:
        return dict(self.rollout(name).get("status") or {})

    def vs_weights(self, name: str = "fraud-scorer") -> list[int]:
        vs = self.custom.get_namespaced_custom_object(*VS, NS, "virtualservices", name)
        return [r.get("weight", 0) for r in vs["spec"]["http"][1]["route"]]

    def vs_history(self, name: str = "fraud-scorer") -> list[list[int]]:
        """The managed route's weights in every stored version of the VirtualService, oldest first."""
        out: list[list[int]] = []
        for v in self.kube.stored("networking.istio.io/v1/virtualservices", NS, name):
            weights = [r.get("weight", 0) for r in v["spec"]["http"][1]["route"]]
            if not out or out[-1] != weights:
                out.append(weights)
        return out

    def events(self, name: str = "fraud-scorer") -> list[tuple[str, str, str]]:
        items = self.core.list_namespaced_event(NS).items
        mine = [e for e in items if e.involved_object.name == name]
        mine.sort(key=lambda e: e.metadata.resource_version and int(e.metadata.resource_version))
        return [(e.reason, e.type, e.message) for e in mine]

    def annotate(self, key: str, value: str, name: str = "fraud-scorer") -> None:
        body = {"metadata": {"annotations": {key: value}}}
        self.custom.patch_namespaced_custom_object(*MR, NS, "modelrollouts", name, body)

    def patch_spec(self, spec: dict[str, Any], name: str = "fraud-scorer") -> None:
        self.custom.patch_namespaced_custom_object(*MR, NS, "modelrollouts", name, {"spec": spec})


def virtual_service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "name": "debug",
                    "match": [{"headers": {"x-debug": {"exact": "1"}}}],
                    "route": [{"destination": {"host": name, "subset": "v2"}}],
                },
                {
                    "name": "primary",
                    "route": [
                        {"destination": {"host": name, "subset": "v1"}, "weight": 100},
                        {"destination": {"host": name, "subset": "v2"}, "weight": 0},
                    ],
                    "timeout": "10s",
                },
            ],
        },
    }


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    return Cluster(kube_api)


@contextlib.contextmanager
def running(ctl: Controller) -> Iterator[Controller]:
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()


def ticks_of(ctl: Controller) -> float:
    return ctl.metrics.registry.get_sample_value("mesh_canary_ticks_total") or 0.0


def reconciles_of(ctl: Controller) -> float:
    """Reconciles the controller has finished (of any rollout, failed ones included)."""
    return ctl.metrics.registry.get_sample_value("mesh_canary_reconcile_duration_seconds_count") or 0.0


# A sentinel rollout's steps: it holds its first step, analysed every interval, for an hour.
HOLD = {"steps": [10, 100], "minStepDuration": "1h", "maxStepDuration": "2h"}


def wait_reconciles(ctl: Controller, more: int) -> None:
    """Wait until the controller has finished ``more`` reconciles from now: for a check that
    something does NOT happen, time measured in the controller's own turns (a sentinel
    rollout with a short interval keeps it turning), not in seconds of a fast machine."""
    target = reconciles_of(ctl) + more
    wait_for(f"{more} more reconciles", lambda: reconciles_of(ctl) >= target)


def phase_is(cluster: Cluster, *phases: str, name: str = "fraud-scorer") -> Callable[[], bool]:
    return lambda: cluster.status(name).get("phase") in phases


# --------------------------------------------------------------------------- tests


def test_a_healthy_candidate_is_promoted_step_by_step(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(model_rollout())
    with running(cluster.controller(metrics_addr="127.0.0.1:0")) as ctl:
        wait_for(
            "the finalizer while the rollout runs",
            lambda: FINALIZER in cluster.rollout()["metadata"].get("finalizers", []),
        )
        wait_for("promotion", phase_is(cluster, "Succeeded"))
        base = f"http://127.0.0.1:{ctl.metrics_port}"
        metrics = httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/livez").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
    # The VirtualService's managed route went 80/20, 50/50, 0/100; nothing else changed.
    assert cluster.vs_history() == [[100, 0], [80, 20], [50, 50], [0, 100]]
    vs = cluster.custom.get_namespaced_custom_object(*VS, NS, "virtualservices", "fraud-scorer")
    assert vs["spec"]["http"][0] == virtual_service("fraud-scorer")["spec"]["http"][0]
    assert vs["spec"]["http"][1]["timeout"] == "10s"

    status = cluster.status()
    assert (status["phase"], status["currentStep"], status["stepCount"]) == ("Succeeded", 3, 3)
    assert status["weights"] == {"stable": 0, "candidate": 100, "fallback": 0, "mirrorPercent": 0}
    assert (status["stableVersion"], status["candidateVersion"]) == ("1.0", "2.0")
    assert status["observedGeneration"] == cluster.rollout()["metadata"]["generation"]
    [check] = status["checks"]
    assert check["name"] == "errorRate" and check["verdict"] == "pass"
    assert (
        check["estimate"] == 0.0 and check["upper"] < 0.05 and check["samples"] == 4000.0
    )  # both steps: evidence accumulates
    assert condition(status, "Succeeded")["status"] == "True"  # type: ignore[index]
    assert condition(status, "Progressing")["status"] == "False"  # type: ignore[index]
    assert condition(status, "PolicyValid")["status"] == "True"  # type: ignore[index]
    assert condition(status, "WeightsInSync")["status"] == "True"  # type: ignore[index]
    assert [h["outcome"] for h in status["history"]] == ["promoted"]
    assert status["rollout"]["phase"] == "Succeeded" and status["rollout"]["ticks"] >= 2
    # Finished: the finalizer is gone, so deleting the resource is not held up.
    assert FINALIZER not in cluster.rollout()["metadata"].get("finalizers", [])

    reasons = [e[0] for e in cluster.events()]
    assert reasons == ["Started", "StepAdvanced", "Promoted"]
    assert all(e[1] == "Normal" for e in cluster.events())

    assert 'mesh_canary_rollouts{phase="Succeeded"} 1.0' in metrics
    assert (
        'mesh_canary_rollout_candidate_weight_percent{namespace="models",rollout="fraud-scorer"} 100.0'
        in metrics
    )
    assert "mesh_canary_reconcile_duration_seconds_count" in metrics
    ticks = float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("mesh_canary_ticks_total"))
    )
    assert ticks == status["rollout"]["ticks"]


def test_a_failing_candidate_is_rolled_back_to_all_stable(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.metrics["2.0"] = Metrics()
    cluster.metrics["2.0"].error_rate = 0.3
    cluster.add_rollout(model_rollout())
    with running(cluster.controller(metrics_addr="127.0.0.1:0")) as ctl:
        wait_for("the rollback", phase_is(cluster, "RolledBack"))
        metrics = httpx.get(f"http://127.0.0.1:{ctl.metrics_port}/metrics").text
    assert cluster.vs_weights() == [100, 0]
    assert cluster.vs_history() == [[100, 0], [80, 20], [100, 0]]
    assert cluster.writes[-1] == ("fraud-scorer", ALL_STABLE)
    status = cluster.status()
    rolled = condition(status, "RolledBack")
    assert rolled is not None and rolled["status"] == "True" and rolled["reason"] == "CheckFailed"
    assert "errorRate" in rolled["message"] and "exceeds" in status["reason"]
    assert status["checks"][0]["verdict"] == "fail" and status["checks"][0]["lower"] > 0.05
    assert status["history"][-1]["outcome"] == "rolled_back"  # one spelling (issue 9)
    assert ("RolledBack", "Warning") in [(e[0], e[1]) for e in cluster.events()]
    assert 'mesh_canary_rollbacks_total{reason="checkFailed"} 1.0' in metrics
    assert 'mesh_canary_rollouts{phase="RolledBack"} 1.0' in metrics


def test_a_restarted_controller_resumes_the_same_step_without_rewriting_weights(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "4s", "maxStepDuration": "60s"})
    )
    with running(cluster.controller()):
        wait_for("step 2", lambda: cluster.status().get("currentStep") == 2)
    before = cluster.status()["rollout"]
    writes_before = list(cluster.writes)
    assert writes_before == [("fraud-scorer", Weights(80, 20)), ("fraud-scorer", Weights(50, 50))]

    with running(cluster.controller()):
        wait_for(
            "an analysis by the new controller",
            lambda: cluster.status()["rollout"]["ticks"] > before["ticks"],
        )
        # The same rollout, resumed: never back to step 1. Its first analysis may already
        # have advanced it (a loaded machine reaches minStepDuration sooner, relatively).
        assert_resumed(before, cluster.status()["rollout"])
        wait_for("promotion", phase_is(cluster, "Succeeded"))
    # Resuming wrote nothing: the only writes after the restart are the next step's.
    assert cluster.writes == [*writes_before, ("fraud-scorer", Weights(0, 100))]
    assert [e[0] for e in cluster.events()].count("Started") == 1


def assert_resumed(saved: dict[str, Any], resumed: dict[str, Any]) -> None:
    """``resumed`` continues the rollout ``saved`` recorded: same start, same or later step."""
    assert resumed["startedAt"] == saved["startedAt"]
    assert resumed["stepIndex"] >= saved["stepIndex"]
    if resumed["stepIndex"] == saved["stepIndex"]:
        assert resumed["stepStartedAt"] == saved["stepStartedAt"]


def test_pause_resume_and_abort_annotations_are_each_handled_once(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(model_rollout())
    with running(cluster.controller()):
        wait_for("the start", phase_is(cluster, "Progressing"))
        cluster.annotate("mesh-canary.io/pause", "true@r1")
        wait_for("the pause", phase_is(cluster, "Paused"))
        paused_at = cluster.status()["weights"]["candidate"]
        ticks = cluster.status()["rollout"]["ticks"]
        # Paused: checks still run, the weight holds.
        wait_for("analyses while paused", lambda: cluster.status()["rollout"]["ticks"] >= ticks + 2)
        assert cluster.status()["weights"]["candidate"] == paused_at
        assert condition(cluster.status(), "Progressing")["reason"] == "Paused"  # type: ignore[index]
        cluster.annotate("mesh-canary.io/pause", "false@r2")
        wait_for("the resume", lambda: cluster.status().get("handledCommands", {}).get("pause") == "false@r2")
    resumed_events = [e for e in cluster.events() if e[0] == "Resumed"]
    assert len(resumed_events) == 1

    # A new controller process sees the same annotations: already handled, not repeated.
    cluster.custom.patch_namespaced_custom_object(
        *MR,
        NS,
        "modelrollouts",
        "fraud-scorer",
        {"spec": {"canary": {"steps": [20, 50, 100], "minStepDuration": "1s", "maxStepDuration": "60s"}}},
    )
    with running(cluster.controller()):
        wait_for("the end", phase_is(cluster, "Succeeded"))
    reasons = [e[0] for e in cluster.events()]
    assert reasons.count("Paused") == 1 and reasons.count("Resumed") == 1
    assert cluster.status()["handledCommands"] == {"pause": "false@r2"}


def test_abort_snaps_to_stable_as_a_manual_rollback(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "30s", "maxStepDuration": "60s"})
    )
    with running(cluster.controller(metrics_addr="127.0.0.1:0")) as ctl:
        wait_for("the start", lambda: cluster.vs_weights() == [80, 20])
        cluster.annotate("mesh-canary.io/abort", "r1")
        wait_for("the abort", phase_is(cluster, "RolledBack"), timeout_s=5)
        metrics = httpx.get(f"http://127.0.0.1:{ctl.metrics_port}/metrics").text
    assert cluster.vs_weights() == [100, 0]
    status = cluster.status()
    assert condition(status, "RolledBack")["reason"] == "Aborted"  # type: ignore[index]
    assert status["handledCommands"] == {"abort": "r1"}
    assert 'mesh_canary_rollbacks_total{reason="manual"} 1.0' in metrics


def test_an_approval_gate_waits_for_the_approve_annotation(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(model_rollout(gates={"approval": "beforePromotion"}))
    with running(cluster.controller()):
        wait_for("the gate", phase_is(cluster, "WaitingForApproval"))
        assert cluster.vs_weights() == [50, 50]
        assert condition(cluster.status(), "Progressing")["reason"] == "WaitingForApproval"  # type: ignore[index]
        cluster.annotate("mesh-canary.io/approve", "2024-05-01T10:00:00Z")
        wait_for("promotion", phase_is(cluster, "Succeeded"), timeout_s=5)
    assert cluster.vs_weights() == [0, 100]
    assert "Approved" in [e[0] for e in cluster.events()]


def test_a_new_candidate_version_restarts_the_rollout_from_stable(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "2s", "maxStepDuration": "60s"})
    )
    with running(cluster.controller()):
        wait_for("step 2", lambda: cluster.status().get("currentStep") == 2)
        cluster.patch_spec({"candidate": {"version": "3.0"}})
        wait_for("the restart", lambda: cluster.status().get("candidateVersion") == "3.0")
        restarted = cluster.status()
        assert restarted["currentStep"] == 1 and restarted["weights"]["candidate"] == 20
        wait_for("promotion of 3.0", phase_is(cluster, "Succeeded"))
    # Stable first, then the new rollout from its first step.
    names = [w for _, w in cluster.writes]
    assert names == [
        Weights(80, 20),
        Weights(50, 50),
        ALL_STABLE,
        Weights(80, 20),
        Weights(50, 50),
        Weights(0, 100),
    ]
    history = cluster.status()["history"]
    assert [(h["candidateVersion"], h["outcome"]) for h in history] == [
        ("2.0", "superseded"),
        ("3.0", "promoted"),
    ]
    assert "Restarted" in [e[0] for e in cluster.events()]


def test_a_deleted_rollout_leaves_its_traffic_on_stable(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "30s", "maxStepDuration": "60s"})
    )
    with running(cluster.controller()) as ctl:
        wait_for("the start", lambda: cluster.vs_weights() == [80, 20])
        wait_for("the finalizer", lambda: FINALIZER in cluster.rollout()["metadata"].get("finalizers", []))
        cluster.custom.delete_namespaced_custom_object(*MR, NS, "modelrollouts", "fraud-scorer")
        wait_for(
            "the resource to go",
            lambda: not cluster.custom.list_namespaced_custom_object(*MR, NS, "modelrollouts")["items"],
        )
        wait_for("the controller to forget it", lambda: not ctl.handlers)
    assert cluster.vs_weights() == [100, 0]
    assert cluster.writes[-1] == ("fraud-scorer", ALL_STABLE)
    assert ("Deleted", "Warning") in [(e[0], e[1]) for e in cluster.events()]


def test_an_invalid_policy_is_reported_and_touches_nothing(cluster: Cluster) -> None:
    cluster.add_vs()
    # Valid for the CRD's schema, but a step that does not rise is a semantic error.
    cluster.add_rollout(model_rollout(canary={"steps": [50, 20, 100]}))
    with running(cluster.controller()):
        wait_for("the PolicyValid condition", lambda: condition(cluster.status(), "PolicyValid"))
        time.sleep(1.5)  # a couple of intervals: still nothing may happen
    status = cluster.status()
    valid = condition(status, "PolicyValid")
    assert valid is not None and valid["status"] == "False" and valid["reason"] == "InvalidPolicy"
    assert "spec.canary.steps[1]" in valid["message"]
    assert status["phase"] == "Invalid" and "rollout" not in status
    assert cluster.writes == [] and cluster.vs_history() == [[100, 0]]
    events = cluster.events()
    assert [(e[0], e[1]) for e in events] == [("InvalidPolicy", "Warning")]
    assert "spec.canary.steps[1]" in events[0][2]


def test_many_rollouts_run_at_once_and_a_slow_metrics_source_stalls_none_of_the_others(
    cluster: Cluster,
) -> None:
    names = ["alpha", "beta", "gamma"]
    for name in names:
        cluster.add_vs(name)
        cluster.add_rollout(model_rollout(name, candidate=f"2.0-{name}"))
    gate = threading.Event()
    cluster.metrics["2.0-gamma"] = gamma_metrics = Metrics(gate=gate)
    try:
        with running(cluster.controller(workers=2)):
            wait_for("gamma's first read hangs", lambda: gamma_metrics.reads >= 1)
            # Gamma's read never returns while alpha and beta run their analyses: had they
            # waited behind it, they could not finish at all.
            wait_for(
                "alpha and beta promoted",
                lambda: all(cluster.status(n).get("phase") == "Succeeded" for n in ("alpha", "beta")),
                timeout_s=60,
            )
            assert not gate.is_set() and gamma_metrics.reads == 1
            gamma = cluster.status("gamma")
            gate.set()
    finally:
        gate.set()
    assert gamma.get("phase") != "Succeeded"
    assert cluster.vs_history("alpha")[-1] == [0, 100] and cluster.vs_history("beta")[-1] == [0, 100]


def test_a_controller_watching_several_namespaces_reconciles_those_and_no_other(cluster: Cluster) -> None:
    """The namespaced install: one Role per watched namespace, --namespace models,team-b."""
    for ns in (NS, "team-b", "elsewhere"):
        vs = virtual_service("fraud-scorer")
        vs["metadata"]["namespace"] = ns
        cluster.custom.create_namespaced_custom_object(*VS, ns, "virtualservices", vs)
        doc = model_rollout()
        doc["metadata"]["namespace"] = ns
        cluster.custom.create_namespaced_custom_object(*MR, ns, "modelrollouts", doc)
    with running(cluster.controller(namespaces="models,team-b")) as ctl:
        for ns in (NS, "team-b"):
            wait_for(
                f"promotion in {ns}",
                lambda ns=ns: (
                    cluster.custom.get_namespaced_custom_object(*MR, ns, "modelrollouts", "fraud-scorer")
                    .get("status", {})
                    .get("phase")
                    == "Succeeded"
                ),
            )
        assert ctl.synced.is_set() and {k[0] for k in ctl.handlers} == {NS, "team-b"}
    untouched = cluster.custom.get_namespaced_custom_object(*MR, "elsewhere", "modelrollouts", "fraud-scorer")
    assert "status" not in untouched or not untouched["status"].get("rollout")
    assert [
        [r.get("weight", 0) for r in v["spec"]["http"][1]["route"]]
        for v in cluster.kube.stored("networking.istio.io/v1/virtualservices", "elsewhere", "fraud-scorer")
    ] == [[100, 0]]


def test_leader_election_one_leads_and_the_other_takes_over_when_it_stops(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "2s", "maxStepDuration": "60s"})
    )
    timings = {
        "leader_elect": True,
        "lease_duration_s": 8,
        "renew_deadline_s": 5.0,
        "retry_period_s": 0.3,
        "metrics_addr": "127.0.0.1:0",
    }
    first = cluster.controller(identity="first", **timings).start()
    second: Controller | None = None
    try:
        wait_for("first leads", lambda: first.leading)
        second = cluster.controller(identity="second", **timings).start()
        ready = f"http://127.0.0.1:{second.metrics_port}/readyz"
        wait_for("second synced", lambda: second is not None and second.synced.is_set())
        assert httpx.get(ready).status_code == 503 and "not the leader" in httpx.get(ready).text
        assert httpx.get(f"http://127.0.0.1:{first.metrics_port}/readyz").status_code == 200
        wait_for("step 2", lambda: cluster.status().get("currentStep") == 2)
        assert not second.leading and ticks_of(second) == 0
        lease: Any = kubernetes.client.CoordinationV1Api(cluster.client).read_namespaced_lease(
            "mesh-canary-controller", NS
        )
        assert lease.spec.holder_identity == "first"

        first.stop()  # releases the Lease: the second need not wait for it to expire (8 s)
        lease = kubernetes.client.CoordinationV1Api(cluster.client).read_namespaced_lease(
            "mesh-canary-controller", NS
        )
        assert lease.spec.holder_identity in (None, "", "second"), "stop() did not release the Lease"
        wait_for("second leads", lambda: second is not None and second.leading, timeout_s=10)
        assert httpx.get(ready).status_code == 200
        wait_for("promotion by the second", phase_is(cluster, "Succeeded"))
        assert ticks_of(second) > 0
        lease = kubernetes.client.CoordinationV1Api(cluster.client).read_namespaced_lease(
            "mesh-canary-controller", NS
        )
        assert lease.spec.holder_identity == "second"
    finally:
        first.stop()
        if second is not None:
            second.stop()
    # One rollout, one start: the second resumed where the first stopped.
    assert [e[0] for e in cluster.events()].count("Started") == 1


def test_the_informer_lists_again_after_410_gone(cluster: Cluster) -> None:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Expired",
        "code": 410,
        "message": "too old resource version",
    }
    res = "mesh-canary.io/v1alpha1/modelrollouts"
    # kmock: the first watch request answers 410 Gone.
    cluster.kube.call(lambda h: h["get", h.resource(res), {"watch": "true"}][:1] << 410 << status)
    cluster.add_vs()
    with running(cluster.controller()) as ctl:
        wait_for("the informer synced", ctl.synced.is_set)
        cluster.add_rollout(model_rollout())
        wait_for("promotion", phase_is(cluster, "Succeeded"))
    watches = cluster.kube.call(
        lambda h: sum(
            1
            for r in h._requests
            if r.params.get("watch") == "true"
            and r.resource is not None
            and r.resource.plural == "modelrollouts"
        )
    )
    lists = cluster.kube.call(
        lambda h: sum(
            1
            for r in h._requests
            if r.method.value == "GET"
            and r.params.get("watch") != "true"
            and r.resource is not None
            and r.resource.plural == "modelrollouts"
            and r.name is None
        )
    )
    assert watches >= 2 and lists >= 2


def test_weights_changed_by_someone_else_show_in_the_condition_and_an_event(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "30s", "maxStepDuration": "60s"})
    )
    with running(cluster.controller()):
        wait_for("the start", lambda: cluster.vs_weights() == [80, 20])

        def gitops_sync(vs: dict[str, Any]) -> None:  # not towards stable (that would end Aborted)
            vs["spec"]["http"][1]["route"][0]["weight"] = 60
            vs["spec"]["http"][1]["route"][1]["weight"] = 40

        cluster.kube.write("networking.istio.io/v1/virtualservices", NS, "fraud-scorer", gitops_sync)
        wait_for(
            "WeightsInSync=False",
            lambda: (condition(cluster.status(), "WeightsInSync") or {}).get("status") == "False",
        )
    in_sync = condition(cluster.status(), "WeightsInSync")
    assert in_sync is not None
    assert "live 60/40" in in_sync["message"] and "expected 80/20" in in_sync["message"]
    assert ("ExternalChange", "Warning") in [(e[0], e[1]) for e in cluster.events()]


def test_sigterm_style_stop_finishes_the_tick_in_flight(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.metrics["2.0"] = Metrics(delay_s=1.5)
    cluster.add_rollout(model_rollout())
    ctl = cluster.controller().start()
    wait_for("a read in flight", lambda: cluster.metrics["2.0"].reads >= 1)
    ticks_before = cluster.status().get("rollout", {}).get("ticks", 0)
    stopper = threading.Thread(target=ctl.stop)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()
    # The analysis that was reading when stop() came finished and was saved.
    assert cluster.status()["rollout"]["ticks"] == ticks_before + 1


def ready_is(cluster: Cluster, status: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        ready = condition(cluster.status(), "Ready")
        return ready if ready is not None and ready["status"] == status else None

    return check


def test_a_missing_virtual_service_is_reported_and_retried_until_it_exists(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout())
    with running(cluster.controller(metrics_addr="127.0.0.1:0")) as ctl:
        wait_for("a ReconcileError Event", lambda: "ReconcileError" in [e[0] for e in cluster.events()])
        # The status says it too, for `rollout status` and `kubectl wait`, not only the Event.
        ready = wait_for("Ready=False", ready_is(cluster, "False"))
        assert ready["reason"] == "ReconcileError" and ready["observedGeneration"] == 1
        assert "VirtualService models/fraud-scorer does not exist" in ready["message"]
        status = cluster.status()
        assert status.get("phase") in (None, "Pending")
        assert "cannot start the rollout" in status["message"] and "does not exist" in status["message"]
        errors = ctl.metrics.registry.get_sample_value("mesh_canary_reconcile_errors_total") or 0
        assert errors >= 1
        failed_since = ready["lastTransitionTime"]
        time.sleep(1.2)  # more failed retries: the condition holds, its transition time stays
        still = condition(cluster.status(), "Ready")
        assert still is not None and (still["status"], still["lastTransitionTime"]) == ("False", failed_since)
        cluster.add_vs()
        wait_for("promotion once the VirtualService exists", phase_is(cluster, "Succeeded"))
        recovered = wait_for("Ready=True", ready_is(cluster, "True"))
    assert recovered["reason"] == "Reconciled"
    error_events = [e for e in cluster.events() if e[0] == "ReconcileError"]
    assert error_events[0][1] == "Warning" and "does not exist" in error_events[0][2]
    assert cluster.vs_history()[-1] == [0, 100]


def test_a_route_that_cannot_be_found_is_a_ready_false_condition_until_it_is_fixed(cluster: Cluster) -> None:
    vs = virtual_service("fraud-scorer")
    vs["spec"]["http"][1]["name"] = "main"  # the policy manages a route named "primary"
    cluster.custom.create_namespaced_custom_object(*VS, NS, "virtualservices", vs)
    cluster.add_rollout(model_rollout())
    with running(cluster.controller()):
        ready = wait_for("Ready=False", ready_is(cluster, "False"))
        assert ready["reason"] == "ReconcileError"
        assert "has no http route named 'primary'" in ready["message"]
        assert cluster.vs_history() == [[100, 0]]  # nothing was written

        def rename(obj: dict[str, Any]) -> None:
            obj["spec"]["http"][1]["name"] = "primary"

        cluster.kube.write("networking.istio.io/v1/virtualservices", NS, "fraud-scorer", rename)
        wait_for("Ready=True", ready_is(cluster, "True"))
        wait_for("promotion", phase_is(cluster, "Succeeded"))
    ready = condition(cluster.status(), "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "Reconciled"
    assert cluster.vs_history() == [[100, 0], [80, 20], [50, 50], [0, 100]]


# --------------------------------------------------------------------------- the API stand-in itself


def test_the_api_stand_in_makes_its_workdir_and_a_failed_start_leaves_no_server(tmp_path: Path) -> None:
    workdir = tmp_path / "not" / "there"
    with KubeStandIn(workdir=workdir) as api:
        assert api.kubeconfig_path == workdir / "kubeconfig" and api.kubeconfig_path.is_file()
        assert httpx.get(f"{api.url}/api", timeout=5).status_code == 200

    # Up, then the kubeconfig cannot be written: the error comes out and the server stops.
    blocked = tmp_path / "blocked"
    (blocked / "kubeconfig").mkdir(parents=True)
    standin = KubeStandIn(workdir=blocked)
    with pytest.raises(IsADirectoryError):
        standin.__enter__()
    assert standin._thread is not None and not standin._thread.is_alive()
    assert standin.url, "the server had started"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{standin.url}/api", timeout=2)

    # The server fails to start (a broken CRD): one clear error, no thread left.
    broken = KubeStandIn(crds=[{"metadata": {"name": "broken"}, "spec": {}}], workdir=tmp_path / "broken")
    with pytest.raises(RuntimeError, match="did not start"):
        broken.__enter__()
    assert broken._thread is not None and not broken._thread.is_alive()
