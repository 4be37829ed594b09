"""List/watch of ModelRollout resources: one thread per watched namespace (or one for all).

Each thread lists the resources, then watches from the list's resourceVersion (re-listing
on 410 Gone, reconnecting with backoff on errors) and reports every object it sees to
``upsert`` and every deletion to ``deleted``; a resource a re-list no longer shows is
reported deleted too. ``synced`` is set once every namespace has been listed.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes.client

from mesh_canary.controller.handler import Key, meta
from mesh_canary.controller.settings import ControllerSettings
from mesh_canary.kube.errors import kube_call
from mesh_canary.kube.names import API_VERSION, GROUP, KIND, PLURAL, VERSION
from mesh_canary.kube.watchcache import list_then_watch, watch_events

log = logging.getLogger("mesh_canary.controller")


def _watch_module() -> Any:
    return importlib.import_module("kubernetes.watch")


class Informer:
    """Keeps the controller's view of the ModelRollouts up to date (`run` per namespace)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        settings: ControllerSettings,
        stopping: threading.Event,
        *,
        upsert: Callable[[dict[str, Any]], Key],
        deleted: Callable[[dict[str, Any]], None],
        known: Callable[[str | None], list[dict[str, Any]]],
    ) -> None:
        """``known(namespace)``: the objects the controller holds and thinks alive (None: all)."""
        self.settings = settings
        self.synced = threading.Event()
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._stopping = stopping
        self._upsert = upsert
        self._deleted = deleted
        self._known = known
        self._lock = threading.Lock()
        self._synced_namespaces: set[str | None] = set()
        self._watches: dict[str | None, Any] = {}  # the kubernetes.watch.Watch streaming now, per namespace

    @property
    def namespaces(self) -> list[str | None]:
        """One loop each: the watched namespaces, or None (every namespace)."""
        return [*self.settings.watched] or [None]

    def stop(self) -> None:
        """End the streams now (each loop sees ``stopping`` and returns)."""
        for w in list(self._watches.values()):
            w.stop()

    def run(self, namespace: str | None = None) -> None:
        list_then_watch(
            lambda: self._relist(namespace),
            lambda rv: self._watch_from(rv, namespace),
            self._stopping,
            lambda why, backoff: log.warning(
                "ModelRollout watch failed: %s; retrying in %.1fs", why, backoff
            ),
        )

    def _list_fn(self, namespace: str | None) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if namespace:
            return self._custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL)
        return self._custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)

    def _relist(self, namespace: str | None = None) -> str:
        fn, args = self._list_fn(namespace)
        with kube_call(f"listing ModelRollouts in {namespace or 'every namespace'}"):
            result: Any = fn(*args, _request_timeout=self.settings.request_timeout_s)
        items = [i for i in result.get("items", []) if isinstance(i, dict)]
        seen: set[Key] = set()
        for obj in items:
            obj.setdefault("apiVersion", API_VERSION)
            obj.setdefault("kind", KIND)
            seen.add(self._upsert(obj))
        for obj in self._known(namespace):
            m = meta(obj)
            if (str(m.get("namespace") or ""), str(m.get("name") or "")) not in seen:
                self._deleted(obj)
        with self._lock:
            self._synced_namespaces.add(namespace)
            if len(self._synced_namespaces) >= len(self.namespaces):
                self.synced.set()
        return str((result.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_from(self, rv: str, namespace: str | None = None) -> str:
        fn, args = self._list_fn(namespace)
        w: Any = _watch_module().Watch()
        self._watches[namespace] = w
        with kube_call(f"watching ModelRollouts in {namespace or 'every namespace'}"):
            for kind, obj in watch_events(w, fn, args, rv, self.settings.watch_timeout_s, self._stopping):
                rv = str(meta(obj).get("resourceVersion") or rv)
                if kind in ("ADDED", "MODIFIED"):
                    self._upsert(obj)
                elif kind == "DELETED":
                    self._deleted(obj)
        return rv
