"""Pure HTTPRoute weight patching: only the managed rules' backendRefs weights (and the
candidate's RequestMirror filter) change, everything else is carried over byte for byte."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from mesh_canary.core.policy import PolicyError, load_policy_text
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.routing.gateway import Backends, HTTPRoutePatchError, apply_weights, drift, read_weights
from tests.crd_schema import HTTPROUTE_CRD, validator_for

NS = "models"


def backends(rules: str = "", fallback: str = "", stable: str = "{host: scorer-v1, port: 8080}") -> Backends:
    return Backends.from_policy(
        load_policy_text(f"""
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {{name: fraud-scorer, namespace: {NS}}}
spec:
  route: {{kind: HTTPRoute, name: scorer{rules}}}
  stable: {{destination: {stable}}}
  candidate: {{destination: {{host: scorer-v2, port: 8080}}}}
{fallback}
""")
    )


def route() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "scorer", "namespace": NS, "labels": {"app": "scorer"}},
        "spec": {
            "parentRefs": [{"name": "mesh-gateway", "namespace": "infra"}],
            "hostnames": ["scorer.example.com"],
            "rules": [
                {
                    "name": "debug",
                    "matches": [{"headers": [{"name": "x-debug", "value": "1"}]}],
                    "backendRefs": [{"name": "scorer-v2", "port": 8080}],
                },
                {
                    "name": "scoring",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/predict"}}],
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {"set": [{"name": "x-mesh", "value": "canary"}]},
                        }
                    ],
                    "backendRefs": [
                        {"name": "scorer-v1", "port": 8080, "weight": 100, "unknownField": {"kept": True}},
                        {"name": "scorer-v2", "port": 8080, "weight": 0},
                    ],
                    "timeouts": {"request": "10s"},
                },
                {"backendRefs": [{"name": "legacy", "port": 80}]},
            ],
        },
    }


def sans_weights(obj: dict[str, Any], indexes: list[int]) -> str:
    clone = copy.deepcopy(obj)
    for i in indexes:
        for ref in clone["spec"]["rules"][i].get("backendRefs", []):
            ref.pop("weight", None)
    return json.dumps(clone, sort_keys=True)


def weights(obj: dict[str, Any], index: int) -> list[int | None]:
    return [ref.get("weight") for ref in obj["spec"]["rules"][index]["backendRefs"]]


def test_only_the_named_rules_weights_change() -> None:
    before = route()
    after = apply_weights(before, backends(", rules: [scoring]"), Weights(90, 10))
    assert weights(after, 1) == [90, 10]
    assert weights(after, 0) == [None]  # also to v2, but not managed
    assert sans_weights(after, [1]) == sans_weights(before, [1])
    assert before == route(), "the input is not modified"
    assert read_weights(after, backends(", rules: [scoring]")) == Weights(90, 10)


def test_rules_are_found_by_backends_by_index_and_by_name() -> None:
    assert apply_weights(route(), backends(), Weights(50, 50)) == apply_weights(
        route(), backends(", rules: [1]"), Weights(50, 50)
    )
    with pytest.raises(HTTPRoutePatchError, match="no rule named 'primary' \\(rules: 'debug', 'scoring'\\)"):
        apply_weights(route(), backends(", rules: [primary]"), ALL_STABLE)
    with pytest.raises(HTTPRoutePatchError, match="there is no rules\\[7\\]"):
        apply_weights(route(), backends(", rules: [7]"), ALL_STABLE)
    with pytest.raises(HTTPRoutePatchError, match="no backendRef to the stable Service"):
        apply_weights(route(), backends(", rules: [debug]"), ALL_STABLE)
    stray = route()
    stray["spec"]["rules"][1]["backendRefs"].append({"name": "other", "port": 80})
    with pytest.raises(HTTPRoutePatchError, match="neither the stable"):
        apply_weights(stray, backends(", rules: [scoring]"), ALL_STABLE)
    with pytest.raises(HTTPRoutePatchError, match="no rule whose backendRefs are exactly"):
        apply_weights(stray, backends(), ALL_STABLE)
    gains = apply_weights(
        route(), backends(", rules: [2]", stable="{host: legacy, port: 80}"), Weights(90, 10)
    )
    assert weights(gains, 2) == [90, 10]
    lone = route()
    del lone["spec"]["rules"][1]
    with pytest.raises(HTTPRoutePatchError, match=r"name the rules to manage in spec\.route\.rules"):
        apply_weights(lone, backends(), ALL_STABLE)


def test_a_rule_with_only_stable_gains_the_candidate() -> None:
    obj = route()
    obj["spec"]["rules"][1]["backendRefs"] = [{"name": "scorer-v1", "port": 8080}]
    after = apply_weights(obj, backends(", rules: [scoring]"), Weights(95, 5))
    assert after["spec"]["rules"][1]["backendRefs"] == [
        {"name": "scorer-v1", "port": 8080, "weight": 95},
        {"name": "scorer-v2", "port": 8080, "weight": 5},
    ]


def test_relative_and_default_weights_read_as_percentages() -> None:
    obj = route()
    for ref in obj["spec"]["rules"][1]["backendRefs"]:
        ref.pop("weight")  # the API's default weight is 1 each
    assert read_weights(obj, backends()) == Weights(50, 50)
    obj["spec"]["rules"][1]["backendRefs"][0]["weight"] = 3
    assert read_weights(obj, backends()) == Weights(75, 25)


def test_services_in_other_namespaces_and_other_ports_are_told_apart() -> None:
    obj = route()
    obj["spec"]["rules"][1]["backendRefs"][1]["namespace"] = "elsewhere"
    with pytest.raises(HTTPRoutePatchError, match="neither the stable"):
        apply_weights(obj, backends(", rules: [scoring]"), Weights(90, 10))
    obj["spec"]["rules"][1]["backendRefs"][1]["namespace"] = NS  # explicit = the route's own
    assert weights(apply_weights(obj, backends(), Weights(90, 10)), 1) == [90, 10]
    obj["spec"]["rules"][1]["backendRefs"][1]["port"] = 9090
    with pytest.raises(HTTPRoutePatchError, match="neither the stable"):
        apply_weights(obj, backends(", rules: [scoring]"), Weights(90, 10))


def test_the_mirror_is_a_request_mirror_filter_that_comes_and_goes() -> None:
    b = backends(", rules: [scoring]")
    shadow = apply_weights(route(), b, Weights(100, 0, mirror_percent=25))
    filters = shadow["spec"]["rules"][1]["filters"]
    assert filters[0]["type"] == "RequestHeaderModifier"
    assert filters[1] == {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "scorer-v2", "port": 8080}, "percent": 25},
    }
    assert read_weights(shadow, b) == Weights(100, 0, mirror_percent=25)
    more = apply_weights(shadow, b, Weights(100, 0, mirror_percent=100))
    assert more["spec"]["rules"][1]["filters"][1]["requestMirror"]["percent"] == 100
    back = apply_weights(more, b, Weights(0, 100))
    assert back["spec"]["rules"][1]["filters"] == route()["spec"]["rules"][1]["filters"]
    bare = route()
    del bare["spec"]["rules"][1]["filters"]
    assert (
        "filters"
        not in apply_weights(apply_weights(bare, b, Weights(100, 0, mirror_percent=50)), b, ALL_STABLE)[
            "spec"
        ]["rules"][1]
    )


def test_the_fallback_backend_is_added_when_it_takes_traffic() -> None:
    b = backends(", rules: [scoring]", fallback="  fallback: {destination: {host: scorer-rules, port: 8080}}")
    after = apply_weights(route(), b, Weights(0, 0, fallback=100))
    assert after["spec"]["rules"][1]["backendRefs"][2] == {
        "name": "scorer-rules",
        "port": 8080,
        "weight": 100,
    }
    assert read_weights(after, b) == Weights(0, 0, 100)
    with pytest.raises(HTTPRoutePatchError, match="names none"):
        apply_weights(route(), backends(), Weights(0, 0, fallback=100))


def test_drift_names_the_rule_and_both_weights() -> None:
    b = backends()
    written = apply_weights(route(), b, Weights(75, 25))
    assert drift(written, b, Weights(75, 25)) is None
    message = drift(route(), b, Weights(75, 25))
    assert message is not None
    assert "HTTPRoute models/scorer rule 'scoring'" in message
    assert "stable=100 candidate=0" in message and "stable=75 candidate=25" in message


def test_every_patched_route_is_valid_against_the_gateway_api_crd() -> None:
    b = backends(", rules: [scoring]", fallback="  fallback: {destination: {host: scorer-rules, port: 8080}}")
    validator = validator_for(HTTPROUTE_CRD)
    obj = route()
    obj["spec"]["rules"][1]["backendRefs"][0].pop("unknownField")
    assert validator.errors(obj) == []
    for w in (Weights(100, 0, mirror_percent=100), Weights(50, 50), Weights(0, 0, 100), ALL_STABLE):
        obj = apply_weights(obj, b, w)
        assert validator.errors(obj) == [], w


def test_the_policy_rules_for_an_httproute() -> None:
    base = """
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {name: fraud-scorer}
spec:
  %s
  stable: {destination: {host: scorer, subset: v1}}
  candidate: {destination: {host: scorer-v2}}
"""
    with pytest.raises(PolicyError) as caught:
        load_policy_text(base % "route: {kind: HTTPRoute, name: scorer, rules: [a, 0, a, 0]}")
    text = str(caught.value)
    assert "spec.stable.destination.subset: an HTTPRoute's backends are Services" in text
    assert "spec.route.rules[2]: the rule 'a' is listed twice" in text
    assert "spec.route.rules[3]: the rule 0 is listed twice" in text
    with pytest.raises(
        PolicyError, match=r"spec\.route\.rules\[0\]: a VirtualService's http routes are chosen by name"
    ):
        load_policy_text(base % "route: {kind: VirtualService, name: scorer, rules: [0]}")
    with pytest.raises(PolicyError, match="set only one of virtualService and route, not both"):
        load_policy_text(base % "virtualService: {name: s}\n  route: {kind: VirtualService, name: scorer}")
    with pytest.raises(PolicyError, match="spec: needs one of virtualService or route"):
        load_policy_text(base % "strategy: canary")
    with pytest.raises(PolicyError, match=r"spec\.route\.kind"):
        load_policy_text(base % "route: {kind: Ingress, name: scorer}")


def test_a_route_reference_of_either_kind_builds_the_same_model() -> None:
    doc = """
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {name: fraud-scorer, namespace: models}
spec:
  %s
  stable: {destination: {host: scorer, subset: v1}}
  candidate: {destination: {host: scorer, subset: v2}}
"""
    short = load_policy_text(doc % "virtualService: {name: scorer, routes: [primary]}")
    long = load_policy_text(doc % "route: {kind: VirtualService, name: scorer, rules: [primary]}")
    assert short.route == long.route == short.virtual_service
    assert str(short.route) == "VirtualService models/scorer" and short.route.routes == ("primary",)
    http = load_policy_text(
        (doc % "route: {kind: HTTPRoute, name: scorer, namespace: gw, rules: [1]}")
        .replace(", subset: v2", "-v2")
        .replace(", subset: v1", "")
    )
    assert (http.route.kind, http.route.namespace, http.route.routes) == ("HTTPRoute", "gw", (1,))
    assert http.document["spec"]["route"]["rules"] == [1]
