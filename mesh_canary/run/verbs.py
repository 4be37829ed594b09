"""What the `rollout get|list|retry|promote|next` verbs do, as library functions (cli.py is
a thin click layer over them): the ModelRollout object of a `run --state` file, a rollout's
row in `rollout list`, retrying a finished state file, and the policy of the next release.

A person's orders to a ModelRollout go through mesh_canary/kube/orders.py; the controller
(or `mesh-canary run`) makes every weight write, never these functions.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh_canary.core.engine import RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.errors import BadInput
from mesh_canary.kube.names import API_VERSION, KIND
from mesh_canary.kube.orders import refusal
from mesh_canary.present.view import RolloutView, parse_rfc3339

# `rollout list`'s columns (text), the same names as the view's fields where they exist.
LIST_COLUMNS = ("NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHT", "STABLE", "CANDIDATE", "AGE", "MESSAGE")


# --------------------------------------------------------------------------- state files


def load_state(path: str) -> RolloutState:
    """The rollout saved in a `run --state` file; BadInput naming the file when there is none
    or it is damaged."""
    from mesh_canary.run.stores import FileStateStore

    data = FileStateStore(path).load()  # StateFileError: bad input
    if data is None:
        raise BadInput(f"no state file {path} (`mesh-canary run --state {path}` writes it)")
    try:
        return RolloutState.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"state file {path} is damaged: {e}") from None


def resource_from_state(
    state: RolloutState,
    policy: Policy | None,
    spec: Mapping[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """The ModelRollout object a controller running this rollout would hold (`rollout get
    --state FILE -o json`): the same shape, status rendered by the controller's own code.
    ``spec``: the policy file's spec (None: unknown, left out)."""
    from mesh_canary.kube.status import render_status

    metadata: dict[str, Any] = {"name": state.name}
    if policy is not None and policy.namespace:
        metadata["namespace"] = policy.namespace
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata}
    if spec is not None:
        obj["spec"] = copy.deepcopy(dict(spec))
    obj["status"] = render_status(None, state=state, policy=policy, generation=None, now=now)
    return obj


def retry_state_file(path: str, now: float | None = None) -> Path:
    """`rollout retry --state FILE`: a RolledBack or Aborted run starts again from step 0 at
    the next `mesh-canary run --state FILE` (which makes the first write). The finished
    state is kept beside the file, renamed; returns its new path. BadInput in any other phase."""
    state = load_state(path)
    phase = "RollingBack" if state.rollback_pending else state.phase.value
    problem = refusal("retry", state.name, {"phase": phase})
    if problem is not None:
        raise BadInput(problem)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    kept = Path(f"{path}.{stamp}.{phase}")
    os.replace(path, kept)  # atomic: the file is either the finished run or absent
    return kept


# --------------------------------------------------------------------------- list


def _age(since: str | None, now: float) -> str:
    if not since:
        return "-"
    try:
        seconds = max(now - parse_rfc3339(since), 0.0)
    except ValueError:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def list_row(obj: Mapping[str, Any], now: float) -> dict[str, str]:
    """One rollout as a `rollout list` row (column -> text)."""
    v = RolloutView.from_resource(obj)
    w = v.weights or {}
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    step = f"{v.current_step}/{v.step_count}" if v.current_step and v.step_count else "-"
    return {
        "NAMESPACE": str(v.namespace or "-"),
        "NAME": str(v.name or "-"),
        "PHASE": v.phase,
        "STEP": step,
        "WEIGHT": f"{w['candidate']}%" if "candidate" in w else "-",
        "STABLE": str(v.stable_version or "-"),
        "CANDIDATE": str(v.candidate_version or "-"),
        "AGE": _age(v.started_at or (created if isinstance(created, str) else None), now),
        "MESSAGE": v.message,
    }


def object_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`rollout list -o json`: a List of ModelRollout objects, as `kubectl get -o json` prints."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


# --------------------------------------------------------------------------- the next release


def next_spec(spec: Mapping[str, Any], candidate: str, metrics_version: str | None = None) -> dict[str, Any]:
    """The spec of the release after a promotion: the promoted candidate becomes stable (its
    destination and version), the old stable's destination takes the new ``candidate``
    version. An explicit metricsVersion stays with its destination (the pods behind it
    carry that label), unless ``metrics_version`` names the new one."""
    new = copy.deepcopy(dict(spec))
    old_stable, old_candidate = dict(new.get("stable") or {}), dict(new.get("candidate") or {})
    if str(old_candidate.get("version")) == candidate:
        raise BadInput(f"--candidate {candidate} is the version just promoted; name the next one")
    new_candidate = {**old_stable, "version": candidate}
    if metrics_version is not None:
        new_candidate["metricsVersion"] = metrics_version
    new["stable"], new["candidate"] = old_candidate, new_candidate
    return new


def next_document(
    doc: Mapping[str, Any], candidate: str, metrics_version: str | None = None
) -> dict[str, Any]:
    """A whole policy document (or ModelRollout) for the next release, checked as `validate`
    checks it (PolicyError: bad input). Fields the API server owns are dropped."""
    from mesh_canary.run.policy_loading import load_checked_policy

    meta = dict(doc.get("metadata") or {})
    kept = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
    out = {
        "apiVersion": doc.get("apiVersion", API_VERSION),
        "kind": doc.get("kind", KIND),
        "metadata": kept,
        "spec": next_spec(doc.get("spec") or {}, candidate, metrics_version),
    }
    load_checked_policy(copy.deepcopy(out))
    return out


def next_refusal(obj: Mapping[str, Any]) -> str | None:
    """Why a ModelRollout cannot move to its next release now (None: it was promoted)."""
    v = RolloutView.from_resource(obj)
    if v.phase == "Succeeded":
        return None
    if v.terminal:
        return (
            f"{v.name} is {v.phase}: its stable {v.stable_version} is still the live version; to try another "
            f"candidate change spec.candidate.version and `rollout start -f` it (or `rollout retry {v.name}`)"
        )
    return (
        f"{v.name} is {v.phase}: `rollout next` prepares the release after a promotion; wait for it to finish"
    )


def live_route_problem(policy: Policy, kubeconfig: str | None, context: str | None) -> str | None:
    """`rollout start`'s check before it applies a new spec: the sentence of
    `runner.StableNotLive` when the route sends 100% to what the policy calls the candidate;
    None when stable is live or the route cannot be read (the controller checks again)."""
    from mesh_canary.kube.rollouts import api_client
    from mesh_canary.routing import RouterTarget, router_for_route
    from mesh_canary.run.runner import StableNotLive, check_stable_is_live

    try:
        live = router_for_route(
            policy, RouterTarget(api_client=api_client(kubeconfig, context))
        ).get_weights()
    except Exception:
        return None
    try:
        check_stable_is_live(policy, live)
    except StableNotLive as e:
        return str(e)
    return None
