"""TrafficRouter for Istio: writes the weights into the user's VirtualService.

Through the official ``kubernetes`` client (CustomObjectsApi, ``networking.istio.io/v1``).
Every write reads the object, computes the new one with the pure `istio_patch` module (only
the managed routes' weights, the candidate's mirror and mesh-canary's own annotations
change), and replaces it carrying the resourceVersion it read, so a concurrent change is
never overwritten: the API server answers 409 Conflict, raised as `IstioConflict`.

Each call is ONE bounded attempt (the runner alone retries, under a total deadline).
A forward write is a compare-and-swap: it goes through only if the live weights are the
ones mesh-canary last wrote and the route is still owned by this run. A rollback checks
nothing and carries its own record (an annotation) in the same replace call. Those guards
are shared with every Kubernetes router (:mod:`.kube_route`).
"""

from __future__ import annotations

from typing import Any

import kubernetes.client

from mesh_canary.core.model import Policy
from mesh_canary.core.weights import Weights
from mesh_canary.routing import istio_patch
from mesh_canary.routing.base import RouteConflict, RouteNotFound, RouterError
from mesh_canary.routing.istio_patch import RouteTargets, VirtualServicePatchError
from mesh_canary.routing.kube_route import ANNOTATION_OWNER, ANNOTATION_ROLLBACK, KubeRouteRouter

GROUP = "networking.istio.io"
VERSION = "v1"
PLURAL = "virtualservices"
KIND = "VirtualService"

__all__ = [
    "ANNOTATION_OWNER",
    "ANNOTATION_ROLLBACK",
    "IstioConflict",
    "IstioNotFound",
    "IstioRouter",
    "IstioRouterError",
    "VirtualServicePatchError",
]


class IstioRouterError(RouterError):
    """The VirtualService could not be read or written."""


class IstioConflict(IstioRouterError, RouteConflict):
    """HTTP 409: the VirtualService changed between our read and our write."""


class IstioNotFound(IstioRouterError, RouteNotFound):
    """HTTP 404: there is no such VirtualService."""


class IstioRouter(KubeRouteRouter):
    """Reads and writes stable/candidate (and fallback) weights and the mirror of one VirtualService."""

    GROUP, VERSION, PLURAL, KIND = GROUP, VERSION, PLURAL, KIND
    Error, Conflict, NotFound = IstioRouterError, IstioConflict, IstioNotFound

    def __init__(self, policy: Policy, api_client: kubernetes.client.ApiClient, **options: Any) -> None:
        super().__init__(policy, api_client, **options)
        self.targets = RouteTargets.from_policy(policy)

    def weights_of(self, obj: dict[str, Any]) -> Weights:
        return istio_patch.read_weights(obj, self.targets)

    def with_weights(self, obj: dict[str, Any], weights: Weights) -> dict[str, Any]:
        return istio_patch.apply_weights(obj, self.targets, weights)

    def drift_of(self, obj: dict[str, Any], expected: Weights) -> str | None:
        try:
            return istio_patch.drift(obj, self.targets, expected)
        except VirtualServicePatchError as e:
            return f"{self.ref} no longer has the routes mesh-canary manages: {e}"
