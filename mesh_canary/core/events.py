"""The names of the events a rollout announces (an Announcement's ``kind``), written once.

`spec.notifications[].events` picks from these (the policy schema's enum is filled from
here); tests/test_notify_oncall.py checks that every kind the code announces is listed.
"""

from __future__ import annotations

EVENTS: tuple[str, ...] = (
    # the engine
    "Started",
    "StepAdvanced",
    "Switched",
    "Paused",
    "Resumed",
    "WaitingForApproval",
    "Approved",
    "Promoted",
    "RolledBack",
    "RollbackFailing",
    "Aborted",
    "PromoteFull",
    "Retried",
    # the fallback: stable broke too (100% to the fallback), or a person restored stable
    "FellBack",
    "StableKept",
    "RestoredStable",
    # a step hook that failed (preRollout: stopped before any traffic moved)
    "HookFailed",
    # the runner and the controller
    "ExternalChange",
    "Restarted",
    "Deleted",
    "InvalidPolicy",
    "InvalidCommand",
    "ReconcileError",
    # the controller could not resolve spec.registry's versions at start (it retries)
    "RegistryUnresolved",
    # a person, through `mesh-canary rollout ack` (resolves an on-call page)
    "Acknowledged",
)

# A page is opened for these (PagerDuty `trigger`) ...
PAGE_EVENTS: frozenset[str] = frozenset({"RolledBack", "RollbackFailing", "FellBack"})
# ... and closed by these: a later rollout of the same model succeeded, or a person acknowledged.
RESOLVE_EVENTS: frozenset[str] = frozenset({"Promoted", "Acknowledged"})
