"""The decision-quality benchmark's own machinery (bench/decision_quality.py): the plan
stand-in that flags rows whose policy cannot reach its minimum samples, rows skipped while a
scenario field is missing, the memoised cells shared by tuning and tables, and the tuning
rule. Real rollouts through `simulate_rollout` (the Flagger-style judge: a few ms each)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from multiprocessing import Pool
from typing import Any

import pytest

from bench import decision_quality as dq


@pytest.fixture(scope="module")
def policies() -> dict[str, Any]:
    return {name: dq.load_policy_file(path) for name, path in dq.POLICIES.items()}


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    with Pool(1) as p:
        yield p


def test_a_step_that_cannot_expect_its_minimum_requests_is_unreachable() -> None:
    # issue 10: 100 candidate requests cannot arrive at 5% of 2 req/s within 15 minutes.
    ok, why = dq.min_samples_reachable(2.0, (5, 10, 25, 50, 100), 100, 900.0)
    assert not ok
    assert "5% step: 90 of 100 requests expected in 15 min" in why
    assert dq.min_samples_reachable(10.0, (5, 10, 25, 50, 100), 100, 900.0) == (True, "")
    assert dq.min_samples_reachable(10.0, (5, 10, 25, 50, 100), 100, 300.0) == (True, "")  # 150 expected


def test_only_the_2_req_s_defaults_row_is_flagged_and_blue_green_counts_its_preview(
    policies: dict[str, Any],
) -> None:
    _, flags = dq.check_rows(dq.SCENARIOS, policies)
    assert list(flags) == [("traffic", 2.0)]
    bg = policies["five checks, blue/green"]
    assert dq.plan_reachability(bg, 2.0)[0]  # mirrored at 100% for 10-15 minutes
    assert not dq.plan_reachability(replace(bg, blue_green=replace(bg.blue_green, mirror_percent=1)), 0.1)[0]


def test_a_row_whose_scenario_does_not_load_is_listed_not_failed(policies: dict[str, Any]) -> None:
    odd = dq.Spec(
        "odd", "a field this simulator lacks", "healthy", lambda r: dq._doc(r, noSuchField=1), rps=(10.0,)
    )
    unavailable, _ = dq.check_rows([odd, dq.SPECS["aa-0.5"]], policies)
    assert list(unavailable) == [("odd", 10.0)]
    assert "noSuchField" in unavailable[("odd", 10.0)]


def test_cells_run_only_the_seeds_they_lack_and_match_a_direct_run(pool: Any) -> None:
    store = dq.Store(pool, quick=False, chunk=5)
    spec = dq.SPECS["edge-errors"]
    store.ensure([("Flagger-style", 0.99, spec, 200.0, 10)])
    cell = store.cell("Flagger-style", 0.99, spec, 200.0)
    assert cell.n == 10 and cell.full_n == 10
    cpu = cell.cpu_s
    store.ensure([("Flagger-style", 0.99, spec, 200.0, 10), ("Flagger-style", 0.99, spec, 200.0, 10)])
    assert cell.n == 10 and cell.cpu_s == cpu  # nothing ran again
    store.ensure([("Flagger-style", 0.99, spec, 200.0, 15)])
    assert cell.n == 15
    _, direct, _, _ = dq._run_chunk(("Flagger-style", 0.99, "edge-errors", 200.0, range(15)))
    assert sorted(map(repr, cell.runs)) == sorted(map(repr, direct))


def test_a_row_declared_the_same_as_another_shares_its_cells(pool: Any) -> None:
    store = dq.Store(pool, quick=False)
    assert store.cell("mesh-canary", 0.99, dq.SPECS["max-step-15m"], 10.0) is store.cell(
        "mesh-canary", 0.99, dq.SPECS["aa-0.5"], 10.0
    )


def test_tuning_takes_the_first_value_within_budget_and_stops_there(pool: Any) -> None:
    store = dq.Store(pool, quick=False)
    rows = [(dq.SPECS["aa-0.8"], 200.0)]
    chosen, worst = dq.tune(store, "Flagger-style", (0.995, 0.985, 0.9), rows, 20)
    # At 0.8% errors a 99.5% success limit fails nearly every interval; 98.5% does not.
    assert chosen == 0.985
    assert worst[0.995][0] > 0.5 and worst[0.985][0] <= dq.TARGET_FALSE_ROLLBACKS
    assert 0.9 not in worst


def test_false_rollbacks_show_statistical_and_timeout_apart_with_the_upper_bound() -> None:
    cell = dq.Cell(
        runs=[{"outcome": "rolled_back", "timeout": True}, {"outcome": "rolled_back", "timeout": False}]
        + [{"outcome": "promoted", "timeout": False}] * 98
    )
    assert dq.false_rollbacks(cell) == "2.0% (1.0% stat + 1.0% timeout; ≤7.0%)"
    assert dq.wilson_upper(0.0, 500) == pytest.approx(0.0076, abs=1e-4)
