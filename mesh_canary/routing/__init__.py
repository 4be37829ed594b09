"""Traffic routers: one module per router, one line per router in ``ROUTERS``.

A router implements :class:`mesh_canary.protocols.TrafficRouter` (``set_weights`` /
``get_weights``) for one routing API, and keeps the guards of :mod:`.base` (route
ownership, outside changes, the rollback record). The wiring (``mesh_canary.run.wiring``)
and the controller build routers only through :func:`router_for`, so a new router is its
module plus one line here.

- ``istio``: an Istio VirtualService through the Kubernetes API (:mod:`.istio`, its
  patching in :mod:`.istio_patch`).
- ``local``: the embedded local mesh's Envoy runtime (:mod:`.local`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mesh_canary.core.model import Policy
from mesh_canary.protocols import TrafficRouter

__all__ = ["ROUTERS", "RouterFactory", "RouterTarget", "router_for"]


@dataclass(frozen=True)
class RouterTarget:
    """What a router needs besides the policy: where it writes."""

    api_client: Any = None  # a kubernetes ApiClient, for routers that write cluster resources
    envoy_admin_url: str | None = None  # the local mesh's Envoy admin address


class RouterFactory(Protocol):
    def __call__(self, policy: Policy, target: RouterTarget, /) -> TrafficRouter: ...


# Each factory imports its module when called: the kubernetes client is slow to import, and
# the local router must not be loaded by commands that never touch Envoy.
def _istio(policy: Policy, target: RouterTarget) -> TrafficRouter:
    from mesh_canary.routing.istio import IstioRouter

    return IstioRouter(policy, target.api_client)


def _local(policy: Policy, target: RouterTarget) -> TrafficRouter:
    from mesh_canary.routing.local import LocalRouter

    if target.envoy_admin_url is None:
        raise ValueError("the local router needs the local mesh's Envoy admin address")
    return LocalRouter(
        target.envoy_admin_url, policy.stable.metrics_version, policy.candidate.metrics_version
    )


ROUTERS: dict[str, RouterFactory] = {
    "istio": _istio,
    "local": _local,
}


def router_for(kind: str, policy: Policy, target: RouterTarget) -> TrafficRouter:
    """The router of ``kind`` for ``policy``; ValueError naming the known kinds otherwise."""
    factory = ROUTERS.get(kind)
    if factory is None:
        raise ValueError(f"no router {kind!r}; known routers: {', '.join(sorted(ROUTERS))}")
    return factory(policy, target)
