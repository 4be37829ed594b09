"""The typed policy (core/model.py) built from a valid document with its defaults filled in,
and the policy part of a ModelRollout read back from the apiserver."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from mesh_canary.checks import REGISTRY
from mesh_canary.checks.base import milliseconds
from mesh_canary.core.durations import parse_duration
from mesh_canary.core.model import (
    HOOK_FIELDS,
    PAGERDUTY_EVENTS_URL,
    AnalysisSpec,
    BlueGreenSpec,
    CanarySpec,
    Check,
    Destination,
    HookCall,
    HookHeader,
    Hooks,
    MetricsSpec,
    Policy,
    RegistrySpec,
    RouteRef,
    VersionSpec,
    Webhook,
)
from mesh_canary.core.policy.defaults import WEBHOOK_FORMAT, with_defaults
from mesh_canary.core.policy.problems import PolicyError
from mesh_canary.core.policy.rules import validate_document
from mesh_canary.core.policy.source import parse_and_validate


def _destination(d: dict[str, Any]) -> Destination:
    return Destination(host=d["host"], subset=d.get("subset"), port=d.get("port"))


def _version(d: dict[str, Any]) -> VersionSpec:
    return VersionSpec(
        destination=_destination(d["destination"]),
        version=d["version"],
        metrics_version=d["metricsVersion"],
        model=d.get("model"),
    )


def _registry(d: dict[str, Any] | None) -> RegistrySpec | None:
    if d is None:
        return None
    return RegistrySpec(
        tracking_uri=d["trackingUri"],
        provider=d["provider"],
        alias=d["alias"],
        timeout_s=parse_duration(d["timeout"]),
        token_from_env=d.get("tokenFromEnv"),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check(d: dict[str, Any]) -> Check:
    latency_ms = REGISTRY[d["metric"]].takes_duration(d)

    def bound(key: str) -> float | None:
        value = d.get(key)
        if value is None:
            return None
        return milliseconds(value) if latency_ms else float(value)

    slower = d.get("slowerThan")
    return Check(
        metric=d["metric"],
        name=d["name"],
        quantile=_opt_float(d.get("quantile")),
        slower_than_ms=None if slower is None else milliseconds(slower),
        max=bound("max"),
        min=_opt_float(d.get("min")),
        max_increase=bound("maxIncrease"),
        max_increase_ratio=_opt_float(d.get("maxIncreaseRatio")),
        max_decrease=_opt_float(d.get("maxDecrease")),
        min_labeled=None if d.get("minLabeled") is None else int(d["minLabeled"]),
        class_=d.get("class"),
        feature=d.get("feature"),
        max_psi=_opt_float(d.get("maxPSI")),
        max_deviation=_opt_float(d.get("maxDeviation")),
        query=d.get("query"),
    )


def _webhook(d: dict[str, Any]) -> Webhook:
    url_from = d.get("urlFrom", {})
    secret = url_from.get("secretKeyRef")
    return Webhook(
        url=d.get("url"),
        url_from_env=url_from.get("env"),
        url_from_secret=None if secret is None else {"name": secret["name"], "key": secret["key"]},
        format=d.get("format", WEBHOOK_FORMAT),
    )


def _notification(item: dict[str, Any]) -> Webhook:
    """One `spec.notifications` item. Defaults not written in the document live in the typed
    model (Webhook's fields): filling them in would change the fingerprint of a rollout saved
    before they existed, and restart it."""
    (kind,) = [k for k in item if k not in ("events", "timeout")]
    d = item[kind]
    target = _webhook(d)
    extra: dict[str, Any] = {"kind": kind}
    if "events" in item:
        extra["events"] = tuple(item["events"])
    if "timeout" in item:
        extra["timeout_s"] = parse_duration(item["timeout"])
    if kind == "pagerduty":
        key_from = d["routingKeyFrom"]
        secret = key_from.get("secretKeyRef")
        extra.update(
            url=d.get("url", PAGERDUTY_EVENTS_URL),
            key_from_env=key_from.get("env"),
            key_from_secret=None if secret is None else {"name": secret["name"], "key": secret["key"]},
        )
        if "severity" in d:
            extra["severity"] = d["severity"]
    return dataclasses.replace(target, **extra)


def _value_from(d: dict[str, Any]) -> tuple[str | None, dict[str, str] | None]:
    """(env, {name, key}) of a ``urlFrom`` / ``valueFrom``; (None, None) when absent."""
    secret = d.get("secretKeyRef")
    return d.get("env"), None if secret is None else {"name": secret["name"], "key": secret["key"]}


def _hook_call(d: dict[str, Any]) -> HookCall:
    env, secret = _value_from(d.get("urlFrom", {}))
    headers = []
    for h in d.get("headers", ()):
        h_env, h_secret = _value_from(h.get("valueFrom", {}))
        headers.append(HookHeader(h["name"], h.get("value"), h_env, h_secret))
    return HookCall(
        name=d["name"],
        url=d.get("url"),
        url_from_env=env,
        url_from_secret=secret,
        method=d["method"],
        headers=tuple(headers),
        body=d.get("body"),
        timeout_s=parse_duration(d["timeout"]),
        retries=int(d["retries"]),
    )


def _hooks(d: dict[str, Any]) -> Hooks:
    return Hooks(
        **{field: tuple(_hook_call(c) for c in d.get(phase, ())) for phase, field in HOOK_FIELDS.items()}
    )


def _policy(d: dict[str, Any]) -> Policy:
    spec = d["spec"]
    canary, blue_green, analysis, metrics = (
        spec["canary"],
        spec["blueGreen"],
        spec["analysis"],
        spec["metrics"],
    )
    fallback = spec.get("fallback")
    watch = (
        {}
        if "watchAfterRollback" not in (fallback or {})
        else {"fallback_watch_s": parse_duration(fallback["watchAfterRollback"])}
    )
    return Policy(
        **watch,
        name=d["metadata"]["name"],
        namespace=d["metadata"]["namespace"],
        route=_route_ref(spec),
        stable=_version(spec["stable"]),
        candidate=_version(spec["candidate"]),
        fallback=None if fallback is None else _destination(fallback["destination"]),
        strategy=spec["strategy"],
        canary=CanarySpec(
            steps=tuple(canary["steps"]),
            min_step_duration_s=parse_duration(canary["minStepDuration"]),
            max_step_duration_s=parse_duration(canary["maxStepDuration"]),
        ),
        blue_green=BlueGreenSpec(
            mirror_percent=int(blue_green["mirrorPercent"]),
            preview_duration_s=parse_duration(blue_green["previewDuration"]),
            post_switch_window_s=parse_duration(blue_green["postSwitchWindow"]),
            holdback_percent=int(blue_green["holdbackPercent"]),
        ),
        analysis=AnalysisSpec(
            interval_s=parse_duration(analysis["interval"]),
            confidence=float(analysis["confidence"]),
            min_requests=int(analysis["minRequests"]),
            no_data_timeout_s=parse_duration(analysis["noDataTimeout"]),
            checks=tuple(_check(c) for c in analysis["checks"]),
            on_timeout=analysis["onTimeout"],
            promotion=analysis["promotion"],
            burst_duration_s=parse_duration(analysis["burstDuration"]),
        ),
        metrics=MetricsSpec(
            provider=metrics["provider"],
            profile=metrics["profile"],
            address=metrics["address"],
            version_label=metrics["versionLabel"],
            model_version_label=metrics["modelVersionLabel"],
            timeout_s=parse_duration(metrics["timeout"]),
            variables=dict(metrics["variables"]),
        ),
        approval=spec["gates"]["approval"],
        notifications=tuple(_notification(n) for n in spec["notifications"]),
        hooks=_hooks(spec.get("hooks", {})),
        document=d,
        registry=_registry(spec.get("registry")),
    )


def resource_document(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The policy part of a ModelRollout read back from the apiserver.

    Drops what the apiserver adds (status, uid, resourceVersion, managedFields, ...), which
    the policy's schema would reject as unknown fields.
    """
    metadata = resource.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    kept = {
        k: copy.deepcopy(metadata[k]) for k in ("name", "namespace", "labels", "annotations") if k in metadata
    }
    doc: dict[str, Any] = {
        k: copy.deepcopy(resource[k]) for k in ("apiVersion", "kind", "spec") if k in resource
    }
    doc["metadata"] = kept
    return doc


def load_policy(doc: dict[str, Any]) -> Policy:
    """The typed policy, with every default filled in; raises PolicyError listing every problem."""
    problems = validate_document(doc)
    if problems:
        raise PolicyError(problems)
    return _policy(with_defaults(doc))


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse and load a policy from YAML text; raises PolicyError listing every problem."""
    data, problems = parse_and_validate(text, source)
    if problems:
        raise PolicyError(problems)
    return _policy(with_defaults(data))


def _route_ref(spec: dict[str, Any]) -> RouteRef:
    """The route mesh-canary writes: spec.route (any registered kind) or spec.virtualService."""
    if "route" in spec:
        r = spec["route"]
        return RouteRef(r["name"], r["namespace"], tuple(r["rules"]), r["kind"])
    vs = spec["virtualService"]
    return RouteRef(vs["name"], vs["namespace"], tuple(vs["routes"]))
