"""The fallback end to end on the local mesh with a REAL Envoy and three model servers: stable
and the candidate both fail 8% of requests (policies/local-fallback.yaml: errorRate max 2%),
so the rollback sends 100% to the fallback v0 -- every request through Envoy is answered by
v0 -- until a person's restore-stable sends it to v1 again. Once through the library (so the
test can send requests while the mesh lives), once as a real `mesh-canary run` process."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections import Counter

import httpx
import pytest

from mesh_canary.cli import read_policy
from mesh_canary.core.fallback import ALL_FALLBACK
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.localmesh.model_server import VERSION_HEADER
from mesh_canary.notify import LogNotifier
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import MemoryStateStore
from mesh_canary.run.wiring import local_backend
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).parents[2]
POLICY = ROOT / "policies" / "local-fallback.yaml"


def answered_by(url: str, n: int) -> Counter[str]:
    """``n`` requests through Envoy: which version answered, by count."""
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=5) as client:
        for i in range(n):
            r = client.post("/predict", json={"id": f"fb-{i}", "features": [0.1, 0.2, -0.3, 0.4]})
            seen[r.headers.get(VERSION_HEADER, "none")] += 1
    return seen


def test_both_broken_envoy_sends_everything_to_the_fallback_until_a_person_restores_stable() -> None:
    policy = read_policy(str(POLICY))
    with local_backend(policy, True, rps=100.0, metrics_mode="direct", stable_degraded=True) as (
        router,
        metrics,
        mesh,
    ):
        runner = RolloutRunner(policy, router, metrics, MemoryStateStore(), LogNotifier(), SystemClock())
        result = runner.run(timeout_s=150)
        assert result.outcome == "rolled_back", result.state.reason
        assert (
            result.state.weights == ALL_FALLBACK and "stable v1 breaks its limits too" in result.state.reason
        )
        assert router.get_weights() == ALL_FALLBACK  # read back from Envoy's runtime
        url = mesh.envoy_url  # type: ignore[attr-defined]
        # Envoy applies a runtime change to the next request; wait for requests in flight.
        wait_for("only v0 answers", lambda: set(answered_by(url, 20)) == {"v0"})
        assert answered_by(url, 200) == Counter({"v0": 200})
        # Nothing mesh-canary decides moves it back; a person's order does.
        restored = runner.restore_stable()
        assert restored.weights == ALL_STABLE and router.get_weights() == ALL_STABLE
        wait_for("only v1 answers", lambda: set(answered_by(url, 20)) == {"v1"})
        assert answered_by(url, 200) == Counter({"v1": 200})


def test_a_real_run_process_leaves_envoy_on_the_fallback(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "st.json"
    exe = str(pathlib.Path(sys.executable).parent / "mesh-canary")
    both_degraded = [
        "--backend",
        "local",
        "--metrics",
        "direct",
        "--candidate",
        "degraded",
        "--stable",
        "degraded",
    ]
    argv = [exe, "run", "-f", str(POLICY), *both_degraded, "--state", str(state), "-o", "json"]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ran.returncode == 3, ran.stderr
    out = json.loads(ran.stdout)
    assert out["outcome"] == "rolled_back" and out["weights"]["fallback"] == 100
    # Read back from Envoy's admin API as the mesh stopped.
    assert "Envoy held 0/0/100 (stable/candidate/fallback) to the end" in ran.stderr
    assert "sent 100% of traffic to the fallback" in ran.stderr
    saved = json.loads(state.read_text())
    assert saved["weights"]["fallback"] == 100 and saved["phase"] == "RolledBack"
