"""How a ModelRollout's status is rendered (pure): fields, conditions, history, merge patches, Events."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from mesh_canary.core import engine
from mesh_canary.core.engine import Phase
from mesh_canary.core.verdicts import CheckResult, Verdict
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.kube.events import event_body
from mesh_canary.kube.status import (
    add_history,
    check_view,
    condition,
    history_entry,
    iso,
    json_safe,
    merge_patch_diff,
    render_status,
    rollback_category,
    saved_state,
    set_condition,
)
from mesh_canary.protocols import Announcement
from tests.test_engine import make_policy

T0 = 1_700_000_000.0


def started() -> engine.RolloutState:
    return engine.start(make_policy(), T0).state


def test_a_running_rollout_shows_phase_step_weights_versions_and_checks() -> None:
    policy = make_policy()
    check = CheckResult(
        "errorRate",
        "errorRate",
        Verdict.INCONCLUSIVE,
        "not enough requests yet",
        estimate=0.01,
        stable_estimate=0.005,
        lower=-0.002,
        upper=math.inf,
        bound="<= stable + 1%",
        quantity="candidate - stable",
        samples=42.0,
    )
    state = replace(started(), checks=(check,), last_tick_at=T0 + 30)
    status = render_status(None, state=state, policy=policy, generation=3, now=T0 + 30)
    assert status["phase"] == "Progressing"
    assert (status["currentStep"], status["stepCount"]) == (1, 3)
    assert status["weights"] == {"stable": 90, "candidate": 10, "fallback": 0, "mirrorPercent": 0}
    assert (status["stableVersion"], status["candidateVersion"]) == ("1.0", "2.0")
    assert status["observedGeneration"] == 3
    assert status["startedAt"] == iso(T0) == "2023-11-14T22:13:20Z"
    assert status["message"] == "step 1/3: 10% of traffic to 2.0; waiting on errorRate"
    [shown] = status["checks"]
    assert shown["verdict"] == "inconclusive" and shown["estimate"] == 0.01 and shown["lower"] == -0.002
    assert "upper" not in shown, "an infinite bound is left out (JSON has no Infinity)"
    # The whole engine state is there to resume from, and reads back equal.
    assert saved_state(status) == replace(state, checks=(replace(check, upper=None),))
    json.dumps(status, allow_nan=False)  # what the API server accepts


def test_conditions_say_progressing_then_succeeded_and_keep_transition_times_until_a_flip() -> None:
    policy = make_policy()
    running = started()
    s1 = render_status(None, state=running, policy=policy, generation=1, now=T0)
    assert condition(s1, "Progressing") == {
        "type": "Progressing",
        "status": "True",
        "reason": "StepInProgress",
        "message": s1["message"],
        "lastTransitionTime": iso(T0),
        "observedGeneration": 1,
    }
    assert condition(s1, "Succeeded")["status"] == "False"  # type: ignore[index]
    assert condition(s1, "PolicyValid")["status"] == "True"  # type: ignore[index]
    assert condition(s1, "WeightsInSync")["status"] == "True"  # type: ignore[index]
    assert [c["type"] for c in s1["conditions"]] == [
        "PolicyValid",
        "Progressing",
        "Succeeded",
        "RolledBack",
        "WeightsInSync",
    ]

    # A later step: same statuses, new message: the transition times stay.
    later = replace(running, step_index=1, weights=Weights.candidate_at(50))
    s2 = render_status(s1, state=later, policy=policy, generation=1, now=T0 + 60)
    assert condition(s2, "Progressing")["lastTransitionTime"] == iso(T0)  # type: ignore[index]
    assert condition(s2, "Progressing")["message"].startswith("step 2/3: 50%")  # type: ignore[index]

    done = replace(later, phase=Phase.SUCCEEDED, weights=Weights.candidate_at(100), finished_at=T0 + 120)
    s3 = render_status(s2, state=done, policy=policy, generation=1, now=T0 + 120)
    assert condition(s3, "Progressing")["status"] == "False"  # type: ignore[index]
    assert condition(s3, "Progressing")["lastTransitionTime"] == iso(T0 + 120)  # type: ignore[index]
    assert condition(s3, "Succeeded") is not None
    assert condition(s3, "Succeeded")["status"] == "True"  # type: ignore[index]
    assert condition(s3, "Succeeded")["lastTransitionTime"] == iso(T0 + 120)  # type: ignore[index]
    assert condition(s3, "RolledBack")["lastTransitionTime"] == iso(T0)  # type: ignore[index]
    [entry] = s3["history"]
    assert entry["outcome"] == "promoted" and entry["durationSeconds"] == 120.0
    assert entry["candidateVersion"] == "2.0" and entry["finishedAt"] == iso(T0 + 120)


def test_a_rollback_names_its_cause_in_the_condition_and_the_history() -> None:
    policy = make_policy()
    decision = engine.command(policy, started(), "abort", T0 + 10)
    status = render_status(None, state=decision.state, policy=policy, generation=1, now=T0 + 10)
    assert status["phase"] == "RolledBack"
    assert status["weights"] == ALL_STABLE.to_dict()
    rolled = condition(status, "RolledBack")
    assert rolled is not None and rolled["status"] == "True" and rolled["reason"] == "Aborted"
    assert rolled["message"] == "aborted by a person (manual rollback)"
    assert condition(status, "Succeeded")["reason"] == "RolledBack"  # type: ignore[index]
    assert status["history"][0]["outcome"] == "rolled_back"  # one spelling (issue 9)
    assert status["history"][0]["failedChecks"] == ["manual"]


def test_rollback_categories_are_few_words() -> None:
    assert rollback_category(["manual"]) == "manual"
    assert rollback_category(["noData"]) == "noData"
    assert rollback_category(["stepTimeout"]) == "stepTimeout"
    assert rollback_category(["errorRate", "latency-p99"]) == "checkFailed"


def test_weights_changed_elsewhere_turn_weights_in_sync_false_and_back() -> None:
    policy = make_policy()
    state = started()
    s1 = render_status(None, state=state, policy=policy, generation=1, now=T0)
    s2 = render_status(
        s1,
        state=state,
        policy=policy,
        generation=1,
        now=T0 + 5,
        drift="weights were changed outside mesh-canary: live 100/0, expected 90/10",
    )
    c2 = condition(s2, "WeightsInSync")
    assert c2 is not None and c2["status"] == "False" and c2["reason"] == "ChangedOutsideMeshCanary"
    assert c2["lastTransitionTime"] == iso(T0 + 5) and "live 100/0" in c2["message"]
    s3 = render_status(s2, state=state, policy=policy, generation=1, now=T0 + 9)
    assert condition(s3, "WeightsInSync")["status"] == "True"  # type: ignore[index]
    assert condition(s3, "WeightsInSync")["lastTransitionTime"] == iso(T0 + 9)  # type: ignore[index]


def test_an_invalid_spec_before_any_rollout_is_phase_invalid_with_every_problem() -> None:
    problems = ["spec.canary.steps[1]: 20 is not above the previous step 50", "spec.analysis.interval: bad"]
    status = render_status(None, state=None, policy=None, generation=2, now=T0, problems=problems)
    assert status["phase"] == "Invalid"
    valid = condition(status, "PolicyValid")
    assert valid is not None and valid["status"] == "False" and valid["reason"] == "InvalidPolicy"
    assert all(p in valid["message"] for p in problems)
    assert valid["observedGeneration"] == 2
    assert "rollout" not in status and "weights" not in status


def test_set_condition_moves_the_transition_time_only_on_a_status_flip() -> None:
    c = set_condition([], "Progressing", "True", "A", "m1", "t1", 1)
    c = set_condition(c, "Progressing", "True", "B", "m2", "t2", 2)
    assert c == [
        {
            "type": "Progressing",
            "status": "True",
            "reason": "B",
            "message": "m2",
            "lastTransitionTime": "t1",
            "observedGeneration": 2,
        }
    ]
    c = set_condition(c, "Progressing", "False", "C", "m3", "t3", 2)
    assert c[0]["lastTransitionTime"] == "t3"


def test_history_is_added_once_per_rollout_and_bounded() -> None:
    state = replace(started(), phase=Phase.SUCCEEDED, finished_at=T0 + 5)
    entry = history_entry(state, "1.0", "2.0")
    h = add_history([], entry)
    h = add_history(h, entry)
    assert len(h) == 1
    for i in range(30):
        h = add_history(h, {**entry, "id": f"x{i}"}, limit=20)
    assert len(h) == 20 and h[-1]["id"] == "x29" and h[0]["id"] == "x10"
    superseded = history_entry(
        started(), "1.0", "2.0", outcome="superseded", reason="spec changed", finished_at=T0 + 7
    )
    assert superseded["outcome"] == "superseded" and superseded["durationSeconds"] == 7.0


def test_merge_patch_diff_turns_old_into_new_including_removed_fields() -> None:
    old: dict[str, object] = {
        "phase": "Progressing",
        "rollout": {"lastTickAt": 5.0, "stableBaseline": {"a": 1}, "ticks": 1},
        "checks": [{"name": "x"}],
        "reason": "r",
    }
    new: dict[str, object] = {
        "phase": "Progressing",
        "rollout": {"lastTickAt": 9.0, "ticks": 2},
        "checks": [{"name": "y"}],
    }
    patch = merge_patch_diff(old, new)
    assert patch == {
        "rollout": {"lastTickAt": 9.0, "stableBaseline": None, "ticks": 2},
        "checks": [{"name": "y"}],
        "reason": None,
    }
    assert merge_patch_diff(new, new) == {}

    def apply(target: dict[str, object], p: dict[str, object]) -> dict[str, object]:  # RFC 7386
        out = dict(target)
        for k, v in p.items():
            if v is None:
                out.pop(k, None)
            elif isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = apply(out[k], v)  # type: ignore[arg-type]
            else:
                out[k] = v
        return out

    assert apply(old, patch) == new


def test_json_safe_drops_nulls_and_non_finite_numbers() -> None:
    assert json_safe({"a": None, "b": math.nan, "c": [1.0, {"d": None}], "e": {"f": math.inf, "g": 2}}) == {
        "c": [1.0, {}],
        "e": {"g": 2},
    }


def test_check_view_keeps_what_a_person_needs() -> None:
    view = check_view(
        CheckResult(
            "latency-p99",
            "latency",
            Verdict.FAIL,
            "p99 610ms > 500ms",
            estimate=610.0,
            lower=590.0,
            upper=640.0,
            bound="<= 500ms",
            samples=900.0,
            enough_data=True,
        )
    )
    assert view == {
        "name": "latency-p99",
        "metric": "latency",
        "verdict": "fail",
        "estimate": 610.0,
        "lower": 590.0,
        "upper": 640.0,
        "bound": "<= 500ms",
        "samples": 900.0,
        "enoughData": True,
        "proven": False,  # issue 10: what was proven (a failed check has nothing "not ruled out")
        "reason": "p99 610ms > 500ms",
    }


def test_an_event_names_the_rollout_its_reason_and_its_severity() -> None:
    involved = {
        "apiVersion": "mesh-canary.io/v1alpha1",
        "kind": "ModelRollout",
        "name": "fraud-scorer",
        "namespace": "models",
        "uid": "u-1",
    }
    body = event_body(
        Announcement("fraud-scorer", "RolledBack", "rolled back: errors", "warning"),
        involved,
        now=T0,
        instance="pod-1",
    )
    assert body["involvedObject"] == involved
    assert (body["reason"], body["type"], body["message"]) == ("RolledBack", "Warning", "rolled back: errors")
    assert body["metadata"]["namespace"] == "models" and body["metadata"]["name"].startswith("fraud-scorer.")
    assert body["firstTimestamp"] == body["lastTimestamp"] == iso(T0)
    assert body["source"] == {"component": "mesh-canary-controller", "host": "pod-1"}
    normal = event_body(Announcement("fraud-scorer", "StepAdvanced", "step 2/3"), involved, now=T0)
    assert normal["type"] == "Normal" and normal["metadata"]["name"] != body["metadata"]["name"]


def test_the_model_registry_record_and_conditions_are_shown_kept_and_dropped() -> None:
    policy = make_policy()
    record = {"provider": "mlflow", "policyFingerprint": "f", "versions": {"candidate": {"version": "2"}}}
    resolved = {"type": "RegistryResolved", "status": "True", "reason": "Resolved", "message": "v2"}
    updated = {"type": "RegistryUpdated", "status": "False", "reason": "RegistryUnavailable", "message": "x"}
    shown = render_status(
        None, state=started(), policy=policy, generation=2, now=T0, registry=(record, (resolved, updated))
    )
    assert shown["modelRegistry"] == record
    got = condition(shown, "RegistryUpdated")
    assert got is not None and (got["status"], got["reason"], got["observedGeneration"]) == (
        "False",
        "RegistryUnavailable",
        2,
    )
    kept = render_status(shown, state=started(), policy=policy, generation=2, now=T0 + 1)
    assert kept["modelRegistry"] == record and condition(kept, "RegistryResolved") is not None
    dropped = render_status(
        shown, state=started(), policy=policy, generation=3, now=T0 + 2, registry=({}, ())
    )
    assert "modelRegistry" not in dropped
    assert condition(dropped, "RegistryResolved") is None and condition(dropped, "RegistryUpdated") is None


def test_a_rollout_waiting_to_start_says_why() -> None:
    waiting = "the candidate's model models:/m@next could not be resolved; nothing was written"
    status = render_status(None, state=None, policy=make_policy(), generation=1, now=T0, waiting=waiting)
    assert status["phase"] == "Pending" and status["message"] == waiting
