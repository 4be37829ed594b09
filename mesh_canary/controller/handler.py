"""What the controller keeps for one ModelRollout, and small pure readers of the resource."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_canary.controller.metrics import Stopwatch
from mesh_canary.core.engine import RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import PolicyError, load_policy
from mesh_canary.kube.events import KubeEventNotifier
from mesh_canary.kube.names import API_VERSION, KIND
from mesh_canary.kube.status import COMMAND_ANNOTATIONS, KubeStatusStore, StatusFacts
from mesh_canary.metrics.coalesce import grid_ceil, grid_floor, on_grid
from mesh_canary.notify import Dispatcher
from mesh_canary.protocols import Announcement, Notifier
from mesh_canary.redact import redact, redact_value
from mesh_canary.run.runner import RolloutRunner

log = logging.getLogger("mesh_canary.controller")

Key = tuple[str, str]  # (namespace, name)


@dataclass
class RolloutHandler:
    """What the controller keeps for one ModelRollout."""

    key: Key
    obj: dict[str, Any]
    uid: str | None = None
    runner: RolloutRunner | None = None
    fingerprint: str = ""
    store: KubeStatusStore | None = None
    # What the status shows besides the engine state (the store reads it at every write).
    facts: StatusFacts = field(default_factory=StatusFacts)
    events: KubeEventNotifier | None = None
    notifier: Dispatcher | None = None
    deleted: bool = False
    removed: bool = False
    invalid_reported: int | None = None  # generation whose InvalidPolicy Event was sent
    # The last policy document checked (as canonical JSON) and what checking it gave.
    checked: tuple[str, Policy | tuple[str, ...]] | None = None
    last_error: str = ""
    # scheduling, guarded by the work queue's lock
    running: bool = False
    rerun: bool = False
    token: int = 0
    due: float | None = None
    # The grid instant the next analysis was announced for (`expect_read`): later than
    # `due_at` after an analysis that ran more than an interval late (`next_due`).
    announced: float | None = None
    phase: str = "Pending"
    finalized: bool = False  # traffic already restored after a deletion
    stopwatch: Stopwatch = field(default_factory=Stopwatch)  # one analysis's read + judge time

    @property
    def ref(self) -> str:
        return f"{self.key[0]}/{self.key[1]}"

    @property
    def log_extra(self) -> dict[str, str]:
        return {"rollout": self.key[1], "namespace": self.key[0]}

    def announce(self, kind: str, message: str, severity: str = "info") -> None:
        """To the rollout's notifier when it runs, else to the log and its Events."""
        message = redact(message)
        a = Announcement(rollout=self.key[1], kind=kind, message=message, severity=severity)
        if self.notifier is not None:
            self.notifier.notify(a)
            return
        level = logging.WARNING if severity == "warning" else logging.INFO
        log.log(level, message, extra={**self.log_extra, "event": kind})
        if self.events is not None:
            self.events.notify(a)

    def expect_read(self, due: float | None) -> None:
        """Tell the metrics source (if it shares queries) what the analysis due at ``due`` reads."""
        self.announced = due
        self.expect_at(due)

    def expect_at(self, at: float | None) -> None:
        """Tell the metrics source (if it shares queries) that the next analysis reads at ``at``
        (when it is due stays as it was: `expect_read`)."""
        runner = self.runner
        state = runner.state if runner is not None else None
        if at is None or runner is None or state is None or state.terminal or state.rollback_pending:
            return
        expect = getattr(runner.metrics, "expect", None)
        if callable(expect):
            expect(state.window_start, at)

    def drop_runner(self) -> None:
        """Forget the runner: its notifier delivers what is queued, its metrics source is closed
        (a shared Prometheus client only loses a user, and its coalescer forgets the source)."""
        if self.notifier is not None:
            self.notifier.close(timeout_s=5.0)
        self.notifier = None
        runner, self.runner = self.runner, None
        self.fingerprint = ""
        close = getattr(runner.metrics, "close", None) if runner is not None else None
        if callable(close):
            try:
                close()
            except Exception:  # closing must not fail the turn: the next one starts afresh
                log.warning("closing the metrics source of %s failed", self.ref, exc_info=True)

    def reset(self) -> None:
        """Forget the resource's previous life (it was deleted and created again)."""
        self.drop_runner()
        self.store, self.events, self.uid, self.invalid_reported, self.finalized = (
            None,
            None,
            None,
            None,
            False,
        )
        self.facts = StatusFacts()
        self.announced = None
        self.checked = None


# --- when analyses run ----------------------------------------------------------------------------
# Analyses are due on a grid: multiples of the analysis interval since the epoch, so that every
# rollout with the same interval reads Prometheus at the same instant and one query per metric
# family serves them all (mesh_canary.metrics.coalesce). A rollback retry is never moved.

# A late analysis reads at the instant it announced while that is at most one interval ago (its
# shared queries' answers are kept for coalesce.KEEP_S); later, at the last grid instant. Never
# older: an overloaded controller shares queries but never judges staler data than an on-time
# analysis would have by then (a failure is never seen later for the sake of a query).


def due_at(state: RolloutState, policy: Policy) -> float:
    """When the next analysis is due: the engine's time, or the first grid instant after it (so
    at most one interval later, once: after the start or an order; a pending rollback's retry
    is never moved). Never sooner: no window is shorter than the engine asks."""
    due = state.next_tick_at(policy)
    if state.rollback_pending:
        return due
    return grid_ceil(due, policy.analysis.interval_s)


def analysis_instant(now: float, due: float, interval_s: float) -> float | None:
    """The instant a due analysis reads at: the grid instant it was due at (the one it announced,
    so a late analysis still takes its part of that instant's shared queries: a past instant,
    which Prometheus answers as it would have then), if at most one interval ago; later than
    that, the last grid instant before ``now``. None: read at ``now`` (``due`` is off the grid,
    e.g. a rollback retry)."""
    if not on_grid(due, interval_s):
        return None
    if due - 1e-6 <= now <= due + interval_s:
        return due
    at = grid_floor(now, interval_s)
    return at if at >= due - 1e-6 else None


def next_due(state: RolloutState, policy: Policy, now: float) -> float:
    """When the analysis after one that read at a past instant is due: `due_at`, or, when that
    has passed already (the analysis ran more than an interval late), the next grid instant
    after ``now``: one analysis at the next shared instant instead of catching up one by one."""
    due = due_at(state, policy)
    if state.rollback_pending or due > now:
        return due
    return grid_ceil(now, policy.analysis.interval_s)


class RedactingNotifier:
    """Every announcement of a rollout (Events, webhooks, the log) without a secret in it."""

    def __init__(self, inner: Notifier) -> None:
        self.inner = inner

    def notify(self, announcement: Announcement) -> None:
        self.inner.notify(
            dataclasses.replace(
                announcement,
                message=redact(announcement.message),
                details=redact_value(announcement.details),
            )
        )


def meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return dict(m) if isinstance(m, Mapping) else {}


def key_of(obj: Mapping[str, Any]) -> Key:
    m = meta(obj)
    return str(m.get("namespace") or ""), str(m.get("name") or "")


def command_values(obj: Mapping[str, Any]) -> dict[str, str]:
    """People's orders on the resource: order word -> annotation value."""
    ann = meta(obj).get("annotations") or {}
    return {word: str(ann[key]) for word, key in COMMAND_ANNOTATIONS.items() if key in ann}


def involved_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The reference an Event about the resource names."""
    m = meta(obj)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": m.get("name"),
        "namespace": m.get("namespace"),
        "uid": m.get("uid"),
        "resourceVersion": m.get("resourceVersion"),
    }


def policy_from_spec(obj: Mapping[str, Any] | None, spec: Any) -> Policy | None:
    """The policy of a saved spec (``status.appliedSpec``), or None when there is none or it is invalid."""
    if obj is None or not isinstance(spec, Mapping):
        return None
    m = meta(obj)
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": m.get("name"), "namespace": m.get("namespace")},
        "spec": copy.deepcopy(dict(spec)),
    }
    try:
        return load_policy(doc)
    except PolicyError:
        return None
