"""IstioRouter through the official client, over HTTP, against the API stand-in holding Istio's CRDs."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from mesh_canary.adapters.istio import GROUP, PLURAL, VERSION, IstioRouter, IstioRouterError
from mesh_canary.adapters.vs_patch import VirtualServicePatchError
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import load_policy_text
from mesh_canary.core.weights import ALL_STABLE, Weights
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


def test_a_conflict_is_retried_from_a_fresh_read(kube_api: KubeStandIn) -> None:
    create(kube_api, subset_vs())

    def concurrent_writer(handler: Any) -> None:
        async def relabel(request: Any) -> None:
            # Between the router's read and its write, someone else changes the object.
            await handler.write(
                RES, NS, "fraud-scorer", lambda obj: obj["metadata"]["labels"].update(team="fraud")
            )

        handler["put", handler.resource(RES)] >> relabel  # kmock: a one-shot side effect

    kube_api.call(concurrent_writer)
    router = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client(), sleep=lambda s: None)
    router.set_weights(Weights(stable=80, candidate=20))
    after = live(kube_api)
    assert router.conflicts == 1
    assert requests_to(kube_api, "PUT") == 2
    assert weights_of(after, 1) == [80, 20]
    assert after["metadata"]["labels"] == {"app": "fraud-scorer", "team": "fraud"}, "the other write was kept"


def test_conflicts_that_never_end_give_up_after_the_bounded_attempts(kube_api: KubeStandIn) -> None:
    create(kube_api, subset_vs())
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Conflict",
        "code": 409,
        "message": "the object has been modified",
    }
    kube_api.call(lambda h: h["put", h.resource(RES)] << 409 << status)
    slept: list[float] = []
    router = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client(), attempts=4, sleep=slept.append)
    with pytest.raises(IstioRouterError, match=r"after 4 attempt.*409"):
        router.set_weights(Weights(stable=50, candidate=50))
    assert requests_to(kube_api, "PUT") == 4
    assert len(slept) == 3 and all(0 < s <= 2.0 for s in slept)


def test_a_rollback_retries_through_server_errors_where_a_step_does_not(kube_api: KubeStandIn) -> None:
    vs = subset_vs()
    vs["spec"]["http"][1]["route"][0]["weight"] = vs["spec"]["http"][1]["route"][1]["weight"] = 50
    create(kube_api, vs)
    router = IstioRouter(policy(SUBSET_POLICY), kube_api.api_client(), sleep=lambda s: None)
    # kmock: the first three PUTs (its views count every request seen) answer 503
    kube_api.call(lambda h: h["put", h.resource(RES)][:3] << 503)
    with pytest.raises(IstioRouterError, match="HTTP 503"):
        router.set_weights(Weights(stable=25, candidate=75))  # an ordinary step: not retried
    router.set_weights(ALL_STABLE)  # the rollback: two more 503s, then through
    assert weights_of(live(kube_api), 1) == [100, 0]
    assert requests_to(kube_api, "PUT") == 1 + 3


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
