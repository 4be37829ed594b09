"""Every default of a policy, in one place.

The typed model's dataclasses (core/model.py) hold the values; this module writes them into
a document in the YAML's own spelling (durations as ``1m``), so the rules, the filled-in
document and the typed policy cannot disagree. The default checks and the default check
names (from each check kind, mesh_canary.checks) are here too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from mesh_canary.checks import REGISTRY
from mesh_canary.core.durations import format_duration
from mesh_canary.core.model import (
    AnalysisSpec,
    BlueGreenSpec,
    CanarySpec,
    HookCall,
    MetricsSpec,
    Policy,
    RegistrySpec,
    Webhook,
)

NAMESPACE = "default"

DEFAULT_CHECKS: tuple[dict[str, Any], ...] = (
    {"metric": "errorRate", "maxIncreaseRatio": 0.25, "max": 0.05},
    {"metric": "latency", "quantile": 0.99, "maxIncreaseRatio": 0.2},
)
"""The checks a policy gets when it leaves out `spec.analysis.checks`."""


def _field_default(cls: Any, name: str) -> Any:
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return field.default


_canary, _blue_green, _analysis, _metrics = CanarySpec(), BlueGreenSpec(), AnalysisSpec(), MetricsSpec()

# spec section -> field -> default, in the order they are written into a document.
SPEC: dict[str, dict[str, Any]] = {
    "canary": {
        "steps": list(_canary.steps),
        "minStepDuration": format_duration(_canary.min_step_duration_s),
        "maxStepDuration": format_duration(_canary.max_step_duration_s),
    },
    "blueGreen": {
        "mirrorPercent": _blue_green.mirror_percent,
        "previewDuration": format_duration(_blue_green.preview_duration_s),
        "postSwitchWindow": format_duration(_blue_green.post_switch_window_s),
        "holdbackPercent": _blue_green.holdback_percent,
    },
    "analysis": {
        "interval": format_duration(_analysis.interval_s),
        "confidence": _analysis.confidence,
        "minRequests": _analysis.min_requests,
        "noDataTimeout": format_duration(_analysis.no_data_timeout_s),
        "onTimeout": _analysis.on_timeout,
        "promotion": _analysis.promotion,
        "burstDuration": format_duration(_analysis.burst_duration_s),
    },
    "metrics": {
        "provider": _metrics.provider,
        "profile": _metrics.profile,
        "address": _metrics.address,
        "versionLabel": _metrics.version_label,
        "modelVersionLabel": _metrics.model_version_label,
        "timeout": format_duration(_metrics.timeout_s),
        "variables": dict(_metrics.variables),
    },
    "gates": {"approval": _field_default(Policy, "approval")},
}
# spec.registry is optional: its defaults are written in only when the policy has one.
MODEL_REGISTRY: dict[str, Any] = {
    "provider": _field_default(RegistrySpec, "provider"),
    "alias": _field_default(RegistrySpec, "alias"),
    "timeout": format_duration(_field_default(RegistrySpec, "timeout_s")),
}
STRATEGY: str = _field_default(Policy, "strategy")
WEBHOOK_FORMAT: str = _field_default(Webhook, "format")
# A hook call's defaults, as written in a document.
HOOK_CALL: dict[str, Any] = {
    "method": _field_default(HookCall, "method"),
    "timeout": format_duration(_field_default(HookCall, "timeout_s")),
    "retries": _field_default(HookCall, "retries"),
}


def default(section: str, key: str) -> Any:
    """One default, as written in a document (``default("canary", "minStepDuration")``)."""
    return copy.deepcopy(SPEC[section][key])


def default_check_name(check: Mapping[str, Any]) -> str:
    """The name a check gets when it has none: the metric plus its qualifier (its kind says)."""
    metric = str(check.get("metric", ""))
    kind = REGISTRY.get(metric)
    return kind.name_of(check) if kind is not None else metric


def with_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a valid document with every default written in (camelCase, JSON-serialisable)."""
    d = copy.deepcopy(doc)
    meta = d["metadata"]
    meta.setdefault("namespace", NAMESPACE)
    spec = d["spec"]
    ref = spec["route"] if "route" in spec else spec["virtualService"]
    ref.setdefault("namespace", meta["namespace"])
    ref.setdefault("rules" if "route" in spec else "routes", [])
    for role in ("stable", "candidate"):
        version = spec[role]
        dest = version["destination"]
        version.setdefault("version", dest.get("subset", dest["host"]))
        version.setdefault("metricsVersion", version["version"])
    spec.setdefault("strategy", STRATEGY)
    for section in ("canary", "blueGreen", "analysis"):
        _fill(spec, section)
    spec["canary"]["steps"] = [int(s) for s in spec["canary"]["steps"]]
    analysis = spec["analysis"]
    for check in analysis.setdefault("checks", copy.deepcopy(list(DEFAULT_CHECKS))):
        check.setdefault("name", default_check_name(check))
        if REGISTRY[check["metric"]].label_based:
            check.setdefault("minLabeled", analysis["minRequests"])
    for section in ("metrics", "gates"):
        _fill(spec, section)
    if "registry" in spec:
        for key, value in MODEL_REGISTRY.items():
            spec["registry"].setdefault(key, value)
    for notification in spec.setdefault("notifications", []):
        if "webhook" in notification:  # the other kinds' defaults stay in the typed model (build.py)
            notification["webhook"].setdefault("format", WEBHOOK_FORMAT)
    # Only where hooks are written: a policy without them keeps its document (and fingerprint).
    for phase, calls in spec.get("hooks", {}).items():
        for i, call in enumerate(calls):
            call.setdefault("name", f"{phase}-{i + 1}")
            for key, value in HOOK_CALL.items():
                call.setdefault(key, value)
    return d


def _fill(spec: dict[str, Any], section: str) -> None:
    values = spec.setdefault(section, {})
    for key in SPEC[section]:
        values.setdefault(key, default(section, key))
