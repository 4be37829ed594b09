"""`rollout get|retry --state FILE`: the standalone path, over the state a real
`mesh-canary run --backend local` (Envoy and two model servers) wrote."""

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
POLICY = str(ROOT / "policies" / "local-demo.yaml")
MESH_CANARY = str(Path(sys.executable).parent / "mesh-canary")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def run(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    local = ["--backend", "local", "--metrics", "direct", "--state", str(state), "-o", "json"]
    return subprocess.run(
        [MESH_CANARY, "run", "-f", POLICY, *local, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=state.parent,
    )


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state file of a real local run whose degraded candidate rolled back (exit 3)."""
    state = tmp_path_factory.mktemp("standalone") / "st.json"
    result = run(state, "--candidate", "degraded")
    assert result.returncode == 3, result.stderr
    return state


def test_get_state_prints_the_modelrollout_a_controller_would_hold(rolled_back: Path) -> None:
    result = invoke("rollout", "get", "--state", str(rolled_back), "-f", POLICY, "-o", "json")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    check_output(obj, "modelRollout")
    assert (obj["kind"], obj["metadata"]["name"]) == ("ModelRollout", "local-demo")
    assert obj["spec"] == yaml.safe_load(Path(POLICY).read_text())["spec"]
    status = obj["status"]
    assert status["phase"] == "RolledBack" and status["weights"]["candidate"] == 0
    assert (status["stableVersion"], status["candidateVersion"], status["stepCount"]) == ("v1", "v2", 4)
    assert {c["type"] for c in status["conditions"]} >= {"RolledBack", "Succeeded", "Progressing"}
    assert all(isinstance(c["samples"], int) for c in status["checks"] if "samples" in c)
    as_yaml = invoke("rollout", "get", "--state", str(rolled_back), "-o", "yaml")
    check_output(yaml.safe_load(as_yaml.stdout), "modelRollout")
    text = invoke("rollout", "get", "local-demo", "--state", str(rolled_back), "-f", POLICY)
    assert text.exit_code == 0 and "RolledBack" in text.stdout and "v1 -> v2" in text.stdout
    other = invoke("rollout", "get", "another", "--state", str(rolled_back))
    assert other.exit_code == 2 and "holds the rollout 'local-demo', not 'another'" in other.stderr


def test_retry_state_keeps_the_finished_run_and_the_next_run_starts_at_step_one(
    rolled_back: Path, tmp_path: Path
) -> None:
    state = tmp_path / "st.json"
    state.write_bytes(rolled_back.read_bytes())
    before = json.loads(state.read_text())
    result = invoke("rollout", "retry", "--state", str(state), "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    check_output(doc, "order")
    kept = Path(doc["kept"])
    assert json.loads(kept.read_text()) == before and not state.exists()
    again = invoke("rollout", "retry", "--state", str(state))
    assert again.exit_code == 2 and f"no state file {state}" in again.stderr
    # The next run starts from step 1 (a healthy candidate; stopped by --timeout at step 1).
    resumed = run(state, "--timeout", "2s")
    assert resumed.returncode == 4, resumed.stderr
    fresh = json.loads(state.read_text())
    assert (fresh["phase"], fresh["stepIndex"], fresh["weights"]["candidate"]) == ("Progressing", 0, 10)
    assert fresh["startedAt"] > before["startedAt"] and fresh["runId"] != before["runId"]


@pytest.mark.parametrize("phase", ["Succeeded", "Progressing", "Paused"])
def test_retry_state_refuses_any_other_phase_and_changes_nothing(
    rolled_back: Path, tmp_path: Path, phase: str
) -> None:
    state = tmp_path / "st.json"
    doc = json.loads(rolled_back.read_text())
    state.write_text(json.dumps({**doc, "phase": phase}))
    result = invoke("rollout", "retry", "--state", str(state))
    assert result.exit_code == 2
    assert f"local-demo is {phase}: retry restarts only a RolledBack or Aborted rollout" in result.stderr
    assert json.loads(state.read_text())["phase"] == phase and list(tmp_path.iterdir()) == [state]
