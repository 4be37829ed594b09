"""Pure VirtualService weight patching: no I/O, plain dicts in, plain dicts out.

Given the VirtualService object as the API returned it and the weights to write, find the
http routes that mesh-canary manages and return a copy in which only their destination
weights (and, for blue/green shadow traffic, the mirror of the candidate) differ. Every
other route, match, retry, timeout, header and any field this module does not know about
is carried over untouched, so a write never undoes someone else's configuration.

A route is managed when it is named in the policy (``spec.virtualService.routes``) or,
when no names are given, when its destinations are exactly stable + candidate (+ the
fallback). Hosts compare the way Istio resolves them: a short name (no dot) means
``<name>.<namespace of the VirtualService>.svc.cluster.local``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mesh_canary.core.model import Destination, Policy
from mesh_canary.core.weights import Weights
from mesh_canary.errors import CouldNotWork
from mesh_canary.routing.base import percentages

Role = Literal["stable", "candidate", "fallback"]


class VirtualServicePatchError(CouldNotWork, ValueError):
    """The VirtualService cannot be patched as the policy asks (a configuration error)."""


@dataclass(frozen=True)
class RouteTargets:
    """What the policy says about the VirtualService: which routes, which destinations."""

    stable: Destination
    candidate: Destination
    fallback: Destination | None = None
    route_names: tuple[str, ...] = ()  # empty: detect by destinations

    @classmethod
    def from_policy(cls, policy: Policy) -> RouteTargets:
        return cls(
            stable=policy.stable.destination,
            candidate=policy.candidate.destination,
            fallback=policy.fallback,
            route_names=tuple(str(r) for r in policy.route.routes),
        )


@dataclass(frozen=True)
class RouteWeights:
    """The weights one managed route carries, as percentages of that route's traffic."""

    route: str  # the route's name, or ``http[i]`` when it has none
    weights: Weights


def fqdn(host: str, namespace: str) -> str:
    """Istio's reading of a destination host written in a VirtualService of ``namespace``."""
    if "." in host or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.cluster.local"


def describe(dest: Destination) -> str:
    text = dest.host if dest.subset is None else f"{dest.host} subset {dest.subset}"
    return text if dest.port is None else f"{text} port {dest.port}"


def _namespace(vs: Mapping[str, Any]) -> str:
    return str(vs.get("metadata", {}).get("namespace") or "default")


def _vs_name(vs: Mapping[str, Any]) -> str:
    meta = vs.get("metadata", {})
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '?')}"


def _route_label(route: Mapping[str, Any], index: int) -> str:
    return str(route["name"]) if route.get("name") else f"http[{index}]"


def _matches(dest: Mapping[str, Any], want: Destination, namespace: str) -> bool:
    if fqdn(str(dest.get("host", "")), namespace) != fqdn(want.host, namespace):
        return False
    if dest.get("subset") != want.subset:  # host-based policy: the route must not pick a subset
        return False
    port = (dest.get("port") or {}).get("number")
    return want.port is None or port == want.port


def _role_of(dest: Mapping[str, Any], targets: RouteTargets, namespace: str) -> Role | None:
    if _matches(dest, targets.stable, namespace):
        return "stable"
    if _matches(dest, targets.candidate, namespace):
        return "candidate"
    if targets.fallback is not None and _matches(dest, targets.fallback, namespace):
        return "fallback"
    return None


def _roles(route: Mapping[str, Any], targets: RouteTargets, namespace: str) -> list[Role | None]:
    return [
        _role_of(entry.get("destination") or {}, targets, namespace) for entry in route.get("route") or []
    ]


def _is_exactly_ours(route: Mapping[str, Any], targets: RouteTargets, namespace: str) -> bool:
    roles = _roles(route, targets, namespace)
    if None in roles or len(roles) != len(set(roles)):
        return False
    return {"stable", "candidate"} <= set(roles)


def _http(vs: Mapping[str, Any]) -> list[Any]:
    http = (vs.get("spec") or {}).get("http")
    return http if isinstance(http, list) else []


def managed_route_indexes(vs: Mapping[str, Any], targets: RouteTargets) -> list[int]:
    """Indexes into ``spec.http`` of the routes mesh-canary manages; raises when there are none."""
    http = _http(vs)
    namespace = _namespace(vs)
    if targets.route_names:
        names = [route.get("name") for route in http]
        indexes = []
        for wanted in targets.route_names:
            if wanted not in names:
                known = ", ".join(repr(n) for n in names if n) or "none are named"
                raise VirtualServicePatchError(
                    f"VirtualService {_vs_name(vs)} has no http route named {wanted!r} (routes: {known})."
                )
            index = names.index(wanted)
            roles = _roles(http[index], targets, namespace)
            if "stable" not in roles:
                raise VirtualServicePatchError(
                    f"http route {wanted!r} of VirtualService {_vs_name(vs)} does not route to the "
                    f"stable destination {describe(targets.stable)}."
                )
            stray = [
                entry.get("destination", {}).get("host")
                for entry, role in zip(http[index].get("route") or [], roles, strict=True)
                if role is None
            ]
            if stray:
                raise VirtualServicePatchError(
                    f"http route {wanted!r} of VirtualService {_vs_name(vs)} also routes to {stray[0]}, which is "
                    "neither the stable, the candidate nor the fallback destination of the policy."
                )
            if len(roles) != len(set(roles)):
                raise VirtualServicePatchError(
                    f"http route {wanted!r} of VirtualService {_vs_name(vs)} lists the same destination twice."
                )
            indexes.append(index)
        return indexes
    indexes = [i for i, route in enumerate(http) if _is_exactly_ours(route, targets, namespace)]
    if not indexes:
        raise VirtualServicePatchError(
            f"VirtualService {_vs_name(vs)} has no http route whose destinations are exactly the stable "
            f"({describe(targets.stable)}) and candidate ({describe(targets.candidate)}) destinations; "
            "name the routes to manage in spec.virtualService.routes."
        )
    return indexes


def _destination_dict(dest: Destination) -> dict[str, Any]:
    out: dict[str, Any] = {"host": dest.host}
    if dest.subset is not None:
        out["subset"] = dest.subset
    if dest.port is not None:
        out["port"] = {"number": dest.port}
    return out


def _set_route_weights(
    route: dict[str, Any], targets: RouteTargets, namespace: str, weights: Weights
) -> None:
    entries: list[dict[str, Any]] = route.setdefault("route", [])
    wanted: dict[Role, int] = {"stable": weights.stable, "candidate": weights.candidate}
    if targets.fallback is not None:
        wanted["fallback"] = weights.fallback
    seen: dict[Role, dict[str, Any]] = {}
    for entry in entries:
        role = _role_of(entry.get("destination") or {}, targets, namespace)
        if role is not None:
            seen[role] = entry
    for role, weight in wanted.items():
        if role in seen:
            seen[role]["weight"] = weight
        elif weight > 0 or role == "candidate":
            # A named route that starts with only the stable destination gains the candidate
            # (and the fallback once it takes traffic); nothing else about the route changes.
            dest = targets.candidate if role == "candidate" else targets.fallback
            assert dest is not None
            entries.append({"destination": _destination_dict(dest), "weight": weight})
    _set_route_mirror(route, targets, namespace, weights.mirror_percent)


def _set_route_mirror(route: dict[str, Any], targets: RouteTargets, namespace: str, percent: int) -> None:
    mirrors = route.get("mirrors")
    if isinstance(mirrors, list) and mirrors:
        # Newer list form: manage only the entry that mirrors to the candidate.
        ours = [m for m in mirrors if _matches(m.get("destination") or {}, targets.candidate, namespace)]
        if percent > 0:
            if ours:
                ours[0]["percentage"] = {"value": float(percent)}
            else:
                mirrors.append(
                    {
                        "destination": _destination_dict(targets.candidate),
                        "percentage": {"value": float(percent)},
                    }
                )
        else:
            route["mirrors"] = [m for m in mirrors if not any(m is o for o in ours)]
            if not route["mirrors"]:
                del route["mirrors"]
        return
    current = route.get("mirror")
    ours_now = isinstance(current, Mapping) and _matches(current, targets.candidate, namespace)
    if current is not None and not ours_now:
        if percent > 0:
            raise VirtualServicePatchError(
                f"http route {route.get('name', '?')!r} already mirrors to {current.get('host')}; "
                "mesh-canary will not replace a mirror it does not manage."
            )
        return  # someone else's mirror: not ours to touch
    if percent > 0:
        route["mirror"] = (
            dict(current)
            if ours_now and isinstance(current, Mapping)
            else _destination_dict(targets.candidate)
        )
        route["mirrorPercentage"] = {"value": float(percent)}
        # The deprecated integer forms would contradict mirrorPercentage.
        route.pop("mirrorPercent", None)
        route.pop("mirror_percent", None)
    elif ours_now:
        for key in ("mirror", "mirrorPercentage", "mirrorPercent", "mirror_percent"):
            route.pop(key, None)


def apply_weights(vs: Mapping[str, Any], targets: RouteTargets, weights: Weights) -> dict[str, Any]:
    """A copy of ``vs`` whose managed routes carry ``weights``; nothing else differs."""
    if weights.fallback > 0 and targets.fallback is None:
        raise VirtualServicePatchError("the weights send traffic to a fallback, but the policy names none.")
    new = copy.deepcopy(dict(vs))
    namespace = _namespace(new)
    http = _http(new)
    for index in managed_route_indexes(new, targets):
        _set_route_weights(http[index], targets, namespace, weights)
    return new


def _route_weights(route: Mapping[str, Any], targets: RouteTargets, namespace: str, label: str) -> Weights:
    entries = route.get("route") or []
    raw: list[tuple[Role, int]] = []
    for entry in entries:
        role = _role_of(entry.get("destination") or {}, targets, namespace)
        # A lone destination without a weight takes all the traffic (Istio's rule).
        weight = entry.get("weight", 100 if len(entries) == 1 else 0)
        if role is not None:
            raw.append((role, int(weight or 0)))
    pct = percentages(raw)
    if not pct:
        raise VirtualServicePatchError(
            f"http route {label!r} gives no traffic to any destination of the policy."
        )
    mirror_percent = 0
    mirror = route.get("mirror")
    if isinstance(mirror, Mapping) and _matches(mirror, targets.candidate, namespace):
        value = (route.get("mirrorPercentage") or {}).get("value")
        if value is None:
            value = route.get("mirrorPercent", route.get("mirror_percent", 100))
        mirror_percent = round(float(value))
    for entry in route.get("mirrors") or []:
        if _matches(entry.get("destination") or {}, targets.candidate, namespace):
            mirror_percent = round(float((entry.get("percentage") or {}).get("value", 100.0)))
    return Weights(
        stable=pct.get("stable", 0),
        candidate=pct.get("candidate", 0),
        fallback=pct.get("fallback", 0),
        mirror_percent=mirror_percent,
    )


def read_route_weights(vs: Mapping[str, Any], targets: RouteTargets) -> list[RouteWeights]:
    """The weights on every managed route, in ``spec.http`` order."""
    http = _http(vs)
    namespace = _namespace(vs)
    out = []
    for index in managed_route_indexes(vs, targets):
        label = _route_label(http[index], index)
        out.append(RouteWeights(route=label, weights=_route_weights(http[index], targets, namespace, label)))
    return out


def read_weights(vs: Mapping[str, Any], targets: RouteTargets) -> Weights:
    """The weights in force: those of the first managed route (see `drift` for disagreements)."""
    return read_route_weights(vs, targets)[0].weights


def _show(w: Weights) -> str:
    text = f"stable={w.stable} candidate={w.candidate}"
    if w.fallback:
        text += f" fallback={w.fallback}"
    if w.mirror_percent:
        text += f" mirror={w.mirror_percent}%"
    return text


def drift(vs: Mapping[str, Any], targets: RouteTargets, expected: Weights) -> str | None:
    """A sentence naming the first managed route whose live weights differ from ``expected``."""
    for rw in read_route_weights(vs, targets):
        if rw.weights != expected:
            return (
                f"VirtualService {_vs_name(vs)} route {rw.route!r} carries {_show(rw.weights)}, not the "
                f"{_show(expected)} that mesh-canary wrote; someone else changed it (a GitOps sync?)."
            )
    return None


def without_managed_weights(vs: Mapping[str, Any], targets: RouteTargets) -> str:
    """Canonical JSON of ``vs`` with the managed weights and the candidate's mirror left out.

    Two objects that differ only in what `apply_weights` may change give the same text.
    """
    clone = copy.deepcopy(dict(vs))
    namespace = _namespace(clone)
    http = _http(clone)
    for index in managed_route_indexes(clone, targets):
        route = http[index]
        for entry in route.get("route") or []:
            if _role_of(entry.get("destination") or {}, targets, namespace) is not None:
                entry.pop("weight", None)
        mirror = route.get("mirror")
        if isinstance(mirror, Mapping) and _matches(mirror, targets.candidate, namespace):
            for key in ("mirror", "mirrorPercentage", "mirrorPercent", "mirror_percent"):
                route.pop(key, None)
        if isinstance(route.get("mirrors"), list):
            route["mirrors"] = [
                m
                for m in route["mirrors"]
                if not _matches(m.get("destination") or {}, targets.candidate, namespace)
            ]
            if not route["mirrors"]:
                del route["mirrors"]
    return json.dumps(clone, sort_keys=True)
