"""StateStore in a ModelRollout's ``status`` (the controller's memory between ticks).

The engine's whole state goes under ``status.rollout`` (read back to resume exactly after
a restart); next to it the controller writes what people and tools read: ``phase``,
``currentStep``/``stepCount``, ``weights``, ``checks`` (the latest verdict of every check
with its estimate and bounds), the versions, ``reason``/``message``, ``conditions`` and a
bounded ``history`` of past rollouts of the resource.

Writes go to the ``/status`` subresource as JSON merge patches computed against the status
last read or written, so a concurrent edit of the spec or of an annotation (a person
running ``rollout abort``) never makes a status write fail with 409 Conflict.

`render_status` and the helpers above it are pure (tested in tests/test_kube_status.py);
`KubeStatusStore` does the I/O.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kubernetes.client

from mesh_canary.core.engine import Phase, RolloutState, outcome_of
from mesh_canary.core.merge_patch import merge_patch_diff
from mesh_canary.core.model import Policy
from mesh_canary.kube.errors import KubeError, kube_call
from mesh_canary.kube.names import GROUP, PLURAL, VERSION
from mesh_canary.present.view import (
    INVALID,
    MESSAGE_LIMIT,
    PENDING,
    RolloutView,
    check_document,
    json_safe,
    parse_rfc3339,
    rfc3339,
)
from mesh_canary.present.view import (
    history_entry as history_entry,
)
from mesh_canary.redact import redact_value

log = logging.getLogger("mesh_canary.kube_status")

# The rollout's document (times, outcome, check and history shapes) is the one view of
# mesh_canary.present.view; these names stay for the controller and the tests.
iso, parse_iso, check_view, outcome_word = rfc3339, parse_rfc3339, check_document, outcome_of

# People's orders, written by `mesh-canary rollout abort|approve|pause|resume` (or kubectl
# annotate). Each value is a request id: a value the controller has not handled yet is
# one new order, so re-applying the same manifest never repeats one.
ANNOTATION_ABORT = "mesh-canary.io/abort"
ANNOTATION_APPROVE = "mesh-canary.io/approve"
ANNOTATION_PAUSE = "mesh-canary.io/pause"  # "true" | "false", optionally "true@<request id>"
ANNOTATION_PROMOTE = "mesh-canary.io/promote"  # "full@<request id>": skip the remaining steps
ANNOTATION_RETRY = "mesh-canary.io/retry"  # restart a RolledBack or Aborted rollout from step 0
ANNOTATION_RESTORE = "mesh-canary.io/restore"  # traffic from the fallback back to stable (a person's)
COMMAND_ANNOTATIONS = {
    "abort": ANNOTATION_ABORT,
    "approve": ANNOTATION_APPROVE,
    "pause": ANNOTATION_PAUSE,
    "promote": ANNOTATION_PROMOTE,
    "retry": ANNOTATION_RETRY,
    "restore": ANNOTATION_RESTORE,
}

# Present while a rollout is in progress, so that deleting the resource waits until the
# controller has put every request back on stable.
FINALIZER = "mesh-canary.io/restore-stable"

HISTORY_LIMIT = 20

CONDITION_TYPES = (
    "PolicyValid",
    "Progressing",
    "Succeeded",
    "RolledBack",
    "RollbackPending",
    "Aborted",
    "OnFallback",
    "WeightsInSync",
    "RegistryResolved",
    "RegistryUpdated",
    "Ready",
)
# Set only for a spec that names model registry versions (mesh_canary/controller/registry.py).
REGISTRY_CONDITIONS = ("RegistryResolved", "RegistryUpdated")

# What a status shows of the model registry: ``status.modelRegistry`` (None: keep what the
# status holds; empty: the spec names none, drop it and the registry conditions) and the
# registry conditions to set.
RegistryShown = tuple[Mapping[str, Any] | None, Sequence[Mapping[str, Any]]]

# `Ready` appears once a reconcile of the resource has failed: False (reason
# RECONCILE_ERROR) while it keeps failing, True again once a reconcile works.
READY = "Ready"
RECONCILE_ERROR = "ReconcileError"


# --------------------------------------------------------------------------- pure helpers


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set; its lastTransitionTime moves only when its status flips."""
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions:
        if c.get("type") != type_:
            out.append(dict(c))
            continue
        found = True
        since = c.get("lastTransitionTime") if c.get("status") == status else now
        out.append(_condition(type_, status, reason, message, since or now, generation))
    if not found:
        out.append(_condition(type_, status, reason, message, now, generation))
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(str(c.get("type")), len(order)))


def _condition(
    type_: str, status: str, reason: str, message: str, since: str, generation: int | None
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "lastTransitionTime": since,
    }
    if generation is not None:
        c["observedGeneration"] = generation
    return c


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    """The condition of ``type_`` in a status, or None."""
    for c in status.get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return dict(c)
    return None


def rollback_category(failed_checks: Iterable[str]) -> str:
    """Why a rollout rolled back, in one low-cardinality word (metrics label, condition reason)."""
    failed = set(failed_checks)
    for word in ("manual", "noData", "stepTimeout", "deleted", "superseded", "writeFailed"):
        if word in failed:
            return word
    return "checkFailed"


_CONDITION_REASON = {
    "manual": "Aborted",
    "noData": "NoData",
    "stepTimeout": "StepTimeout",
    "checkFailed": "CheckFailed",
    "deleted": "Deleted",
    "superseded": "Superseded",
    "writeFailed": "WriteFailed",
}


def add_history(
    history: Sequence[Mapping[str, Any]], entry: Mapping[str, Any], limit: int = HISTORY_LIMIT
) -> list[dict[str, Any]]:
    """History with ``entry`` added once (by id), newest last, at most ``limit`` entries."""
    out = [dict(h) for h in history if h.get("id") != entry.get("id")]
    out.append(dict(entry))
    return out[-limit:]


def render_status(
    previous: Mapping[str, Any] | None,
    *,
    state: RolloutState | None,
    policy: Policy | None,
    generation: int | None,
    now: float,
    drift: str | None = None,
    problems: Sequence[str] = (),
    handled_commands: Mapping[str, str] | None = None,
    applied_spec: Mapping[str, Any] | None = None,
    new_history: Sequence[Mapping[str, Any]] = (),
    history_limit: int = HISTORY_LIMIT,
    registry: RegistryShown = (None, ()),
    waiting: str | None = None,
) -> dict[str, Any]:
    """The whole ``status`` of a ModelRollout (pure).

    ``previous`` is the stored status (conditions keep their lastTransitionTime unless
    their status flips; history is extended). ``state`` is the rollout the controller
    runs under ``policy`` (None before any rollout started); ``problems`` non-empty
    means the resource's current spec is invalid; ``drift`` is the sentence saying
    someone else changed the weights (None: in sync). ``registry``: what to show of the model
    registry (`RegistryShown`); ``waiting``: why a valid rollout has not started yet.
    """
    prev = dict(previous or {})
    conditions = _Conditions(prev, iso(now), generation)
    if problems:
        text = "; ".join(problems)
        conditions.set(
            "PolicyValid", "False", "InvalidPolicy", f"the policy is invalid (nothing was changed): {text}"
        )
    else:
        conditions.set("PolicyValid", "True", "Valid", "the policy is valid")

    status: dict[str, Any] = {}
    history = [dict(h) for h in prev.get("history") or [] if isinstance(h, Mapping)]
    for entry in new_history:
        history = add_history(history, entry, history_limit)

    if state is None:
        status["phase"] = INVALID if problems else PENDING
        status["message"] = (
            conditions.items[0]["message"]
            if problems
            else waiting or "waiting for the controller to start the rollout"
        )
    else:
        status.update(_rollout_fields(prev, state, policy))
        route = "the route" if policy is None else f"the {policy.route.kind}"
        _rollout_conditions(conditions, prev, state, status["message"], drift, route)
        if state.terminal and policy is not None:
            history = add_history(
                history, history_entry(state, policy.stable.version, policy.candidate.version), history_limit
            )

    record, registry_conditions = registry
    for c in registry_conditions:
        conditions.set(str(c["type"]), str(c["status"]), str(c["reason"]), str(c["message"]))
    if record is None:
        if isinstance(prev.get("modelRegistry"), Mapping):
            status["modelRegistry"] = prev["modelRegistry"]
    elif record:
        status["modelRegistry"] = copy.deepcopy(dict(record))
    else:  # the spec names no registry version: nothing of a previous one stays
        conditions.items = [c for c in conditions.items if c.get("type") not in REGISTRY_CONDITIONS]
    status["observedGeneration"] = generation
    status["conditions"] = conditions.items
    status["history"] = history
    status["handledCommands"] = dict(handled_commands or prev.get("handledCommands") or {})
    status["appliedSpec"] = (
        copy.deepcopy(dict(applied_spec)) if applied_spec is not None else prev.get("appliedSpec")
    )
    safe: dict[str, Any] = json_safe(status)
    return safe


class _Conditions:
    """A status's conditions being rendered: each `set` keeps lastTransitionTime unless the status flips."""

    def __init__(self, prev: Mapping[str, Any], stamp: str, generation: int | None) -> None:
        self.items: list[dict[str, Any]] = [
            dict(c) for c in prev.get("conditions") or [] if isinstance(c, Mapping)
        ]
        self.stamp = stamp
        self.generation = generation

    def set(self, type_: str, status: str, reason: str, message: str) -> None:
        self.items = set_condition(self.items, type_, status, reason, message, self.stamp, self.generation)


def _rollout_fields(prev: Mapping[str, Any], state: RolloutState, policy: Policy | None) -> dict[str, Any]:
    """What a status says about a rollout that has started (besides its conditions): the
    one rollout view's fields, and what only the resource keeps (the engine state)."""
    fields = RolloutView.from_state(state, policy).status_fields()
    fields.update(
        stableVersion=policy.stable.version if policy else prev.get("stableVersion"),
        candidateVersion=policy.candidate.version if policy else prev.get("candidateVersion"),
        stepStartedAt=iso(state.step_started_at),
        lastAnalysisAt=iso(state.last_tick_at) if state.last_tick_at is not None else None,
        rollout=json_safe(state.to_dict()),
    )
    return fields


def _rollout_conditions(
    cond: _Conditions,
    prev: Mapping[str, Any],
    state: RolloutState,
    message: str,
    drift: str | None,
    route: str = "the route",
) -> None:
    """The conditions a started rollout sets: Progressing, Succeeded, RolledBack, RollbackPending, ..."""
    phase = state.phase
    if phase is Phase.PROGRESSING:
        cond.set("Progressing", "True", "StepInProgress", message)
    elif phase is Phase.PAUSED:
        cond.set("Progressing", "Unknown", "Paused", message)
    elif phase is Phase.WAITING_FOR_APPROVAL:
        cond.set("Progressing", "Unknown", "WaitingForApproval", message)
    elif state.rollback_pending:
        cond.set("Progressing", "True", "RollbackPending", message)
    else:
        cond.set("Progressing", "False", "Finished", f"the rollout finished: {phase.value}")
    if phase is Phase.SUCCEEDED:
        cond.set("Succeeded", "True", "Promoted", message)
    else:
        cond.set(
            "Succeeded",
            "False",
            {Phase.ROLLED_BACK: "RolledBack", Phase.ABORTED: "Aborted"}.get(phase, "InProgress"),
            "the candidate was not promoted" if state.terminal else "not promoted yet",
        )
    if phase is Phase.ROLLED_BACK and not state.rollback_pending:
        category = rollback_category(state.failed_checks)
        cond.set("RolledBack", "True", _CONDITION_REASON[category], state.reason)
    else:
        cond.set("RolledBack", "False", "NotRolledBack", "traffic has not been rolled back")
    if state.rollback_pending:
        cond.set("RollbackPending", "True", "WriteFailing", message)
    elif condition(prev, "RollbackPending") is not None or phase is Phase.ROLLED_BACK:
        cond.set("RollbackPending", "False", "Written", "no rollback write is waiting")
    if phase is Phase.ABORTED:
        cond.set("Aborted", "True", "ChangedOutsideMeshCanary", state.reason)
    _fallback_condition(cond, prev, state)
    if drift:
        cond.set("WeightsInSync", "False", "ChangedOutsideMeshCanary", drift)
    else:
        cond.set("WeightsInSync", "True", "InSync", f"{route} holds the weights mesh-canary wrote")


def _fallback_condition(cond: _Conditions, prev: Mapping[str, Any], state: RolloutState) -> None:
    """OnFallback (core/fallback.py): True while traffic is on the fallback destination; False
    while stable is watched after a rollback (WatchingStable), once that watch ended
    (WatchEnded) or once a person restored stable (RestoredStable); shown only to rollouts
    that were ever on it or watched."""
    from mesh_canary.core.fallback import on_fallback

    if on_fallback(state):
        cond.set("OnFallback", "True", "StableBroke", state.reason)
    elif state.watch_until is not None:
        until = iso(state.watch_until)
        cond.set(
            "OnFallback", "False", "WatchingStable", f"stable is judged against its limits until {until}"
        )
    elif (was := condition(prev, "OnFallback")) is not None:
        if was.get("reason") == "WatchingStable":  # the watch ended (time up, or a person kept stable)
            cond.set(
                "OnFallback",
                "False",
                "WatchEnded",
                "the watch after the rollback ended: traffic stays on stable",
            )
        elif was.get("reason") == "StableBroke":
            cond.set("OnFallback", "False", "RestoredStable", "traffic is on stable: a person restored it")


def saved_state(status: Mapping[str, Any] | None) -> RolloutState | None:
    """The engine state kept in a status, or None when there is none (or it is unreadable)."""
    raw = (status or {}).get("rollout")
    if not isinstance(raw, Mapping):
        return None
    try:
        return RolloutState.from_dict(dict(raw))
    except (KeyError, TypeError, ValueError) as e:
        log.warning("ignoring an unreadable status.rollout: %s", e)
        return None


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class StatusFacts:
    """What a status shows besides the engine state, as the controller knows it now.

    ``policy``: the policy being run; ``generation``: the resource's metadata.generation;
    ``registry``: what the status shows of the model registry; ``waiting``: why the rollout
    has not started;
    ``problems``: why its current spec is invalid (empty: valid); ``applied_spec``: the spec
    the running rollout uses (to roll it back if the spec changes while the controller is
    down; None: keep what the status holds).
    """

    policy: Policy | None = None
    generation: int | None = None
    problems: tuple[str, ...] = ()
    applied_spec: Mapping[str, Any] | None = None
    # The model registry's part, read at every write (any thread may change what it returns).
    registry: Callable[[], RegistryShown] | None = None
    waiting: str | None = None  # why the rollout has not started (nothing written yet)


class KubeStatusStore:
    """StateStore for RolloutRunner: ``load`` reads ``status.rollout``; ``save`` writes the whole status.

    Its inputs are explicit: ``facts`` (called at every write: the `StatusFacts` the
    status shows besides the engine state; or fixed ones from ``policy``/``generation``),
    ``drift`` (called at every write: the sentence about weights changed by someone else,
    or None) and ``status`` (the status as last seen, e.g. in the informer's copy). The
    orders handled so far come from the status read and grow with `mark_handled`.
    Failures are `KubeError`; transient ones are retried ``attempts`` times in all.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        namespace: str,
        name: str,
        *,
        policy: Policy | None = None,
        generation: int | None = None,
        facts: Callable[[], StatusFacts] | None = None,
        drift: Callable[[], str | None] | None = None,
        status: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        history_limit: int = HISTORY_LIMIT,
        attempts: int = 4,
        request_timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.namespace = namespace
        self.name = name
        fixed = StatusFacts(policy=policy, generation=generation)
        self._facts: Callable[[], StatusFacts] = facts or (lambda: fixed)
        self._drift = drift
        self._status: dict[str, Any] = {}  # as last read or written
        self._handled: dict[str, str] = {}
        self._unused_read = False  # read() happened and no load() has used it yet
        # The resource's metadata in the last answer to a read or a write of ours (the newest
        # resourceVersion we know of: a metadata write can start from it without a GET).
        self.metadata: dict[str, Any] | None = None
        self._remember(status or {})
        self.writes = 0
        self._new_history: list[dict[str, Any]] = []
        self._api = kubernetes.client.CustomObjectsApi(api_client)
        self._clock = clock
        self._history_limit = history_limit
        self._attempts = attempts
        self._timeout = request_timeout_s
        self._sleep = sleep

    @property
    def ref(self) -> str:
        return f"ModelRollout {self.namespace}/{self.name}"

    @property
    def status(self) -> Mapping[str, Any]:
        """The status as last read or written (read only: writes go through `write`)."""
        return self._status

    def _remember(self, status: Mapping[str, Any]) -> None:
        self._status = dict(status)
        # What the status says was handled (maybe by another leader) is the truth.
        self._handled = dict(self._status.get("handledCommands") or {})

    def handled(self, word: str) -> str | None:
        """The value of the ``word`` order (annotation) handled last, or None."""
        return self._handled.get(word)

    def mark_handled(self, word: str, value: str) -> None:
        """The ``word`` order with ``value`` is handled: saved with the next write."""
        self._handled[word] = value

    def read(self) -> dict[str, Any]:
        """The resource as the API server holds it (and remember its status)."""
        with kube_call(f"could not read {self.ref}"):
            obj: Any = self._api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self._timeout
            )
        self._remember(obj.get("status") or {})
        self.saw(obj)
        self._unused_read = True
        return dict(obj)

    def saw(self, obj: Any) -> None:
        """The resource as an answer of the API server showed it (its metadata is remembered)."""
        m = obj.get("metadata") if isinstance(obj, Mapping) else None
        if isinstance(m, Mapping):
            self.metadata = dict(m)

    def load(self) -> dict[str, Any] | None:
        """The saved engine state, read fresh; a load right after a `read` (the reconciler's,
        in the same turn, before the runner starts) uses that read instead of a second GET."""
        if not self._unused_read:
            self.read()
        self._unused_read = False
        raw = self._status.get("rollout")
        return copy.deepcopy(raw) if isinstance(raw, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        self.write(RolloutState.from_dict(state))

    def record_history(self, entry: Mapping[str, Any]) -> None:
        """Add a past rollout (e.g. one superseded by a new spec) with the next write."""
        self._new_history.append(dict(entry))

    def write(self, state: RolloutState | None, facts: StatusFacts | None = None) -> None:
        """Render and write the whole status for ``state`` (None: no rollout has started)."""
        facts = facts if facts is not None else self._facts()
        new = render_status(
            self._status,
            state=state,
            policy=facts.policy,
            generation=facts.generation,
            now=self._clock(),
            drift=self._drift() if self._drift is not None else None,
            problems=facts.problems,
            handled_commands=self._handled,
            applied_spec=facts.applied_spec,
            new_history=self._new_history,
            history_limit=self._history_limit,
            registry=facts.registry() if facts.registry is not None else (None, ()),
            waiting=facts.waiting,
        )
        self._patch(new)
        self._new_history.clear()

    def report_reconcile(self, error: str | None) -> None:
        """Say in the ``Ready`` condition that reconciling fails (``error``) or works again (None).

        Only the conditions (and, before any rollout started, the message) are patched: a
        failed reconcile may have left the runner half-made, and what the status says about
        the rollout must stay what was last saved. A no-op while nothing changes.
        """
        ready = condition(self._status, READY)
        if error is None and (ready is None or ready.get("status") == "True"):
            return
        shown = (ready or {}).get("status"), (ready or {}).get("message")
        if error is not None and shown == ("False", error[:MESSAGE_LIMIT]):
            return
        new = copy.deepcopy(self._status)
        stamp = iso(self._clock())
        generation = self._facts().generation
        conditions = [dict(c) for c in new.get("conditions") or [] if isinstance(c, Mapping)]
        if error is None:
            new["conditions"] = set_condition(
                conditions,
                READY,
                "True",
                "Reconciled",
                "the controller reconciles the resource again",
                stamp,
                generation,
            )
        else:
            new["conditions"] = set_condition(
                conditions, READY, "False", RECONCILE_ERROR, error, stamp, generation
            )
            if not isinstance(new.get("rollout"), Mapping):
                new["message"] = f"the controller cannot start the rollout: {error}"[:MESSAGE_LIMIT]
        self._patch(json_safe(new))

    def _patch(self, new: dict[str, Any]) -> None:
        # No secret in a status (a URL's credentials in a reason); appliedSpec is the spec as
        # given, kept byte for byte because the rollout's fingerprint is computed from it.
        new = {k: v if k == "appliedSpec" else redact_value(v) for k, v in new.items()}
        patch = merge_patch_diff(self._status, new)
        if not patch:
            return
        what = f"could not write the status of {self.ref}"
        last: KubeError | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                with kube_call(what):
                    obj: Any = self._api.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        self.name,
                        {"status": patch},
                        _request_timeout=self._timeout,
                    )
            except KubeError as e:
                if e.not_found:
                    raise KubeError(
                        f"{self.ref} no longer exists; its status was not written", status=404
                    ) from e
                if not e.transient:
                    raise
                last = e
                log.warning(
                    "status write of %s failed (attempt %d/%d): %s", self.ref, attempt, self._attempts, e
                )
                self._sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
                continue
            self._status = dict(obj.get("status") or new) if isinstance(obj, dict) else new
            self.saw(obj)
            self.writes += 1
            return
        raise KubeError(
            f"{what} after {self._attempts} attempts: {last.detail if last else 'no answer'}",
            status=last.status if last else None,
            transient=True,
        )
