"""The controller's per-rollout metrics on /metrics, against the Kubernetes API stand-in.

A real Controller (threads in this process, the real IstioRouter and status store; the
metrics source is the Protocol fake of test_controller) runs a rollout; /metrics shows its
phase, weight, step, each check's estimate, bounds and verdict, the analysis time and the
rollback by reason, and nothing of it is left once the rollout is deleted.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh_canary.controller.metrics import PHASES, VERDICTS
from tests.conftest import NS, model_rollout
from tests.integration.test_controller import MR, Cluster, phase_is, running
from tests.integration.test_controller import cluster as cluster  # the fixture
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROLLOUT = {"namespace": NS, "rollout": "fraud-scorer"}


def samples(text: str, **labels: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample whose labels include ``labels``: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if all(s.labels.get(k) == v for k, v in labels.items()):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    found = [v for (n, _), v in samples(text, **labels).items() if n == name]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} series"
    return found[0] if found else None


def test_per_rollout_series_follow_the_rollout_and_go_with_it(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "10m", "maxStepDuration": "20m"})
    )
    with running(cluster.controller(metrics_addr="127.0.0.1:0")) as ctl:
        url = f"http://127.0.0.1:{ctl.metrics_port}/metrics"

        def scrape() -> str:
            return httpx.get(url).text

        text = wait_for(
            "the check's estimate and two analyses",
            lambda: (
                (t := scrape())
                and value(t, "mesh_canary_rollout_check_upper_bound", **ROLLOUT, check="errorRate")
                is not None
                and (value(t, "mesh_canary_rollout_analysis_duration_seconds_count", **ROLLOUT) or 0) >= 2
                and t
            ),
        )
        for phase in PHASES:  # one series per phase, 1 on the current one
            want = 1.0 if phase == "Progressing" else 0.0
            assert value(text, "mesh_canary_rollout_status", **ROLLOUT, phase=phase) == want
        assert value(text, "mesh_canary_rollout_candidate_weight_percent", **ROLLOUT) == 20.0
        assert value(text, "mesh_canary_rollout_step_index", **ROLLOUT) == 0.0
        assert value(text, "mesh_canary_rollout_steps", **ROLLOUT) == 3.0
        info = dict(ROLLOUT, stable="1.0", candidate="2.0", strategy="canary")
        assert value(text, "mesh_canary_rollout_info", **info) == 1.0
        check = dict(ROLLOUT, check="errorRate", metric="errorRate")
        assert value(text, "mesh_canary_rollout_check_estimate", **check) == 0.0
        lower = value(text, "mesh_canary_rollout_check_lower_bound", **check)
        upper = value(text, "mesh_canary_rollout_check_upper_bound", **check)
        assert lower is not None and upper is not None and lower <= 0.0 <= upper
        verdicts = {v: value(text, "mesh_canary_rollout_check_verdict", **check, verdict=v) for v in VERDICTS}
        assert sorted(verdicts.values()) == [0.0, 0.0, 1.0]  # exactly one verdict is current
        # Analysis time is read + judge: measured, and far below the 1 s interval here.
        total = value(text, "mesh_canary_rollout_analysis_duration_seconds_sum", **ROLLOUT)
        assert total is not None and 0 < total < 30
        # Every analysis that ran on schedule says how late it started (observed just before
        # the analysis counts itself in mesh_canary_ticks_total).
        late = value(text, "mesh_canary_tick_lateness_seconds_count")
        ticks = value(text, "mesh_canary_ticks_total")
        assert late is not None and ticks is not None and ticks >= 2 and ticks <= late <= ticks + 1
        late_sum = value(text, "mesh_canary_tick_lateness_seconds_sum")
        assert late_sum is not None and late_sum >= 0.0
        in_progress = len(samples(text, **ROLLOUT))
        print(f"series per rollout in progress with one check: {in_progress}")

        cluster.annotate("mesh-canary.io/abort", "r1")
        wait_for("the abort", phase_is(cluster, "RolledBack"), timeout_s=10)
        text = wait_for(
            "the rollback counted",
            lambda: (
                (t := scrape())
                and value(t, "mesh_canary_rollout_rollbacks_total", **ROLLOUT, reason="manual") == 1.0
                and t
            ),
        )
        assert value(text, "mesh_canary_rollout_status", **ROLLOUT, phase="RolledBack") == 1.0
        assert value(text, "mesh_canary_rollout_status", **ROLLOUT, phase="Progressing") == 0.0
        assert value(text, "mesh_canary_rollbacks_total", reason="manual") == 1.0
        assert value(text, "mesh_canary_rollbacks_total", reason="noData") == 0.0  # shown from 0
        print(f"series per rolled-back rollout: {len(samples(text, **ROLLOUT))}")

        cluster.custom.delete_namespaced_custom_object(*MR, NS, "modelrollouts", "fraud-scorer")
        wait_for("no series of the deleted rollout", lambda: not samples(scrape(), rollout="fraud-scorer"))
        assert value(scrape(), "mesh_canary_rollbacks_total", reason="manual") == 1.0  # controller-wide stays
