"""Simulation speed work: the fast paths give bit-identical numbers, and `simulate` loads
only what a run needs (results: tests/test_simulation_identical.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
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
