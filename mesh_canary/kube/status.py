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
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from mesh_canary.core.engine import Phase, RolloutState, outcome_of
from mesh_canary.core.model import Policy
from mesh_canary.errors import CouldNotWork
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
COMMAND_ANNOTATIONS = {"abort": ANNOTATION_ABORT, "approve": ANNOTATION_APPROVE, "pause": ANNOTATION_PAUSE}

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
    "WeightsInSync",
    "Ready",
)

# `Ready` appears once a reconcile of the resource has failed: False (reason
# RECONCILE_ERROR) while it keeps failing, True again once a reconcile works.
READY = "Ready"
RECONCILE_ERROR = "ReconcileError"


# --------------------------------------------------------------------------- pure helpers


def merge_patch_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (empty when equal)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch_diff(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or value != before:
            patch[key] = copy.deepcopy(value)
    return patch


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
) -> dict[str, Any]:
    """The whole ``status`` of a ModelRollout (pure).

    ``previous`` is the stored status (conditions keep their lastTransitionTime unless
    their status flips; history is extended). ``state`` is the rollout the controller
    runs under ``policy`` (None before any rollout started); ``problems`` non-empty
    means the resource's current spec is invalid; ``drift`` is the sentence saying
    someone else changed the weights (None: in sync).
    """
    prev = dict(previous or {})
    stamp = iso(now)
    conditions: list[dict[str, Any]] = [
        dict(c) for c in prev.get("conditions") or [] if isinstance(c, Mapping)
    ]

    def cond(type_: str, status: str, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status, reason, message, stamp, generation)

    if problems:
        text = "; ".join(problems)
        cond("PolicyValid", "False", "InvalidPolicy", f"the policy is invalid (nothing was changed): {text}")
    else:
        cond("PolicyValid", "True", "Valid", "the policy is valid")

    status: dict[str, Any] = {}
    history = [dict(h) for h in prev.get("history") or [] if isinstance(h, Mapping)]
    for entry in new_history:
        history = add_history(history, entry, history_limit)

    if state is None:
        status["phase"] = INVALID if problems else PENDING
        status["message"] = (
            conditions[0]["message"] if problems else "waiting for the controller to start the rollout"
        )
    else:
        status.update(RolloutView.from_state(state, policy).status_fields())
        status.update(
            stableVersion=policy.stable.version if policy else prev.get("stableVersion"),
            candidateVersion=policy.candidate.version if policy else prev.get("candidateVersion"),
            stepStartedAt=iso(state.step_started_at),
            lastAnalysisAt=iso(state.last_tick_at) if state.last_tick_at is not None else None,
            rollout=json_safe(state.to_dict()),
        )
        phase = state.phase
        if phase is Phase.PROGRESSING:
            cond("Progressing", "True", "StepInProgress", status["message"])
        elif phase is Phase.PAUSED:
            cond("Progressing", "Unknown", "Paused", status["message"])
        elif phase is Phase.WAITING_FOR_APPROVAL:
            cond("Progressing", "Unknown", "WaitingForApproval", status["message"])
        elif state.rollback_pending:
            cond("Progressing", "True", "RollbackPending", status["message"])
        else:
            cond("Progressing", "False", "Finished", f"the rollout finished: {phase.value}")
        if phase is Phase.SUCCEEDED:
            cond("Succeeded", "True", "Promoted", status["message"])
        else:
            cond(
                "Succeeded",
                "False",
                {Phase.ROLLED_BACK: "RolledBack", Phase.ABORTED: "Aborted"}.get(phase, "InProgress"),
                "the candidate was not promoted" if state.terminal else "not promoted yet",
            )
        if phase is Phase.ROLLED_BACK and not state.rollback_pending:
            category = rollback_category(state.failed_checks)
            cond("RolledBack", "True", _CONDITION_REASON[category], state.reason)
        else:
            cond("RolledBack", "False", "NotRolledBack", "traffic has not been rolled back")
        if state.rollback_pending:
            cond("RollbackPending", "True", "WriteFailing", status["message"])
        elif condition(prev, "RollbackPending") is not None or phase is Phase.ROLLED_BACK:
            cond("RollbackPending", "False", "Written", "no rollback write is waiting")
        if phase is Phase.ABORTED:
            cond("Aborted", "True", "ChangedOutsideMeshCanary", state.reason)
        if drift:
            cond("WeightsInSync", "False", "ChangedOutsideMeshCanary", drift)
        else:
            cond("WeightsInSync", "True", "InSync", "the VirtualService holds the weights mesh-canary wrote")
        if state.terminal and policy is not None:
            history = add_history(
                history, history_entry(state, policy.stable.version, policy.candidate.version), history_limit
            )

    status["observedGeneration"] = generation
    status["conditions"] = conditions
    status["history"] = history
    status["handledCommands"] = dict(handled_commands or prev.get("handledCommands") or {})
    status["appliedSpec"] = (
        copy.deepcopy(dict(applied_spec)) if applied_spec is not None else prev.get("appliedSpec")
    )
    safe: dict[str, Any] = json_safe(status)
    return safe


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


class StatusWriteError(CouldNotWork, RuntimeError):
    """The status could not be written."""


class KubeStatusStore:
    """StateStore for RolloutRunner: ``load`` reads ``status.rollout``; ``save`` writes the whole status.

    The controller sets the context the status shows besides the engine state: the
    ``policy`` being run, the resource's ``generation``, the ``problems`` of an invalid
    spec, the ``handled_commands``, the ``applied_spec`` (the spec the running rollout
    uses, to roll it back if the spec changes while the controller is down) and ``drift``
    (a callable returning the sentence about weights changed by someone else, or None).
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        namespace: str,
        name: str,
        *,
        policy: Policy | None = None,
        generation: int | None = None,
        drift: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time,
        history_limit: int = HISTORY_LIMIT,
        attempts: int = 4,
        request_timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.policy = policy
        self.generation = generation
        self.drift = drift
        self.problems: list[str] = []
        self.handled_commands: dict[str, str] = {}
        self.applied_spec: dict[str, Any] | None = None
        self.status: dict[str, Any] = {}  # as last read or written
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

    def read(self) -> dict[str, Any]:
        """The resource as the API server holds it (and remember its status)."""
        try:
            obj: Any = self._api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self._timeout
            )
        except ApiException as e:
            raise StatusWriteError(f"could not read {self.ref}: HTTP {e.status} {e.reason}") from e
        self.status = dict(obj.get("status") or {})
        # What the status says was handled (maybe by another leader) is the truth.
        self.handled_commands = dict(self.status.get("handledCommands") or {})
        return dict(obj)

    def load(self) -> dict[str, Any] | None:
        self.read()
        raw = self.status.get("rollout")
        return copy.deepcopy(raw) if isinstance(raw, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        self.write(RolloutState.from_dict(state))

    def record_history(self, entry: Mapping[str, Any]) -> None:
        """Add a past rollout (e.g. one superseded by a new spec) with the next write."""
        self._new_history.append(dict(entry))

    def write(self, state: RolloutState | None) -> None:
        """Render and write the whole status for ``state`` (None: no rollout has started)."""
        drift = self.drift() if self.drift is not None else None
        new = render_status(
            self.status,
            state=state,
            policy=self.policy,
            generation=self.generation,
            now=self._clock(),
            drift=drift,
            problems=self.problems,
            handled_commands=self.handled_commands,
            applied_spec=self.applied_spec,
            new_history=self._new_history,
            history_limit=self._history_limit,
        )
        self._patch(new)
        self._new_history.clear()

    def report_reconcile(self, error: str | None) -> None:
        """Say in the ``Ready`` condition that reconciling fails (``error``) or works again (None).

        Only the conditions (and, before any rollout started, the message) are patched: a
        failed reconcile may have left the runner half-made, and what the status says about
        the rollout must stay what was last saved. A no-op while nothing changes.
        """
        ready = condition(self.status, READY)
        if error is None and (ready is None or ready.get("status") == "True"):
            return
        if (
            error is not None
            and ready is not None
            and (ready.get("status"), ready.get("message"))
            == (
                "False",
                error[:MESSAGE_LIMIT],
            )
        ):
            return
        new = copy.deepcopy(self.status)
        stamp = iso(self._clock())
        conditions = [dict(c) for c in new.get("conditions") or [] if isinstance(c, Mapping)]
        if error is None:
            new["conditions"] = set_condition(
                conditions,
                READY,
                "True",
                "Reconciled",
                "the controller reconciles the resource again",
                stamp,
                self.generation,
            )
        else:
            new["conditions"] = set_condition(
                conditions, READY, "False", RECONCILE_ERROR, error, stamp, self.generation
            )
            if not isinstance(new.get("rollout"), Mapping):
                new["message"] = f"the controller cannot start the rollout: {error}"[:MESSAGE_LIMIT]
        self._patch(json_safe(new))

    def _patch(self, new: dict[str, Any]) -> None:
        # No secret in a status (a URL's credentials in a reason); appliedSpec is the spec as
        # given, kept byte for byte because the rollout's fingerprint is computed from it.
        new = {k: v if k == "appliedSpec" else redact_value(v) for k, v in new.items()}
        patch = merge_patch_diff(self.status, new)
        if not patch:
            return
        last: Exception | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                obj: Any = self._api.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    self.name,
                    {"status": patch},
                    _request_timeout=self._timeout,
                )
                self.status = dict(obj.get("status") or new) if isinstance(obj, dict) else new
                self.writes += 1
                return
            except ApiException as e:
                last = e
                if e.status == 404:
                    raise StatusWriteError(f"{self.ref} no longer exists; its status was not written") from e
                if e.status not in (0, 409, 429) and e.status < 500:
                    raise StatusWriteError(
                        f"could not write the status of {self.ref}: HTTP {e.status} {e.reason}: {e.body}"
                    ) from e
            except OSError as e:  # connection refused or reset
                last = e
            except Exception as e:  # urllib3 errors (timeouts, protocol errors)
                if type(e).__module__.startswith("urllib3"):
                    last = e
                else:
                    raise
            log.warning(
                "status write of %s failed (attempt %d/%d): %s", self.ref, attempt, self._attempts, last
            )
            self._sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
        raise StatusWriteError(
            f"could not write the status of {self.ref} after {self._attempts} attempts: {last}"
        )
