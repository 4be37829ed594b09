"""GatewayRouter through the official client, over HTTP, against the API stand-in holding the
Gateway API's standard-channel HTTPRoute CRD: every write is validated against it."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from mesh_canary.core.model import Policy
from mesh_canary.core.policy import load_policy_text
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.routing import RouterTarget, router_for_route
from mesh_canary.routing.base import RollbackRecord, RouteConflict, RouteNotFound, RouteOwned, WeightsMoved
from mesh_canary.routing.gateway import (
    GROUP,
    PLURAL,
    VERSION,
    GatewayConflict,
    GatewayRouter,
    GatewayRouterError,
    HTTPRoutePatchError,
)
from mesh_canary.routing.kube_route import ANNOTATION_OWNER, ANNOTATION_ROLLBACK
from tests.crd_schema import HTTPROUTE_CRD, validator_for
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn

pytestmark = pytest.mark.integration

NS = "models"
RES = f"{GROUP}/{VERSION}/{PLURAL}"


def policy(rules: str = ", rules: [scoring]") -> Policy:
    return load_policy_text(f"""
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {{name: fraud-scorer, namespace: {NS}}}
spec:
  route: {{kind: HTTPRoute, name: scorer{rules}}}
  stable: {{destination: {{host: scorer-v1, port: 8080}}}}
  candidate: {{destination: {{host: scorer-v2, port: 8080}}}}
""")


def route() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": "scorer", "namespace": NS, "labels": {"app": "scorer"}},
        "spec": {
            "parentRefs": [{"name": "mesh-gateway"}],
            "rules": [
                {
                    "name": "debug",
                    "matches": [{"headers": [{"name": "x-debug", "value": "1"}]}],
                    "backendRefs": [{"name": "scorer-v2", "port": 8080}],
                },
                {
                    "name": "scoring",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/predict"}}],
                    "backendRefs": [
                        {"name": "scorer-v1", "port": 8080, "weight": 100},
                        {"name": "scorer-v2", "port": 8080, "weight": 0},
                    ],
                    "timeouts": {"request": "10s"},
                },
            ],
        },
    }


def api(kube: KubeStandIn) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def create(kube: KubeStandIn, obj: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(api(kube).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, obj or route()))


def live(kube: KubeStandIn) -> dict[str, Any]:
    return dict(api(kube).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "scorer"))


def weights_of(obj: dict[str, Any], index: int = 1) -> list[int | None]:
    return [ref.get("weight") for ref in obj["spec"]["rules"][index]["backendRefs"]]


def sans_weights(obj: dict[str, Any]) -> str:
    clone = copy.deepcopy(obj)
    for ref in clone["spec"]["rules"][1]["backendRefs"]:
        ref.pop("weight", None)
    for key in ("resourceVersion", "generation", "uid", "creationTimestamp"):
        clone["metadata"].pop(key, None)
    return json.dumps(clone, sort_keys=True)


def puts(kube: KubeStandIn) -> int:
    return kube.call(
        lambda h: sum(
            1
            for r in h._requests
            if r.method.value == "PUT" and r.resource is not None and r.resource.plural == PLURAL
        )
    )


def router(kube: KubeStandIn, rules: str = ", rules: [scoring]") -> GatewayRouter:
    built = router_for_route(policy(rules), RouterTarget(api_client=kube.api_client()))
    assert isinstance(built, GatewayRouter)
    return built


def test_only_the_managed_weights_change_and_every_version_is_valid(kube_api: KubeStandIn) -> None:
    before = create(kube_api)
    r = router(kube_api)
    assert r.ref == "HTTPRoute models/scorer"
    for w in (Weights(90, 10), Weights(100, 0, mirror_percent=100), Weights(0, 100), ALL_STABLE):
        r.set_weights(w)
        assert r.get_weights() == w
    after = live(kube_api)
    assert weights_of(after) == [100, 0] and weights_of(after, 0) == [1]  # the API's default weight
    assert sans_weights(after) == sans_weights(before)
    versions = kube_api.stored(RES, NS, "scorer")
    assert len(versions) == 5
    assert versions[2]["spec"]["rules"][1]["filters"][0]["requestMirror"]["percent"] == 100
    for version in versions:
        assert validator_for(HTTPROUTE_CRD).errors(version) == []
    r.set_weights(ALL_STABLE)  # no change: no write
    assert r.writes == 4 and puts(kube_api) == 4


def test_the_stand_in_refuses_what_the_gateway_api_crd_refuses(kube_api: KubeStandIn) -> None:
    bad = route()
    bad["spec"]["rules"][1]["backendRefs"][1]["weight"] = 1_000_001  # above the CRD's maximum
    bad["spec"]["rules"][1]["backendRefs"][0].pop("port")  # a Service backendRef needs its port
    with pytest.raises(ApiException) as caught:
        create(kube_api, bad)
    assert caught.value.status == 422
    fields = sorted(cause["field"] for cause in json.loads(caught.value.body)["details"]["causes"])
    assert fields == ["spec.rules[1].backendRefs[0]", "spec.rules[1].backendRefs[1].weight"]


def test_a_conflict_is_one_typed_error_and_the_next_attempt_reads_afresh(kube_api: KubeStandIn) -> None:
    create(kube_api)

    def concurrent_writer(handler: Any) -> None:
        async def relabel(request: Any) -> None:
            await handler.write(RES, NS, "scorer", lambda obj: obj["metadata"]["labels"].update(team="fraud"))

        handler["put", handler.resource(RES)] >> relabel

    kube_api.call(concurrent_writer)
    r = router(kube_api)
    with pytest.raises(GatewayConflict, match="HTTP 409") as caught:
        r.set_weights(Weights(80, 20))
    assert isinstance(caught.value, RouteConflict) and r.conflicts == 1
    r.set_weights(Weights(80, 20))
    after = live(kube_api)
    assert weights_of(after) == [80, 20]
    assert after["metadata"]["labels"] == {"app": "scorer", "team": "fraud"}, "the other write was kept"


def test_a_forward_write_is_a_compare_and_swap(kube_api: KubeStandIn) -> None:
    create(kube_api)
    r = router(kube_api)
    r.write(Weights(50, 50), expected=ALL_STABLE)

    def person(obj: dict[str, Any]) -> None:
        obj["spec"]["rules"][1]["backendRefs"][0]["weight"] = 100
        obj["spec"]["rules"][1]["backendRefs"][1]["weight"] = 0

    kube_api.write(RES, NS, "scorer", person)
    with pytest.raises(WeightsMoved) as moved:
        r.write(Weights(20, 80), expected=Weights(50, 50))
    assert moved.value.live == ALL_STABLE and "HTTPRoute models/scorer holds 100/0" in str(moved.value)
    assert puts(kube_api) == 1, "nothing written over the person's weights"
    r.write(ALL_STABLE, expected=Weights(50, 50))  # already there: not an outside move


def test_ownership_and_the_rollback_record(kube_api: KubeStandIn) -> None:
    create(kube_api)
    first, second = router(kube_api), router(kube_api)
    first.claim("run-a", "models/fraud-scorer")
    with pytest.raises(RouteOwned, match=r"remove the annotation mesh-canary\.io/owner from the HTTPRoute"):
        second.claim("run-b", "models/fraud-scorer")
    with pytest.raises(RouteOwned):
        second.write(Weights(90, 10), owner="run-b", expected=ALL_STABLE)
    first.write(Weights(50, 50), owner="run-a", expected=ALL_STABLE)
    record = RollbackRecord("run-a", "errorRate failed", ("errorRate",), 12.5)
    before = puts(kube_api)
    first.write(ALL_STABLE, owner="run-a", rollback=record)  # checks nothing, one replace
    assert puts(kube_api) == before + 1
    stored = live(kube_api)
    assert weights_of(stored) == [100, 0]
    assert json.loads(stored["metadata"]["annotations"][ANNOTATION_ROLLBACK])["runId"] == "run-a"
    assert first.recorded_rollback() == record
    first.release("run-a")
    assert ANNOTATION_OWNER not in live(kube_api)["metadata"]["annotations"]
    second.claim("run-b", "models/fraud-scorer")  # a new run drops the old run's record
    assert ANNOTATION_ROLLBACK not in live(kube_api)["metadata"]["annotations"]
    for version in kube_api.stored(RES, NS, "scorer"):
        assert validator_for(HTTPROUTE_CRD).errors(version) == []


def test_weights_changed_outside_are_detected(kube_api: KubeStandIn) -> None:
    create(kube_api)
    r = router(kube_api)
    r.set_weights(Weights(75, 25))
    assert r.check_drift() is None
    kube_api.write(RES, NS, "scorer", lambda o: o["spec"]["rules"][1]["backendRefs"][1].update(weight=0))
    message = r.check_drift()
    assert message is not None and "rule 'scoring' carries stable=100 candidate=0" in message
    kube_api.write(RES, NS, "scorer", lambda o: o["spec"]["rules"][1].update(name="renamed"))
    message = r.check_drift()
    assert (
        message is not None and "no longer has the rules" in message and "no rule named 'scoring'" in message
    )


def test_configuration_errors_are_typed_and_not_written(kube_api: KubeStandIn) -> None:
    r = router(kube_api)
    with pytest.raises(RouteNotFound, match=r"HTTPRoute models/scorer does not exist\."):
        r.get_weights()
    create(kube_api)
    with pytest.raises(HTTPRoutePatchError, match="no rule named 'primary'"):
        router(kube_api, ", rules: [primary]").set_weights(ALL_STABLE)
    kube_api.call(lambda h: h["put", h.resource(RES)][:1] << 503)
    with pytest.raises(GatewayRouterError, match="HTTP 503"):
        r.set_weights(Weights(90, 10))
    assert puts(kube_api) == 1 and weights_of(live(kube_api)) == [100, 0]
