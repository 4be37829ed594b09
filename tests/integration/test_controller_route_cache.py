"""An analysis turn whose weights do not change looks at its VirtualService in the controller's
watch cache (no GET), and a person's move of the VirtualService between turns is still seen.

A real Controller against the API stand-in (over HTTP), the real IstioRouter given the
controller's watch caches (`Controller.route_cache`), a healthy in-process metrics source
(tests/integration/test_controller.py's). The stand-in counts requests by verb and resource.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from mesh_canary.controller import Controller, ControllerSettings
from mesh_canary.controller.handler import RolloutHandler
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import resource_document
from mesh_canary.core.weights import Weights
from mesh_canary.kube.status import FINALIZER, KubeStatusStore, saved_state
from mesh_canary.kube.watchcache import WatchCache
from mesh_canary.routing.base import WeightsMoved
from mesh_canary.routing.istio import IstioRouter
from mesh_canary.run.policy_loading import load_checked_policy
from tests.conftest import NS, model_rollout
from tests.integration.test_controller import HOLD, Cluster, Metrics, running
from tests.integration.test_controller import cluster as cluster  # the fixture
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

VS_RES = "networking.istio.io/v1/virtualservices"
VS_GVP = ("networking.istio.io", "v1", "virtualservices")


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


def stored_weights(cluster: Cluster) -> list[int]:
    vs = cluster.kube.stored(VS_RES, NS, "fraud-scorer")[-1]
    return [r.get("weight", 0) for r in vs["spec"]["http"][1]["route"]]


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


def test_a_step_write_from_a_fresh_cache_sends_one_replace_and_no_get(cluster: Cluster) -> None:
    cluster.add_vs()
    steps = {"steps": [10, 50, 100], "minStepDuration": "3s", "maxStepDuration": "1h"}
    cluster.add_rollout(model_rollout(canary=steps))
    with running(cached_controller(cluster)):
        at_first_step_analysed(cluster)
        before = requests(cluster)
        # Read from the stand-in's store (not over HTTP: a GET of ours would be counted).
        wait_for("the second step", lambda: stored_weights(cluster) == [50, 50])
        after = requests(cluster)
    assert after.get(("update", "virtualservices"), 0) - before.get(("update", "virtualservices"), 0) == 1
    assert after.get(("get", "virtualservices"), 0) - before.get(("get", "virtualservices"), 0) == 0


def test_a_write_right_after_a_persons_change_never_overwrites_it(cluster: Cluster) -> None:
    """The person's change may or may not be in the watch cache yet when the write starts: either
    the check sees their weights, or the replace carries a resourceVersion that is no longer the
    live one (409) and the write is checked again on a fresh read. Nothing of theirs is overwritten."""
    cluster.add_vs()
    policy = load_checked_policy(resource_document(model_rollout()))
    stopping = threading.Event()
    cache = WatchCache(cluster.client, *VS_GVP, stopping=stopping, watch_timeout_s=5)
    try:
        router = IstioRouter(policy, cluster.client, caches=lambda *gvp: cache if gvp == VS_GVP else None)
        router.claim("run-1", "models/fraud-scorer")
        router.write(Weights(90, 10), owner="run-1")
        live_rv = cluster.kube.stored(VS_RES, NS, "fraud-scorer")[-1]["metadata"]["resourceVersion"]
        wait_for(
            "the cache holds our write",
            lambda: (
                ((cache.get(NS, "fraud-scorer") or {}).get("metadata") or {}).get("resourceVersion")
                == live_rv
            ),
        )

        def person(vs: dict[str, Any]) -> None:
            vs["spec"]["http"][1]["route"][0]["weight"] = 60
            vs["spec"]["http"][1]["route"][1]["weight"] = 40

        cluster.kube.write(VS_RES, NS, "fraud-scorer", person)
        with pytest.raises(WeightsMoved):
            router.write(Weights(50, 50), owner="run-1", expected=Weights(90, 10))
    finally:
        stopping.set()
        cache.stop()
    assert cluster.vs_weights() == [60, 40]


MR_RES = "modelrollouts"
MR_FULL = "mesh-canary.io/v1alpha1/modelrollouts"


def stored_rollout(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.kube.stored(MR_FULL, NS, "fraud-scorer")[-1])


def test_a_whole_rollout_reads_its_model_rollout_once_and_moves_its_finalizer_without_reads(
    cluster: Cluster,
) -> None:
    """Its start reads the resource once (the runner resumes from that read, no second GET); the
    finalizer is added and removed starting from the answer to our last write (no GET before
    either patch); and the policy is checked once, not at every turn (the controller's CPU)."""
    cluster.add_vs()
    steps = {"steps": [10, 50, 100], "minStepDuration": "2s", "maxStepDuration": "1h"}
    cluster.add_rollout(model_rollout(canary=steps))
    with running(cached_controller(cluster)):
        # Read from the stand-in's store (not over HTTP: a GET of ours would be counted).
        wait_for(
            "Succeeded",
            lambda: (stored_rollout(cluster).get("status") or {}).get("phase") == "Succeeded",
            timeout_s=120,
        )
        wait_for("finalizer removed", lambda: not stored_rollout(cluster)["metadata"].get("finalizers"))
        counts = requests(cluster)
    gets = {k: v for k, v in counts.items() if k[0] == "get" and k[1].startswith(MR_RES)}
    patches = {k: v for k, v in counts.items() if k[0] == "patch" and k[1] == MR_RES}
    assert sum(gets.values()) == 1, f"GETs of the ModelRollout in a whole rollout: {gets}"
    assert sum(patches.values()) == 2, f"finalizer patches (one to add, one to remove): {patches}"
    state = saved_state(stored_rollout(cluster)["status"])
    assert state is not None and state.ticks >= 3


def test_a_finalizer_write_from_our_last_answer_that_is_stale_reads_again_and_keeps_the_other_change(
    cluster: Cluster,
) -> None:
    """The finalizer patch starts from the metadata of our last write's answer; when someone has
    written since (a person's annotation), the API server refuses it (409) and it is retried on a
    fresh read: the finalizer is added and the person's change stays."""
    ctl = cached_controller(cluster)  # not started: only its Finalizer is used
    cluster.add_rollout(model_rollout())
    ours = cluster.rollout()
    store = KubeStatusStore(cluster.client, NS, "fraud-scorer")
    store.saw(ours)  # as if our last write's answer was this version

    def person(obj: dict[str, Any]) -> None:
        obj["metadata"].setdefault("annotations", {})["team"] = "fraud"
        obj["metadata"]["finalizers"] = ["someone/else"]

    cluster.kube.write(MR_FULL, NS, "fraud-scorer", person)
    before = requests(cluster)
    h = RolloutHandler((NS, "fraud-scorer"), ours, store=store)
    ctl.finalizer.ensure(h, present=True)
    after = requests(cluster)
    stored = stored_rollout(cluster)
    assert stored["metadata"]["finalizers"] == ["someone/else", FINALIZER]
    assert stored["metadata"]["annotations"]["team"] == "fraud"
    assert after.get(("get", MR_RES), 0) - before.get(("get", MR_RES), 0) == 1  # after the 409 only
    # The refused patch (409) and the one that went through.
    assert after.get(("patch", MR_RES), 0) - before.get(("patch", MR_RES), 0) == 2
    assert (
        store.metadata is not None
        and store.metadata["resourceVersion"] == stored["metadata"]["resourceVersion"]
    )
