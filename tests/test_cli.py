"""The command line: exit codes, error messages without tracebacks, output formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mesh_canary.cli import main

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
