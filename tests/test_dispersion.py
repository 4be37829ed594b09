"""Bursts and overdispersion (checks/dispersion.py): measured per interval, carried in a
tally, and what a rollout through the real engine does on bursty traffic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from mesh_canary.checks import dispersion
from mesh_canary.core.verdicts import Tally
from mesh_canary.run.policy_loading import load_checked_policy
from mesh_canary.simulation.simulate import simulate_rollout
from mesh_canary.simulation.traffic import load_scenario_text

ROOT = Path(__file__).resolve().parent.parent


INTERVAL_S = 30.0


def run_intervals(
    per_interval: list[tuple[float, float, float, float]], burst_s: float = 180.0
) -> list[dispersion.Dispersion]:
    """Feed per-interval counts as one step's cumulative windows, one 30-s tick each."""
    out, tally, cum = [], None, np.zeros(4)
    for i, counts in enumerate(per_interval):
        cum = cum + np.array(counts)
        clock = dispersion.Clock(at=INTERVAL_S * (i + 1), step_since=0.0, burst_s=burst_s)
        d = dispersion.measure("errorRate", 0, (cum[0], cum[1], cum[2], cum[3]), tally, clock)
        tally = d.tally
        out.append(d)
    return out


def independent(
    rng: np.random.Generator, n: int, rate_c: float, rate_s: float
) -> list[tuple[float, float, float, float]]:
    return [
        (float(rng.binomial(600, rate_c)), 600.0, float(rng.binomial(11_400, rate_s)), 11_400.0)
        for _ in range(n)
    ]


def test_independent_requests_keep_the_dispersion_near_one_and_set_nothing_aside() -> None:
    rng = np.random.default_rng(1)
    last = run_intervals(independent(rng, 60, 0.005, 0.005))[-1]
    assert last.split < 1.5 and last.own < 1.5
    assert last.set_aside(0) < 3.0  # a stray 3-sigma interval at most


def test_a_burst_in_the_candidate_is_set_aside_and_raises_the_dispersion() -> None:
    rng = np.random.default_rng(2)
    intervals = independent(rng, 20, 0.005, 0.005)
    intervals[12] = (30.0, 600.0, 57.0, 11_400.0)  # 5% errors for one interval: ten times its rate
    results = run_intervals(intervals)
    assert results[11].set_aside(0) == 0.0
    assert results[12].set_aside(0) > 15.0
    assert results[12].split > 2.0
    assert "discounted" in (results[12].note() or "")


def test_a_low_count_regression_is_not_taken_for_dispersion() -> None:
    """Errors 0.1% -> 0.4% at 5% of 200 req/s: the candidate is predicted under one error
    per interval, so one error more weighs like many in Pearson's split term; counted, the
    regression itself read as dispersion (about 3x) for the whole rollout. Such terms count
    only once the candidate is predicted MIN_SPLIT_EXPECTED events (Cochran's rule)."""
    rng = np.random.default_rng(1)
    results = run_intervals(independent(rng, 30, 0.004, 0.001))
    assert all(d.set_aside(0) == 0.0 for d in results)  # no interval stands out as a burst
    assert results[-1].split < 1.3


def test_a_burst_within_burst_duration_stays_set_aside_and_the_prediction_does_not_learn_it() -> None:
    rng = np.random.default_rng(5)
    intervals = independent(rng, 10, 0.005, 0.005)
    burst = [(30.0, 600.0, 57.0, 11_400.0)] * 3  # 90 s at 5%: inside the 3-minute default
    results = run_intervals(intervals + burst + independent(rng, 10, 0.005, 0.005))
    aside = results[12].set_aside(0)
    assert aside > 3 * 20.0  # nearly all of the 3 x 27 excess events, not just what tops a cap
    assert results[-1].set_aside(0) == aside  # a burst that ended stays set aside
    # The prediction never took the burst for the new normal: each burst interval stood out.
    assert results[10].set_aside(0) > 20.0 and results[12].set_aside(0) - results[11].set_aside(0) > 20.0


def test_an_elevation_that_outlasts_burst_duration_is_judged_in_full() -> None:
    """A real change is no burst: once the candidate has stood out longer than burstDuration,
    everything set aside is given back, and the level shift is not taken for dispersion
    (that would discount the very evidence of it)."""
    rng = np.random.default_rng(3)
    intervals = independent(rng, 10, 0.005, 0.005) + independent(rng, 30, 0.03, 0.005)
    results = run_intervals(intervals, burst_s=180.0)
    assert results[11].set_aside(0) > 20.0  # at first it looks like a burst
    after = [r.set_aside(0) for r in results[17:]]  # 210 s after the change began
    assert max(after) == 0.0
    assert results[-1].split < 1.5 and results[-1].own < 1.5


def test_the_tally_says_while_a_burst_is_set_aside_so_the_engine_holds_the_step() -> None:
    """``bursting`` (the engine holds the weight on it): from the interval that stands out
    until a closed interval no longer does; never for a change that outlasts burstDuration."""
    rng = np.random.default_rng(5)
    calm = independent(rng, 10, 0.005, 0.005)
    burst = [(30.0, 600.0, 57.0, 11_400.0)] * 3  # 90 s at 5%: inside the 3-minute default
    results = run_intervals(calm + burst + independent(rng, 5, 0.005, 0.005))
    flags = [r.tally.bursting for r in results]
    assert flags[10:13] == [True] * 3 and not any(flags[14:])
    assert flags.count(True) <= 5  # the burst's intervals, and a stray 3-sigma one at most
    assert Tally.from_dict(results[11].tally.to_dict()) == results[11].tally
    # The open interval counts: a burst shows before its interval closes.
    before = results[9].tally
    clock = dispersion.Clock(at=330.0, step_since=0.0, burst_s=180.0)
    last = before.last
    opened = (last[0] + 8.0, last[1] + 150.0, last[2] + 1.0, last[3] + 2_850.0)  # 9 events: still open
    d = dispersion.measure("errorRate", 0, opened, before, clock)
    assert d.set_aside(0) > 0.0 and d.tally.bursting and d.tally.intervals == before.intervals
    # A change that outlasts burstDuration is judged in full: no hold.
    change = run_intervals(calm + independent(rng, 20, 0.03, 0.005))
    assert change[11].tally.bursting and not any(r.tally.bursting for r in change[17:])


def test_burst_duration_zero_sets_nothing_aside() -> None:
    rng = np.random.default_rng(2)
    intervals = independent(rng, 20, 0.005, 0.005)
    intervals[12] = (30.0, 600.0, 57.0, 11_400.0)
    results = run_intervals(intervals, burst_s=0.0)
    assert max(r.set_aside(0) for r in results) == 0.0


def test_the_open_interval_counts_before_it_closes() -> None:
    before = Tally("errorRate", 0, (5.0, 6000.0, 60.0, 114_000.0), (5.0, 6000.0, 60.0, 114_000.0))
    # Too few events to close an interval, yet a burst's share already shows.
    clock = dispersion.Clock(at=30.0, step_since=0.0, burst_s=180.0)
    d = dispersion.measure("errorRate", 0, (10.0, 6300.0, 61.0, 119_700.0), before, clock)
    # Its counts are not carried until it closes; that a burst is under way is (the step holds).
    assert d.tally == replace(before, bursting=True)
    assert d.split > 1.0


def test_a_tally_survives_a_restart_and_a_new_step_starts_from_zero() -> None:
    rng = np.random.default_rng(4)
    tally = run_intervals(independent(rng, 5, 0.005, 0.005))[-1].tally
    assert Tally.from_dict(tally.to_dict()) == tally
    clock = dispersion.Clock(at=180.0, step_since=150.0, burst_s=180.0)
    nxt = dispersion.measure("errorRate", 1, (1.0, 100.0, 10.0, 900.0), tally, clock, finished=tally.last)
    assert nxt.tally.step == 1 and nxt.tally.df_split >= tally.df_split


def test_bursty_identical_candidates_are_not_rolled_back() -> None:
    """Per-version bursts (5% errors for 60 s about every 10 minutes, the same long-run
    rate for both): counted request by request this rolled back 16% of identical
    candidates at 20 req/s (32 of 200)."""
    scenario = load_scenario_text(
        (ROOT / "scenarios" / "bursts.yaml").read_text().replace("latencyFactor: 1.5", "latencyFactor: 1.0")
    )
    policy = load_checked_policy(yaml.safe_load((ROOT / "policies" / "minimal.yaml").read_text()))
    outcomes = [simulate_rollout(policy, scenario, seed)["outcome"] for seed in range(100)]
    assert outcomes.count("rolled_back") <= 2, outcomes


def test_a_candidate_beyond_its_slo_is_rolled_back_at_the_first_look_burst_or_not() -> None:
    """Absolute bounds judge the candidate's own counts as they are: 30% errors against the
    default `max: 0.05` is rolled back as soon as its own requests prove it (at 1 candidate
    request/s: 60-90 s, as before bursts were handled), never discounted as a burst."""
    doc = (ROOT / "scenarios" / "aa.yaml").read_text()
    scenario = load_scenario_text(doc.replace("candidate: {}", "candidate: {errorRate: 0.3}"))
    assert scenario.candidate.error_rate == 0.3
    policy = load_checked_policy(yaml.safe_load((ROOT / "policies" / "minimal.yaml").read_text()))
    interval = policy.analysis.interval_s
    for seed in range(5):
        r = simulate_rollout(policy, scenario, seed)
        assert r["outcome"] == "rolled_back" and r["failedChecks"] == ["errorRate"]
        assert r["decidedAtS"] <= 3 * interval, r


def test_a_jump_within_the_slo_is_rolled_back_soon_after_burst_duration() -> None:
    """0.5% -> 5% errors (within the `max: 0.05` SLO, so only the relative bound can see it)
    at 200 req/s looks like a burst at first; it is judged in full once it has lasted
    burstDuration (3 minutes by default), with what was set aside given back, so it is
    rolled back within a few ticks of that, not minutes later."""
    doc = (ROOT / "scenarios" / "aa.yaml").read_text()
    doc = doc.replace("candidate: {}", "candidate: {errorRate: 0.045}").replace("rps: 20", "rps: 200")
    scenario = load_scenario_text(doc)
    assert scenario.candidate.error_rate == 0.045 and scenario.traffic.rps == 200
    policy = load_checked_policy(yaml.safe_load((ROOT / "policies" / "minimal.yaml").read_text()))
    burst_s = policy.analysis.burst_duration_s
    decided = []
    for seed in range(10):
        r = simulate_rollout(policy, scenario, seed)
        assert r["outcome"] == "rolled_back" and r["failedChecks"] == ["errorRate"], r
        decided.append(r["decidedAtS"])
    assert sorted(decided)[5] <= burst_s + 4 * policy.analysis.interval_s, decided
