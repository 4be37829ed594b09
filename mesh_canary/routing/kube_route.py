"""What every router of a Kubernetes routing object shares (Istio's VirtualService, the
Gateway API's HTTPRoute, KServe's InferenceService): one bounded attempt per call, read-then-replace with the
resourceVersion read, 409 as a typed conflict, compare-and-swap on forward writes, the
owner annotation, and the rollback record written in the same replace call.

A router for one kind is a subclass naming the object's group/version/plural/kind and its
errors, and giving three pure functions of the object: the live weights, the object with
new weights (only the managed weights change), and a drift sentence.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any, ClassVar

import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from mesh_canary.core.model import Policy
from mesh_canary.core.weights import Weights
from mesh_canary.protocols import ObjectCache
from mesh_canary.routing.base import (
    RollbackRecord,
    RouteConflict,
    RouteNotFound,
    RouteOwned,
    RouterError,
    WeightsMoved,
)

# Which rollout run owns the route's weights, and the last rollback's record.
ANNOTATION_OWNER = "mesh-canary.io/owner"
ANNOTATION_ROLLBACK = "mesh-canary.io/rollback"


def resource_version(obj: Any) -> int | None:
    """An object's resourceVersion as a number (etcd's revision), None when it is not one."""
    rv = ((obj or {}).get("metadata") or {}).get("resourceVersion") if isinstance(obj, dict) else None
    text = str(rv or "")
    return int(text) if text.isdigit() else None


def newer_or_same(obj: Any, floor: int | None) -> bool:
    """Whether ``obj`` is at least as new as the resourceVersion ``floor`` (None: nothing seen yet).
    Not comparable (a resourceVersion that is not a number): False, so the caller reads."""
    rv = resource_version(obj)
    return rv is not None and (floor is None or rv >= floor)


class KubeRouteRouter:
    """Reads and writes the weights of one namespaced routing object through the API server."""

    GROUP: ClassVar[str]
    VERSION: ClassVar[str]
    PLURAL: ClassVar[str]
    KIND: ClassVar[str]
    Error: ClassVar[type[RouterError]] = RouterError
    Conflict: ClassVar[type[RouteConflict]] = RouteConflict
    NotFound: ClassVar[type[RouteNotFound]] = RouteNotFound

    def __init__(
        self,
        policy: Policy,
        api_client: kubernetes.client.ApiClient,
        *,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        caches: Callable[[str, str, str], ObjectCache | None] | None = None,
        **_retry_options: float,  # attempts/backoff_s/...: retries moved to the runner; ignored
    ) -> None:
        """``caches``: the controller's watch caches by (group, version, plural); this kind's is
        looked at instead of a GET when the live weights are only looked at (`get_weights`);
        every write still reads the object from the API server."""
        self.name = policy.route.name
        self.namespace = policy.route.namespace
        self.rollout = f"{policy.namespace}/{policy.name}"
        self._api = kubernetes.client.CustomObjectsApi(api_client)
        self._timeout = request_timeout_s
        self._clock = clock
        self.last_written: Weights | None = None
        self.writes = 0  # replace calls that went through (for metrics and tests)
        self.conflicts = 0  # 409 answers seen
        self.reads = 0  # GETs sent (for tests: how many looks the cache saved)
        self._cache = caches(self.GROUP, self.VERSION, self.PLURAL) if caches is not None else None
        # The newest resourceVersion this router read or wrote: a cached copy older than it is
        # not the live object (e.g. our own write not yet seen by the watch).
        self._seen_rv: int | None = None

    # -- the kind's pure functions ------------------------------------------------------------

    def weights_of(self, obj: dict[str, Any]) -> Weights:
        raise NotImplementedError

    def with_weights(self, obj: dict[str, Any], weights: Weights) -> dict[str, Any]:
        """A copy of ``obj`` in which only the managed weights are ``weights``."""
        raise NotImplementedError

    def drift_of(self, obj: dict[str, Any], expected: Weights) -> str | None:
        raise NotImplementedError

    # -- the shared guards ----------------------------------------------------------------------

    @property
    def ref(self) -> str:
        return f"{self.KIND} {self.namespace}/{self.name}"

    def read(self) -> dict[str, Any]:
        """The object as the API server holds it."""
        self.reads += 1
        try:
            obj: Any = self._api.get_namespaced_custom_object(
                self.GROUP,
                self.VERSION,
                self.namespace,
                self.PLURAL,
                self.name,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            if e.status == 404:
                raise self.NotFound(f"{self.ref} does not exist.") from e
            raise self.Error(f"could not read {self.ref}: HTTP {e.status} {e.reason}: {_message(e)}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self.Error(f"could not reach the API server to read {self.ref}: {e}") from e
        if not isinstance(obj, dict):
            raise self.Error(f"the API server answered something other than an object for {self.ref}.")
        self._saw(obj)
        return obj

    def _saw(self, obj: Any) -> None:
        rv = resource_version(obj)
        if rv is not None and (self._seen_rv is None or rv > self._seen_rv):
            self._seen_rv = rv

    def _cached(self) -> dict[str, Any] | None:
        """The watch cache's copy when it is at least as new as anything this router read or wrote."""
        if self._cache is None:
            return None
        cached = self._cache.get(self.namespace, self.name)
        if cached is None or not newer_or_same(cached, self._seen_rv):
            return None
        self._saw(cached)
        return cached

    def look(self) -> dict[str, Any]:
        """The object to look at: the watch cache's copy (`_cached`), else a GET."""
        cached = self._cached()
        return cached if cached is not None else self.read()

    def get_weights(self) -> Weights:
        return self.weights_of(self.look())

    def set_weights(self, weights: Weights) -> None:
        """Write ``weights`` to every managed route: one attempt, no checks (see `write`)."""
        self.write(weights)

    def write(
        self,
        weights: Weights,
        *,
        owner: str = "",
        expected: Weights | None = None,
        rollback: RollbackRecord | None = None,
    ) -> None:
        """One attempt: read, check (forward writes only), replace with the resourceVersion read."""

        def attempt(current: dict[str, Any]) -> None:
            if rollback is None:
                holder = _owner(current)
                if owner and holder is not None and holder.get("runId") != owner:
                    raise RouteOwned(self._owned_sentence(holder))
                if expected is not None:
                    live = self.weights_of(current)
                    if live not in (expected, weights):
                        raise WeightsMoved(live, expected, self.ref)
            desired = self.with_weights(current, weights)  # a config error: not retried
            if rollback is not None:
                _annotations(desired)[ANNOTATION_ROLLBACK] = rollback.to_json()
            if desired != current:
                self._replace(desired, "write weights to")

        self._from_base(attempt)
        self.last_written = weights

    def claim(self, owner: str, rollout: str, previous: str = "") -> None:
        """Annotate the object as owned by run ``owner`` (checked and set with its resourceVersion)."""

        def attempt(current: dict[str, Any]) -> None:
            holder = _owner(current)
            if holder is not None and holder.get("runId") not in (owner, previous):
                raise RouteOwned(self._owned_sentence(holder))
            desired = copy.deepcopy(current)
            ann = _annotations(desired)
            if holder is None or holder.get("runId") != owner:
                ann[ANNOTATION_OWNER] = json.dumps(
                    {"rollout": rollout, "runId": owner, "since": round(self._clock(), 3)}, sort_keys=True
                )
            record = RollbackRecord.from_json(str(ann.get(ANNOTATION_ROLLBACK, "")))
            if ANNOTATION_ROLLBACK in ann and (record is None or record.run_id != owner):
                del ann[ANNOTATION_ROLLBACK]  # an earlier run's rollback says nothing about this one
            if desired != current:
                self._replace(desired, "take ownership of")

        self._from_base(attempt)

    def release(self, owner: str) -> None:
        def attempt(current: dict[str, Any]) -> None:
            holder = _owner(current)
            if holder is None or holder.get("runId") != owner:
                return
            desired = copy.deepcopy(current)
            del _annotations(desired)[ANNOTATION_OWNER]
            self._replace(desired, "release")

        self._from_base(attempt)

    def _from_base(self, attempt: Callable[[dict[str, Any]], None]) -> None:
        """Run one write ``attempt`` from the watch cache's copy when it is at least as new as
        anything this router saw (no GET), else from a read. The replace carries that copy's
        resourceVersion, so a copy gone stale is a 409: then the attempt runs once more from a
        fresh read (its checks again, on the live object), and only that one's 409 is raised."""
        cached = self._cached()
        if cached is None:
            attempt(self.read())
            return
        try:
            attempt(cached)
        except self.Conflict:
            attempt(self.read())

    def recorded_rollback(self) -> RollbackRecord | None:
        ann = (self.read().get("metadata") or {}).get("annotations") or {}
        text = ann.get(ANNOTATION_ROLLBACK)
        return RollbackRecord.from_json(str(text)) if text else None

    def check_drift(self, expected: Weights | None = None) -> str | None:
        """A sentence when the live weights differ from ``expected`` (default: what we last wrote).

        This is how a GitOps tool syncing the route back is noticed: the controller reports it
        as a condition and an Event instead of silently fighting it.
        """
        expected = expected if expected is not None else self.last_written
        if expected is None:
            return None
        return self.drift_of(self.read(), expected)

    def _send(self, desired: dict[str, Any]) -> Any:
        """The write call itself: a replace (a kind may send a patch instead, see routing.kserve);
        returns the object as written (with its new resourceVersion) when the server says."""
        # `desired` carries the resourceVersion we read: a stale one is a 409.
        return self._api.replace_namespaced_custom_object(
            self.GROUP,
            self.VERSION,
            self.namespace,
            self.PLURAL,
            self.name,
            desired,
            _request_timeout=self._timeout,
        )

    def _replace(self, desired: dict[str, Any], what: str) -> None:
        try:
            written = self._send(desired)
        except ApiException as e:
            if e.status == 409:
                self.conflicts += 1
                raise self.Conflict(
                    f"{self.ref} changed while mesh-canary tried to {what} it (HTTP 409)"
                ) from e
            raise self.Error(f"could not {what} {self.ref}: HTTP {e.status} {e.reason}: {_message(e)}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self.Error(f"could not reach the API server to {what} {self.ref}: {e}") from e
        self._saw(written)
        self.writes += 1

    def _owned_sentence(self, holder: dict[str, Any]) -> str:
        return (
            f"{self.ref} is already being rolled out by {holder.get('rollout', '?')} "
            f"(run {holder.get('runId', '?')}); refusing a second rollout on it, nothing was written "
            f"(if that run is gone, remove the annotation {ANNOTATION_OWNER} from the {self.KIND})"
        )


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.setdefault("metadata", {})
    ann = meta.get("annotations")
    if not isinstance(ann, dict):
        ann = {}
        meta["annotations"] = ann
    return ann


def _owner(obj: dict[str, Any]) -> dict[str, Any] | None:
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_OWNER)
    if not text:
        return None
    try:
        d = json.loads(str(text))
    except ValueError:
        d = None
    # Unreadable: still somebody's claim, never silently ours.
    return d if isinstance(d, dict) else {"rollout": str(text), "runId": str(text)}


def _message(e: ApiException) -> str:
    """The Status message of an API error, or its raw body."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.body)
    except ValueError:
        return str(e.body)
