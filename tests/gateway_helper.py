"""A Gateway API implementation's one job in the end-to-end test: turn an HTTPRoute's
backendRefs weights into Envoy's.

Envoy Gateway, Istio or Cilium watch HTTPRoutes and program their proxies. Here the
istiod stand-in's watch loop (`tests.istiod_helper.IstiodHelper`: list, then watch one
object through the official client) reads one HTTPRoute instead, and every change of the
managed rule's ``backendRefs[].weight`` (and of its ``RequestMirror`` filter) is pushed to
the local Envoy's runtime: the same rule, the same weights, a real data plane.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh_canary.core.weights import Weights
from tests.istiod_helper import IstiodHelper


class GatewayHelper(IstiodHelper):
    """Keeps Envoy's weights equal to one rule of one HTTPRoute.

    ``clusters`` maps the rule's two backend Services to Envoy cluster names, stable first:
    ``{("scorer-v1", None): "v1", ("scorer-v2", None): "v2"}``; ``route`` is the rule's name.
    """

    RESOURCE = ("gateway.networking.k8s.io", "v1", "httproutes")

    def weights_of(self, vs: Mapping[str, Any]) -> Weights:
        rules = [r for r in vs["spec"].get("rules", []) if r.get("name") == self.route]
        if len(rules) != 1:
            raise ValueError(f"HTTPRoute {self.name} has no single rule named {self.route}")
        by_cluster = {
            self.clusters[(ref["name"], None)]: int(ref.get("weight", 1))
            for ref in rules[0].get("backendRefs", [])
        }
        total = sum(by_cluster.values()) or 1  # relative weights, as a Gateway implementation reads them
        candidate = round(100 * by_cluster.get(self.router.candidate_cluster, 0) / total)
        mirror = 0
        for f in rules[0].get("filters", []):
            ref = (f.get("requestMirror") or {}).get("backendRef") or {}
            if (
                f.get("type") == "RequestMirror"
                and self.clusters.get((ref.get("name"), None)) == self.router.candidate_cluster
            ):
                mirror = int(f["requestMirror"].get("percent", 100))
        return Weights(stable=100 - candidate, candidate=candidate, mirror_percent=mirror)
