"""TrafficRouter for the Gateway API: writes the weights into an HTTPRoute's backendRefs.

``gateway.networking.k8s.io/v1`` HTTPRoute, the routing API that Istio, Linkerd, Envoy
Gateway and Cilium implement. The pure half (`Backends`, `apply_weights`, `read_weights`,
`drift`) computes a copy of the HTTPRoute in which only the managed rules' stable/candidate
(/fallback) ``backendRefs[].weight`` and the candidate's ``RequestMirror`` filter differ;
everything else (matches, filters, parentRefs, fields this module does not know) is carried
over untouched. The router half is the shared Kubernetes guard (:mod:`.kube_route`):
read-then-replace with the resourceVersion, 409 as `GatewayConflict`, compare-and-swap on
forward writes, the owner annotation and the rollback record in the same write.

A rule is managed when the policy names it (``spec.route.rules``: a rule's ``name`` or its
index) or, with no names, when its backendRefs are exactly stable + candidate (+ fallback).
A policy destination is a Service: ``host`` is its name (``name.namespace[.svc...]`` for
another namespace than the HTTPRoute's) and ``port`` its port; subsets do not exist here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import kubernetes.client

from mesh_canary.core.model import Destination, Policy
from mesh_canary.core.weights import Weights
from mesh_canary.routing.base import RouteConflict, RouteNotFound, RouterError, percentages
from mesh_canary.routing.kube_route import KubeRouteRouter

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"
KIND = "HTTPRoute"

Role = Literal["stable", "candidate", "fallback"]

__all__ = [
    "Backends",
    "GatewayConflict",
    "GatewayNotFound",
    "GatewayRouter",
    "GatewayRouterError",
    "HTTPRoutePatchError",
    "apply_weights",
    "drift",
    "read_weights",
]


class HTTPRoutePatchError(ValueError):
    """The HTTPRoute cannot be patched as the policy asks (a configuration error)."""


class GatewayRouterError(RouterError):
    """The HTTPRoute could not be read or written."""


class GatewayConflict(GatewayRouterError, RouteConflict):
    """HTTP 409: the HTTPRoute changed between our read and our write."""


class GatewayNotFound(GatewayRouterError, RouteNotFound):
    """HTTP 404: there is no such HTTPRoute."""


# --------------------------------------------------------------------------- pure patching


@dataclass(frozen=True)
class Service:
    """A backendRef's target: a core Service by name, namespace and (optional) port."""

    name: str
    namespace: str | None  # None: the HTTPRoute's own namespace
    port: int | None = None

    @classmethod
    def of(cls, dest: Destination) -> Service:
        parts = dest.host.split(".")
        return cls(parts[0], parts[1] if len(parts) > 1 else None, dest.port)

    def matches(self, ref: Mapping[str, Any], route_ns: str) -> bool:
        if (ref.get("group") or "") != "" or (ref.get("kind") or "Service") != "Service":
            return False
        if ref.get("name") != self.name or (ref.get("namespace") or route_ns) != (self.namespace or route_ns):
            return False
        return self.port is None or ref.get("port") == self.port

    def backend_ref(self, weight: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace is not None:
            out["namespace"] = self.namespace
        if self.port is not None:
            out["port"] = self.port
        return out if weight is None else {**out, "weight": weight}

    def __str__(self) -> str:
        text = self.name if self.namespace is None else f"{self.name}.{self.namespace}"
        return text if self.port is None else f"{text} port {self.port}"


@dataclass(frozen=True)
class Backends:
    """What the policy says about the HTTPRoute: which rules, which Services."""

    stable: Service
    candidate: Service
    fallback: Service | None = None
    rules: tuple[str | int, ...] = ()  # empty: detect by backends

    @classmethod
    def from_policy(cls, policy: Policy) -> Backends:
        fallback = None if policy.fallback is None else Service.of(policy.fallback)
        return cls(
            Service.of(policy.stable.destination),
            Service.of(policy.candidate.destination),
            fallback,
            tuple(policy.route.routes),
        )

    def role_of(self, ref: Mapping[str, Any], route_ns: str) -> Role | None:
        for role, service in (
            ("stable", self.stable),
            ("candidate", self.candidate),
            ("fallback", self.fallback),
        ):
            if service is not None and service.matches(ref, route_ns):
                return role  # type: ignore[return-value]
        return None


def _where(route: Mapping[str, Any]) -> tuple[str, str]:
    meta = route.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    return namespace, f"HTTPRoute {namespace}/{meta.get('name', '?')}"


def _rules(route: Mapping[str, Any]) -> list[Any]:
    rules = (route.get("spec") or {}).get("rules")
    return rules if isinstance(rules, list) else []


def _label(rule: Mapping[str, Any], index: int) -> str:
    return str(rule["name"]) if rule.get("name") else f"rules[{index}]"


def _roles(rule: Mapping[str, Any], backends: Backends, ns: str) -> list[Role | None]:
    return [backends.role_of(ref, ns) for ref in rule.get("backendRefs") or []]


def _pick(rules: list[Any], wanted: str | int, where: str) -> int:
    if isinstance(wanted, int):
        if wanted >= len(rules):
            raise HTTPRoutePatchError(f"{where} has {len(rules)} rules; there is no rules[{wanted}].")
        return wanted
    names = [rule.get("name") for rule in rules]
    if wanted not in names:
        known = ", ".join(repr(n) for n in names if n) or "none are named"
        raise HTTPRoutePatchError(f"{where} has no rule named {wanted!r} (rules: {known}).")
    return names.index(wanted)


def managed_rule_indexes(route: Mapping[str, Any], backends: Backends) -> list[int]:
    """Indexes into ``spec.rules`` of the rules mesh-canary manages; raises when there are none."""
    rules = _rules(route)
    ns, where = _where(route)
    if not backends.rules:
        found = [i for i, rule in enumerate(rules) if _exactly_ours(_roles(rule, backends, ns))]
        if not found:
            raise HTTPRoutePatchError(
                f"{where} has no rule whose backendRefs are exactly the stable ({backends.stable}) and "
                f"candidate ({backends.candidate}) Services; name the rules to manage in spec.route.rules."
            )
        return found
    indexes = []
    for wanted in backends.rules:
        index = _pick(rules, wanted, where)
        label, roles = _label(rules[index], index), _roles(rules[index], backends, ns)
        if "stable" not in roles:
            raise HTTPRoutePatchError(
                f"rule {label!r} of {where} has no backendRef to the stable Service {backends.stable}."
            )
        if None in roles:
            raise HTTPRoutePatchError(
                f"rule {label!r} of {where} also routes to a backend that is neither the stable, the candidate "
                "nor the fallback Service of the policy."
            )
        if len(roles) != len(set(roles)):
            raise HTTPRoutePatchError(f"rule {label!r} of {where} lists the same backend twice.")
        indexes.append(index)
    return indexes


def _exactly_ours(roles: list[Role | None]) -> bool:
    return None not in roles and len(roles) == len(set(roles)) and {"stable", "candidate"} <= set(roles)


def _set_rule_weights(rule: dict[str, Any], backends: Backends, ns: str, weights: Weights) -> None:
    refs: list[dict[str, Any]] = rule.setdefault("backendRefs", [])
    wanted: dict[Role, int] = {"stable": weights.stable, "candidate": weights.candidate}
    if backends.fallback is not None:
        wanted["fallback"] = weights.fallback
    seen = {backends.role_of(ref, ns): ref for ref in refs}
    for role, weight in wanted.items():
        if role in seen:
            seen[role]["weight"] = weight
        elif weight > 0 or role == "candidate":
            # A named rule that starts with only the stable backend gains the candidate (and the
            # fallback once it takes traffic); nothing else about the rule changes.
            service = backends.candidate if role == "candidate" else backends.fallback
            assert service is not None
            refs.append(service.backend_ref(weight))
    _set_rule_mirror(rule, backends, ns, weights.mirror_percent)


def _is_our_mirror(f: Any, backends: Backends, ns: str) -> bool:
    mirror = f.get("requestMirror") if isinstance(f, Mapping) and f.get("type") == "RequestMirror" else None
    return isinstance(mirror, Mapping) and backends.candidate.matches(mirror.get("backendRef") or {}, ns)


def _set_rule_mirror(rule: dict[str, Any], backends: Backends, ns: str, percent: int) -> None:
    found = rule.get("filters")
    filters: list[Any] = found if isinstance(found, list) else []
    ours = [f for f in filters if _is_our_mirror(f, backends, ns)]
    if percent > 0:
        if ours:
            ours[0]["requestMirror"]["percent"] = percent
        else:
            mirror = {"backendRef": backends.candidate.backend_ref(), "percent": percent}
            rule["filters"] = [*filters, {"type": "RequestMirror", "requestMirror": mirror}]
    elif ours:
        kept = [f for f in filters if not any(f is o for o in ours)]
        if kept:
            rule["filters"] = kept
        else:
            del rule["filters"]


def apply_weights(route: Mapping[str, Any], backends: Backends, weights: Weights) -> dict[str, Any]:
    """A copy of ``route`` whose managed rules carry ``weights``; nothing else differs."""
    if weights.fallback > 0 and backends.fallback is None:
        raise HTTPRoutePatchError("the weights send traffic to a fallback, but the policy names none.")
    new = copy.deepcopy(dict(route))
    ns, _ = _where(new)
    rules = _rules(new)
    for index in managed_rule_indexes(new, backends):
        _set_rule_weights(rules[index], backends, ns, weights)
    return new


def _rule_weights(rule: Mapping[str, Any], backends: Backends, ns: str, label: str) -> Weights:
    raw: list[tuple[Role, int]] = []
    for ref in rule.get("backendRefs") or []:
        role = backends.role_of(ref, ns)
        if role is not None:
            raw.append((role, int(ref.get("weight", 1))))  # the API's default weight is 1
    pct = percentages(raw)
    if not pct:
        raise HTTPRoutePatchError(f"rule {label!r} gives no traffic to any backend of the policy.")
    mirror = 0
    for f in rule.get("filters") or []:
        if _is_our_mirror(f, backends, ns):
            mirror = int(f["requestMirror"].get("percent", 100))
    return Weights(pct.get("stable", 0), pct.get("candidate", 0), pct.get("fallback", 0), mirror)


def read_rule_weights(route: Mapping[str, Any], backends: Backends) -> list[tuple[str, Weights]]:
    """``(rule label, weights)`` of every managed rule, in ``spec.rules`` order."""
    rules, (ns, _) = _rules(route), _where(route)
    out = []
    for index in managed_rule_indexes(route, backends):
        label = _label(rules[index], index)
        out.append((label, _rule_weights(rules[index], backends, ns, label)))
    return out


def read_weights(route: Mapping[str, Any], backends: Backends) -> Weights:
    """The weights in force: those of the first managed rule (see `drift` for disagreements)."""
    return read_rule_weights(route, backends)[0][1]


def _show(w: Weights) -> str:
    text = f"stable={w.stable} candidate={w.candidate}"
    text += f" fallback={w.fallback}" if w.fallback else ""
    return text + (f" mirror={w.mirror_percent}%" if w.mirror_percent else "")


def drift(route: Mapping[str, Any], backends: Backends, expected: Weights) -> str | None:
    """A sentence naming the first managed rule whose live weights differ from ``expected``."""
    _, where = _where(route)
    for label, weights in read_rule_weights(route, backends):
        if weights != expected:
            return (
                f"{where} rule {label!r} carries {_show(weights)}, not the {_show(expected)} that "
                "mesh-canary wrote; someone else changed it (a GitOps sync?)."
            )
    return None


# --------------------------------------------------------------------------- the router


class GatewayRouter(KubeRouteRouter):
    """Reads and writes stable/candidate (and fallback) weights and the mirror of one HTTPRoute."""

    GROUP, VERSION, PLURAL, KIND = GROUP, VERSION, PLURAL, KIND
    Error, Conflict, NotFound = GatewayRouterError, GatewayConflict, GatewayNotFound

    def __init__(self, policy: Policy, api_client: kubernetes.client.ApiClient, **options: Any) -> None:
        super().__init__(policy, api_client, **options)
        self.backends = Backends.from_policy(policy)

    def weights_of(self, obj: dict[str, Any]) -> Weights:
        return read_weights(obj, self.backends)

    def with_weights(self, obj: dict[str, Any], weights: Weights) -> dict[str, Any]:
        return apply_weights(obj, self.backends, weights)

    def drift_of(self, obj: dict[str, Any], expected: Weights) -> str | None:
        try:
            return drift(obj, self.backends, expected)
        except HTTPRoutePatchError as e:
            return f"{self.ref} no longer has the rules mesh-canary manages: {e}"
