"""Shared test helpers: the one policy builder, as a document and as a model.

Every test that needs a policy starts from these and states only what differs (a test
module may keep a short wrapper that names its differences): :func:`minimal_rollout` (the
required fields only), :func:`model_rollout` (a runnable document), :func:`make_policy`
(a :class:`Policy` built directly, for the layers below the policy loader)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from mesh_canary.core.model import AnalysisSpec, Check, Destination, Policy, RouteRef, VersionSpec

NS = "models"  # the namespace of the tests' rollouts and routes


def minimal_rollout(name: str = "fraud-scorer", subsets: tuple[str, str] = ("v1", "v2")) -> dict[str, Any]:
    """The smallest valid ModelRollout: only the required fields, every default left to the
    policy loader."""
    stable_subset, candidate_subset = subsets
    return {
        "apiVersion": "mesh-canary.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name},
        "spec": {
            "virtualService": {"name": name},
            "stable": {"destination": {"host": name, "subset": stable_subset}},
            "candidate": {"destination": {"host": name, "subset": candidate_subset}},
        },
    }


def model_rollout(
    name: str = "fraud-scorer",
    candidate: str = "2.0",
    *,
    subsets: tuple[str, str] = ("v1", "v2"),
    metrics_versions: bool = False,
    prometheus: str | None = None,
    namespace: str = NS,
    **spec: Any,
) -> dict[str, Any]:
    """A runnable ModelRollout for the VirtualService ``name`` (route ``primary``): the minimal
    one with short steps and an error-rate check.

    ``candidate``: the candidate's version; ``subsets``: stable's and the candidate's
    VirtualService subsets, also their ``metricsVersion`` with ``metrics_versions``;
    ``prometheus``: read metrics from this Prometheus (profile envoy). ``spec``: spec
    fields by their YAML name; a mapping is merged into the default one (one level deep),
    anything else replaces it.
    """
    stable_subset, candidate_subset = subsets
    doc = minimal_rollout(name, subsets)
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["virtualService"]["routes"] = ["primary"]
    doc["spec"]["stable"]["version"] = "1.0"
    doc["spec"]["candidate"]["version"] = candidate
    doc["spec"]["canary"] = {"steps": [20, 50, 100], "minStepDuration": "1s", "maxStepDuration": "60s"}
    doc["spec"]["analysis"] = {
        "interval": "1s",
        "minRequests": 10,
        "noDataTimeout": "60s",
        "checks": [{"metric": "errorRate", "max": 0.05}],
    }
    if metrics_versions:
        doc["spec"]["stable"]["metricsVersion"] = stable_subset
        doc["spec"]["candidate"]["metricsVersion"] = candidate_subset
    if prometheus is not None:
        doc["spec"]["metrics"] = {"provider": "prometheus", "profile": "envoy", "address": prometheus}
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key] = {**doc["spec"][key], **copy.deepcopy(value)}
        else:
            doc["spec"][key] = copy.deepcopy(value)
    return doc


def virtual_service(name: str, namespace: str = NS) -> dict[str, Any]:
    """An Istio VirtualService ``name`` whose route ``primary`` sends 100% to subset v1, 0% to v2."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "name": "primary",
                    "route": [
                        {"destination": {"host": name, "subset": "v1"}, "weight": 100},
                        {"destination": {"host": name, "subset": "v2"}, "weight": 0},
                    ],
                }
            ],
        },
    }


def make_policy(
    checks: Sequence[Check] = (),
    *,
    versions: tuple[str, str] = ("1.4.2", "1.5.0"),
    metrics_versions: tuple[str, str] = ("v1", "v2"),
    subsets: tuple[str, str] = ("v1", "v2"),
    hosts: tuple[str, str | None] = ("fraud-scorer", None),
    namespace: str = NS,
    **fields: Any,
) -> Policy:
    """The rollout ``fraud-scorer`` as a Policy, without the loader (its defaults are the
    model's). ``versions``, ``metrics_versions``, ``subsets`` and ``hosts``: stable's and
    the candidate's (the candidate's host None: stable's); ``fields``: other Policy fields
    (``canary=``, ``analysis=``, ``metrics=``...), replacing the defaults."""
    host, candidate_host = hosts
    policy = Policy(
        name="fraud-scorer",
        namespace=namespace,
        route=RouteRef(name="fraud-scorer", namespace=namespace),
        stable=VersionSpec(Destination(host, subsets[0]), versions[0], metrics_versions[0]),
        candidate=VersionSpec(
            Destination(candidate_host or host, subsets[1]), versions[1], metrics_versions[1]
        ),
        analysis=AnalysisSpec(checks=tuple(checks)),
    )
    return replace(policy, **fields)
