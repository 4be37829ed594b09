"""A deleted ModelRollout leaves its traffic on stable: the finalizer, and putting traffic back.

`FINALIZER` stays on the resource while its rollout is in progress, and only then, so that
deleting it waits until the controller has written 100% stable (`Finalizer.finish_deleted`).
`restore_stable` is also how a rollout superseded by a new spec ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes.client

from mesh_canary.controller.admission import Admission
from mesh_canary.controller.handler import RolloutHandler, meta, policy_from_spec
from mesh_canary.controller.metrics import ControllerMetrics
from mesh_canary.core.model import Policy
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.kube.errors import KubeError, kube_call
from mesh_canary.kube.names import GROUP, PLURAL, VERSION
from mesh_canary.kube.status import FINALIZER, saved_state
from mesh_canary.protocols import TrafficRouter

log = logging.getLogger("mesh_canary.controller")

RouterFor = Callable[[Policy], TrafficRouter]
CONFLICT_ATTEMPTS = 5


class Finalizer:
    """Keeps the finalizer in step with the rollout, and ends a deleted rollout on stable."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        admission: Admission,
        metrics: ControllerMetrics,
        router_for: RouterFor,
        *,
        request_timeout_s: float,
        lock: threading.Condition,
        forget: Callable[[RolloutHandler], None],
    ) -> None:
        """``lock``: the one guarding the handlers; ``forget``: drops a handler whose resource is gone."""
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._admission = admission
        self._metrics = metrics
        self._router_for = router_for
        self._timeout = request_timeout_s
        self._lock = lock
        self._forget = forget

    def restore_stable(self, h: RolloutHandler, policy: Policy | None, run_id: str = "") -> bool:
        """Write 100% stable with the router of ``policy`` (the rollout being ended)."""
        if policy is None:
            log.warning(
                "%s: no record of the spec of the rollout in progress; its weights were left as they are",
                h.ref,
            )
            return False
        if not self._admission.routes_allowed(h.key[0], policy):
            log.warning(
                "%s: the rollout in progress names VirtualService %s/%s outside its namespace; "
                "not touched (--allow-cross-namespace is off)",
                h.ref,
                policy.virtual_service.namespace,
                policy.virtual_service.name,
            )
            return False
        runner = h.runner
        router = runner.router if runner is not None and runner.policy == policy else self._router_for(policy)
        # One attempt (routers do not retry): a failure fails this reconcile, which is retried.
        router.set_weights(ALL_STABLE)
        release = getattr(router, "release", None)
        if run_id and callable(release):
            release(run_id)  # the route is free for the next rollout (ownership, run/runner.py)
        return True

    def finish_deleted(self, h: RolloutHandler, obj: Mapping[str, Any] | None) -> None:
        """The resource is being deleted (or is gone): leave its traffic on stable."""
        status = (obj or {}).get("status") or (h.store.status if h.store else {})
        state = h.runner.state if h.runner else saved_state(status)
        policy = h.runner.policy if h.runner else policy_from_spec(obj, status.get("appliedSpec"))
        in_progress = state is not None and not state.terminal and not h.finalized
        if state is not None and in_progress and self.restore_stable(h, policy, state.run_id):
            self._metrics.rollbacks.labels("deleted").inc()
            h.announce(
                "Deleted",
                f"the ModelRollout was deleted at {state.weights.candidate}%: 100% of traffic back on stable",
                "warning",
            )
        h.finalized = True
        h.drop_runner()
        h.phase = "RolledBack" if in_progress else h.phase
        if obj is not None and FINALIZER in (meta(obj).get("finalizers") or []):
            self.ensure(h, present=False, obj=obj)
        with self._lock:
            gone = h.deleted
        if gone:
            self._forget(h)

    def ensure(self, h: RolloutHandler, present: bool, obj: Mapping[str, Any] | None = None) -> None:
        """Keep FINALIZER on the resource while its rollout is in progress, and only then."""
        current: Any = obj if obj is not None else h.obj
        if (FINALIZER in (meta(current).get("finalizers") or [])) == present:
            return
        what = f"the finalizer of ModelRollout {h.ref}"
        # Our own status writes move the resourceVersion on: the first attempt starts from the
        # answer to the last of them (no GET); a conflict (someone else wrote since) reads afresh.
        known = h.store.metadata if h.store is not None else None
        for attempt in range(CONFLICT_ATTEMPTS):
            from_known = known is not None
            if known is not None:
                m, known = dict(known), None  # used once: a conflict or a doubt reads afresh
            else:
                with kube_call(f"reading {what}"):
                    current = self._custom.get_namespaced_custom_object(
                        GROUP, VERSION, h.key[0], PLURAL, h.key[1], _request_timeout=self._timeout
                    )
                m = meta(current)
            finalizers = list(m.get("finalizers") or [])
            if (FINALIZER in finalizers) == present:
                if from_known:
                    continue  # our last answer disagrees with the informer's copy: ask the server
                return
            finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
            body = {"metadata": {"finalizers": finalizers, "resourceVersion": m.get("resourceVersion")}}
            try:
                with kube_call(f"writing {what}"):
                    updated: Any = self._custom.patch_namespaced_custom_object(
                        GROUP, VERSION, h.key[0], PLURAL, h.key[1], body, _request_timeout=self._timeout
                    )
            except KubeError as e:
                if e.not_found:
                    return
                if not e.conflict or attempt == CONFLICT_ATTEMPTS - 1:
                    raise
                continue
            if h.store is not None:
                h.store.saw(updated)
            with self._lock:
                if isinstance(updated, dict) and not h.deleted:
                    h.obj = updated
            return
