"""The synthetic mesh: scenario validation, and that its counts follow the scenario's
distributions (fixed seeds; tolerances of about 4-5 standard deviations)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.weights import Weights
from mesh_canary.protocols import MetricsSource, TrafficRouter
from mesh_canary.simulation.traffic import (
    ISTIO_LATENCY_BUCKETS_MS,
    Scenario,
    ScenarioError,
    SyntheticMesh,
    load_scenario,
    load_scenario_text,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

BASE: dict[str, Any] = {
    "duration": "2h",
    "traffic": {"rps": 20},
    "versions": {
        "stable": {
            "errorRate": 0.005,
            "latency": {"medianMs": 80, "p99Ms": 250},
            "accuracy": 0.9,
            "labels": {"delayMeanS": 60, "missing": 0.2},
            "predictions": [0.7, 0.2, 0.1],
        },
        "candidate": {},
    },
}


def scenario(**overrides: Any) -> Scenario:
    """BASE with top-level keys replaced and versions.* merged (candidate=..., stable=...)."""
    doc = copy.deepcopy(BASE)
    for key in ("stable", "candidate"):
        if key in overrides:
            doc["versions"][key].update(overrides.pop(key))
    doc.update(overrides)
    return load_scenario(doc, "test")


def problems_of(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ScenarioError) as info:
        load_scenario(doc, "bad.yaml")
    assert "bad.yaml" in str(info.value)
    return dict(info.value.problems)


def near(observed: float, expected: float, sd: float, sigmas: float = 4.5) -> bool:
    return abs(observed - expected) <= sigmas * sd


def run(mesh: SyntheticMesh, until: float, step: float) -> list[Observation]:
    """Advance in chunks of `step`, reading each chunk on its own."""
    out = []
    t = mesh.now
    while t < until - 1e-9:
        start, t = t, min(t + step, until)
        mesh.advance(t)
        out.append(mesh.read(start, t))
    return out


def error_rate(v: VersionCounts) -> float:
    return v.errors / v.requests


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize(
    "name", ["aa", "broken-errors", "slow-p99", "accuracy-drop", "drift", "breaks-halfway"]
)
def test_example_scenarios_load(name: str) -> None:
    path = SCENARIOS / f"{name}.yaml"
    s = load_scenario_text(path.read_text(), str(path))
    assert s.duration_s == 7200.0 and s.traffic.rps == 20.0
    assert s.stable.error_rate == 0.005
    differs = {
        "aa": lambda: s.candidate == s.stable,
        "broken-errors": lambda: s.candidate.error_rate == 0.025,
        "slow-p99": lambda: (s.candidate.latency.median_ms, s.candidate.latency.p99_ms) == (80.0, 500.0),
        "accuracy-drop": lambda: s.candidate.accuracy == 0.85,
        "drift": lambda: (
            s.candidate.predictions == (0.45, 0.3, 0.25)
            and s.candidate.features["transaction_amount"].bounds
            == s.stable.features["transaction_amount"].bounds
        ),
        "breaks-halfway": lambda: (
            s.candidate == s.stable
            and s.changes[0].at_s == 1200.0
            and s.changes[0].candidate.error_rate == 0.03
        ),
    }
    assert differs[name]()


def test_candidate_copies_stable_field_by_field() -> None:
    s = scenario(candidate={"latency": {"p99Ms": 400}, "labels": {"missing": 0.5}})
    assert s.candidate.latency.median_ms == 80.0 and s.candidate.latency.p99_ms == 400.0
    assert s.candidate.labels.delay_mean_s == 60.0 and s.candidate.labels.missing == 0.5
    assert s.candidate.error_rate == s.stable.error_rate and s.candidate.predictions == s.stable.predictions


def test_changes_build_on_each_other() -> None:
    s = scenario(
        changes=[
            {"at": "10m", "candidate": {"errorRate": 0.03}},
            {"at": "20m", "candidate": {"accuracy": 0.5}, "traffic": {"rps": 5}},
        ]
    )
    first, second = s.changes
    assert first.at_s == 600.0 and first.candidate.error_rate == 0.03 and first.traffic.rps == 20.0
    assert (
        second.candidate.error_rate == 0.03 and second.candidate.accuracy == 0.5 and second.traffic.rps == 5.0
    )
    assert second.stable == s.stable


def test_every_problem_is_reported_with_its_path() -> None:
    doc = copy.deepcopy(BASE)
    doc["duration"] = "soon"
    doc["traffic"] = {"rps": -1, "burst": 3}
    doc["versions"]["stable"]["latency"] = {"medianMs": 80, "p99Ms": 50}
    doc["versions"]["stable"]["predictions"] = [0.5, 0.2]
    doc["versions"]["candidate"] = {"errorRate": 2, "errorrate": 0.1, "labels": {"delayMeanS": "-"}}
    doc["changes"] = [{"at": "later", "candidate": {"accuracy": 0.8, "labels": {"missing": 2}}}]
    problems = problems_of(doc)
    assert set(problems) == {
        "duration",
        "traffic.rps",
        "traffic.burst",
        "versions.stable.latency.p99Ms",
        "versions.stable.predictions",
        "versions.candidate.errorRate",
        "versions.candidate.errorrate",
        "versions.candidate.labels.delayMeanS",
        "changes[0].at",
        "changes[0].candidate.labels.missing",
    }
    assert "at most 1, not 2" in problems["versions.candidate.errorRate"]
    assert "not a known field" in problems["versions.candidate.errorrate"]
    assert "add up to 1" in problems["versions.stable.predictions"]


def test_problems_in_later_changes_name_the_change() -> None:
    doc = copy.deepcopy(BASE)
    doc["changes"] = [
        {"at": "30m", "candidate": {"errorRate": 0.01}},
        {"at": "20m", "candidate": {"accuracy": 1.5, "latency": {"medianMs": 300}}},
        {"at": "40m"},
    ]
    problems = problems_of(doc)
    assert set(problems) == {
        "changes[1].at",
        "changes[1].candidate.accuracy",
        "changes[1].candidate.latency.medianMs",
        "changes[2]",
    }
    assert "before the previous change" in problems["changes[1].at"]
    doc["changes"] = [{"at": "3h", "candidate": {"accuracy": 0.8}}]
    assert "after the scenario's duration (2h)" in problems_of(doc)["changes[0].at"]
    assert "above medianMs (300)" in problems["changes[1].candidate.latency.medianMs"]


def test_required_fields_and_features_are_checked() -> None:
    assert set(problems_of({})) == {"duration", "traffic", "versions"}
    assert set(problems_of({"duration": "1h", "traffic": {}, "versions": {"stable": {}}})) == {
        "traffic.rps",
        "versions.stable.errorRate",
        "versions.stable.latency",
    }
    doc = copy.deepcopy(BASE)
    doc["versions"]["stable"]["features"] = {"amount": {"bounds": [10, 5], "shares": [1.0]}}
    doc["versions"]["candidate"] = {"features": {"amount": {"shares": [0.5]}}}
    # Stable is invalid, yet the candidate's own values are still checked.
    assert set(problems_of(doc)) == {
        "versions.stable.features.amount.bounds",
        "versions.candidate.features.amount.shares",
    }
    doc["versions"]["stable"]["features"] = {"amount": {"bounds": [10, 50], "shares": [0.5, 0.3, 0.2]}}
    doc["versions"]["candidate"] = {"features": {"age": {"shares": [1.0]}}}
    assert set(problems_of(doc)) == {"versions.candidate.features.age"}
    doc["versions"]["stable"]["features"] = {"amount": {"bounds": [10, 50], "shares": [0.5, 0.3, 0.2]}}
    doc["versions"]["candidate"] = {"features": {"amount": {"shares": [0.2, 0.8]}}}
    assert set(problems_of(doc)) == {"versions.candidate.features.amount.shares"}  # needs 3 shares


def test_bad_yaml_and_non_mappings_are_scenario_errors() -> None:
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario_text("duration: [2h", "broken.yaml")
    with pytest.raises(ScenarioError, match="must be a YAML mapping"):
        load_scenario_text("- 1\n- 2\n", "list.yaml")


# --------------------------------------------------------------------------- traffic


def test_the_mesh_is_a_router_and_a_metrics_source() -> None:
    mesh = SyntheticMesh(scenario(), seed=1)
    router: TrafficRouter = mesh
    source: MetricsSource = mesh
    router.set_weights(Weights.candidate_at(25))
    assert router.get_weights() == Weights.candidate_at(25)
    mesh.advance(30.0)
    assert source.read(0.0, 30.0).candidate.requests > 0


def test_arrivals_split_and_errors_follow_the_scenario() -> None:
    s = scenario(traffic={"rps": 50}, candidate={"errorRate": 0.02})
    mesh = SyntheticMesh(s, seed=11, weights=Weights.candidate_at(20))
    chunks = run(mesh, 30000.0, 30.0)
    total = mesh.read(0.0, 30000.0)
    n = total.stable.requests + total.candidate.requests
    assert near(n, 50 * 30000, math.sqrt(50 * 30000))
    assert near(total.candidate.requests / n, 0.2, math.sqrt(0.2 * 0.8 / n))
    assert near(error_rate(total.stable), 0.005, math.sqrt(0.005 / total.stable.requests))
    assert near(error_rate(total.candidate), 0.02, math.sqrt(0.02 / total.candidate.requests))
    # Poisson per chunk: the variance equals the mean (a fixed or binomial count would not).
    per_chunk = np.array([c.stable.requests for c in chunks])
    assert per_chunk.mean() == pytest.approx(0.8 * 50 * 30, rel=0.01)
    assert 0.85 < per_chunk.var() / per_chunk.mean() < 1.15


def test_latency_buckets_follow_the_lognormal() -> None:
    s = scenario(traffic={"rps": 100}, candidate={"latency": {"p99Ms": 500}})
    mesh = SyntheticMesh(s, seed=3, weights=Weights.candidate_at(50))
    run(mesh, 6000.0, 60.0)
    obs = mesh.read(0.0, 6000.0)
    for version, p99 in ((obs.stable, 250.0), (obs.candidate, 500.0)):
        hist = version.latency_ms
        assert hist is not None and hist.bounds == ISTIO_LATENCY_BUCKETS_MS
        assert hist.total == version.requests
        sigma = math.log(p99 / 80.0) / 2.3263478740408408
        n = hist.total
        for bound, count in zip(hist.bounds[:-1], hist.counts[:-1], strict=True):
            p = 0.5 * math.erfc(-math.log(bound / 80.0) / (sigma * math.sqrt(2)))
            # Counts, not shares: a few stray requests in the far tail are Poisson, not normal.
            assert near(count, n * p, math.sqrt(n * p * (1 - p)) + 1.0), (bound, count, n * p)
        share = dict(zip(hist.bounds, (c / n for c in hist.counts), strict=True))
        assert share[50.0] < 0.5 < share[100.0]  # the median (80 ms) is in the (50, 100] bucket
        if p99 == 250.0:
            assert near(share[250.0], 0.99, math.sqrt(0.0099 / n))
        else:  # p99 500 ms: 7.4% are slower than 250 ms, 1% slower than 500 ms
            assert near(1 - share[250.0], 0.0740, math.sqrt(0.074 * 0.926 / n))
            assert near(share[500.0], 0.99, math.sqrt(0.0099 / n))


def test_predictions_and_ground_truth_follow_the_scenario() -> None:
    s = scenario(traffic={"rps": 100}, stable={"labels": {"delayMeanS": 0, "missing": 0.0}})
    mesh = SyntheticMesh(s, seed=5)
    chunks = run(mesh, 3000.0, 30.0)
    for c in chunks:  # failed requests get no prediction: exact in every window
        assert sum(c.stable.predictions.values()) == c.stable.requests - c.stable.errors
        assert c.stable.labeled == c.stable.requests - c.stable.errors  # labels at once, none missing
    v = mesh.read(0.0, 3000.0).stable
    made = sum(v.predictions.values())
    for cls, share in zip(("c0", "c1", "c2"), (0.7, 0.2, 0.1), strict=True):
        assert near(v.predictions[cls] / made, share, math.sqrt(share * (1 - share) / made))
    assert near(v.correct / v.labeled, 0.9, math.sqrt(0.09 / v.labeled))
    # A wrong "c1" has a true class in proportion to stable's shares of the others: c0:c2 = 7:1.
    wrong_c1 = v.confusion[("c1", "c0")] + v.confusion[("c1", "c2")]
    assert near(v.confusion[("c1", "c0")] / wrong_c1, 7 / 8, math.sqrt(7 / 64 / wrong_c1))


@pytest.mark.parametrize("classes", [3, 6])  # few classes: pending labels drawn with the rest; many: apart
def test_labels_arrive_late_and_some_never(classes: int) -> None:
    # Traffic for 600 s, then none: the labels still pending then arrive with the
    # exponential's (memoryless) delay, and a quarter never arrive.
    s = scenario(
        traffic={"rps": 40},
        stable={"labels": {"delayMeanS": 60, "missing": 0.25}, "predictions": [1 / classes] * classes},
        changes=[{"at": "10m", "traffic": {"rps": 0}}],
    )
    mesh = SyntheticMesh(s, seed=9)
    assert mesh._merge_pending is (classes == 3)
    run(mesh, 4000.0, 10.0)
    made = sum(mesh.read(0.0, 600.0).stable.predictions.values())
    labelled_by_600 = mesh.read(0.0, 600.0).stable.labeled
    labelled_all = mesh.read(0.0, 4000.0).stable.labeled
    assert mesh.read(600.0, 4000.0).stable.requests == 0
    assert near(labelled_all / made, 0.75, math.sqrt(0.75 * 0.25 / made))
    # Requests uniform over [0, T], delay mean tau: still pending at T = tau/T (1 - e^(-T/tau)).
    pending = labelled_all - labelled_by_600
    assert near(pending / labelled_all, 0.1 * (1 - math.exp(-10)), math.sqrt(0.09 / labelled_all))
    arrived_in_a_minute = mesh.read(600.0, 660.0).stable.labeled
    p = 1 - math.exp(-1)
    assert near(arrived_in_a_minute / pending, p, math.sqrt(p * (1 - p) / pending))


def test_labels_are_exact_at_any_chunk_size() -> None:
    # One 300 s chunk: a label of a request made uniformly within it arrives within it with
    # probability 1 - (tau/dt)(1 - e^(-dt/tau)), whatever the chunk length.
    s = scenario(
        traffic={"rps": 200},
        stable={"labels": {"delayMeanS": 60, "missing": 0.0}},
        changes=[{"at": "5m", "traffic": {"rps": 0}}],
    )
    mesh = SyntheticMesh(s, seed=21)
    mesh.advance(300.0)
    mesh.advance(3000.0)
    within = mesh.read(0.0, 300.0).stable.labeled
    total = mesh.read(0.0, 3000.0).stable.labeled
    p = 1 - 0.2 * (1 - math.exp(-5))
    assert near(within / total, p, math.sqrt(p * (1 - p) / total))


def test_changes_take_effect_at_their_time() -> None:
    s = scenario(traffic={"rps": 50}, changes=[{"at": "20m", "candidate": {"errorRate": 0.3}}])
    mesh = SyntheticMesh(s, seed=2, weights=Weights.candidate_at(50))
    t = 0.0
    while t < 2400.0:  # 420 s chunks: 1200 s is not a multiple
        t += 420.0
        mesh.advance(min(t, 2400.0))
    assert 1200.0 in mesh.boundaries
    before, after = mesh.read(0.0, 1200.0), mesh.read(1200.0, 2400.0)
    assert near(error_rate(before.candidate), 0.005, math.sqrt(0.005 / before.candidate.requests))
    assert near(error_rate(after.candidate), 0.3, math.sqrt(0.21 / after.candidate.requests))
    assert near(error_rate(after.stable), 0.005, math.sqrt(0.005 / after.stable.requests))


def test_weights_apply_to_traffic_after_they_are_set() -> None:
    mesh = SyntheticMesh(scenario(traffic={"rps": 100}), seed=4)
    run(mesh, 600.0, 30.0)
    mesh.set_weights(Weights.candidate_at(10))
    run(mesh, 1200.0, 30.0)
    mesh.set_weights(Weights.candidate_at(50))
    run(mesh, 1800.0, 30.0)
    assert mesh.get_weights() == Weights.candidate_at(50)
    assert mesh.read(0.0, 600.0).candidate.requests == 0
    for (a, b), share in (((600.0, 1200.0), 0.1), ((1200.0, 1800.0), 0.5)):
        o = mesh.read(a, b)
        n = o.stable.requests + o.candidate.requests
        assert near(o.candidate.requests / n, share, math.sqrt(share * (1 - share) / n))


def test_mirrored_copies_count_for_the_candidate_but_are_not_served() -> None:
    mesh = SyntheticMesh(scenario(traffic={"rps": 50}, candidate={"errorRate": 0.05}), seed=6)
    mesh.set_weights(Weights(stable=100, candidate=0, mirror_percent=100))
    run(mesh, 600.0, 30.0)
    o = mesh.read(0.0, 600.0)
    assert o.candidate.requests == o.stable.requests > 0  # every request is copied
    assert near(error_rate(o.candidate), 0.05, math.sqrt(0.05 / o.candidate.requests))
    assert mesh.candidate_served_requests == 0 and mesh.candidate_served_errors == 0
    assert mesh.candidate_mirrored_requests == o.candidate.requests

    mesh.set_weights(Weights(stable=90, candidate=10, mirror_percent=50))
    run(mesh, 1800.0, 30.0)
    o = mesh.read(600.0, 1800.0)
    served = mesh.candidate_served_requests
    mirrored = o.candidate.requests - served
    assert mirrored == mesh.candidate_mirrored_requests - mesh.read(0.0, 600.0).candidate.requests
    assert near(mirrored / o.stable.requests, 0.5, math.sqrt(0.25 / o.stable.requests))
    n = o.stable.requests + served
    assert near(served / n, 0.1, math.sqrt(0.09 / n))


def test_ground_truth_counts_what_users_got() -> None:
    s = scenario(traffic={"rps": 50}, candidate={"errorRate": 0.05, "accuracy": 0.6})
    mesh = SyntheticMesh(s, seed=8, weights=Weights.candidate_at(30))
    run(mesh, 3000.0, 30.0)
    o = mesh.read(0.0, 3000.0).candidate
    assert mesh.candidate_served_requests == o.requests
    assert mesh.candidate_served_errors == o.errors
    made = o.requests - o.errors
    wrong = mesh.candidate_served_wrong
    assert near(wrong / made, 0.4, math.sqrt(0.24 / made))
    assert wrong > o.labeled - o.correct  # labelled or not: most labels are still missing or late


def test_read_windows_add_up_and_snap_to_chunk_ends() -> None:
    mesh = SyntheticMesh(scenario(), seed=12, weights=Weights.candidate_at(30))
    run(mesh, 900.0, 30.0)
    whole = mesh.read(0.0, 900.0)
    a, b = mesh.read(0.0, 420.0), mesh.read(420.0, 900.0)
    for name in ("stable", "candidate"):
        w, x, y = getattr(whole, name), getattr(a, name), getattr(b, name)
        assert w.requests == x.requests + y.requests and w.errors == x.errors + y.errors
        assert w.latency_ms.counts == tuple(  # type: ignore[union-attr]
            p + q
            for p, q in zip(x.latency_ms.counts, y.latency_ms.counts, strict=True)  # type: ignore[union-attr]
        )
        assert w.confusion == {k: x.confusion[k] + y.confusion[k] for k in w.confusion}
        assert w.predictions == {k: x.predictions[k] + y.predictions[k] for k in w.predictions}
    snapped = mesh.read(435.0, 900.0)  # 435 lies inside the chunk (420, 450]
    assert (snapped.since, snapped.at) == (435.0, 900.0)
    assert snapped.stable == b.stable and snapped.candidate == b.candidate


def test_same_seed_same_traffic() -> None:
    s = scenario(changes=[{"at": "5m", "candidate": {"errorRate": 0.1}}])

    def trace(mesh: SyntheticMesh) -> list[dict[str, Any]]:
        return [o.to_dict() for o in run(mesh, 600.0, 30.0)]

    first = trace(SyntheticMesh(s, seed=1, weights=Weights.candidate_at(10)))
    assert first == trace(SyntheticMesh(s, seed=1, weights=Weights.candidate_at(10)))
    reused = SyntheticMesh(s, seed=2)
    other = trace(reused)
    assert other != first
    reused.reset(1, Weights.candidate_at(10))  # a reused mesh is as good as a new one
    assert (reused.now, reused.boundaries) == (0.0, (0.0,))
    assert trace(reused) == first


def test_diurnal_traffic_and_fallback() -> None:
    s = scenario(traffic={"rps": 10, "diurnal": 0.5})
    mesh = SyntheticMesh(s, seed=13, weights=Weights(stable=50, candidate=0, fallback=50))
    run(mesh, 21600.0, 300.0)
    # Integral of 10 (1 + 0.5 sin(2 pi t / 1 day)) over [0, 6h], half of it to the fallback.
    expected = 0.5 * (10 * 21600 + 10 * 0.5 * 86400 / (2 * math.pi))
    got = mesh.read(0.0, 21600.0)
    assert near(got.stable.requests, expected, math.sqrt(expected))
    assert got.candidate.requests == 0


def test_features_follow_their_shares() -> None:
    feature = {"amount": {"bounds": [10, 100], "shares": [0.2, 0.5, 0.3]}}
    s = scenario(
        traffic={"rps": 50},
        stable={"features": feature},
        candidate={"features": {"amount": {"shares": [0.6, 0.3, 0.1]}}},
    )
    mesh = SyntheticMesh(s, seed=14, weights=Weights.candidate_at(50))
    run(mesh, 1200.0, 30.0)
    o = mesh.read(0.0, 1200.0)
    for version, shares in ((o.stable, (0.2, 0.5, 0.3)), (o.candidate, (0.6, 0.3, 0.1))):
        hist = version.features["amount"]
        assert hist.bounds == (10.0, 100.0, math.inf) and hist.total == version.requests
        for got, p in zip(hist.per_bucket(), shares, strict=True):
            assert near(got / hist.total, p, math.sqrt(p * (1 - p) / hist.total))


def test_more_classes_for_the_candidate_and_no_traffic() -> None:
    s = scenario(candidate={"predictions": [0.4, 0.2, 0.2, 0.2]})
    assert s.classes == ("c0", "c1", "c2", "c3")
    mesh = SyntheticMesh(s, seed=15, weights=Weights.candidate_at(50))
    run(mesh, 600.0, 30.0)
    o = mesh.read(0.0, 600.0)
    assert o.stable.predictions["c3"] == 0 and o.candidate.predictions["c3"] > 0
    quiet = SyntheticMesh(scenario(traffic={"rps": 0}), seed=1)
    run(quiet, 300.0, 30.0)
    assert quiet.read(0.0, 300.0).stable.requests == 0


def test_outages_and_misuse() -> None:
    mesh = SyntheticMesh(scenario(outages=[{"at": "5m", "for": "1m"}]), seed=1)
    run(mesh, 600.0, 30.0)
    down = mesh.read(270.0, 300.0)
    assert down.problem is not None and down.stable.requests == 0
    assert mesh.read(300.0, 330.0).problem is not None
    assert mesh.read(330.0, 360.0).problem is None  # back at 6m; the counters kept counting
    assert mesh.read(240.0, 360.0).stable.requests > 0
    with pytest.raises(ValueError, match="advance first"):
        mesh.read(0.0, 900.0)
    with pytest.raises(ValueError, match="back in virtual time"):
        mesh.advance(100.0)
    with pytest.raises(ValueError, match="mirror_percent"):
        mesh.set_weights(Weights(stable=100, candidate=0, mirror_percent=150))
