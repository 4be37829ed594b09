"""Shared test helpers: the one ModelRollout (policy) document builder.

Every test that needs a policy document starts from :func:`model_rollout` and states only
what differs (a test module may keep a short wrapper that names its differences)."""

from __future__ import annotations

import copy
from typing import Any

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
