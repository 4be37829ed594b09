"""The fallback through the controller and the real IstioRouter on the API stand-in: stable and
candidate both break `errorRate max` -> one write of 100% fallback (a third destination added
to the VirtualService, valid under Istio's CRD), OnFallback and a FellBack Event; a person's
`rollout restore-stable` (the real CLI) -> 100% stable, RestoredStable; a second one is refused."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from mesh_canary.cli import read_policy
from mesh_canary.core import engine
from mesh_canary.core.fallback import ALL_FALLBACK
from mesh_canary.core.judge import AnytimeJudge
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.kube.status import condition
from mesh_canary.routing.istio import IstioRouter
from mesh_canary.run.stores import FileStateStore
from mesh_canary.run.verbs import load_state
from tests.conftest import NS, model_rollout
from tests.crd_schema import VIRTUALSERVICE_CRD, validator_for
from tests.integration.test_controller import VS, Cluster, phase_is, running
from tests.integration.test_rollout_cli import cli, policy_file
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.output_schema import check_output
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FALLBACK_HOST = "fraud-scorer-fallback"


class BothBroken:
    """A MetricsSource in which stable and the candidate both fail 30% of requests."""

    def read(self, since: float, now: float) -> Observation:
        n = 2000.0
        broken = VersionCounts(requests=n, errors=0.3 * n)
        return Observation(since, now, broken, VersionCounts(requests=n, errors=0.3 * n))


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    return Cluster(kube_api)


def primary_route(cluster: Cluster) -> list[dict[str, Any]]:
    vs = cluster.custom.get_namespaced_custom_object(*VS, NS, "virtualservices", "fraud-scorer")
    assert validator_for(VIRTUALSERVICE_CRD).errors(vs) == []
    return list(vs["spec"]["http"][1]["route"])


def test_both_broken_sends_everyone_to_the_fallback_until_a_person_restores_stable(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.metrics["2.0"] = BothBroken()  # type: ignore[assignment]
    cluster.add_rollout(model_rollout(fallback={"destination": {"host": FALLBACK_HOST}}))
    with running(cluster.controller()):
        wait_for("the fallback", phase_is(cluster, "RolledBack"))
        status = cluster.status()
        assert cluster.writes == [("fraud-scorer", Weights(80, 20)), ("fraud-scorer", ALL_FALLBACK)]
        route = primary_route(cluster)
        assert route[2] == {"destination": {"host": FALLBACK_HOST}, "weight": 100}
        assert [r["weight"] for r in route] == [0, 0, 100]
        assert status["weights"]["fallback"] == 100
        on = condition(status, "OnFallback") or {}
        assert on["status"] == "True" and on["reason"] == "StableBroke" and "restore-stable" in on["message"]
        assert ("FellBack", "Warning") in [(e[0], e[1]) for e in cluster.events()]

        restored = cli(cluster, "rollout", "restore-stable", "fraud-scorer", "-n", NS, "-o", "json")
        assert restored.exit_code == 0, restored.output
        report = json.loads(restored.stdout)
        check_output(report, "order")
        assert report["command"] == "restore" and report["handled"] is True
        assert [r["weight"] for r in primary_route(cluster)] == [100, 0, 0]
        assert cluster.writes[-1] == ("fraud-scorer", ALL_STABLE)
        wait_for(
            "OnFallback False",
            lambda: (condition(cluster.status(), "OnFallback") or {}).get("status") == "False",
        )
        assert "RestoredStable" in [e[0] for e in cluster.events()]

        again = cli(cluster, "rollout", "restore-stable", "fraud-scorer", "-n", NS)
        assert again.exit_code == 2 and "not on its fallback" in again.output
    assert cluster.writes[-1] == ("fraud-scorer", ALL_STABLE) and len(cluster.writes) == 3


def test_restore_stable_over_a_run_state_file_writes_the_route_and_the_file(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    """`rollout restore-stable --state FILE -f POLICY` (a `mesh-canary run` rollout): the route
    goes from 100% fallback to 100% stable, recorded in the state file; refused (exit 2,
    nothing written) when the file is not on the fallback."""
    cluster.add_vs()
    path = policy_file(tmp_path, "2.0", fallback={"destination": {"host": FALLBACK_HOST}})
    policy = read_policy(path)
    fell = engine.tick(
        policy, engine.start(policy, 0.0).state, BothBroken().read(0, 30), 30.0, AnytimeJudge()
    )
    assert fell.state.weights == ALL_FALLBACK
    state = tmp_path / "st.json"
    FileStateStore(state).save(fell.state.to_dict())
    router = IstioRouter(policy, cluster.client)
    router.set_weights(ALL_FALLBACK)  # what that run left on the route
    out = cli(cluster, "rollout", "restore-stable", "--state", str(state), "-f", path, "-o", "json")
    assert out.exit_code == 0, out.output
    check_output(json.loads(out.stdout), "order")
    assert [r["weight"] for r in primary_route(cluster)] == [100, 0, 0]
    saved = load_state(str(state))
    assert saved.weights == ALL_STABLE and "by a person" in saved.reason
    again = cli(cluster, "rollout", "restore-stable", "--state", str(state), "-f", path)
    assert again.exit_code == 2 and "nothing was changed" in again.output
    assert router.get_weights() == ALL_STABLE


class StableBreaksLater:
    """The candidate fails 30%; stable is healthy until ``broken`` is set, then fails 30% too."""

    def __init__(self) -> None:
        self.broken = False

    def read(self, since: float, now: float) -> Observation:
        n = 2000.0
        stable = VersionCounts(requests=n, errors=0.3 * n if self.broken else 0.0)
        return Observation(since, now, stable, VersionCounts(requests=n, errors=0.3 * n))


def test_after_a_rollback_the_controller_watches_stable_and_falls_back_when_it_breaks(
    cluster: Cluster,
) -> None:
    cluster.add_vs()
    metrics = StableBreaksLater()
    cluster.metrics["2.0"] = metrics  # type: ignore[assignment]
    fallback = {"destination": {"host": FALLBACK_HOST}, "watchAfterRollback": "10m"}
    cluster.add_rollout(model_rollout(fallback=fallback))
    with running(cluster.controller()):
        wait_for("the rollback to stable", phase_is(cluster, "RolledBack"))
        watching = condition(cluster.status(), "OnFallback") or {}
        assert watching["status"] == "False" and watching["reason"] == "WatchingStable"
        assert [r["weight"] for r in primary_route(cluster)] == [100, 0]
        metrics.broken = True
        wait_for("the fallback", lambda: cluster.writes[-1] == ("fraud-scorer", ALL_FALLBACK))
        wait_for(
            "OnFallback", lambda: (condition(cluster.status(), "OnFallback") or {}).get("status") == "True"
        )
    assert cluster.writes == [
        ("fraud-scorer", Weights(80, 20)),
        ("fraud-scorer", ALL_STABLE),
        ("fraud-scorer", ALL_FALLBACK),
    ]
    assert [r["weight"] for r in primary_route(cluster)] == [0, 0, 100]
    status = cluster.status()
    assert "after the rollback, stable 1.0 breaks its limits too" in status["reason"]
    assert status["history"][-1]["outcome"] == "rolled_back"
