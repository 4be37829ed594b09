"""Hints that used to mislead (issue 11): each says what is wrong and what to write.

Run as a person does: the real `mesh-canary` command in a subprocess, with a clean
environment (no kube configuration unless a test gives one).
"""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import minimal_rollout

ROOT = Path(__file__).resolve().parents[1]
MESH_CANARY = str(Path(sys.executable).parent / "mesh-canary")


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "PYTHON")) and k != "HOME"}
    return subprocess.run(
        [MESH_CANARY, *args],
        cwd=tmp_path,
        env={**clean, "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def policy_file(tmp_path: Path, doc: dict[str, Any], name: str = "policy.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_a_duration_without_its_unit_says_what_to_write_and_that_works(tmp_path: Path) -> None:
    doc = minimal_rollout()
    doc["spec"]["canary"] = {"steps": [10, 100], "minStepDuration": "5s", "maxStepDuration": 10}
    doc["spec"]["analysis"] = {"interval": "2s"}
    bad = run(tmp_path, "validate", policy_file(tmp_path, doc))
    assert bad.returncode == 2
    assert "spec.canary.maxStepDuration: 10 has no unit: write 10s" in bad.stderr
    assert "quote" not in bad.stderr  # "10" in quotes is no duration either
    fixed = copy.deepcopy(doc)
    fixed["spec"]["canary"]["maxStepDuration"] = re.search(r"write (\S+)", bad.stderr).group(1)  # type: ignore[union-attr]
    good = run(tmp_path, "validate", policy_file(tmp_path, fixed, "fixed.yaml"))
    assert good.returncode == 0, good.stderr


def test_a_repeated_step_is_reported_beside_out_of_range_steps(tmp_path: Path) -> None:
    doc = minimal_rollout()
    doc["spec"]["canary"] = {"steps": [0, 20, 20, 50, 150]}
    result = run(tmp_path, "validate", policy_file(tmp_path, doc))
    assert result.returncode == 2
    err = result.stderr
    assert "spec.canary.steps[0]: 0 is below the minimum 1" in err
    assert "spec.canary.steps[2]: 20 is repeated" in err
    assert "spec.canary.steps[4]: 150 is above the maximum 100" in err
    assert "the last step is 150" not in err  # said once, by the range


def test_report_of_a_missing_file_says_the_file_is_missing(tmp_path: Path) -> None:
    result = run(tmp_path, "report", "nothere")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no state file nothere")
    assert "Service host/port" not in line
    assert not list(tmp_path.glob("*.html"))


def test_an_unreachable_api_prints_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "models"}}],
        "current-context": "c",
        "users": [{"name": "u", "user": {"token": "t"}}],
    }
    kubeconfig = policy_file(tmp_path, config, "kubeconfig")
    result = run(tmp_path, "rollout", "status", "fraud-scorer", "--kubeconfig", kubeconfig)
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    assert "cannot reach the Kubernetes API" in line and "Retrying" not in result.stderr
    assert "Max retries" not in line


def test_report_o_json_is_a_format_error_not_a_file_named_json(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{}")
    result = run(tmp_path, "report", str(state), "-o", "json")
    assert result.returncode == 2
    assert "report has no -o json output" in result.stderr and "--out FILE" in result.stderr
    assert not (tmp_path / "json").exists()


def test_docs_link_only_files_that_exist() -> None:
    pages = [ROOT / "README.md", ROOT / "scenarios" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        assert "SIMULATION.md" not in text, f"{page}: SIMULATION.md is docs/simulation.md"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links a missing {target}"
