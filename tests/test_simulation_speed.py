"""Simulation speed work: the fast paths give bit-identical numbers, and `simulate` loads
only what a run needs (results: tests/test_simulation_identical.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import lfilter

from mesh_canary.core import stats

ROOT = Path(__file__).resolve().parent.parent


def test_the_python_recursion_is_bit_identical_to_lfilter() -> None:
    rng = np.random.default_rng(7)
    for trial in range(400):
        q = math.exp(-stats.RATIO_GRID_STEP / float(rng.choice([0.25, 0.5, 1.0, 2.0])))
        shape = (351,) if trial % 2 else (int(rng.integers(1, 6)), 351)
        log_lik = rng.normal(0.0, 30.0, size=shape) * rng.random()
        x = np.exp(log_lik - log_lik.max(axis=-1, keepdims=True))
        if trial % 5 == 0:
            x[..., :120] = 0.0
        for xs in (x, x[..., ::-1]):
            fast = stats._geometric_recursion(xs, q, python=True)
            assert fast.shape == xs.shape
            assert np.array_equal(fast, lfilter([1.0], [1.0, -q], xs, axis=-1))
            assert np.array_equal(stats._geometric_recursion(xs, q, python=False), fast)


# What a simulate run must not import: the controller's, the network's and the plotting
# world's libraries, and the parts of scipy it does not use.
NOT_NEEDED = (
    "scipy.signal",
    "scipy.stats",
    "scipy.optimize",
    "kubernetes",
    "httpx",
    "prometheus_api_client",
    "rich",
)


def test_a_simulate_run_imports_only_what_it_needs(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, sys\n"
        "from mesh_canary.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    print(json.dumps({'code': e.code, 'modules': sorted(sys.modules)}), file=sys.stderr)\n"
    )
    args = [
        "simulate",
        "-f",
        "bench/policies/default.yaml",
        "--scenario",
        "scenarios/bursts.yaml",
        "-o",
        "json",
    ]
    done = subprocess.run(
        [sys.executable, str(probe), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert json.loads(done.stdout)["outcome"] == "promoted", done.stderr
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0
    loaded = [m for m in report["modules"] if m.split(".")[0] in {n.split(".")[0] for n in NOT_NEEDED}]
    assert not [m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_NEEDED)]


def _bits(x: object) -> bytes:
    return np.asarray(x, dtype=np.float64).tobytes()


def test_the_small_array_rate_sequences_give_numpys_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """rate_cs_array on Python floats (where numpy's float64 log/exp are the C library's)
    against the numpy code, on counts that reach the edges (none, all, NaN, huge)."""
    rng = np.random.default_rng(11)
    cases = []
    for trial in range(600):
        k = int(rng.integers(1, 12))
        n = np.floor(10 ** rng.uniform(-1, 7, k))
        s = np.floor(n * rng.choice([0.0, 1e-3, 0.02, 0.5, 1.0], k) if trial % 2 else n * rng.random(k))
        if trial % 7 == 0:
            s[0], n[-1] = rng.choice([np.nan, np.inf, 0.0]), rng.choice([np.nan, 0.0, 1e13])
        cases.append(
            (
                s,
                n,
                float(10 ** rng.uniform(-12, -0.5)),
                (stats.SMALL_RATE_PRIOR, stats.GENERAL_PRIOR)[trial % 2],
            )
        )
    fast = [stats.rate_cs_array(*c) for c in cases]
    monkeypatch.setattr(stats, "LIBM_EXACT", False)
    for c, got in zip(cases, fast, strict=True):
        want = stats.rate_cs_array(*c)
        assert _bits(got) == _bits(want), c


def test_remembered_strata_give_the_same_profile() -> None:
    """ratio_profile from lists (finished strata's terms remembered, asked twice) and from
    arrays (computed afresh each time): the same bits."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        k = int(rng.integers(1, 6))
        c = [float(x) for x in np.floor(10 ** rng.uniform(-1, 4, k))]
        s = [float(x) for x in np.floor(10 ** rng.uniform(-1, 5, k))]
        shares = [float(x) for x in rng.choice([0.0, 0.05, 0.25, 0.5, 1.0], k)]
        r0 = float(rng.choice([1.0, 1.25, 0.8]))
        fresh = stats.ratio_profile(np.array(c), np.array(s), np.array(shares), r0)
        used = [(x, y, r) for x, y, r in zip(c, s, shares, strict=True) if 0.0 < r < 1.0 and x + y > 0.0]
        if used:  # the strata summed by numpy at once, nothing remembered
            c_used, s_used, rho_used = (np.array([u[i] for u in used]) for i in range(3))
            whole = stats._stratified_log_lik(c_used, s_used, rho_used, fresh.log_r)
            assert _bits(fresh.log_lik) == _bits(whole)
        for _ in range(2):
            got = stats.ratio_profile(c, s, shares, r0)
            for field in ("log_r", "log_lik", "log_e_above", "log_e_below", "events"):
                assert _bits(getattr(got, field)) == _bits(getattr(fresh, field)), (c, s, shares, field)
            assert _bits(got.prob_above_ratio(1.3, 1.0)) == _bits(fresh.prob_above_ratio(1.3, 1.0))


def test_exp_and_log_skipping_underflow_give_numpys_bits() -> None:
    """stats._exp and stats._log skip the elements where exp underflows to 0 (and log's
    zeros): every element, NaN and infinities included, exactly as np.exp and np.log."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        z = rng.uniform(-1000.0, 5.0, size=(2, 351))
        z[0, :5] = [np.nan, -np.inf, np.inf, -746.0, -745.13]
        z[1, :4] = [-745.2, -744.0, -708.5, 0.0]
        got, want = stats._exp(z), np.exp(z)
        assert np.array_equal(got, want, equal_nan=True)
        assert np.array_equal(np.signbit(got), np.signbit(want))
        x = np.abs(rng.normal(size=(2, 351))) * (rng.random((2, 351)) < 0.5)
        x[1, :5] = [-0.0, np.nan, -1.0, np.inf, 5e-324]
        with np.errstate(all="ignore"):
            assert np.array_equal(stats._log(x), np.log(x), equal_nan=True)
