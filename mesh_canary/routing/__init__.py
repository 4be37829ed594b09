"""Traffic routers: one module per router, one line per router in ``ROUTERS``.

A router implements :class:`mesh_canary.protocols.TrafficRouter` (``set_weights`` /
``get_weights``) for one routing API, and keeps the guards of :mod:`.base` (route
ownership, outside changes, the rollback record). The wiring (``mesh_canary.run.wiring``)
and the controller build routers only through :func:`router_for`, so a new router is its
module plus one line here.

Each entry also names the Kubernetes kind of the routing object it writes: a policy's route
reference (``spec.route.kind``) picks its router with :func:`router_for_route`.

- ``istio``: an Istio VirtualService through the Kubernetes API (:mod:`.istio`, its
  patching in :mod:`.istio_patch`).
- ``gateway-api``: a Gateway API HTTPRoute's backendRefs weights (:mod:`.gateway`).
- ``kserve``: a KServe InferenceService's ``canaryTrafficPercent`` (:mod:`.kserve`).
- ``local``: the embedded local mesh's Envoy runtime (:mod:`.local`).

The guards every Kubernetes router shares are in :mod:`.kube_route`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mesh_canary.core.model import Policy
from mesh_canary.protocols import TrafficRouter

__all__ = [
    "ROUTERS",
    "Router",
    "RouterFactory",
    "RouterTarget",
    "route_kinds",
    "router_for",
    "router_for_route",
    "router_name_for",
]


@dataclass(frozen=True)
class RouterTarget:
    """What a router needs besides the policy: where it writes."""

    api_client: Any = None  # a kubernetes ApiClient, for routers that write cluster resources
    envoy_admin_url: str | None = None  # the local mesh's Envoy admin address
    # The controller's watch caches: (group, version, plural) -> a protocols.ObjectCache
    # (or None), looked at instead of a GET when a router only checks the live weights.
    caches: Any = None


class RouterFactory(Protocol):
    def __call__(self, policy: Policy, target: RouterTarget, /) -> TrafficRouter: ...


@dataclass(frozen=True)
class Router:
    build: RouterFactory
    kind: str | None = None  # the Kubernetes kind it writes ("VirtualService"); None: no cluster object


# Each factory imports its module when called: the kubernetes client is slow to import, and
# the local router must not be loaded by commands that never touch Envoy.
def _istio(policy: Policy, target: RouterTarget) -> TrafficRouter:
    from mesh_canary.routing.istio import IstioRouter

    return IstioRouter(policy, target.api_client, caches=target.caches)


def _gateway(policy: Policy, target: RouterTarget) -> TrafficRouter:
    from mesh_canary.routing.gateway import GatewayRouter

    return GatewayRouter(policy, target.api_client, caches=target.caches)


def _kserve(policy: Policy, target: RouterTarget) -> TrafficRouter:
    from mesh_canary.routing.kserve import KServeRouter

    return KServeRouter(policy, target.api_client)


def _local(policy: Policy, target: RouterTarget) -> TrafficRouter:
    from mesh_canary.routing.local import LocalRouter

    if target.envoy_admin_url is None:
        raise ValueError("the local router needs the local mesh's Envoy admin address")
    return LocalRouter(
        target.envoy_admin_url, policy.stable.metrics_version, policy.candidate.metrics_version
    )


ROUTERS: dict[str, Router] = {
    "istio": Router(_istio, "VirtualService"),
    "gateway-api": Router(_gateway, "HTTPRoute"),
    "kserve": Router(_kserve, "InferenceService"),
    "local": Router(_local),
}


def router_for(kind: str, policy: Policy, target: RouterTarget) -> TrafficRouter:
    """The router of ``kind`` for ``policy``; ValueError naming the known kinds otherwise."""
    entry = ROUTERS.get(kind)
    if entry is None:
        raise ValueError(f"no router {kind!r}; known routers: {', '.join(sorted(ROUTERS))}")
    return entry.build(policy, target)


def route_kinds() -> dict[str, str]:
    """Routing-object kind -> the name of the router that writes it."""
    return {entry.kind: name for name, entry in ROUTERS.items() if entry.kind is not None}


def router_name_for(policy: Policy) -> str:
    """The router for the policy's route reference ("istio" for a VirtualService, ...)."""
    name = route_kinds().get(policy.route.kind)
    if name is None:
        raise ValueError(
            f"no router writes a {policy.route.kind}; known kinds: {', '.join(sorted(route_kinds()))}"
        )
    return name


def router_for_route(policy: Policy, target: RouterTarget) -> TrafficRouter:
    """The cluster router that writes the routing object the policy names."""
    return router_for(router_name_for(policy), policy, target)
