"""The command line: exit codes, error messages without tracebacks, output formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mesh_canary.cli import main
from tests.output_schema import check_output

ROOT = Path(__file__).parents[1]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_accepts_every_example_policy() -> None:
    code, out, _ = invoke("validate", *map(str, POLICIES))
    assert code == 0
    assert out.count(": valid") == len(POLICIES)


def test_validate_reports_every_problem_with_path_and_line_then_exits_2() -> None:
    code, _, err = invoke("validate", str(ROOT / "tests/data/invalid/steps-not-rising.yaml"))
    assert code == 2
    assert "spec.canary.steps[2]: 20 is not above the previous step 25" in err
    assert "Traceback" not in err


def test_validate_json_output_is_machine_readable() -> None:
    code, out, _ = invoke("validate", "-o", "json", str(ROOT / "tests/data/invalid/many-problems.yaml"))
    assert code == 2
    doc = json.loads(out)
    check_output(doc, "validation")
    assert doc["valid"] is False
    assert {"path": "spec.canary.steps[3]", "message": "120 is above the maximum 100", "line": 19} in doc[
        "problems"
    ]


def test_run_with_an_invalid_policy_changes_nothing_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "policies/minimal.yaml").read_text().replace("subset: v2", "subset: v2, weight: 3")
    )
    state = tmp_path / "state.json"
    code, _, err = invoke("run", "-f", str(bad), "--backend", "local", "--state", str(state))
    assert code == 2
    assert "spec.candidate.destination.weight: unknown field" in err
    assert not state.exists()


def test_missing_policy_file_is_bad_input() -> None:
    code, _, err = invoke("run", "-f", "/nonexistent/policy.yaml")
    assert code == 2 and "cannot read policy /nonexistent/policy.yaml" in err


def test_bad_timeout_is_bad_input() -> None:
    code, _, err = invoke("run", "-f", str(ROOT / "policies/minimal.yaml"), "--timeout", "soon")
    assert code == 2 and "--timeout" in err


def test_simulate_rejects_a_bad_scenario_with_its_path(tmp_path: Path) -> None:
    sc = yaml.safe_load((ROOT / "scenarios/aa.yaml").read_text())
    sc["versions"]["candidate"] = {"errorRate": 1.5}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(sc))
    code, _, err = invoke("simulate", "-f", str(ROOT / "policies/minimal.yaml"), "--scenario", str(f))
    assert code == 2 and "versions.candidate.errorRate" in err


RESULT_FIELDS = {
    "seed",
    "outcome",
    "reason",
    "failedChecks",
    "decidedAtS",
    "candidateRequests",
    "candidateErrors",
    "candidateWrong",
    "steps",
}


@pytest.mark.parametrize(
    ("scenario", "outcome", "code"), [("aa.yaml", "promoted", 0), ("broken-errors.yaml", "rolled_back", 3)]
)
def test_simulate_outcomes_and_every_result_field(scenario: str, outcome: str, code: int) -> None:
    rc, out, _ = invoke(
        "simulate", "-f", str(ROOT / "policies/minimal.yaml"), "--scenario", str(ROOT / "scenarios" / scenario),
        "--seed", "7", "-o", "json",
    )  # fmt: skip
    doc = json.loads(out)
    check_output(doc, "simulation")
    assert doc.keys() >= RESULT_FIELDS
    assert doc["outcome"] == outcome, doc["reason"]
    assert rc == code
    assert doc["seed"] == 7
    for step in doc["steps"]:
        assert {"weight", "startS", "endS", "verdict"} <= step.keys()
    if outcome == "rolled_back":
        assert doc["failedChecks"] and doc["failedChecks"][0] in doc["reason"]


def test_simulate_runs_are_json_lines_with_consecutive_seeds() -> None:
    _rc, out, _ = invoke(
        "simulate", "-f", str(ROOT / "policies/minimal.yaml"), "--scenario", str(ROOT / "scenarios/aa.yaml"),
        "--seed", "3", "--runs", "4", "-o", "json",
    )  # fmt: skip
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["seed"] for r in lines] == [3, 4, 5, 6]
    # Same seed, same result: the simulation is reproducible.
    _, again, _ = invoke(
        "simulate", "-f", str(ROOT / "policies/minimal.yaml"), "--scenario", str(ROOT / "scenarios/aa.yaml"),
        "--seed", "5", "-o", "json",
    )  # fmt: skip
    assert json.loads(again) == lines[2]


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mesh_canary", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in ("validate", "run", "simulate", "demo"):
        assert verb in out


# --------------------------------------------------------------------------- one output model


def _policy() -> Any:
    from mesh_canary.run.policy_loading import load_policy_file

    return load_policy_file(str(ROOT / "policies/minimal.yaml"))


T0 = 1_700_000_000.0


def _states() -> dict[str, Any]:
    """A rollout in progress (with a verdict), one rolled back, one promoted."""
    from dataclasses import replace

    from mesh_canary.core import engine
    from mesh_canary.core.verdicts import CheckResult, Verdict

    policy = _policy()
    started = engine.start(policy, T0).state
    verdict = CheckResult("errorRate", "errorRate", Verdict.INCONCLUSIVE, "not enough data", samples=12.0)
    progressing = replace(started, checks=(verdict,), last_tick_at=T0 + 30)
    rolled_back = engine.command(policy, progressing, "abort", T0 + 61.25).state
    promoted = replace(
        started, phase=engine.Phase.SUCCEEDED, finished_at=T0 + 600, reason="all checks passed"
    )
    return {"progressing": progressing, "rolled_back": rolled_back, "promoted": promoted}


@pytest.mark.parametrize(
    ("which", "outcome", "code"),
    [("promoted", "promoted", 0), ("rolled_back", "rolled_back", 3), ("progressing", "timed_out", 4)],
)
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_run_prints_the_one_rollout_view(
    monkeypatch: pytest.MonkeyPatch, which: str, outcome: str, code: int, fmt: str
) -> None:
    from mesh_canary.run import wiring
    from mesh_canary.run.runner import RunResult, outcome_of

    state = _states()[which]
    result = RunResult(outcome_of(state) or outcome, state)
    monkeypatch.setattr(wiring, "run_policy", lambda *a, **k: result)
    rc, out, _ = invoke("run", "-f", str(ROOT / "policies/minimal.yaml"), "-o", fmt)
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    check_output(doc, "rollout")
    assert rc == code and doc["outcome"] == outcome
    assert doc["startedAt"] == "2023-11-14T22:13:20Z"  # RFC 3339, not epoch seconds
    assert (doc["stableVersion"], doc["candidateVersion"]) == ("v1", "v2")
    assert doc["currentStep"] == 1 and isinstance(doc["stepCount"], int)
    if which == "rolled_back":
        assert doc["phase"] == "RolledBack" and doc["durationSeconds"] == 61.2
        assert doc["finishedAt"] == "2023-11-14T22:14:21Z" and doc["weights"]["stable"] == 100
    if which == "progressing":
        assert doc["finishedAt"] is None and doc["durationSeconds"] is None
        assert doc["checks"][0]["verdict"] == "inconclusive"


def test_every_outcome_is_spelled_once_from_the_engine() -> None:
    """run, the ModelRollout status and its history, rollout status and simulate agree."""
    from mesh_canary.core.engine import OUTCOME_OF_PHASE, Outcome
    from mesh_canary.kube.status import render_status
    from mesh_canary.present.view import RolloutView, history_documents
    from mesh_canary.run.runner import outcome_of

    policy = _policy()
    for name, state in _states().items():
        expected = OUTCOME_OF_PHASE.get(state.phase) if state.terminal else None
        assert outcome_of(state) == expected
        status = render_status(None, state=state, policy=policy, generation=1, now=T0 + 700)
        obj = {"metadata": {"name": "r", "namespace": "ns"}, "status": status}
        view = RolloutView.from_resource(obj).to_document()
        check_output(view, "rollout")
        assert view["outcome"] == expected == RolloutView.from_state(state, policy).outcome, name
        assert view["startedAt"] == RolloutView.from_state(state, policy).started_at
        rows = history_documents(obj)
        check_output(rows, "history")
        assert rows[-1]["outcome"] == (expected or Outcome.IN_PROGRESS), name
    assert {o.value for o in Outcome} >= {"promoted", "rolled_back", "aborted", "timed_out", "paused"}


def test_the_schema_spells_phases_and_outcomes_as_the_engine_does() -> None:
    from mesh_canary.core.engine import Outcome
    from mesh_canary.present.view import PHASES, output_schema

    defs = output_schema()["$defs"]
    assert defs["phase"]["enum"] == list(PHASES)
    assert defs["outcome"]["enum"] == [o.value for o in Outcome]
    assert set(defs["simulation"]["properties"]["outcome"]["enum"]) <= set(defs["outcome"]["enum"])


def test_history_written_before_the_one_spelling_reads_in_it() -> None:
    from mesh_canary.present.view import history_documents

    old = {"outcome": "rolledBack", "startedAt": "2023-11-14T22:13:20Z", "finishedAt": "2023-11-14T22:15:00Z"}
    obj = {"metadata": {"name": "r", "namespace": "ns"}, "status": {"phase": "RolledBack", "history": [old]}}
    (row,) = history_documents(obj)
    check_output([row], "history")
    assert row["outcome"] == "rolled_back" and row["durationSeconds"] == 100.0


def test_the_schema_refuses_the_old_spellings() -> None:
    import jsonschema

    doc = _run_doc()
    for key, value in (("outcome", "rolledBack"), ("startedAt", T0), ("phase", "rolled_back")):
        with pytest.raises(jsonschema.ValidationError):
            check_output({**doc, key: value}, "rollout")
    with pytest.raises(jsonschema.ValidationError):
        check_output({**doc, "durationS": 1.0}, "rollout")


def _run_doc() -> dict[str, Any]:
    from mesh_canary.present.view import RolloutView

    doc: dict[str, Any] = RolloutView.from_state(_states()["rolled_back"], _policy()).to_document()
    return doc


# --------------------------------------------------------------------------- one exception tree


def test_every_error_class_is_one_kind_with_its_exit_code() -> None:
    from mesh_canary.controller.controller import ControllerError
    from mesh_canary.core.policy import PolicyError
    from mesh_canary.errors import BadInput, CouldNotWork, MeshCanaryError
    from mesh_canary.kube.rollouts import KubeError
    from mesh_canary.metrics.deadline_http import DeadlineExceeded, Unreachable
    from mesh_canary.metrics.prometheus import MetricsAddressError
    from mesh_canary.metrics.promql import PromQLError
    from mesh_canary.present.report import ReportError
    from mesh_canary.routing.base import RouteConflict, RouteNotFound, RouteOwned, RouterError, WeightsMoved
    from mesh_canary.run.runner import RouterWriteError
    from mesh_canary.run.stores import StateFileError
    from mesh_canary.run.wiring import LocalInputError
    from mesh_canary.simulation.traffic import ScenarioError

    bad = (
        PolicyError,
        MetricsAddressError,
        PromQLError,
        StateFileError,
        LocalInputError,
        ScenarioError,
        ReportError,
    )
    could_not = (
        RouterError,
        RouteConflict,
        RouteNotFound,
        RouteOwned,
        WeightsMoved,
        KubeError,
        ControllerError,
    )
    for cls in bad:
        assert issubclass(cls, BadInput) and cls.exit_code == 2, cls
    for cls in (*could_not, RouterWriteError, Unreachable, DeadlineExceeded):
        assert issubclass(cls, CouldNotWork) and cls.exit_code == 1, cls
    assert issubclass(BadInput, MeshCanaryError) and issubclass(CouldNotWork, MeshCanaryError)
    assert KubeError("refused", bad_input=True).code == 2 and KubeError("unreachable").code == 1


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        ("kube-bad", 2, "error: the API refused the spec"),
        ("kube-down", 1, "error: the API is unreachable"),
        ("route", 1, "error: the route moved"),
        ("state", 2, "error: state file s.json is damaged"),
    ],
)
def test_the_cli_maps_every_error_by_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, error: str, code: int, line: str
) -> None:
    from mesh_canary.kube.rollouts import KubeError
    from mesh_canary.routing.base import RouteConflict
    from mesh_canary.run import wiring
    from mesh_canary.run.stores import StateFileError

    raised = {
        "kube-bad": KubeError("the API refused the spec", bad_input=True),
        "kube-down": KubeError("the API is unreachable"),
        "route": RouteConflict("the route moved"),
        "state": StateFileError("state file s.json is damaged"),
    }[error]

    def boom(*a: Any, **k: Any) -> None:
        raise raised

    monkeypatch.setattr(wiring, "run_policy", boom)
    rc, out, err = invoke("run", "-f", str(ROOT / "policies/minimal.yaml"), "-o", "json")
    assert (rc, err.strip(), out) == (code, line, "")


def test_debug_shows_the_traceback_of_work_that_could_not_be_done(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh_canary.routing.base import RouteConflict
    from mesh_canary.run import wiring

    def boom(*a: Any, **k: Any) -> None:
        raise RouteConflict("the route moved")

    monkeypatch.setattr(wiring, "run_policy", boom)
    result = CliRunner().invoke(main, ["--debug", "run", "-f", str(ROOT / "policies/minimal.yaml")])
    assert isinstance(result.exception, RouteConflict)
    # Bad input stays one sentence, --debug or not.
    code, _, err = invoke("--debug", "run", "-f", "/nonexistent/policy.yaml")
    assert code == 2 and "cannot read policy" in err and "Traceback" not in err
