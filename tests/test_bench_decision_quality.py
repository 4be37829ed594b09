"""The decision-quality benchmark's own machinery (bench/decision_quality.py): the rows
`mesh-canary plan` says are out of the policy's reach, rows skipped while a
scenario field is missing, the memoised cells shared by tuning and tables, and the tuning
rule. Real rollouts through `simulate_rollout` (the Flagger-style judge: a few ms each)."""

from __future__ import annotations

import argparse
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


def test_plan_flags_the_rows_out_of_the_policys_reach_and_no_others(policies: dict[str, Any]) -> None:
    """The bench asks `mesh-canary plan`'s own functions (mesh_canary.core.power): a healthy
    row is flagged when a step cannot reach its minimum samples (100 candidate requests
    cannot arrive at 5% of 2 req/s within 15 minutes), a regression when no check of its
    metric detects its size with 95% power by the end of the schedule."""
    _, flags = dq.check_rows(dq.SCENARIOS, policies)
    healthy = sorted(k for k in flags if dq.SPECS[k[0]].healthy)
    assert healthy == [("traffic", 2.0)]
    assert "step 1 at 5% expects 90 candidate" in flags[("traffic", 2.0)]
    regressions = sorted(k for k in flags if not dq.SPECS[k[0]].healthy)
    # At 10 req/s the error and accuracy regressions are smaller than plan's detectable
    # effect; at 200 req/s only the 1.5x error rise and accuracy with labels 30 min late.
    assert ("errors-0.5-1", 10.0) in regressions and ("accuracy-3", 10.0) in regressions
    assert ("errors-x1.5", 200.0) in regressions and ("accuracy-3-late", 200.0) in regressions
    assert ("errors-0.5-1", 200.0) not in regressions and ("accuracy-3", 200.0) not in regressions
    assert ("accuracy-3-slow", 200.0) not in regressions and ("breaks-halfway", 10.0) not in regressions
    assert all(dq.SPECS[n].bad in ("errors", "wrong") for n, _ in regressions)  # latency: not estimated
    assert "errorRate: detects a rise of" in flags[("errors-x1.5", 200.0)]


def test_blue_green_counts_its_mirrored_preview(policies: dict[str, Any]) -> None:
    bg = policies["five checks, blue/green"]
    aa = dq.SPECS["aa-0.5"]
    scenario = dq.load_scenario(aa.doc(2.0))
    assert dq.plan_flag(aa, bg, scenario, 2.0) is None  # mirrored at 100% for 10-15 minutes
    tiny = replace(bg, blue_green=replace(bg.blue_green, mirror_percent=1))
    assert dq.plan_flag(aa, tiny, dq.load_scenario(aa.doc(0.1)), 0.1) is not None


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


def test_only_picks_rows_by_name_and_traffic_and_names_the_known_ones() -> None:
    rows = dq.parse_only("errors-0.1-0.4@200, breaks-halfway")
    assert [(s.name, r) for s, r in rows] == [
        ("errors-0.1-0.4", 200.0),
        ("breaks-halfway", 200.0),
        ("breaks-halfway", 10.0),
    ]
    with pytest.raises(argparse.ArgumentTypeError, match=r"no row .nope.; rows: aa-0\.1"):
        dq.parse_only("nope")
    with pytest.raises(argparse.ArgumentTypeError, match="runs at 200 req/s"):
        dq.parse_only("errors-x1.5@10")


def test_only_runs_the_rows_on_the_seeds_a_full_run_gives_them(pool: Any) -> None:
    """`--only` prints mesh-canary's table rows from the same cells (seeds 0..n-1) a full run fills."""
    rows = dq.parse_only("aa-0.5@200,breaks-halfway@200")
    store = dq.Store(pool, quick=False)
    mesh = dq.RULE["mesh-canary"]
    store.ensure((mesh.name, mesh.default, s, r, 3) for s, r in rows)
    lines = dq.only_lines(store, rows)
    aa, broken = (store.cell(mesh.name, mesh.default, s, r) for s, r in rows)
    assert [x["outcome"] for x in broken.runs] == ["rolled_back"] * 3 and aa.n == 3
    assert lines[2] == f"| aa-0.5 | 200 | 3 | {dq.false_rollbacks(aa)} |"
    assert lines[-1].startswith("| breaks-halfway | 200 | 3 | 100.0% |")
