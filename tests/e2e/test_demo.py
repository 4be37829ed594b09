"""The demo's two outcomes, end to end: real model servers behind a real Envoy, the real
engine and judge, real time. One healthy candidate promoted, one degraded rolled back, and
after the rollback every new request reaches the stable model server (counted there)."""

from __future__ import annotations

from mesh_canary.run.demo import demo_policy, run_demo
from tests.output_schema import check_output


def test_demo_promotes_healthy_and_rolls_back_degraded() -> None:
    report = run_demo(rps=100.0, live=False, metrics_mode="direct")
    healthy, degraded = report["runs"]
    assert healthy["outcome"] == "promoted", healthy["reason"]
    assert [s["weight"] for s in healthy["steps"]] == [10, 25, 50, 100]
    assert degraded["outcome"] == "rolled_back"
    assert degraded["failedChecks"], "a rollback names the checks that failed"
    after = degraded["afterRollback"]
    assert after["candidateReceived"] == 0
    assert after["stableReceived"] > 100  # ~100 req/s for 3 s, all on stable
    assert report["ok"] is True
    check_output(report, "demo")  # `demo -o json` (docs/output.md)


def test_demo_policy_is_the_documented_example() -> None:
    from pathlib import Path

    from mesh_canary.core.policy import load_policy_text

    example = Path(__file__).parents[2] / "policies" / "local-demo.yaml"
    assert load_policy_text(example.read_text()) == demo_policy()


def test_demo_with_labels_through_the_collector() -> None:
    """`demo --labels collector`: accuracy from a real collector process, no /feedback."""
    report = run_demo(rps=100.0, live=False, metrics_mode="direct", labels="collector")
    healthy, degraded = report["runs"]
    assert healthy["outcome"] == "promoted", healthy["reason"]
    assert degraded["outcome"] == "rolled_back"
    accuracy = next(c for c in healthy["checks"] if c["name"] == "accuracy")
    # Judged on labels joined by the collector (the servers have no /feedback): enough of them.
    assert accuracy["verdict"] in ("pass", "inconclusive") and accuracy["enoughData"], accuracy
    assert accuracy["stableEstimate"] is not None, accuracy
    assert set(healthy["collector"]) == {"unlabelledPredictions", "unmatchedLabels"}
    assert report["ok"] is True
    check_output(report, "demo")
