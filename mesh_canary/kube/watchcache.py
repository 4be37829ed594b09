"""A watch cache of one kind of namespaced object (e.g. Istio VirtualServices), so that an
analysis turn can look at its route's live weights without a GET each time.

One thread per namespace asked for (started on the first `WatchCache.get` of that namespace):
it lists the objects, then watches from the list's resourceVersion (re-listing on 410 Gone,
reconnecting with backoff on errors), keeping the newest copy of each object. While a
namespace is not listed, or its watch failed and is not connected again, `get` answers None
and the caller reads the object from the API server itself: the cache only ever saves reads.

A router looks at its route here (is it still what we wrote? did a person move it?) and may
start a write from the copy: the replace carries the copy's resourceVersion (a
compare-and-swap), so a stale copy is a 409 and never overwrites anyone's change. Routers also
compare resourceVersions (routing.kube_route) so that a copy older than what they wrote or
read themselves is never taken for the live object. `WatchCache` is a
`mesh_canary.protocols.ObjectCache`.
"""

from __future__ import annotations

import copy
import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client

from mesh_canary.kube.errors import KubeError, kube_call

log = logging.getLogger("mesh_canary.controller")


def list_then_watch(
    relist: Callable[[], str],
    watch_from: Callable[[str], str],
    stopping: threading.Event,
    failed: Callable[[str, float], None],
) -> None:
    """List, then watch from the list's resourceVersion until ``stopping``: list again on 410
    Gone, and after any other failure (``failed(why, backoff)``) after a doubling backoff."""
    backoff = 0.5
    while not stopping.is_set():
        try:
            rv = relist()
            backoff = 0.5
            while not stopping.is_set():
                rv = watch_from(rv)
        except KubeError as e:
            if stopping.is_set():
                return
            if e.status == 410:
                log.info("watch expired (410 Gone): listing again")
                continue
            failed(e.detail, backoff)
        except Exception as e:
            if stopping.is_set():
                return
            failed(str(e), backoff)
        stopping.wait(backoff)
        backoff = min(backoff * 2, 30.0)


class WatchCache:
    """The newest copy of each object of one kind, per namespace, kept by list + watch (thread-safe)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        group: str,
        version: str,
        plural: str,
        *,
        stopping: threading.Event,
        request_timeout_s: float = 10.0,
        watch_timeout_s: int = 300,
    ) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._what = (group, version, plural)
        self._stopping = stopping
        self._timeout = request_timeout_s
        self._watch_timeout = watch_timeout_s
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, dict[str, Any]]] = {}  # namespace -> name -> object
        self._fresh: set[str] = set()  # namespaces listed, their watch connected since
        self._threads: dict[str, threading.Thread] = {}
        self._watches: dict[str, Any] = {}

    @property
    def plural(self) -> str:
        return self._what[2]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the object as last seen; None while the cache cannot vouch for it (not listed
        yet, the watch broken) or the object is not there (then the caller's read says 404)."""
        with self._lock:
            if namespace not in self._threads and not self._stopping.is_set():
                t = threading.Thread(
                    target=self._run, args=(namespace,), name=f"watch {self.plural} {namespace}", daemon=True
                )
                self._threads[namespace] = t
                t.start()
            if namespace not in self._fresh or self._stopping.is_set():
                return None
            obj = self._objects.get(namespace, {}).get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def stop(self) -> None:
        for w in list(self._watches.values()):
            w.stop()
        for t in list(self._threads.values()):
            t.join(2.0)

    def _run(self, namespace: str) -> None:
        def failed(why: str, backoff: float) -> None:
            with self._lock:
                self._fresh.discard(namespace)
            log.warning(
                "%s watch in %s failed: %s; reading them directly, watching again in %.1fs",
                self.plural,
                namespace,
                why,
                backoff,
            )

        list_then_watch(
            lambda: self._relist(namespace),
            lambda rv: self._watch_from(namespace, rv),
            self._stopping,
            failed,
        )

    def _list(self, namespace: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        group, version, plural = self._what
        return self._custom.list_namespaced_custom_object, (group, version, namespace, plural)

    def _relist(self, namespace: str) -> str:
        with self._lock:
            self._fresh.discard(namespace)
        fn, args = self._list(namespace)
        with kube_call(f"listing {self.plural} in {namespace}"):
            result: Any = fn(*args, _request_timeout=self._timeout)
        objects = {
            str((i.get("metadata") or {}).get("name")): i
            for i in result.get("items", [])
            if isinstance(i, dict)
        }
        with self._lock:
            self._objects[namespace] = objects
            self._fresh.add(namespace)
        return str((result.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_from(self, namespace: str, rv: str) -> str:
        fn, args = self._list(namespace)
        w: Any = importlib.import_module("kubernetes.watch").Watch()
        self._watches[namespace] = w
        with kube_call(f"watching {self.plural} in {namespace}"):
            for kind, obj in watch_events(w, fn, args, rv, self._watch_timeout, self._stopping):
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                name = str((obj.get("metadata") or {}).get("name"))
                with self._lock:
                    if kind in ("ADDED", "MODIFIED"):
                        self._objects.setdefault(namespace, {})[name] = obj
                    elif kind == "DELETED":
                        self._objects.setdefault(namespace, {}).pop(name, None)
        return rv


def watch_events(
    w: Any, fn: Callable[..., Any], args: tuple[Any, ...], rv: str, timeout_s: int, stopping: threading.Event
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(type, object) of each event of one watch stream from ``rv`` (ends after ``timeout_s``,
    or at once when ``stopping``); bookmarks come as type BOOKMARK."""
    kwargs: dict[str, Any] = {
        "timeout_seconds": timeout_s,
        "allow_watch_bookmarks": True,
        "_request_timeout": timeout_s + 10,
    }
    if rv:
        kwargs["resource_version"] = rv
    for event in w.stream(fn, *args, **kwargs):
        if stopping.is_set():
            w.stop()
            return
        kind, obj = event.get("type"), event.get("raw_object")
        if isinstance(obj, dict):
            yield str(kind), obj
