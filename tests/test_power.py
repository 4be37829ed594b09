"""Power you can see (issue 10): `mesh-canary plan`, the warnings of validate and simulate,
the numbers checked against simulated rollouts, and onTimeout through `simulate`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh_canary.core.policy import load_policy
from mesh_canary.core.power import Traffic, expected_samples, plan, unreachable
from mesh_canary.simulation.simulate import simulate_rollout
from mesh_canary.simulation.traffic import SyntheticMesh, load_scenario
from tests.conftest import minimal_rollout
from tests.output_schema import check_output

STABLE = {
    "errorRate": 0.01,
    "latency": {"medianMs": 80, "p99Ms": 250},
    "accuracy": 0.9,
    "labels": {"delayMeanS": 60, "missing": 0.2},
    "predictions": [0.7, 0.2, 0.1],
}


def policy_doc(**analysis: Any) -> dict[str, Any]:
    doc = minimal_rollout("power")
    doc["spec"]["canary"] = {"steps": [10, 50, 100], "minStepDuration": "1m", "maxStepDuration": "5m"}
    doc["spec"]["analysis"] = {"checks": [{"metric": "errorRate", "maxIncreaseRatio": 0.5}], **analysis}
    return doc


def scenario_doc(rps: float, candidate: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "duration": "1h",
        "traffic": {"rps": rps},
        "versions": {"stable": STABLE, "candidate": candidate or {}},
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_canary", *args], capture_output=True, text=True, timeout=300, check=False
    )


def write(tmp_path: Path, name: str, doc: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_expected_samples_follow_the_steps_and_their_durations() -> None:
    p = load_policy(policy_doc())
    # Step 1 held to its 5m timeout; step 2 after step 1 moved on at 1m, then held 5m.
    assert expected_samples(p, Traffic(rps=20), label_based=False) == [
        pytest.approx((20 * 0.1 * 300, 20 * 0.9 * 300)),
        pytest.approx((20 * 0.1 * 60 + 20 * 0.5 * 300, 20 * 0.9 * 60 + 20 * 0.5 * 300)),
    ]
    # Labels 30 minutes late, 30% labelled: a fraction of them has arrived by the timeout.
    labels = expected_samples(p, Traffic(rps=20, label_delay_s=1800, labelled=0.3), label_based=True)
    assert 0 < labels[-1][0] < 0.3 * 0.2 * (20 * 0.1 * 60 + 20 * 0.5 * 300)


def test_more_traffic_detects_smaller_regressions_and_low_traffic_is_flagged() -> None:
    p = load_policy(policy_doc())
    effects = [plan(p, Traffic(rps=r))[0].steps[-1].effect for r in (20, 200, 2000)]
    assert all(e is not None for e in effects)
    assert effects[0] > effects[1] > effects[2]  # type: ignore[operator]
    assert unreachable(p, Traffic(rps=200)) == []
    (warning,) = unreachable(p, Traffic(rps=2))
    assert warning.startswith("errorRate: step 1 at 10% expects 60 candidate")
    assert "fewer than the 100 it needs" in warning


def test_the_detectable_effect_is_detected_in_simulation_and_half_of_it_is_not_guaranteed() -> None:
    """The effect plan calls detectable with 95% power is rolled back in >= 95 of 100 seeded
    runs (most by the check failing, a few at the step timeout: fail closed); at half of it,
    plan says detection is not guaranteed."""
    p = load_policy(policy_doc())
    (cp,) = plan(p, Traffic(rps=50, error_rate=0.01))
    effect = cp.steps[-1].effect
    assert effect is not None and cp.detects(effect) and not cp.detects(effect / 2)
    scenario = load_scenario(scenario_doc(50, {"errorRate": 0.01 + effect}), "power")
    mesh = SyntheticMesh(scenario, seed=0)
    outcomes = Counter()
    for seed in range(100):
        r = simulate_rollout(p, scenario, seed, mesh=mesh)
        outcomes["detected" if "errorRate" in r["failedChecks"] else r["outcome"]] += 1
    assert outcomes["detected"] >= 85 and outcomes["detected"] + outcomes["rolled_back"] >= 95, outcomes


def test_plan_command_prints_samples_reachability_and_effects(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", policy_doc())
    out = cli("plan", "-f", path, "--rps", "2", "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    check_output(doc, "plan")
    (check,) = doc["checks"]
    assert [s["reachable"] for s in check["steps"]] == [False, True]
    assert check["steps"][0]["candidateSamples"] == 60.0
    assert doc["warnings"] and "step 1 at 10%" in doc["warnings"][0]
    text = cli("plan", "-f", path, "--rps", "200", "--label-delay", "60s", "--labelled", "0.8")
    assert text.returncode == 0, text.stderr
    assert "errorRate: detects a rise of" in text.stdout and "with 95% power by step 2" in text.stdout
    assert "WARNING" not in text.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--rps", "0"), "--rps must be above 0"),
        (("--rps", "10", "--accuracy", "1.5"), "--accuracy must be a share"),
        (("--rps", "10", "--label-delay", "soon"), "--label-delay: 'soon' is not a duration"),
    ],
)
def test_plan_refuses_bad_input_with_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = cli("plan", "-f", write(tmp_path, "p.yaml", policy_doc()), *args)
    assert out.returncode == 2 and message in out.stderr and not out.stdout


def test_validate_and_simulate_warn_where_the_minimum_samples_are_unreachable(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", policy_doc())
    out = cli("validate", path, "--rps", "2")
    assert out.returncode == 0 and "valid" in out.stdout
    assert "WARNING: power: errorRate: step 1 at 10% expects 60 candidate" in out.stderr
    assert "WARNING" not in cli("validate", path, "--rps", "200").stderr
    slow = write(tmp_path, "slow.yaml", scenario_doc(2))
    sim = cli("simulate", "-f", path, "--scenario", slow, "-o", "json")
    assert "WARNING: power: errorRate: step 1 at 10%" in sim.stderr
    json.loads(sim.stdout)  # the warning stays out of the document


@pytest.mark.parametrize(
    ("mode", "code", "outcome", "words"),
    [
        ("rollback", 3, "rolled_back", "step 1 at 10% still inconclusive after 5m"),
        ("promote", 0, "promoted", "2 step(s) advanced unproven at their maxStepDuration"),
        ("pause", 4, "timed_out", "still undecided"),
    ],
)
def test_on_timeout_through_simulate(tmp_path: Path, mode: str, code: int, outcome: str, words: str) -> None:
    """minRequests out of reach: every step meets its timeout, and onTimeout decides."""
    path = write(tmp_path, "p.yaml", policy_doc(onTimeout=mode, minRequests=100000))
    out = cli(
        "simulate", "-f", path, "--scenario", write(tmp_path, "aa.yaml", scenario_doc(20)), "-o", "json"
    )
    assert out.returncode == code, out.stderr
    result = json.loads(out.stdout)
    assert result["outcome"] == outcome and words in result["reason"]
    if mode == "promote":
        assert [s["verdict"] for s in result["steps"]] == ["advanced"] * 3
        assert result["decidedAtS"] == 600
    if mode == "pause":  # paused at the first timeout: nothing moved after it
        assert [(s["weight"], s["verdict"]) for s in result["steps"]] == [(10, "inconclusive")]
