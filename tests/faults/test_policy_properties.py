"""Generated policies, valid and not (issue 8, "Done when"): `validate` never shows a
traceback and exits 0 or 2 only, and every policy it accepts can be loaded and judged, in
process through the engine and the real judge, without an exception.

Deterministic for CI: derandomized, a fixed number of examples, no example database.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import tempfile
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh_canary.cli import main
from mesh_canary.core import engine
from mesh_canary.core.judge import AnytimeJudge
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.policy import PolicyError
from mesh_canary.core.verdicts import Verdict
from mesh_canary.run.policy_loading import load_policy_file
from tests.conftest import minimal_rollout

BASE: dict[str, Any] = minimal_rollout("scorer")

ODD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [0, 1, -1, 0.5, 1e-300, 1e15, 1e16, 1e308, 10**20, 10**400, math.nan, math.inf, -math.inf]
    ),
    st.integers(min_value=-(10**6), max_value=10**6),
)
DURATIONS = st.sampled_from(
    ["0s", "1ms", "500ms", "1s", "6s", "30s", "5m", "1h", "30d", "31d", "110000d", "1h30m", "9" * 400 + "d"]
)
ODD_VALUES = st.one_of(
    ODD_NUMBERS,
    DURATIONS,
    st.sampled_from(
        [None, True, False, "", "x", [], {}, [["a"]], {"a": 1}, "sum(up)", "a\nb", '"', "{{ version }}"]
    ),
    st.text(max_size=8),
)
METRICS = [
    "errorRate",
    "latency",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "predictionDrift",
    "featureDrift",
    "trafficShare",
    "custom",
]
CHECK_FIELDS = [
    "max",
    "min",
    "maxIncrease",
    "maxIncreaseRatio",
    "maxDecrease",
    "quantile",
    "slowerThan",
    "maxPSI",
    "maxDeviation",
    "minLabeled",
]
QUERIES = ['sum(up{job="{{ version }}"})', 'sum(up{job="x})', "sum(up{job=`{{ version }}`})", "sum(up) # {{ version }}", "{{ window }}", "{{ nope }}"]  # fmt: skip
BOUND_VALUES = st.one_of(
    ODD_NUMBERS, st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.5, 0.99, 2, 100, "250ms", "1s"])
)


@st.composite
def checks(draw: st.DrawFn) -> dict[str, Any]:
    metric = draw(st.sampled_from(METRICS) | st.sampled_from([[], {}, 7, None]))
    out: dict[str, Any] = {"metric": metric}
    for key in draw(st.lists(st.sampled_from(CHECK_FIELDS), max_size=3, unique=True)):
        out[key] = draw(BOUND_VALUES)
    if metric in ("precision", "recall", "f1") and draw(st.booleans()):
        out["class"] = "fraud"
    if metric == "featureDrift" and draw(st.booleans()):
        out["feature"] = "amount"
    if metric == "custom":
        out["name"] = draw(st.sampled_from(["kpi", "kpi2", "1bad"]))
        out["query"] = draw(st.sampled_from(QUERIES))
    return out


SANE: dict[str, list[dict[str, Any]]] = {
    "errorRate": [{"max": 0.05}, {"maxIncrease": 0.01}, {"maxIncreaseRatio": 0.2, "max": 0.1}],
    "latency": [{"quantile": 0.99, "max": "500ms"}, {"quantile": 0.5, "maxIncreaseRatio": 0.2}, {"slowerThan": "250ms", "max": 0.1}],
    "accuracy": [{"maxDecrease": 0.02}, {"min": 0.8, "minLabeled": 50}],
    "precision": [{"class": "fraud", "maxDecrease": 0.05}],
    "recall": [{"class": "fraud", "min": 0.5}],
    "f1": [{"class": "fraud", "maxDecrease": 0.05}],
    "predictionDrift": [{"maxPSI": 0.2}],
    "featureDrift": [{"feature": "amount", "maxPSI": 0.2}],
    "trafficShare": [{"maxDeviation": 0.05}],
    "custom": [{"name": "kpi", "query": 'sum(up{job="{{ version }}"})', "max": 1}, {"name": "kpi", "query": "sum(up)", "maxIncrease": 0.1}],
}  # fmt: skip


@st.composite
def sane_checks(draw: st.DrawFn) -> dict[str, Any]:
    """A check that is valid as drawn, with at times one field set to an odd value."""
    metric = draw(st.sampled_from(METRICS))
    out = {"metric": metric, **copy.deepcopy(draw(st.sampled_from(SANE[metric])))}
    if draw(st.integers(0, 7)) == 0:
        out[draw(st.sampled_from(sorted(out)))] = draw(BOUND_VALUES)
    return out


SETTINGS_PATHS = [
    ("canary", "steps"),
    ("canary", "minStepDuration"),
    ("canary", "maxStepDuration"),
    ("analysis", "interval"),
    ("analysis", "confidence"),
    ("analysis", "minRequests"),
    ("analysis", "noDataTimeout"),
    ("metrics", "timeout"),
    ("blueGreen", "mirrorPercent"),
    ("virtualService", "routes"),
]


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    """Three in four start valid (sane checks, a rising schedule) and may get one odd field;
    the rest are wild: odd checks, odd schedules, odd settings."""
    doc = copy.deepcopy(BASE)
    spec = doc["spec"]
    wild = draw(st.integers(0, 3)) == 0
    spec["strategy"] = draw(st.sampled_from(["canary", "canary", "blueGreen"]))
    valid_steps = [[10, 50, 100], [50, 100], [5, 10, 25, 50, 100], [1, 99, 100]]
    spec["canary"] = {
        "steps": draw(st.sampled_from(valid_steps + ([[100], [20, 20, 100], [50, 10, 100]] if wild else []))),
        "minStepDuration": "30s",
    }
    sane = st.lists(sane_checks(), min_size=1, max_size=4, unique_by=lambda c: str(c["metric"]))
    spec["analysis"] = {
        "interval": "10s",
        "minRequests": 20,
        "checks": draw(st.lists(checks(), min_size=1, max_size=3) if wild else sane),
    }
    odd_settings = st.lists(
        st.sampled_from(SETTINGS_PATHS), min_size=1, max_size=3 if wild else 1, unique=True
    )
    if wild or draw(st.integers(0, 7)) == 0:
        for section, key in draw(odd_settings):
            value = draw(
                ODD_VALUES | DURATIONS | st.lists(st.integers(min_value=-5, max_value=120), max_size=4)
            )
            spec.setdefault(section, {})[key] = value
    return doc


BOUNDS = (10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)


def counts(policy: Policy, scale: float, errors: float) -> VersionCounts:
    """Counts with every family a check may read, for every check in the policy."""
    n = 1000.0 * scale
    hist = Histogram(BOUNDS, tuple(n * f for f in (0.2, 0.6, 0.9, 0.97, 0.99, 0.995, 1.0)))
    confusion = {
        ("fraud", "fraud"): n * 0.3,
        ("fraud", "ok"): n * 0.05,
        ("ok", "fraud"): n * 0.05,
        ("ok", "ok"): n * 0.6,
    }
    custom = {c.name: 0.5 for c in policy.analysis.checks if c.metric == "custom"}
    return VersionCounts(
        requests=n,
        errors=n * errors,
        latency_ms=hist,
        confusion=confusion,
        predictions={"fraud": n * 0.35, "ok": n * 0.65},
        features={"amount": hist},
        custom=custom,
    )


def dry_run(policy: Policy) -> None:
    """Start, then judge two synthetic windows (healthy, then huge and failing)."""
    judge = AnytimeJudge()
    state = engine.start(policy, 0.0).state
    at = max(policy.canary.min_step_duration_s, policy.analysis.interval_s) + policy.analysis.interval_s
    for stable, candidate in (
        (counts(policy, 1, 0.01), counts(policy, 1, 0.01)),
        (counts(policy, 1e15, 0.01), counts(policy, 1e15, 0.5)),
    ):
        obs = Observation(state.step_started_at, at, stable, candidate)
        state = engine.tick(policy, state, obs, at, judge).state
        for r in state.checks:
            assert r.verdict in tuple(Verdict)
        json.dumps(state.to_dict(), allow_nan=False)  # what status and --state files hold
        at += policy.analysis.interval_s


@pytest.mark.fault(item=13)
@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=policies())
def test_validate_never_crashes_and_every_accepted_policy_can_be_judged(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "policy.yaml"
        path.write_text(yaml.safe_dump(doc))
        result = CliRunner().invoke(main, ["validate", str(path)])
        assert result.exit_code in (0, 2), (result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        try:
            policy = load_policy_file(str(path))
        except PolicyError:
            assert result.exit_code == 2, "load refused what validate accepted"
            return
        assert result.exit_code == 0, "validate refused what load accepts"
        dry_run(policy)
