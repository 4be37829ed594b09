"""An analysis turn whose weights do not change looks at its VirtualService in the controller's
watch cache (no GET), and a person's move of the VirtualService between turns is still seen.

A real Controller against the API stand-in (over HTTP), the real IstioRouter given the
controller's watch caches (`Controller.route_cache`), a healthy in-process metrics source
(tests/integration/test_controller.py's). The stand-in counts requests by verb and resource.
"""

from __future__ import annotations

from typing import Any

import pytest

from mesh_canary.controller import Controller, ControllerSettings
from mesh_canary.core.model import Policy
from mesh_canary.kube.status import saved_state
from mesh_canary.routing.istio import IstioRouter
from tests.conftest import NS, model_rollout
from tests.integration.test_controller import HOLD, Cluster, Metrics, running
from tests.integration.test_controller import cluster as cluster  # the fixture
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

VS_RES = "networking.istio.io/v1/virtualservices"


def cached_controller(cluster: Cluster) -> Controller:
    """A controller whose routers look at its watch caches, as its default backend's do."""
    metrics = Metrics()
    settings = ControllerSettings(namespaces=NS, watch_timeout_s=5, error_retry_s=0.5)
    ctl: Controller

    def backend(policy: Policy) -> tuple[IstioRouter, Metrics]:
        return IstioRouter(policy, cluster.client, caches=ctl.route_cache), metrics

    ctl = Controller(cluster.client, settings, backend=backend)
    return ctl


def ticks(cluster: Cluster) -> int:
    state = saved_state(cluster.status())
    return state.ticks if state is not None else 0


def at_first_step_analysed(cluster: Cluster) -> None:
    """Wait for the first step's weights, then for an analysis after their write (the first
    look after a write may come before the watch shows it, and then reads)."""
    wait_for("the first step", lambda: cluster.vs_weights() == [90, 10])
    start = ticks(cluster) + 1
    wait_for("an analysis at 10%", lambda: ticks(cluster) >= start)


def requests(cluster: Cluster) -> dict[tuple[str, str], int]:
    return cluster.kube.call(lambda h: dict(h.requests))


def test_analyses_with_unchanged_weights_send_no_virtual_service_get(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(model_rollout(canary=HOLD))
    with running(cached_controller(cluster)):
        at_first_step_analysed(cluster)
        before, first = requests(cluster), ticks(cluster)
        wait_for("three more analyses", lambda: ticks(cluster) >= first + 3)
        after, last = requests(cluster), ticks(cluster)
    gets = after.get(("get", "virtualservices"), 0) - before.get(("get", "virtualservices"), 0)
    writes = sum(
        after.get((verb, "virtualservices"), 0) - before.get((verb, "virtualservices"), 0)
        for verb in ("update", "patch")
    )
    assert last - first >= 3
    assert writes == 0
    assert gets == 0, f"{gets} GETs of the VirtualService in {last - first} analyses with unchanged weights"


def test_a_person_moving_the_virtual_service_towards_stable_between_turns_is_seen(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(model_rollout(canary=HOLD))
    with running(cached_controller(cluster)):
        at_first_step_analysed(cluster)

        def person(vs: dict[str, Any]) -> None:
            vs["spec"]["http"][1]["route"][0]["weight"] = 100
            vs["spec"]["http"][1]["route"][1]["weight"] = 0

        moved = cluster.kube.write(VS_RES, NS, "fraud-scorer", person)
        wait_for("Aborted", lambda: cluster.status().get("phase") == "Aborted")
    assert "outside mesh-canary" in str(cluster.status().get("message") or cluster.status())
    # Never overwritten: every version stored since the person's holds their weights (only
    # mesh-canary's own annotation may have been released since).
    since = [
        [r.get("weight", 0) for r in v["spec"]["http"][1]["route"]]
        for v in cluster.kube.stored(VS_RES, NS, "fraud-scorer")
        if int(v["metadata"]["resourceVersion"]) >= int(moved["metadata"]["resourceVersion"])
    ]
    assert since and all(w == [100, 0] for w in since), since
