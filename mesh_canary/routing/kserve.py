"""TrafficRouter for KServe: moves an InferenceService's ``spec.predictor.canaryTrafficPercent``.

``serving.kserve.io/v1beta1`` InferenceService, serverless (Knative) mode. KServe's own canary
rollout (https://kserve.github.io/website/latest/modelserving/v1beta1/rollout/canary/): after
the predictor's spec changes, the new revision (``status.components.predictor.
latestReadyRevision``) gets ``canaryTrafficPercent`` percent of the traffic and the last
rolled-out one (``previousRolledoutRevision``) the rest. Writing ``0`` sends everything back
to the previous revision (our rollback); removing the field promotes the new revision to 100%
(what KServe documents as promotion), so "candidate 100" is written as the field's absence.

The policy's destinations name the two predictor revisions (``host``: the Knative revision
name, ``kubectl get isvc`` shows both); `claim` refuses a rollout whose revisions are not
the ones the status reports, and the drift check reports a new revision appearing mid-rollout
(the candidate the checks judged is no longer the one serving).

Same guards as every Kubernetes router (:mod:`.kube_route`): one bounded attempt per call,
compare-and-swap on forward writes, the owner annotation, the rollback record in the same
write. One difference: the write is a JSON merge patch of the changed fields only (the
canary field and mesh-canary's annotations) carrying the resourceVersion read, so a
concurrent change is a 409 and nothing else in the object is ever sent back.

KServe copies an InferenceService's annotations onto the predictor's Knative revision
template; mesh-canary's two annotations must be in KServe's ``serviceAnnotationDisallowedList``
(manifests/kserve/ sets it) or each of its bookkeeping writes would start a new revision.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes.client

from mesh_canary.core.merge_patch import merge_patch_diff
from mesh_canary.core.model import Policy
from mesh_canary.core.weights import Weights
from mesh_canary.routing.base import RouteConflict, RouteNotFound, RouterError
from mesh_canary.routing.kube_route import ANNOTATION_OWNER, ANNOTATION_ROLLBACK, KubeRouteRouter

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
FIELD = "spec.predictor.canaryTrafficPercent"
# mesh-canary's annotations, which KServe must not copy onto revisions (see the module doc).
NOT_PROPAGATED = (ANNOTATION_OWNER, ANNOTATION_ROLLBACK)

__all__ = [
    "FIELD",
    "InferenceServicePatchError",
    "KServeConflict",
    "KServeNotFound",
    "KServeRouter",
    "KServeRouterError",
    "Revisions",
    "apply_weights",
    "read_weights",
    "revisions_of",
]


class InferenceServicePatchError(ValueError):
    """The InferenceService cannot carry the weights the policy asks for (a configuration error)."""


class KServeRouterError(RouterError):
    """The InferenceService could not be read or written."""


class KServeConflict(KServeRouterError, RouteConflict):
    """HTTP 409: the InferenceService changed between our read and our write."""


class KServeNotFound(KServeRouterError, RouteNotFound):
    """HTTP 404: there is no such InferenceService."""


# --------------------------------------------------------------------------- pure functions


@dataclass(frozen=True)
class Revisions:
    """The predictor's revisions as the InferenceService status reports them."""

    stable: str | None  # previousRolledoutRevision: where traffic goes back to
    candidate: str | None  # latestReadyRevision: what canaryTrafficPercent sends traffic to
    latest_created: str | None  # latestCreatedRevision: newer than the candidate while it starts


def _where(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{KIND} {meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _predictor(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    predictor = (obj.get("spec") or {}).get("predictor")
    if not isinstance(predictor, Mapping):
        raise InferenceServicePatchError(f"{_where(obj)} has no spec.predictor.")
    return predictor


def revisions_of(obj: Mapping[str, Any]) -> Revisions:
    status = (((obj.get("status") or {}).get("components") or {}).get("predictor")) or {}

    def text(key: str) -> str | None:
        value = status.get(key)
        return str(value) if value else None

    return Revisions(
        text("previousRolledoutRevision"), text("latestReadyRevision"), text("latestCreatedRevision")
    )


def read_weights(obj: Mapping[str, Any]) -> Weights:
    """The split the spec asks for: the field's value to the candidate; absent, all of it."""
    percent = _predictor(obj).get("canaryTrafficPercent")
    if percent is None:
        return Weights(stable=0, candidate=100)  # KServe: no field, the latest revision takes all
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise InferenceServicePatchError(f"{_where(obj)} has {FIELD} {percent!r}, not a percentage.")
    return Weights.candidate_at(percent)


def apply_weights(obj: Mapping[str, Any], weights: Weights) -> dict[str, Any]:
    """A copy of ``obj`` whose canary field says ``weights``; nothing else differs."""
    if weights.fallback > 0:
        raise InferenceServicePatchError(
            "an InferenceService canary splits between two revisions only; it has no fallback destination."
        )
    if weights.mirror_percent > 0:
        raise InferenceServicePatchError(
            "an InferenceService canary cannot mirror traffic; use strategy canary, not blueGreen."
        )
    new = copy.deepcopy(dict(obj))
    _predictor(new)  # a clear error when there is none
    predictor: dict[str, Any] = new["spec"]["predictor"]
    if weights.candidate == 100:
        predictor.pop("canaryTrafficPercent", None)  # promotion, as KServe documents it
    else:
        predictor["canaryTrafficPercent"] = weights.candidate
    return new


def drift(obj: Mapping[str, Any], expected: Weights, revisions: Revisions | None = None) -> str | None:
    """A sentence when the live field or (given ``revisions``) the revisions are not ours."""
    where = _where(obj)
    live = read_weights(obj)
    if live != expected:
        return (
            f"{where} sends {live.candidate}% to the candidate revision, not the {expected.candidate}% "
            "mesh-canary wrote; someone else changed it (a GitOps sync?)."
        )
    now = revisions_of(obj)
    if revisions is not None and (now.candidate, now.latest_created) != (
        revisions.candidate,
        revisions.latest_created,
    ):
        return (
            f"{where} has a new predictor revision ({now.latest_created or now.candidate}) since the "
            f"rollout of {revisions.candidate} began; the revision the checks judged is no longer the "
            "one getting the canary traffic."
        )
    return None


def revision_problem(obj: Mapping[str, Any], stable: str, candidate: str) -> str | None:
    """Why the status does not show the canary the policy describes (None: it does)."""
    where, found = _where(obj), revisions_of(obj)
    if found.stable is None or found.candidate is None:
        return (
            f"{where} reports no previousRolledoutRevision and latestReadyRevision in "
            "status.components.predictor: KServe has not rolled out a new revision next to an old one "
            "yet (update the predictor with canaryTrafficPercent set, then start the rollout)."
        )
    if (found.stable, found.candidate) != (stable, candidate):
        return (
            f"{where} runs revisions {found.stable} (previous) and {found.candidate} (latest ready), "
            f"not the policy's stable {stable} and candidate {candidate}; name those revisions as "
            "spec.stable.destination.host and spec.candidate.destination.host."
        )
    if found.latest_created not in (None, found.candidate):
        return (
            f"{where} is still starting revision {found.latest_created}; wait until it is ready "
            "(latestReadyRevision) before rolling it out."
        )
    return None


# --------------------------------------------------------------------------- the router


class KServeRouter(KubeRouteRouter):
    """Reads and writes one InferenceService's canary split between its two predictor revisions."""

    GROUP, VERSION, PLURAL, KIND = GROUP, VERSION, PLURAL, KIND
    Error, Conflict, NotFound = KServeRouterError, KServeConflict, KServeNotFound

    def __init__(self, policy: Policy, api_client: kubernetes.client.ApiClient, **options: Any) -> None:
        super().__init__(policy, api_client, **options)
        self.stable_revision = policy.stable.destination.host
        self.candidate_revision = policy.candidate.destination.host
        self._last_read: dict[str, Any] | None = None
        self.revisions: Revisions | None = None  # as the status reported them when the rollout began

    def weights_of(self, obj: dict[str, Any]) -> Weights:
        return read_weights(obj)

    def with_weights(self, obj: dict[str, Any], weights: Weights) -> dict[str, Any]:
        return apply_weights(obj, weights)

    def drift_of(self, obj: dict[str, Any], expected: Weights) -> str | None:
        try:
            return drift(obj, expected, self.revisions)
        except InferenceServicePatchError as e:
            return f"{self.ref} can no longer be read as a canary: {e}"

    def read(self) -> dict[str, Any]:
        obj = super().read()
        self._last_read = copy.deepcopy(obj)  # what `_replace` diffs against
        return obj

    def claim(self, owner: str, rollout: str, previous: str = "") -> None:
        """Take the InferenceService only when its status shows the policy's two revisions."""
        current = self.read()
        problem = revision_problem(current, self.stable_revision, self.candidate_revision)
        if problem is not None:
            raise InferenceServicePatchError(problem)  # a configuration error: not retried
        self.revisions = revisions_of(current)
        super().claim(owner, rollout, previous)

    def _send(self, desired: dict[str, Any]) -> None:
        """A merge patch of the fields that differ from the object read, with its resourceVersion."""
        base = self._last_read
        if base is None:  # every caller reads first; keep the guard explicit all the same
            raise self.Error(f"mesh-canary tried to write {self.ref} without reading it first")
        patch = merge_patch_diff(base, desired)
        # The resourceVersion read is the precondition: the API server answers 409 if it moved.
        patch.setdefault("metadata", {})["resourceVersion"] = (base.get("metadata") or {}).get(
            "resourceVersion"
        )
        self._api.patch_namespaced_custom_object(
            self.GROUP,
            self.VERSION,
            self.namespace,
            self.PLURAL,
            self.name,
            patch,
            _request_timeout=self._timeout,
        )
