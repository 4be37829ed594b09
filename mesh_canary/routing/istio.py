"""TrafficRouter for Istio: writes the weights into the user's VirtualService.

Through the official ``kubernetes`` client (CustomObjectsApi, ``networking.istio.io/v1``).
Every write reads the object, computes the new one with the pure `istio_patch` module (only
the managed routes' weights, the candidate's mirror and mesh-canary's own annotations
change), and replaces it carrying the resourceVersion it read, so a concurrent change is
never overwritten: the API server answers 409 Conflict, raised as `IstioConflict`.

Each call is ONE bounded attempt (the runner alone retries, under a total deadline).
A forward write is a compare-and-swap: it goes through only if the live weights are the
ones mesh-canary last wrote and the route is still owned by this run. A rollback checks
nothing and carries its own record (an annotation) in the same replace call.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from mesh_canary.core.model import Policy
from mesh_canary.core.weights import Weights
from mesh_canary.routing import istio_patch
from mesh_canary.routing.base import (
    RollbackRecord,
    RouteConflict,
    RouteNotFound,
    RouteOwned,
    RouterError,
    WeightsMoved,
)
from mesh_canary.routing.istio_patch import RouteTargets, VirtualServicePatchError

GROUP = "networking.istio.io"
VERSION = "v1"
PLURAL = "virtualservices"

# Which rollout run owns the VirtualService's weights, and the last rollback's record.
ANNOTATION_OWNER = "mesh-canary.io/owner"
ANNOTATION_ROLLBACK = "mesh-canary.io/rollback"

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


class IstioRouter:
    """Reads and writes stable/candidate (and fallback) weights and the mirror of one VirtualService."""

    def __init__(
        self,
        policy: Policy,
        api_client: kubernetes.client.ApiClient,
        *,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        **_retry_options: float,  # attempts/backoff_s/...: retries moved to the runner; ignored
    ) -> None:
        self.name = policy.virtual_service.name
        self.namespace = policy.virtual_service.namespace
        self.rollout = f"{policy.namespace}/{policy.name}"
        self.targets = RouteTargets.from_policy(policy)
        self._api = kubernetes.client.CustomObjectsApi(api_client)
        self._timeout = request_timeout_s
        self._clock = clock
        self.last_written: Weights | None = None
        self.writes = 0  # replace calls that went through (for metrics and tests)
        self.conflicts = 0  # 409 answers seen

    @property
    def ref(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"

    def read(self) -> dict[str, Any]:
        """The VirtualService as the API server holds it."""
        try:
            obj: Any = self._api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 404:
                raise IstioNotFound(f"{self.ref} does not exist.") from e
            raise IstioRouterError(
                f"could not read {self.ref}: HTTP {e.status} {e.reason}: {_message(e)}"
            ) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise IstioRouterError(f"could not reach the API server to read {self.ref}: {e}") from e
        if not isinstance(obj, dict):
            raise IstioRouterError(f"the API server answered something other than an object for {self.ref}.")
        return obj

    def get_weights(self) -> Weights:
        return _weights(self.read(), self.targets)

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
        current = self.read()
        if rollback is None:
            holder = _owner(current)
            if owner and holder is not None and holder.get("runId") != owner:
                raise RouteOwned(_owned_sentence(self.ref, holder))
            if expected is not None:
                live = _weights(current, self.targets)
                if live not in (expected, weights):
                    raise WeightsMoved(live, expected, self.ref)
        desired = istio_patch.apply_weights(current, self.targets, weights)  # a config error: not retried
        if rollback is not None:
            _annotations(desired)[ANNOTATION_ROLLBACK] = rollback.to_json()
        if desired != current:
            self._replace(desired, "write weights to")
        self.last_written = weights

    def claim(self, owner: str, rollout: str, previous: str = "") -> None:
        """Annotate the VirtualService as owned by run ``owner`` (checked and set with its resourceVersion)."""
        current = self.read()
        holder = _owner(current)
        if holder is not None and holder.get("runId") not in (owner, previous):
            raise RouteOwned(_owned_sentence(self.ref, holder))
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

    def release(self, owner: str) -> None:
        current = self.read()
        holder = _owner(current)
        if holder is None or holder.get("runId") != owner:
            return
        desired = copy.deepcopy(current)
        del _annotations(desired)[ANNOTATION_OWNER]
        self._replace(desired, "release")

    def recorded_rollback(self) -> RollbackRecord | None:
        ann = (self.read().get("metadata") or {}).get("annotations") or {}
        text = ann.get(ANNOTATION_ROLLBACK)
        return RollbackRecord.from_json(str(text)) if text else None

    def _replace(self, desired: dict[str, Any], what: str) -> None:
        try:
            # `desired` carries the resourceVersion we read: a stale one is a 409.
            self._api.replace_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, desired, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 409:
                self.conflicts += 1
                raise IstioConflict(
                    f"{self.ref} changed while mesh-canary tried to {what} it (HTTP 409)"
                ) from e
            raise IstioRouterError(
                f"could not {what} {self.ref}: HTTP {e.status} {e.reason}: {_message(e)}"
            ) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise IstioRouterError(f"could not reach the API server to {what} {self.ref}: {e}") from e
        self.writes += 1

    def check_drift(self, expected: Weights | None = None) -> str | None:
        """A sentence when the live weights differ from ``expected`` (default: what we last wrote).

        This is how a GitOps tool syncing the VirtualService back is noticed: the controller
        reports it as a condition and an Event instead of silently fighting it.
        """
        expected = expected if expected is not None else self.last_written
        if expected is None:
            return None
        vs = self.read()
        try:
            return istio_patch.drift(vs, self.targets, expected)
        except VirtualServicePatchError as e:
            return f"{self.ref} no longer has the routes mesh-canary manages: {e}"


def _weights(vs: dict[str, Any], targets: RouteTargets) -> Weights:
    return istio_patch.read_weights(vs, targets)


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.setdefault("metadata", {})
    ann = meta.get("annotations")
    if not isinstance(ann, dict):
        ann = {}
        meta["annotations"] = ann
    return ann


def _owner(vs: dict[str, Any]) -> dict[str, Any] | None:
    text = ((vs.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_OWNER)
    if not text:
        return None
    try:
        d = json.loads(str(text))
    except ValueError:
        d = None
    # Unreadable: still somebody's claim, never silently ours.
    return d if isinstance(d, dict) else {"rollout": str(text), "runId": str(text)}


def _owned_sentence(ref: str, holder: dict[str, Any]) -> str:
    return (
        f"{ref} is already being rolled out by {holder.get('rollout', '?')} (run {holder.get('runId', '?')}); "
        f"refusing a second rollout on it, nothing was written (if that run is gone, remove the "
        f"annotation {ANNOTATION_OWNER} from the VirtualService)"
    )


def _message(e: ApiException) -> str:
    """The Status message of an API error, or its raw body."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.body)
    except ValueError:
        return str(e.body)
