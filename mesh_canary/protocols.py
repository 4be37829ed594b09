"""The small interfaces every adapter implements, one module per backend.

Drivers (CLI, controller, simulator) hold one of each and feed what they return to the
pure engine; the engine never sees them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mesh_canary.core.hooks import HookResult
from mesh_canary.core.observations import Observation
from mesh_canary.core.weights import ALL_STABLE, Weights

__all__ = [
    "ALL_STABLE",
    "Announcement",
    "Clock",
    "HookCaller",
    "MetricsSource",
    "ModelRegistry",
    "ModelVersion",
    "Notifier",
    "ObjectCache",
    "StateStore",
    "TrafficRouter",
    "Weights",
]


class TrafficRouter(Protocol):
    def set_weights(self, weights: Weights) -> None:
        """Write the weights in one call; raise on failure (the driver retries)."""
        ...

    def get_weights(self) -> Weights:
        """The weights currently in force (to notice someone else changing them)."""
        ...


class MetricsSource(Protocol):
    def read(self, since: float, now: float) -> Observation:
        """Counts per version accumulated over ``[since, now]``.

        Never raises for missing or bad data: it returns an Observation whose
        ``problem`` says what was wrong, so the engine's no-data rules decide.
        """
        ...


class StateStore(Protocol):
    def load(self) -> dict[str, Any] | None:
        """The saved rollout state, or None when there is none yet."""
        ...

    def save(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Announcement:
    """Something a person should hear about: a step, a promotion, a rollback."""

    rollout: str
    kind: str  # Started | StepAdvanced | Paused | Resumed | Promoted | RolledBack | ...
    message: str
    severity: str = "info"  # info | warning
    details: dict[str, Any] | None = None


class Notifier(Protocol):
    def notify(self, announcement: Announcement) -> None:
        """Best effort: must not raise and must not block for long."""
        ...


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model, as the policy named it and as the registry resolved it."""

    uri: str  # as written: models:/NAME@ALIAS or models:/NAME/VERSION
    name: str
    version: str


class ModelRegistry(Protocol):
    """A model registry (MLflow's): each call is one bounded attempt, raising on failure."""

    def resolve(self, uri: str) -> ModelVersion:
        """The version ``uri`` names now (an alias is looked up, a version checked to exist)."""
        ...

    def set_alias(self, model: ModelVersion, alias: str) -> None: ...

    def set_tags(self, model: ModelVersion, tags: Mapping[str, str]) -> None: ...


class ObjectCache(Protocol):
    """A watch cache of one kind of namespaced object (the controller's, kube.watchcache)."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The newest copy seen of the object; None when unknown (then read it yourself)."""
        ...


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class HookCaller(Protocol):
    def call(self, phase: str, fields: Mapping[str, Any], stop_at_failure: bool) -> HookResult:
        """Make the policy's calls of one hook phase (``preRollout``, ...) in order, each
        within its total deadline; never raises. ``fields``: the body template's values.
        ``stop_at_failure``: a deciding phase stops at its first failed call."""
        ...
