"""What a rollout does with the model registry: resolve at start, tell it the outcome afterwards.

- At start (`start_registry_run`), each version the policy names as ``model:`` is resolved to
  a registry version (``models:/fraud-scorer@challenger`` -> version 7) and recorded in the
  saved state under ``modelRegistry``. A restart of the same rollout reuses the recorded
  versions and never resolves again: the alias may have moved since, and the rollout goes on
  judging the version it began with.
- After a promotion the registry alias (``spec.registry.alias``, default ``champion``) moves
  to the candidate's version and that version gets tags (rollout, result, time); after a
  rollback the candidate's version is tagged with the result and the reason, and no alias
  moves. This is an announcement like a webhook: a Notifier run by the background notifier,
  after the weights are written and the state saved, so a registry that is down never
  blocks or delays a rollback. It retries a failed call (bounded: ``attempts`` tries within
  ``budget_s``), and records the outcome as the ``RegistryUpdated`` condition next to the
  versions in the saved state.
"""

from __future__ import annotations

import copy
import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh_canary.core import engine
from mesh_canary.core.model import Policy
from mesh_canary.errors import CouldNotWork
from mesh_canary.protocols import Announcement, ModelRegistry, ModelVersion, StateStore
from mesh_canary.redact import redact
from mesh_canary.registry import registry_for
from mesh_canary.registry.mlflow import RegistryRefused

__all__ = [
    "CONDITION",
    "KEY",
    "RecordingStore",
    "RegistryAnnouncer",
    "RegistryRun",
    "RegistryStartError",
    "condition_document",
    "registry_record",
    "resolve_versions",
    "start_registry_run",
]

log = logging.getLogger("mesh_canary.registry")

KEY = "modelRegistry"  # the saved state's key for what the registry said
CONDITION = "RegistryUpdated"
TAG_PREFIX = "mesh-canary."
ROLES = ("stable", "candidate")


class RegistryStartError(CouldNotWork):
    """The registry could not resolve a version at start: nothing was written."""


def _now_iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_versions(
    policy: Policy, registry: ModelRegistry, saved: Mapping[str, Any] | None
) -> dict[str, ModelVersion]:
    """role -> the registry version it names: the recorded one when ``saved`` is this rollout's."""
    fingerprint = engine.policy_fingerprint(policy)
    record = (saved or {}).get(KEY)
    if isinstance(record, Mapping) and record.get("policyFingerprint") == fingerprint:
        recorded = record.get("versions") or {}
        return {role: ModelVersion(v["uri"], v["name"], str(v["version"])) for role, v in recorded.items()}
    out: dict[str, ModelVersion] = {}
    for role in ROLES:
        uri = getattr(policy, role).model
        if uri is None:
            continue
        try:
            out[role] = registry.resolve(uri)
        except CouldNotWork as e:
            raise RegistryStartError(
                f"the {role}'s model {uri} could not be resolved, so the rollout did not start: {e}"
            ) from e
    return out


class RecordingStore:
    """A StateStore that saves the registry record (versions, condition) with every state."""

    def __init__(self, inner: StateStore, record: dict[str, Any]) -> None:
        self.inner = inner
        self.record = record
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return self.inner.load()

    def save(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._last = dict(state)
            self.inner.save({**state, KEY: copy.deepcopy(self.record)})

    def record_condition(self, condition: dict[str, Any]) -> None:
        """Save the condition with the last state (from the notifier's thread)."""
        with self._lock:
            self.record["condition"] = condition
            if self._last is not None:
                self.inner.save({**self._last, KEY: copy.deepcopy(self.record)})


class RegistryAnnouncer:
    """A Notifier: tells the registry about a promotion or a rollback, with bounded retries."""

    def __init__(
        self,
        registry: ModelRegistry,
        policy: Policy,
        versions: Mapping[str, ModelVersion],
        record: Callable[[dict[str, Any]], None],
        *,
        retrying: Callable[[dict[str, Any]], None] | None = None,
        attempts: int = 5,
        backoff_s: float = 0.5,
        budget_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.rollout = f"{policy.namespace}/{policy.name}"
        self.alias = policy.registry.alias if policy.registry is not None else "champion"
        self.versions = dict(versions)
        self.record = record
        # Told (with an ``Unknown``/``Retrying`` condition) each time a failed call will be tried again.
        self.retrying = retrying
        self.attempts, self.backoff_s, self.budget_s = attempts, backoff_s, budget_s
        self.clock, self.sleep = clock, sleep
        self.condition: dict[str, Any] | None = None
        self._idle = threading.Event()
        self._idle.set()

    def notify(self, announcement: Announcement) -> None:
        candidate = self.versions.get("candidate")
        if candidate is not None and announcement.kind == "Aborted":
            # Someone else changed the weights: mesh-canary judged nothing to tell the registry.
            self._report(
                "False",
                "Aborted",
                f"the rollout was aborted ({redact(announcement.message)}): the registry was not changed",
                self.clock(),
            )
            return
        if candidate is None or announcement.kind not in ("Promoted", "RolledBack"):
            return
        self._idle.clear()
        try:
            self._tell(announcement, candidate)
        finally:
            self._idle.set()

    def wait(self, timeout_s: float) -> bool:
        """Wait (bounded) for an update in progress; True when none is left."""
        return self._idle.wait(timeout_s)

    def _tell(self, a: Announcement, candidate: ModelVersion) -> None:
        at = self.clock()
        promoted = a.kind == "Promoted"
        tags = {
            f"{TAG_PREFIX}rollout": self.rollout,
            f"{TAG_PREFIX}result": "promoted" if promoted else "rolled-back",
            f"{TAG_PREFIX}time": _now_iso(at),
        }
        if not promoted:
            tags[f"{TAG_PREFIX}reason"] = redact(a.message)
        calls: list[tuple[str, Callable[[], None]]] = []
        if promoted:
            calls.append((f"move alias {self.alias}", lambda: self.registry.set_alias(candidate, self.alias)))
        calls.append(("tag the version", lambda: self.registry.set_tags(candidate, tags)))
        deadline = time.monotonic() + self.budget_s
        done: list[str] = []
        for what, call in calls:
            error = self._with_retries(
                call, deadline, f"{what} of {candidate.name} version {candidate.version}"
            )
            if error is not None:
                self._report(
                    "False",
                    "RegistryRefused" if isinstance(error, RegistryRefused) else "RegistryUnavailable",
                    f"could not {what} of {candidate.name} version {candidate.version}"
                    + (f" (done: {', '.join(done)})" if done else "")
                    + f": {redact(str(error))}",
                    at,
                )
                return
            done.append(what)
        if promoted:
            message = (
                f"alias {self.alias} moved to {candidate.name} version {candidate.version}, tagged promoted"
            )
        else:
            message = f"{candidate.name} version {candidate.version} tagged rolled-back; alias {self.alias} not moved"
        self._report("True", "AliasMoved" if promoted else "Tagged", message, at)

    def _with_retries(self, call: Callable[[], None], deadline: float, what: str) -> Exception | None:
        error: Exception | None = None
        for attempt in range(self.attempts):
            try:
                call()
                return None
            except RegistryRefused as e:
                return e  # the registry said no: asking again changes nothing
            except Exception as e:  # one broken registry must not stop the announcer
                error = e
            pause = min(self.backoff_s * 2**attempt, 10.0)
            if attempt + 1 >= self.attempts or time.monotonic() + pause >= deadline:
                break
            if self.retrying is not None:
                self.retrying(
                    condition_document(
                        "Unknown",
                        "Retrying",
                        f"could not {what} (try {attempt + 1} of at most {self.attempts}), "
                        f"trying again in {pause:g}s: {redact(str(error))}",
                        self.clock(),
                    )
                )
            self.sleep(pause)
        return error

    def _report(self, status: str, reason: str, message: str, at: float) -> None:
        condition = condition_document(status, reason, message, at)
        level = logging.INFO if status == "True" else logging.WARNING
        log.log(level, "model registry: %s", message, extra={"rollout": self.rollout, "event": CONDITION})
        try:
            self.record(condition)
        except Exception:  # the condition is also in the log; a failed save must not raise here
            log.exception("could not save the %s condition", CONDITION)
        # Shown once saved: whoever sees the condition finds it in the state too.
        self.condition = condition


def condition_document(
    status: str, reason: str, message: str, at: float, type_: str = CONDITION
) -> dict[str, Any]:
    """A registry condition (default ``RegistryUpdated``) as saved: type, status, reason, message,
    lastTransitionTime."""
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _now_iso(at),
    }


@dataclass(frozen=True)
class RegistryRun:
    """One run's registry parts: the store to give the runner, the announcer to add to its notifier."""

    store: RecordingStore
    announcer: RegistryAnnouncer
    versions: Mapping[str, ModelVersion]


def registry_record(policy: Policy, versions: Mapping[str, ModelVersion]) -> dict[str, Any]:
    """What is saved under ``modelRegistry`` at start (and logged): the provider, the policy's
    fingerprint (whose restart reuses the versions) and each role's resolved version."""
    for role, v in versions.items():
        log.info("%s model %s is %s version %s", role, v.uri, v.name, v.version)
    return {
        "provider": policy.registry.provider if policy.registry is not None else "",
        "policyFingerprint": engine.policy_fingerprint(policy),
        "versions": {
            role: {"uri": v.uri, "name": v.name, "version": v.version} for role, v in versions.items()
        },
    }


def start_registry_run(
    policy: Policy, store: StateStore, registry: ModelRegistry | None = None, **announcer_options: Any
) -> RegistryRun | None:
    """Resolve the policy's registry versions (or reuse the recorded ones); None without any."""
    if policy.registry is None or all(getattr(policy, role).model is None for role in ROLES):
        return None
    registry = registry if registry is not None else registry_for(policy.registry)
    versions = resolve_versions(policy, registry, store.load())
    record = registry_record(policy, versions)
    recording = RecordingStore(store, record)
    announcer = RegistryAnnouncer(registry, policy, versions, recording.record_condition, **announcer_options)
    return RegistryRun(recording, announcer, versions)
