"""IstioRouter through the official client, over HTTP, against the API stand-in holding Istio's CRDs."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from mesh_canary.core.model import Policy
from mesh_canary.core.policy import load_policy_text
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.routing.base import RollbackRecord, RouteConflict, RouteOwned, WeightsMoved
from mesh_canary.routing.istio import (
    ANNOTATION_OWNER,
    ANNOTATION_ROLLBACK,
    GROUP,
    PLURAL,
    VERSION,
    IstioConflict,
    IstioRouter,
    IstioRouterError,
)
from mesh_canary.routing.istio_patch import VirtualServicePatchError
from tests.crd_schema import VIRTUALSERVICE_CRD, validator_for
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn

pytestmark = pytest.mark.integration

NS = "models"
RES = f"{GROUP}/{VERSION}/{PLURAL}"


def policy(destinations: str, routes: str = "") -> Policy:
    return load_policy_text(f"""
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {{name: fraud-scorer, namespace: {NS}}}
spec:
  virtualService: {{name: fraud-scorer{routes}}}
{destinations}
""")


SUBSET_POLICY = """\
  stable: {destination: {host: fraud-scorer, subset: v1}}
  candidate: {destination: {host: fraud-scorer, subset: v2}}"""
HOST_POLICY = """\
  stable: {destination: {host: fraud-scorer-v1}}
  candidate: {destination: {host: fraud-scorer-v2}}"""


def subset_vs() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "fraud-scorer", "namespace": NS, "labels": {"app": "fraud-scorer"}},
        "spec": {
            "hosts": ["fraud-scorer"],
            "gateways": ["mesh"],
            "http": [
                {
                    "name": "debug",
                    "match": [{"headers": {"x-debug": {"exact": "1"}}}],
                    "route": [{"destination": {"host": "fraud-scorer", "subset": "v2"}}],
                },
                {
                    "name": "primary",
                    "match": [{"uri": {"prefix": "/predict"}}],
                    "route": [
                        {"destination": {"host": "fraud-scorer", "subset": "v1"}, "weight": 100},
                        {"destination": {"host": "fraud-scorer", "subset": "v2"}, "weight": 0},
                    ],
                    "retries": {"attempts": 3, "perTryTimeout": "2s"},
                    "timeout": "10s",
                    "headers": {"request": {"set": {"x-mesh": "canary"}}},
                },
            ],
        },
    }


def host_vs() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "fraud-scorer", "namespace": NS},
        "spec": {
            "hosts": ["fraud-scorer"],
            "http": [
                {
                    "match": [{"headers": {"x-tenant": {"exact": "a"}}}],
                    "route": [
                        {"destination": {"host": "fraud-scorer-v1"}, "weight": 100},
                        {"destination": {"host": "fraud-scorer-v2"}, "weight": 0},
                    ],
                    "timeout": "3s",
                },
                {
                    "route": [
                        {"destination": {"host": "fraud-scorer-v1"}, "weight": 100},
                        {"destination": {"host": "fraud-scorer-v2"}, "weight": 0},
                    ]
                },
                {
                    "route": [{"destination": {"host": "fraud-scorer-legacy"}}],
                    "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 1.0}}},
                },
            ],
        },
    }


def create(kube: KubeStandIn, vs: dict[str, Any]) -> dict[str, Any]:
    api = kubernetes.client.CustomObjectsApi(kube.api_client())
    return dict(api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, vs))


def live(kube: KubeStandIn) -> dict[str, Any]:
    api = kubernetes.client.CustomObjectsApi(kube.api_client())
    return dict(api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "fraud-scorer"))


def weights_of(vs: dict[str, Any], index: int) -> list[int | None]:
    return [entry.get("weight") for entry in vs["spec"]["http"][index]["route"]]


def sans_weights(vs: dict[str, Any], indexes: list[int]) -> str:
    """Everything but the given routes' weights and the server-managed metadata, canonically."""
    clone = copy.deepcopy(vs)
    for i in indexes:
        for entry in clone["spec"]["http"][i]["route"]:
            entry.pop("weight", None)
    for key in ("resourceVersion", "generation", "uid", "creationTimestamp"):
        clone["metadata"].pop(key, None)
    return json.dumps(clone, sort_keys=True)


def requests_to(kube: KubeStandIn, method: str) -> int:
    return kube.call(
        lambda h: sum(
            1
            for r in h._requests
            if r.method.value == method and r.resource is not None and r.resource.plural == PLURAL
        )
    )


def test_subset_weights_written_and_nothing_else_changes(kube_api: KubeStandIn) -> None:
    before = create(kube_api, subset_vs())
    router = IstioRouter(policy(SUBSET_POLICY, ", routes: [primary]"), kube_api.api_client())
    router.set_weights(Weights(stable=90, candidate=10))
    after = live(kube_api)
    assert weights_of(after, 1) == [90, 10]
    assert weights_of(after, 0) == [None]  # the debug route also goes to v2 but is not managed
    assert sans_weights(after, [1]) == sans_weights(before, [1])
    assert router.get_weights() == Weights(stable=90, candidate=10)
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["metadata"]["generation"] == 2
    # the same weights again: no write at all
    router.set_weights(Weights(stable=90, candidate=10))
    assert live(kube_api)["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    assert router.writes == 1


def test_host_weights_written_on_every_auto_detected_route(kube_api: KubeStandIn) -> None:
    before = create(kube_api, host_vs())
    router = IstioRouter(policy(HOST_POLICY), kube_api.api_client())
    router.set_weights(Weights(stable=60, candidate=40))
    after = live(kube_api)
    assert weights_of(after, 0) == weights_of(after, 1) == [60, 40]
    assert sans_weights(after, [0, 1]) == sans_weights(before, [0, 1])
    router.set_weights(ALL_STABLE)
    assert weights_of(live(kube_api), 0) == [100, 0]


def test_every_version_written_is_valid_against_istios_v1_schema(kube_api: KubeStandIn) -> None:
    create(kube_api, subset_vs())
    router = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client())
    for weights in (
        Weights(100, 0, mirror_percent=100),
        Weights(100, 0, mirror_percent=25),
        Weights(0, 100),
        ALL_STABLE,
    ):
        router.set_weights(weights)
        assert router.get_weights() == weights
    versions = kube_api.stored(RES, NS, "fraud-scorer")
    assert len(versions) == 5
    shadow = versions[1]["spec"]["http"][1]
    assert shadow["mirror"] == {"host": "fraud-scorer", "subset": "v2"}
    assert shadow["mirrorPercentage"] == {"value": 100.0}
    for version in versions:
        assert validator_for(VIRTUALSERVICE_CRD).errors(version) == []


def test_a_conflict_is_one_typed_error_and_the_next_attempt_reads_afresh(kube_api: KubeStandIn) -> None:
    """One attempt per call (the runner owns retries): a 409 is an IstioConflict."""
    create(kube_api, subset_vs())

    def concurrent_writer(handler: Any) -> None:
        async def relabel(request: Any) -> None:
            # Between the router's read and its write, someone else changes the object.
            await handler.write(
                RES, NS, "fraud-scorer", lambda obj: obj["metadata"]["labels"].update(team="fraud")
            )

        handler["put", handler.resource(RES)] >> relabel  # kmock: a one-shot side effect

    kube_api.call(concurrent_writer)
    router = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client())
    with pytest.raises(IstioConflict, match="HTTP 409"):
        router.set_weights(Weights(stable=80, candidate=20))
    assert isinstance(IstioConflict("x"), RouteConflict)
    router.set_weights(Weights(stable=80, candidate=20))
    after = live(kube_api)
    assert router.conflicts == 1
    assert requests_to(kube_api, "PUT") == 2
    assert weights_of(after, 1) == [80, 20]
    assert after["metadata"]["labels"] == {"app": "fraud-scorer", "team": "fraud"}, "the other write was kept"


def test_a_server_error_is_one_attempt_for_steps_and_rollbacks_alike(kube_api: KubeStandIn) -> None:
    vs = subset_vs()
    vs["spec"]["http"][1]["route"][0]["weight"] = vs["spec"]["http"][1]["route"][1]["weight"] = 50
    create(kube_api, vs)
    router = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client())
    kube_api.call(lambda h: h["put", h.resource(RES)][:2] << 503)
    with pytest.raises(IstioRouterError, match="HTTP 503"):
        router.set_weights(Weights(stable=25, candidate=75))
    with pytest.raises(IstioRouterError, match="HTTP 503"):
        router.write(ALL_STABLE, rollback=RollbackRecord("run1", "errorRate failed"))
    assert requests_to(kube_api, "PUT") == 2
    router.write(ALL_STABLE, rollback=RollbackRecord("run1", "errorRate failed"))
    assert weights_of(live(kube_api), 1) == [100, 0]


def test_a_forward_write_is_a_compare_and_swap(kube_api: KubeStandIn) -> None:
    """Item 3: the live weights are checked in the same read the replace carries."""
    create(kube_api, subset_vs())
    router = IstioRouter(policy(SUBSET_POLICY, ", routes: [primary]"), kube_api.api_client())
    router.write(Weights(50, 50), expected=ALL_STABLE)

    def person(obj: dict[str, Any]) -> None:  # a person puts everything back on stable
        obj["spec"]["http"][1]["route"][0]["weight"] = 100
        obj["spec"]["http"][1]["route"][1]["weight"] = 0

    kube_api.write(RES, NS, "fraud-scorer", person)
    with pytest.raises(WeightsMoved) as moved:
        router.write(Weights(20, 80), expected=Weights(50, 50))
    assert moved.value.live == ALL_STABLE
    assert weights_of(live(kube_api), 1) == [100, 0]
    assert requests_to(kube_api, "PUT") == 1, "nothing written over the person's weights"
    # Already where we want it (a crash between our write and our save): not an outside move.
    router.write(ALL_STABLE, expected=Weights(50, 50))


def test_a_rollback_carries_its_record_in_the_same_replace(kube_api: KubeStandIn) -> None:
    """Item 4: the rollback's intent is durable atomically with its write."""
    vs = subset_vs()
    vs["spec"]["http"][1]["route"][0]["weight"] = vs["spec"]["http"][1]["route"][1]["weight"] = 50
    create(kube_api, vs)
    router = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client())
    record = RollbackRecord("run1", "aborted by a person (manual rollback)", ("manual",), 12.5)
    router.write(ALL_STABLE, owner="run1", rollback=record)
    assert requests_to(kube_api, "PUT") == 1
    stored = live(kube_api)
    assert weights_of(stored, 1) == [100, 0]
    assert json.loads(stored["metadata"]["annotations"][ANNOTATION_ROLLBACK])["runId"] == "run1"
    assert router.recorded_rollback() == record
    for version in kube_api.stored(RES, NS, "fraud-scorer"):
        assert validator_for(VIRTUALSERVICE_CRD).errors(version) == []


def test_ownership_is_claimed_refused_kept_and_released(kube_api: KubeStandIn) -> None:
    """Item 5: one owner at a time, set with the resourceVersion read."""
    create(kube_api, subset_vs())
    first = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client())
    second = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client())
    first.claim("run-a", "models/fraud-scorer")
    owner = json.loads(live(kube_api)["metadata"]["annotations"][ANNOTATION_OWNER])
    assert owner["runId"] == "run-a" and owner["rollout"] == "models/fraud-scorer"
    with pytest.raises(RouteOwned, match="already being rolled out by models/fraud-scorer"):
        second.claim("run-b", "models/fraud-scorer")
    with pytest.raises(RouteOwned):
        second.write(Weights(90, 10), owner="run-b", expected=ALL_STABLE)
    assert weights_of(live(kube_api), 1) == [100, 0]
    first.claim("run-a", "models/fraud-scorer")  # a resume keeps it
    first.write(Weights(90, 10), owner="run-a", expected=ALL_STABLE)
    second.claim("run-c", "models/fraud-scorer", previous="run-a")  # the same state's next rollout
    second.release("run-a")  # not the holder: nothing happens
    assert json.loads(live(kube_api)["metadata"]["annotations"][ANNOTATION_OWNER])["runId"] == "run-c"
    second.release("run-c")
    assert ANNOTATION_OWNER not in (live(kube_api)["metadata"].get("annotations") or {})


def test_weights_changed_by_someone_else_are_detected(kube_api: KubeStandIn) -> None:
    create(kube_api, subset_vs())
    router = IstioRouter(policy(SUBSET_POLICY, ", routes: [primary]"), kube_api.api_client())
    router.set_weights(Weights(stable=75, candidate=25))
    assert router.check_drift() is None
    assert router.check_drift(Weights(stable=75, candidate=25)) is None

    def gitops_sync(obj: dict[str, Any]) -> None:  # Argo CD putting git's 100/0 back
        obj["spec"]["http"][1]["route"][0]["weight"] = 100
        obj["spec"]["http"][1]["route"][1]["weight"] = 0

    kube_api.write(RES, NS, "fraud-scorer", gitops_sync)
    message = router.check_drift()
    assert message is not None
    assert (
        "'primary'" in message and "stable=100 candidate=0" in message and "stable=75 candidate=25" in message
    )
    assert router.get_weights() == ALL_STABLE

    kube_api.write(RES, NS, "fraud-scorer", lambda obj: obj["spec"]["http"][1].update(name="renamed"))
    message = router.check_drift()
    assert message is not None and "no http route named 'primary'" in message


def test_the_stand_in_rejects_an_invalid_virtual_service_like_an_api_server(kube_api: KubeStandIn) -> None:
    api = kubernetes.client.CustomObjectsApi(kube_api.api_client())
    bad = subset_vs()
    bad["spec"]["http"][1]["route"][1]["weight"] = "ten"
    bad["spec"]["http"][1]["timeout"] = "0.1ms"
    bad["spec"]["http"][1]["retries"]["bogus"] = True
    with pytest.raises(ApiException) as caught:
        api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, bad)
    assert caught.value.status == 422
    body = json.loads(caught.value.body)
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "Invalid", 422)
    fields = sorted(cause["field"] for cause in body["details"]["causes"])
    assert fields == ["spec.http[1].retries", "spec.http[1].route[1].weight", "spec.http[1].timeout"]
    # and the same for a replace of a valid object
    good = create(kube_api, subset_vs())
    good["spec"]["http"][1]["route"][0]["weight"] = -1.5
    with pytest.raises(ApiException) as caught:
        api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "fraud-scorer", good)
    assert caught.value.status == 422


def test_configuration_errors_are_not_retried(kube_api: KubeStandIn) -> None:
    router = IstioRouter(policy(SUBSET_POLICY, ", routes: [primary]"), kube_api.api_client())
    with pytest.raises(IstioRouterError, match="does not exist"):
        router.get_weights()
    vs = subset_vs()
    vs["spec"]["http"][1]["name"] = "main"
    create(kube_api, vs)
    with pytest.raises(VirtualServicePatchError, match="no http route named 'primary'"):
        router.set_weights(ALL_STABLE)
    assert requests_to(kube_api, "PUT") == 0


def test_kubeconfig_works_for_the_official_client(kube_api: KubeStandIn) -> None:
    create(kube_api, subset_vs())
    config = yaml.safe_load(kube_api.kubeconfig_path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == kube_api.url
    client = kubernetes.config.new_client_from_config(config_file=str(kube_api.kubeconfig_path))
    router = IstioRouter(policy(SUBSET_POLICY), client)
    assert router.get_weights() == ALL_STABLE
