"""Cost of the synthetic mesh alone (no engine, no judge): what one simulated tick costs.

Each run is a five-step canary (5, 10, 25, 50, 100 %) of `--ticks` analysis intervals of
30 s, reading the current step's window at every tick, as the `simulate` driver does.

    python bench/bench_synthetic.py [--runs 400] [--ticks 240] [--scenario scenarios/aa.yaml]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mesh_canary.core.weights import Weights
from mesh_canary.simulation.traffic import SyntheticMesh, load_scenario_text

ROOT = Path(__file__).resolve().parent.parent
STEPS = (5, 10, 25, 50, 100)
INTERVAL_S = 30.0


def bench(scenario_path: Path, runs: int, ticks: int) -> dict[str, float]:
    scenario = load_scenario_text(scenario_path.read_text(), str(scenario_path))
    per_step = max(ticks // len(STEPS), 1)
    construct = advance = read = 0.0
    n_ticks = 0
    clock = time.perf_counter
    for seed in range(runs):
        t0 = clock()
        mesh = SyntheticMesh(scenario, seed=seed)
        construct += clock() - t0
        t = 0.0
        for weight in STEPS:
            mesh.set_weights(Weights.candidate_at(weight))
            window_start = t
            for _ in range(per_step):
                t += INTERVAL_S
                t0 = clock()
                mesh.advance(t)
                t1 = clock()
                mesh.read(window_start, t)
                t2 = clock()
                advance += t1 - t0
                read += t2 - t1
                n_ticks += 1
    return {
        "construct_us": construct / runs * 1e6,
        "advance_us": advance / n_ticks * 1e6,
        "read_us": read / n_ticks * 1e6,
        "ticks_per_run": n_ticks / runs,
        "run_ms": (construct + advance + read) / runs * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--ticks", type=int, default=240)
    parser.add_argument("--scenario", type=Path, action="append")
    args = parser.parse_args()
    paths = args.scenario or [ROOT / "scenarios" / "aa.yaml", ROOT / "scenarios" / "drift.yaml"]
    for path in paths:
        r = bench(path, args.runs, args.ticks)
        print(
            f"{path.name}: advance+read: {r['advance_us'] + r['read_us']:.1f} µs per tick "
            f"(advance {r['advance_us']:.1f}, read {r['read_us']:.1f}); "
            f"new mesh {r['construct_us']:.0f} µs; "
            f"{r['ticks_per_run']:.0f}-tick rollout {r['run_ms']:.2f} ms "
            f"= {60_000 / r['run_ms']:,.0f} rollouts/min for the source alone"
        )


if __name__ == "__main__":
    main()
