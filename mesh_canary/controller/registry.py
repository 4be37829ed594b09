"""The model registry in the controller: resolved at a rollout's start, recorded in its status,
told the outcome afterwards (what `mesh-canary run` does, mesh_canary/registry/announce.py).

- At start, before anything is written, each ``model:`` of the spec is resolved
  (`announce.resolve_versions`), or the versions recorded in ``status.modelRegistry`` are
  reused when they were resolved for this very spec (its fingerprint): a restarted controller
  never resolves again. A registry that cannot resolve writes nothing: the status says so
  (``RegistryResolved`` False, phase Pending), an Event says it once, and the start is tried
  again with backoff (the controller's error retry, doubled per failure up to
  `MAX_RETRY_S`), so a registry briefly down delays the start and never fails the rollout.
- After a promotion or a rollback the `announce.RegistryAnnouncer` (one more receiver on the
  rollout's background notifier: it never delays the rollback's write) moves the alias or
  tags the version, with bounded retries; each outcome (``RegistryUpdated``: Unknown while
  retrying, then True or False) is kept here and written by the rollout's next turn, which
  the announcer asks for (``kick``): only a turn writes the status.
- Where the registry is and its token are the controller's (`Admission.registry_url`,
  ``--registry-token-env``), never the spec's.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mesh_canary.controller.admission import Admission
from mesh_canary.controller.handler import Key, RolloutHandler
from mesh_canary.core.engine import Phase, RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.kube.status import RegistryShown, condition
from mesh_canary.protocols import Announcement, Clock, ModelRegistry
from mesh_canary.redact import redact, register_secret
from mesh_canary.registry import RegistryInputError, registry_builder
from mesh_canary.registry.announce import (
    CONDITION,
    KEY,
    ROLES,
    RegistryAnnouncer,
    RegistryStartError,
    condition_document,
    registry_record,
    resolve_versions,
)
from mesh_canary.registry.mlflow import RegistryRefused

__all__ = ["RESOLVED", "ControllerRegistry", "RegistryView"]

# What a finished rollout tells the registry (the announcement the runner made at its end).
OUTCOMES = {Phase.SUCCEEDED: "Promoted", Phase.ROLLED_BACK: "RolledBack", Phase.ABORTED: "Aborted"}
RESOLVED = "RegistryResolved"  # the condition saying whether the spec's models were resolved at start
MAX_RETRY_S = 300.0  # the longest wait between two tries of an unresolvable start


class RegistryView:
    """What a rollout's status shows of the registry (read at every status write, any thread)."""

    def __init__(
        self, record: Mapping[str, Any] | None, conditions: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        self._lock = threading.Lock()
        self._record = dict(record) if record is not None else None
        self._conditions = {str(c["type"]): dict(c) for c in conditions}

    def set(self, condition: Mapping[str, Any]) -> None:
        with self._lock:
            self._conditions[str(condition["type"])] = dict(condition)

    def shown(self) -> RegistryShown:
        with self._lock:
            return self._record, tuple(self._conditions.values())


class ControllerRegistry:
    """Resolves a spec's registry versions at start (`start`) and builds its announcer."""

    def __init__(
        self,
        admission: Admission,
        clock: Clock,
        kick: Callable[[RolloutHandler], None],
        *,
        token_env: str | None,
        retry_s: float,
    ) -> None:
        self.admission = admission
        self.clock = clock
        self.kick = kick
        self.token_env = token_env
        self.retry_s = retry_s
        self._failures: dict[Key, int] = {}
        self._reported: dict[Key, str] = {}

    def start(
        self, h: RolloutHandler, policy: Policy, status: Mapping[str, Any], *, resuming: bool = False
    ) -> RegistryAnnouncer | float | None:
        """The rollout's announcer (None: its spec names no registry), its versions resolved or
        reused and shown in ``h.facts``; or, when they cannot be resolved, when to try again
        (the status says why, an Event once; nothing was written).

        ``resuming``: the rollout already started (status.rollout is this spec's) without a
        record of its versions (saved by a controller before this one): it is never held up
        by the registry, whose outcome is then not told if it cannot resolve now."""
        if policy.registry is None or all(getattr(policy, role).model is None for role in ROLES):
            h.facts = dataclasses.replace(h.facts, registry=RegistryView({}).shown, waiting=None)
            return None
        record = status.get(KEY)
        try:
            registry = self._registry(policy)
            versions = resolve_versions(policy, registry, {KEY: record})
        except (RegistryStartError, RegistryInputError) as e:
            if resuming and not isinstance(record, Mapping):
                said = (
                    f"{redact(str(e))}; the rollout goes on and its outcome will not be told to the registry"
                )
                view = RegistryView(
                    None, [condition_document("False", "NotRecorded", said, self.clock.now(), RESOLVED)]
                )
                h.facts = dataclasses.replace(h.facts, registry=view.shown, waiting=None)
                h.announce("RegistryUnresolved", said, "warning")
                return None
            return self._wait(h, policy, e)
        self._failures.pop(h.key, None)
        self._reported.pop(h.key, None)
        fresh = registry_record(policy, versions)
        if isinstance(record, Mapping) and record.get("policyFingerprint") == fresh["policyFingerprint"]:
            view = RegistryView(fresh)  # resumed: the conditions stay what the status says
        else:
            now = self.clock.now()
            said = ", ".join(f"{role} {v.uri} is version {v.version}" for role, v in versions.items())
            view = RegistryView(
                fresh,
                [
                    condition_document("True", "Resolved", f"resolved at start: {said}", now, RESOLVED),
                    condition_document(
                        "Unknown",
                        "RolloutInProgress",
                        "the registry is told the outcome after the promotion or the rollback",
                        now,
                    ),
                ],
            )
        h.facts = dataclasses.replace(h.facts, registry=view.shown, waiting=None)

        def record_outcome(condition: dict[str, Any]) -> None:
            view.set(condition)
            self.kick(h)  # the rollout's next turn writes it

        return RegistryAnnouncer(registry, policy, versions, record_outcome, retrying=record_outcome)

    def resume(
        self, h: RolloutHandler, announcer: RegistryAnnouncer, state: RolloutState, status: Mapping[str, Any]
    ) -> bool:
        """A rollout resumed after its end whose outcome the registry was never told (the
        controller stopped first): tell it now, in the background like every announcement
        (True: being told)."""
        shown = condition(status, CONDITION)
        kind = OUTCOMES.get(state.phase)
        if not state.terminal or kind is None or shown is None or shown.get("status") != "Unknown":
            return False
        told = Announcement(rollout=h.key[1], kind=kind, message=redact(state.reason), severity="warning")
        threading.Thread(target=announcer.notify, args=(told,), name=f"registry {h.ref}", daemon=True).start()
        return True

    def forget(self, key: Key) -> None:
        self._failures.pop(key, None)
        self._reported.pop(key, None)

    def _registry(self, policy: Policy) -> ModelRegistry:
        """The registry at the controller's own URL for it, with the controller's token."""
        spec = policy.registry
        assert spec is not None
        build = registry_builder(spec.provider)
        token = os.environ.get(self.token_env) if self.token_env else None
        register_secret(token)
        url = self.admission.registry_url(spec.tracking_uri)
        return build(dataclasses.replace(spec, tracking_uri=url, token_from_env=None), token or None)

    def _wait(self, h: RolloutHandler, policy: Policy, error: Exception) -> float:
        failures = self._failures.get(h.key, 0)
        self._failures[h.key] = failures + 1
        delay = min(self.retry_s * 2.0**failures, MAX_RETRY_S)
        refused = isinstance(error.__cause__, RegistryRefused) or isinstance(error, RegistryInputError)
        reason = "RegistryRefused" if refused else "RegistryUnavailable"
        said = redact(str(error))
        message = f"{said}; nothing was written; trying again in {delay:g}s (try {failures + 1})"
        view = RegistryView(None, [condition_document("False", reason, message, self.clock.now(), RESOLVED)])
        h.facts = dataclasses.replace(h.facts, policy=policy, registry=view.shown, waiting=message)
        if self._reported.get(h.key) != said:
            self._reported[h.key] = said
            h.announce("RegistryUnresolved", f"the rollout waits for the model registry: {said}", "warning")
        return self.clock.now() + delay
