"""istiod's one job in the end-to-end test: turn a VirtualService's weights into Envoy's.

In a cluster, istiod watches VirtualServices and pushes routes to every Envoy. Here a
thread watches one VirtualService on the API stand-in (list, then watch from the list's
resourceVersion, through the official client) and, on every change, writes the managed
route's weights (and its mirror) into the local Envoy's runtime with
`mesh_canary.routing.local.LocalRouter`: the same route, the same weights, a real
data plane.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import kubernetes.client
import kubernetes.watch

from mesh_canary.core.weights import Weights
from mesh_canary.routing.local import LocalRouter

log = logging.getLogger("tests.istiod_helper")

Destination = tuple[str, str | None]  # (host, subset)


class IstiodHelper:
    """Keeps Envoy's weights equal to one http route of one VirtualService.

    ``clusters`` maps the route's two destinations to Envoy cluster names, stable first:
    ``{("scorer", "v1"): "v1", ("scorer", "v2"): "v2"}``. A subclass for another routing
    object names its ``RESOURCE`` and reads its weights in ``weights_of``.
    """

    RESOURCE = ("networking.istio.io", "v1", "virtualservices")  # group, version, plural

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        namespace: str,
        name: str,
        admin_url: str,
        clusters: Mapping[Destination, str],
        route: str = "primary",
    ) -> None:
        if len(clusters) != 2:
            raise ValueError("the helper drives a route with exactly two destinations")
        self.namespace = namespace
        self.name = name
        self.route = route
        self.clusters = dict(clusters)
        stable, candidate = list(self.clusters.values())
        self.router = LocalRouter(admin_url, stable, candidate)
        self.applied: list[tuple[float, Weights]] = []  # (time, weights pushed to Envoy)
        self.errors: list[str] = []
        self._api: Any = kubernetes.client.CustomObjectsApi(api_client)
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"istiod-{name}", daemon=True)

    def start(self) -> IstiodHelper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(10)

    def __enter__(self) -> IstiodHelper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def weights_of(self, vs: Mapping[str, Any]) -> Weights:
        """The weights a VirtualService's managed route asks for, as Envoy's two clusters see them."""
        routes = [r for r in vs["spec"].get("http", []) if r.get("name") == self.route]
        if len(routes) != 1:
            raise ValueError(f"VirtualService {self.name} has no single http route named {self.route}")
        entries = routes[0].get("route", [])
        by_cluster: dict[str, int] = {}
        for entry in entries:
            dest = entry["destination"]
            cluster = self.clusters[(dest["host"], dest.get("subset"))]
            by_cluster[cluster] = int(entry.get("weight", 100 if len(entries) == 1 else 0))
        mirror = 0
        if "mirror" in routes[0]:
            m = routes[0]["mirror"]
            if self.clusters.get((m["host"], m.get("subset"))) == self.router.candidate_cluster:
                mirror = round(float((routes[0].get("mirrorPercentage") or {}).get("value", 100.0)))
        return Weights(
            stable=by_cluster.get(self.router.stable_cluster, 0),
            candidate=by_cluster.get(self.router.candidate_cluster, 0),
            mirror_percent=mirror,
        )

    def _push(self, vs: Mapping[str, Any]) -> None:
        weights = self.weights_of(vs)
        if self.applied and self.applied[-1][1] == weights:
            return
        self.router.set_weights(weights)
        self.applied.append((time.monotonic(), weights))
        log.info("pushed %s/%s to Envoy", weights.stable, weights.candidate)

    def _run(self) -> None:
        selector = f"metadata.name={self.name}"
        group, version, plural = self.RESOURCE
        args = (group, version, self.namespace, plural)
        while not self._stop.is_set():
            try:
                listed = self._api.list_namespaced_custom_object(*args, field_selector=selector)
                for item in listed.get("items", []):
                    self._push(item)
                rv = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    self._watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
                    for event in self._watch.stream(
                        self._api.list_namespaced_custom_object,
                        *args,
                        field_selector=selector,
                        resource_version=rv,
                        timeout_seconds=5,
                    ):
                        obj = event["raw_object"]
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._push(obj)
            except Exception as e:  # keep going: a test asserts on `errors`
                if self._stop.is_set():
                    return
                self.errors.append(str(e))
                log.warning("istiod helper: %s", e)
                self._stop.wait(0.2)
