"""TrafficRouter for the embedded local mesh: Envoy's runtime, through its admin API.

The Envoy built by mesh_canary.localmesh.envoy reads each cluster's weight, and the share
mirrored to the candidate, from runtime keys on every request. ``set_weights`` writes all
of them in one ``POST /runtime_modify`` (one admin call, applied together);
``get_weights`` reads them back from ``GET /runtime``.
"""

from __future__ import annotations

from typing import Any

import httpx

from mesh_canary.core.weights import Weights
from mesh_canary.localmesh.envoy import MIRROR_KEY, runtime_values, weight_key


class LocalRouterError(RuntimeError):
    pass


class LocalRouter:
    def __init__(
        self,
        admin_url: str,
        stable_cluster: str,
        candidate_cluster: str,
        fallback_cluster: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.stable_cluster = stable_cluster
        self.candidate_cluster = candidate_cluster
        self.fallback_cluster = fallback_cluster
        self.timeout_s = timeout_s

    def set_weights(self, weights: Weights) -> None:
        """Write every weight and the mirror share in one admin call; raise LocalRouterError on failure."""
        values = runtime_values(self.stable_cluster, self.candidate_cluster, weights, self.fallback_cluster)
        response = self._call("POST", "/runtime_modify", params={k: str(v) for k, v in values.items()})
        if response.status_code != 200:
            raise LocalRouterError(
                f"Envoy at {self.admin_url} refused the weights {weights}: "
                f"{response.status_code} {response.text.strip()}"
            )

    def get_weights(self) -> Weights:
        """The weights Envoy has in force now, read from its runtime."""
        response = self._call("GET", "/runtime")
        if response.status_code != 200:
            raise LocalRouterError(f"Envoy at {self.admin_url} answered {response.status_code} for /runtime")
        entries: dict[str, Any] = response.json().get("entries", {})

        def value(key: str) -> int:
            final = entries.get(key, {}).get("final_value")
            try:
                return int(final)
            except (TypeError, ValueError):
                raise LocalRouterError(
                    f"Envoy at {self.admin_url} has no integer runtime value for {key} (got {final!r})"
                ) from None

        fallback = value(weight_key(self.fallback_cluster)) if self.fallback_cluster else 0
        try:
            return Weights(
                stable=value(weight_key(self.stable_cluster)),
                candidate=value(weight_key(self.candidate_cluster)),
                fallback=fallback,
                mirror_percent=value(MIRROR_KEY),
            )
        except ValueError as exc:  # someone wrote weights that do not add up to 100
            raise LocalRouterError(
                f"Envoy at {self.admin_url} holds weights that are not valid: {exc}"
            ) from None

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            return httpx.request(method, f"{self.admin_url}{path}", params=params, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise LocalRouterError(f"cannot reach Envoy's admin at {self.admin_url}: {exc}") from exc
