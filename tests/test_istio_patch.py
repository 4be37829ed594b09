"""VirtualService weight patching (pure): only the managed weights and mirror ever change."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_canary.core.model import Destination
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.routing.istio_patch import (
    RouteTargets,
    VirtualServicePatchError,
    apply_weights,
    drift,
    managed_route_indexes,
    read_route_weights,
    read_weights,
    without_managed_weights,
)
from tests.crd_schema import VIRTUALSERVICE_CRD, validator_for

SUBSETS = RouteTargets(
    stable=Destination("fraud-scorer", "v1"),
    candidate=Destination("fraud-scorer", "v2"),
    route_names=("primary",),
)
HOSTS = RouteTargets(stable=Destination("fraud-scorer-v1"), candidate=Destination("fraud-scorer-v2"))


def dest(host: str, subset: str | None = None) -> dict[str, Any]:
    return {"host": host} if subset is None else {"host": host, "subset": subset}


def subset_vs() -> dict[str, Any]:
    """A realistic VirtualService: the managed route plus everything a team might have around it."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "fraud-scorer",
            "namespace": "models",
            "resourceVersion": "17",
            "labels": {"app": "fraud-scorer"},
            "annotations": {"argocd.argoproj.io/tracking-id": "x"},
        },
        "spec": {
            "hosts": ["fraud-scorer", "fraud.example.com"],
            "gateways": ["mesh", "istio-system/public"],
            "http": [
                {
                    "name": "debug",
                    "match": [{"headers": {"x-debug": {"exact": "1"}}}],
                    "route": [{"destination": dest("fraud-scorer", "v2")}],
                },
                {
                    "name": "primary",
                    "match": [{"uri": {"prefix": "/predict"}}, {"uri": {"exact": "/score"}}],
                    "route": [
                        {
                            "destination": {"host": "fraud-scorer", "subset": "v1", "port": {"number": 8080}},
                            "weight": 100,
                            "headers": {"response": {"set": {"x-version": "v1"}}},
                        },
                        {
                            "destination": {"host": "fraud-scorer", "subset": "v2", "port": {"number": 8080}},
                            "weight": 0,
                        },
                    ],
                    "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset"},
                    "timeout": "10s",
                    "headers": {"request": {"add": {"x-canary": "mesh-canary"}}},
                    "corsPolicy": {"allowOrigins": [{"exact": "https://example.com"}], "maxAge": "24h"},
                },
                {
                    "name": "legacy",
                    "route": [{"destination": dest("fraud-scorer-legacy")}],
                    "fault": {"delay": {"fixedDelay": "5s", "percentage": {"value": 0.1}}},
                },
            ],
            "tcp": [{"route": [{"destination": {"host": "fraud-scorer", "port": {"number": 9000}}}]}],
        },
    }


def host_vs() -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "fraud-scorer", "namespace": "models"},
        "spec": {
            "hosts": ["fraud-scorer"],
            "http": [
                {
                    "match": [{"headers": {"x-tenant": {"exact": "a"}}}],
                    "route": [
                        {"destination": dest("fraud-scorer-v1.models.svc.cluster.local"), "weight": 100},
                        {"destination": dest("fraud-scorer-v2"), "weight": 0},
                    ],
                    "timeout": "3s",
                },
                {
                    "route": [
                        {"destination": dest("fraud-scorer-v1"), "weight": 100},
                        {"destination": dest("fraud-scorer-v2"), "weight": 0},
                    ]
                },
                {"name": "only-stable", "route": [{"destination": dest("fraud-scorer-v1")}]},
                {
                    "name": "three-way",
                    "route": [
                        {"destination": dest("fraud-scorer-v1"), "weight": 50},
                        {"destination": dest("fraud-scorer-v2"), "weight": 25},
                        {"destination": dest("other"), "weight": 25},
                    ],
                },
            ],
        },
    }


def without_weights(vs: dict[str, Any], indexes: list[int]) -> str:
    """Independent of the module under test: drop the weights of the given routes, dump canonically."""
    clone = copy.deepcopy(vs)
    for i in indexes:
        for entry in clone["spec"]["http"][i]["route"]:
            entry.pop("weight", None)
        for key in ("mirror", "mirrorPercentage"):
            clone["spec"]["http"][i].pop(key, None)
    return json.dumps(clone, sort_keys=True)


def weights_of(vs: dict[str, Any], index: int) -> list[int | None]:
    return [entry.get("weight") for entry in vs["spec"]["http"][index]["route"]]


def assert_valid_istio(vs: dict[str, Any]) -> None:
    assert validator_for(VIRTUALSERVICE_CRD).errors(vs) == []


def test_subset_destinations_on_a_named_route_change_only_its_weights() -> None:
    before = subset_vs()
    after = apply_weights(before, SUBSETS, Weights(stable=90, candidate=10))
    assert weights_of(after, 1) == [90, 10]
    assert without_weights(after, [1]) == without_weights(before, [1])
    assert before == subset_vs(), "the input must not be modified"
    # the "debug" route also sends to v2 but is not named: untouched, no weight added
    assert after["spec"]["http"][0] == subset_vs()["spec"]["http"][0]
    assert_valid_istio(after)


def test_host_destinations_auto_detected_by_their_exact_destinations() -> None:
    before = host_vs()
    assert managed_route_indexes(before, HOSTS) == [0, 1]  # not "only-stable", not "three-way"
    after = apply_weights(before, HOSTS, Weights(stable=75, candidate=25))
    assert weights_of(after, 0) == [75, 25]
    assert weights_of(after, 1) == [75, 25]
    assert weights_of(after, 2) == [None]
    assert weights_of(after, 3) == [50, 25, 25]
    assert without_weights(after, [0, 1]) == without_weights(before, [0, 1])
    assert_valid_istio(after)


def test_short_and_fully_qualified_hosts_are_the_same_service() -> None:
    fqdn_targets = RouteTargets(
        stable=Destination("fraud-scorer-v1.models.svc.cluster.local"),
        candidate=Destination("fraud-scorer-v2.models.svc.cluster.local"),
    )
    assert managed_route_indexes(host_vs(), fqdn_targets) == [0, 1]
    other_namespace = copy.deepcopy(host_vs())
    other_namespace["metadata"]["namespace"] = "elsewhere"  # short names now mean elsewhere's services
    # route 0 names the stable host in "models" explicitly: no longer the policy's stable
    assert managed_route_indexes(other_namespace, HOSTS) == [1]
    with pytest.raises(VirtualServicePatchError):
        managed_route_indexes(other_namespace, fqdn_targets)


def test_subset_policy_does_not_match_host_only_destinations_and_back() -> None:
    host_only = RouteTargets(stable=Destination("fraud-scorer"), candidate=Destination("fraud-scorer"))
    vs = subset_vs()
    with pytest.raises(VirtualServicePatchError, match="no http route whose destinations"):
        managed_route_indexes(vs, host_only)
    with pytest.raises(VirtualServicePatchError, match="no http route whose destinations"):
        managed_route_indexes(
            host_vs(),
            RouteTargets(
                stable=Destination("fraud-scorer-v1", "v1"), candidate=Destination("fraud-scorer-v2", "v2")
            ),
        )


def test_port_in_the_policy_must_match_the_route() -> None:
    with_port = RouteTargets(
        stable=Destination("fraud-scorer", "v1", 8080), candidate=Destination("fraud-scorer", "v2", 8080)
    )
    assert managed_route_indexes(subset_vs(), with_port) == [1]
    wrong_port = RouteTargets(
        stable=Destination("fraud-scorer", "v1", 9090), candidate=Destination("fraud-scorer", "v2", 9090)
    )
    with pytest.raises(VirtualServicePatchError):
        managed_route_indexes(subset_vs(), wrong_port)


def test_several_named_routes_all_get_the_weights() -> None:
    vs = host_vs()
    vs["spec"]["http"][0]["name"] = "tenant-a"
    vs["spec"]["http"][1]["name"] = "rest"
    targets = RouteTargets(HOSTS.stable, HOSTS.candidate, route_names=("rest", "tenant-a"))
    assert managed_route_indexes(vs, targets) == [1, 0]
    after = apply_weights(vs, targets, Weights(stable=50, candidate=50))
    assert weights_of(after, 0) == weights_of(after, 1) == [50, 50]


def test_named_route_with_only_stable_gains_the_candidate_and_nothing_else() -> None:
    targets = RouteTargets(HOSTS.stable, HOSTS.candidate, route_names=("only-stable",))
    before = host_vs()
    after = apply_weights(before, targets, Weights(stable=95, candidate=5))
    assert after["spec"]["http"][2]["route"] == [
        {"destination": {"host": "fraud-scorer-v1"}, "weight": 95},
        {"destination": {"host": "fraud-scorer-v2"}, "weight": 5},
    ]
    for i in (0, 1, 3):
        assert after["spec"]["http"][i] == before["spec"]["http"][i]
    assert read_weights(after, targets) == Weights(stable=95, candidate=5)
    assert read_weights(before, targets) == ALL_STABLE  # a lone destination takes everything


def test_unknown_fields_are_carried_over() -> None:
    vs = subset_vs()
    vs["spec"]["x-future-field"] = {"keep": [1, 2, 3]}
    vs["spec"]["http"][1]["x-route-extension"] = "keep me"
    vs["spec"]["http"][1]["route"][0]["x-dest-extension"] = {"a": 1}
    vs["status"] = {"validationMessages": [{"type": {"code": "IST0101"}}]}
    after = apply_weights(vs, SUBSETS, Weights(stable=50, candidate=50))
    assert after["spec"]["x-future-field"] == {"keep": [1, 2, 3]}
    assert after["spec"]["http"][1]["x-route-extension"] == "keep me"
    assert after["spec"]["http"][1]["route"][0]["x-dest-extension"] == {"a": 1}
    assert without_weights(after, [1]) == without_weights(vs, [1])


def test_fallback_takes_its_share_and_is_added_to_a_named_route_only_when_needed() -> None:
    targets = RouteTargets(
        SUBSETS.stable, SUBSETS.candidate, Destination("fraud-scorer-fallback"), ("primary",)
    )
    vs = subset_vs()
    same = apply_weights(vs, targets, Weights(stable=90, candidate=10, fallback=0))
    assert len(same["spec"]["http"][1]["route"]) == 2  # no fallback entry while it takes nothing
    after = apply_weights(vs, targets, Weights(stable=0, candidate=20, fallback=80))
    assert after["spec"]["http"][1]["route"][2] == {
        "destination": {"host": "fraud-scorer-fallback"},
        "weight": 80,
    }
    assert weights_of(after, 1) == [0, 20, 80]
    assert read_weights(after, targets) == Weights(stable=0, candidate=20, fallback=80)
    assert_valid_istio(after)
    with pytest.raises(VirtualServicePatchError, match="names none"):
        apply_weights(vs, SUBSETS, Weights(stable=50, candidate=0, fallback=50))


def test_mirror_for_blue_green_shadow_traffic_set_and_cleared() -> None:
    vs = subset_vs()
    shadow = apply_weights(vs, SUBSETS, Weights(stable=100, candidate=0, mirror_percent=100))
    route = shadow["spec"]["http"][1]
    assert route["mirror"] == {"host": "fraud-scorer", "subset": "v2"}
    assert route["mirrorPercentage"] == {"value": 100.0}
    assert read_weights(shadow, SUBSETS) == Weights(100, 0, mirror_percent=100)
    assert_valid_istio(shadow)
    half = apply_weights(shadow, SUBSETS, Weights(stable=100, candidate=0, mirror_percent=50))
    assert half["spec"]["http"][1]["mirrorPercentage"] == {"value": 50.0}
    switched = apply_weights(shadow, SUBSETS, Weights(stable=0, candidate=100))
    assert "mirror" not in switched["spec"]["http"][1]
    assert "mirrorPercentage" not in switched["spec"]["http"][1]
    assert without_weights(switched, [1]) == without_weights(vs, [1])


def test_someone_elses_mirror_is_left_alone_and_never_replaced() -> None:
    vs = subset_vs()
    vs["spec"]["http"][1]["mirror"] = {"host": "request-logger"}
    vs["spec"]["http"][1]["mirrorPercentage"] = {"value": 5.0}
    after = apply_weights(vs, SUBSETS, Weights(stable=80, candidate=20))
    assert after["spec"]["http"][1]["mirror"] == {"host": "request-logger"}
    assert after["spec"]["http"][1]["mirrorPercentage"] == {"value": 5.0}
    with pytest.raises(VirtualServicePatchError, match="request-logger"):
        apply_weights(vs, SUBSETS, Weights(stable=100, candidate=0, mirror_percent=100))


def test_mirrors_list_form_manages_only_the_candidate_entry() -> None:
    vs = subset_vs()
    vs["spec"]["http"][1]["mirrors"] = [
        {"destination": {"host": "request-logger"}, "percentage": {"value": 1.0}}
    ]
    shadow = apply_weights(vs, SUBSETS, Weights(stable=100, candidate=0, mirror_percent=30))
    mirrors = shadow["spec"]["http"][1]["mirrors"]
    assert mirrors == [
        {"destination": {"host": "request-logger"}, "percentage": {"value": 1.0}},
        {"destination": {"host": "fraud-scorer", "subset": "v2"}, "percentage": {"value": 30.0}},
    ]
    assert "mirror" not in shadow["spec"]["http"][1]
    assert read_weights(shadow, SUBSETS).mirror_percent == 30
    assert_valid_istio(shadow)
    cleared = apply_weights(shadow, SUBSETS, Weights(stable=0, candidate=100))
    assert cleared["spec"]["http"][1]["mirrors"] == [mirrors[0]]


def test_relative_weights_read_as_percentages() -> None:
    vs = host_vs()
    vs["spec"]["http"][0]["route"][0]["weight"] = 1
    vs["spec"]["http"][0]["route"][1]["weight"] = 2
    per_route = read_route_weights(vs, HOSTS)
    assert per_route[0].route == "http[0]"
    assert per_route[0].weights == Weights(stable=33, candidate=67)
    assert per_route[1].weights == ALL_STABLE


def test_drift_names_the_route_that_differs() -> None:
    vs = apply_weights(subset_vs(), SUBSETS, Weights(stable=90, candidate=10))
    assert drift(vs, SUBSETS, Weights(stable=90, candidate=10)) is None
    message = drift(vs, SUBSETS, Weights(stable=75, candidate=25))
    assert message is not None
    assert (
        "'primary'" in message and "stable=90 candidate=10" in message and "stable=75 candidate=25" in message
    )


@pytest.mark.parametrize(
    ("targets", "vs", "error"),
    [
        (
            RouteTargets(SUBSETS.stable, SUBSETS.candidate, route_names=("missing",)),
            subset_vs(),
            "no http route named 'missing'",
        ),
        (
            RouteTargets(SUBSETS.stable, SUBSETS.candidate, route_names=("legacy",)),
            subset_vs(),
            "does not route to the stable destination",
        ),
        (
            RouteTargets(HOSTS.stable, HOSTS.candidate, route_names=("three-way",)),
            host_vs(),
            "also routes to other",
        ),
        (
            RouteTargets(Destination("nope"), Destination("nada")),
            subset_vs(),
            "name the routes to manage in spec.virtualService.routes",
        ),
        (
            RouteTargets(SUBSETS.stable, SUBSETS.candidate),
            {"metadata": {"name": "x"}, "spec": {"tcp": []}},
            "no http route",
        ),
    ],
)
def test_errors_say_what_is_wrong(targets: RouteTargets, vs: dict[str, Any], error: str) -> None:
    with pytest.raises(VirtualServicePatchError, match=error):
        apply_weights(vs, targets, Weights(stable=50, candidate=50))


@settings(max_examples=60, deadline=None)
@given(candidate=st.integers(0, 100), mirror=st.integers(0, 100), previous=st.integers(0, 100))
def test_any_weights_round_trip_and_change_nothing_else(candidate: int, mirror: int, previous: int) -> None:
    start = apply_weights(subset_vs(), SUBSETS, Weights.candidate_at(previous))
    weights = Weights.candidate_at(candidate, mirror_percent=mirror)
    after = apply_weights(start, SUBSETS, weights)
    assert read_weights(after, SUBSETS) == weights
    assert drift(after, SUBSETS, weights) is None
    assert without_managed_weights(after, SUBSETS) == without_managed_weights(subset_vs(), SUBSETS)
    assert without_weights(after, [1]) == without_weights(subset_vs(), [1])
    assert_valid_istio(after)
