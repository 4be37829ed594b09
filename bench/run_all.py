"""`make bench`: every benchmark, and docs/benchmarks.md regenerated from their numbers.

1. bench/bench_synthetic.py: what the synthetic traffic source alone costs per tick;
2. simulate throughput: whole rollouts (engine + judge + traffic) per minute on one core,
   for the default policy (policies/minimal.yaml) and for the benchmark's policy;
3. bench/collector_bench.py: the prediction-label collector's throughput and footprint;
4. bench/controller_scale.py: the controller with 10, 100 and 1,000 rollouts at once (--quick:
   10 and 100) against a real Prometheus, and head-of-line blocking behind a stalled one;
5. bench/decision_quality.py: mesh-canary's judge against Flagger-style, Kayenta-style and
   oracle SPRT rules on the same simulated traffic (the tables and the targets).

    python bench/run_all.py [--quick] [--out docs/benchmarks.md] [--throughput] [--parts DIR]

`make bench` runs it; `BENCH_QUICK=1 make bench` runs it with --quick: a twentieth of the seeds
(at least 10 per cell), written to a temporary file instead of docs/benchmarks.md, and an
estimate of the full run's wall time from the time each cell took.
`--throughput` measures and prints only the simulation throughput rows (part 2).
`--parts DIR` keeps each part's results in DIR (one JSON file per part) and takes a part found
there instead of running it again: a run stopped half-way resumes, and a part can be measured
on its own (`decision_quality.py --json DIR/decision_quality.json`, when the machine is quiet).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_synthetic  # noqa: E402
import collector_bench  # noqa: E402
import controller_scale  # noqa: E402
import decision_quality as dq  # noqa: E402

from mesh_canary.core.policy import load_policy_text  # noqa: E402
from mesh_canary.simulation.simulate import simulate_rollout  # noqa: E402
from mesh_canary.simulation.traffic import SyntheticMesh, load_scenario, load_scenario_text  # noqa: E402


def simulate_throughput(policy_path: Path, scenario: Any, runs: int, reuse: bool) -> tuple[float, float]:
    """(rollouts per minute of this process's CPU time, mean ticks per rollout): one core,
    whatever else the machine runs (wall time on a loaded machine counts the others' work)."""
    policy = load_policy_text(policy_path.read_text(), str(policy_path))
    mesh = SyntheticMesh(scenario, seed=0) if reuse else None
    ticks = 0
    t0 = time.process_time()
    for seed in range(runs):
        ticks += simulate_rollout(policy, scenario, seed, mesh=mesh)["ticks"]
    elapsed = time.process_time() - t0
    return 60.0 * runs / elapsed, ticks / runs


def single_run(policy_path: Path, scenario_path: Path, runs: int = 5) -> tuple[float, float]:
    """(wall, CPU) seconds of one `mesh-canary simulate` run in a new process, imports
    included (what a person waits for): the median of ``runs``."""
    walls, cpus = [], []
    command = [sys.executable, "-m", "mesh_canary", "simulate", "-f", str(policy_path)]
    command += ["--scenario", str(scenario_path), "-o", "json"]
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        # Exit 0, 3 or 4 (promoted, rolled back, timed out): the time is what counts here.
        subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, check=False, timeout=300)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def throughput_rows(runs: int) -> tuple[list[str], str]:
    """The simulation throughput table (markdown lines) and a one-line summary."""
    aa_path = ROOT / "scenarios" / "aa.yaml"
    aa20 = load_scenario_text(aa_path.read_text(), str(aa_path))
    minimal = ROOT / "policies" / "minimal.yaml"
    wall_1, cpu_1 = single_run(dq.POLICY_PATH, aa_path)
    thr_new, ticks_new = simulate_throughput(minimal, aa20, runs, reuse=False)
    thr_reuse, _ = simulate_throughput(minimal, aa20, runs, reuse=True)
    aa200 = load_scenario(dq.SPECS["aa-0.5"].doc(200.0))
    thr_bench, ticks_bench = simulate_throughput(dq.POLICY_PATH, aa200, runs, reuse=True)
    bad200 = load_scenario(dq.SPECS["errors-0.5-1"].doc(200.0))
    thr_bad, ticks_bad = simulate_throughput(dq.POLICY_PATH, bad200, runs // 2, reuse=True)
    lines = [
        "| what | rollouts per minute (one core, CPU time) | ticks per rollout |",
        "| --- | ---: | ---: |",
        f"| `mesh-canary simulate` path: policies/minimal.yaml (the package defaults), scenarios/aa.yaml (20 req/s), a new mesh per run | {_f(thr_new)} | {ticks_new:.1f} |",
        f"| the same, one mesh reused with `reset(seed)` (`simulate_rollout(..., mesh=)`) | {_f(thr_reuse)} | {ticks_new:.1f} |",
        f"| bench/policies/default.yaml (five checks), A/A at 200 req/s | {_f(thr_bench)} | {ticks_bench:.1f} |",
        f"| bench/policies/default.yaml, errors 0.5% -> 1% at 200 req/s (held steps: more ticks) | {_f(thr_bad)} | {ticks_bad:.1f} |",
        "",
        f"One `mesh-canary simulate -f bench/policies/default.yaml --scenario scenarios/aa.yaml -o json` "
        f"in a new process (imports included, median of 5): {wall_1:.2f} s of wall time, {cpu_1:.2f} s of CPU.",
    ]
    return lines, f"simulate: {thr_new:,.0f} rollouts/min (minimal policy, aa.yaml); one run {wall_1:.2f} s"


def _f(x: float, digits: int = 0) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"


def targets(summary: dict[str, Any]) -> list[str]:
    """The issue's "Done when" targets, each with its numbers and met / missed."""
    v = summary["variants"]
    ours = v["mesh-canary, defaults (analysis.confidence 0.99)"]
    flagger = next(x for x in v.values() if x["rule"] == "Flagger-style" and x["label"] == "defaults")
    flagger_t = next(x for x in v.values() if x["rule"] == "Flagger-style" and x["label"] == "tuned")
    kayenta = next(x for x in v.values() if x["rule"] == "Kayenta-style" and x["label"] == "defaults")
    kayenta_t = next(x for x in v.values() if x["rule"] == "Kayenta-style" and x["label"] == "tuned")
    oracle = next(x for x in v.values() if x["rule"] == "oracle SPRT")
    out = []

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    worst = ours["worst_aa_false_rollbacks"]
    aa = ", ".join(f"{k} {100 * x:.1f}%" for k, x in ours["aa"].items())
    n_aa = summary["aa_seeds"]
    out.append(
        f"- A/A false rollbacks <= 1% at confidence 0.99, every base rate, >= 1,000 seeds: "
        f"{verdict(worst <= 0.01)}; worst {100 * worst:.1f}% (95% upper bound "
        f"{100 * dq.wilson_upper(worst, n_aa):.1f}% over {n_aa:,} seeds; {aa}; step timeouts included)."
    )
    det = ours["detection"]
    low = min(det.values())
    out.append(
        "- Detection >= 95% at 200 requests/s within the default schedule: "
        f"{verdict(low >= 0.95)}; " + ", ".join(f"{k} {100 * x:.1f}%" for k, x in det.items()) + "."
    )
    for name, other in (("defaults", flagger), ("tuned", flagger_t)):
        ratio = ours["harm_sum"] / other["harm_sum"] if other["harm_sum"] else math.nan
        out.append(
            f"- Summed median harm <= 1/3 of Flagger-style's ({name}): {verdict(ratio <= 1 / 3)}; "
            f"{_f(ours['harm_sum'])} against {_f(other['harm_sum'])} excess bad requests ({ratio:.3f}x)."
        )
    for name, other in (("defaults", kayenta), ("tuned", kayenta_t)):
        mine, theirs = ours["requests_censored_sum"], other["requests_censored_sum"]
        ratio = (
            mine / theirs if theirs and not math.isinf(theirs) else (0.0 if math.isinf(theirs) else math.nan)
        )
        theirs_text = (
            "never (it misses half or more of at least one regression)" if math.isinf(theirs) else _f(theirs)
        )
        det_ratio = ours["requests_sum"] / other["requests_sum"] if other["requests_sum"] else math.nan
        out.append(
            f"- Median candidate requests to detection <= 1/2 of Kayenta-style's ({name}): "
            f"{verdict(ratio <= 0.5)} counting a miss as never caught: {_f(mine)} against {theirs_text}; "
            f"over detected runs only: {_f(ours['requests_sum'])} against {_f(other['requests_sum'])} "
            f"({det_ratio:.2f}x){'' if det_ratio <= 0.5 else ', not met on that reading'}."
        )
    ours_t = next(x for x in v.values() if x["rule"] == "mesh-canary" and x["label"] == "tuned")
    for name, mine in (("defaults", ours), ("tuned", ours_t)):
        ratio = mine["requests_sum"] / kayenta_t["requests_sum"] if kayenta_t["requests_sum"] else math.nan
        out.append(
            f"- At the same A/A false-rollback budget (Kayenta-style tuned, worst "
            f"{100 * kayenta_t['worst_aa_false_rollbacks']:.1f}%), mesh-canary {name} (worst "
            f"{100 * mine['worst_aa_false_rollbacks']:.1f}%) needs {ratio:.2f}x Kayenta-style's median candidate "
            f"requests over detected runs ({_f(mine['requests_sum'])} against {_f(kayenta_t['requests_sum'])}), "
            f"its lowest detection of the five {100 * min(mine['detection'].values()):.1f}% against "
            f"{100 * min(kayenta_t['detection'].values()):.1f}%: {verdict(ratio <= 0.5)} on this reading."
        )
    out.append(
        f"- Distance to the oracle SPRT (sums over the five): candidate requests to detection "
        f"{_f(ours['requests_sum'])} against {_f(oracle['requests_sum'])} "
        f"({ours['requests_sum'] / oracle['requests_sum']:.1f}x); median harm {_f(ours['harm_sum'])} against "
        f"{_f(oracle['harm_sum'])} ({ours['harm_sum'] / max(oracle['harm_sum'], 1e-9):.1f}x). Per scenario: "
        + ", ".join(
            f"{k} {ours['median_requests'][k] / oracle['median_requests'][k]:.1f}x"
            for k in ours["median_requests"]
            if oracle["median_requests"][k] == oracle["median_requests"][k]
            and oracle["median_requests"][k] > 0
        )
        + "."
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="a twentieth of the seeds, a smoke run (also BENCH_QUICK=1); written to a temporary file",
    )
    parser.add_argument("--out", type=Path, help="default: docs/benchmarks.md (--quick: a temporary file)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="only the simulation throughput rows, printed (no file written)",
    )
    parser.add_argument("--parts", type=Path, help="keep each part's results here; reuse those found")
    args = parser.parse_args()
    walls: dict[str, float] = {}

    def part(name: str, measure: Any) -> Any:
        """One part's results: from ``--parts`` when kept there, else measured (and kept)."""
        path = args.parts / f"{name}.json" if args.parts else None
        if path is not None and path.exists():
            kept = json.loads(path.read_text())
            walls[name] = kept.get("wall_s", 0.0)
            print(f"{name}: reused {path}", flush=True)
            # Ours wrap the result; `decision_quality.py --json` writes its summary (with wall_s) bare.
            return kept.get("result", kept)
        t = time.time()
        result = measure()
        walls[name] = time.time() - t
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"wall_s": walls[name], "result": result}, indent=1, default=str))
        return result

    if args.out is None:
        # A smoke run must not overwrite the published numbers.
        args.out = (
            Path(tempfile.gettempdir()) / "mesh-canary-benchmarks-quick.md"
            if args.quick
            else ROOT / "docs" / "benchmarks.md"
        )

    aa_path = ROOT / "scenarios" / "aa.yaml"
    source = part("synthetic_source", lambda: bench_synthetic.bench(aa_path, 100 if args.quick else 400, 240))
    print(f"synthetic source: {source['advance_us'] + source['read_us']:.1f} µs per tick", flush=True)

    runs = 100 if args.quick else 600
    if args.throughput:
        throughput, said = throughput_rows(runs)
        print(said, flush=True)
        print("\n".join(throughput))
        return
    throughput, said = part("throughput", lambda: throughput_rows(runs))
    print(said, flush=True)

    throughput_s = walls["synthetic_source"] + walls["throughput"]
    collector_lines = part(
        "collector", lambda: collector_bench.section(args.quick)
    )  # not in the quick estimate
    # Its plot goes next to the file written (docs/controller-scale.png for docs/benchmarks.md).
    scale_lines = part(
        "controller_scale",
        lambda: controller_scale.section(args.quick, plot_path=args.out.parent / controller_scale.PLOT.name),
    )
    summary = part(
        "decision_quality",
        lambda: dq.main(["--workers", str(args.workers)] + (["--quick"] if args.quick else [])),
    )
    wall = sum(walls.values())

    lines = [
        "# Benchmarks",
        "",
        "Regenerated by `make bench` (`bench/run_all.py`); every number below comes from that run"
        + (" (**--quick: a twentieth of the seeds, a smoke run only**)" if args.quick else "")
        + f". Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"`make bench` took {wall / 60:.1f} minutes of wall time on {args.workers} worker processes"
        + (
            f" (its parts measured one at a time: {', '.join(f'{k} {v / 60:.1f}' for k, v in walls.items())} min)."
            if args.parts
            else "."
        ),
        "",
        "## Simulation throughput (one core)",
        "",
        *throughput,
        "",
        f"The synthetic traffic source alone (bench/bench_synthetic.py): {source['advance_us'] + source['read_us']:.1f} µs "
        f"per tick (advance {source['advance_us']:.1f}, read {source['read_us']:.1f}); the rest of a tick is the engine "
        "and the judge.",
        "",
        dq.METHOD,
        "",
        "## Results",
        "",
        "Rows before issue 10 run every rule at 200 and 10 requests/s; issue 10's rows (below them) run "
        "mesh-canary at its defaults and the Flagger-style rule (defaults, one global tuned limit, a "
        "tuned limit per service), each at the traffic the issue names.",
        "",
        summary["markdown"],
        '## Targets (issue 3, "Done when")',
        "",
        *targets(summary),
        "",
        '## Targets (issue 10, "Done when")',
        "",
        *summary["issue10_lines"],
        "",
        *collector_lines,
        *scale_lines,
        dq.NOTES,
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} ({wall:.0f}s)")
    if args.quick:
        # The throughput part runs 6x the rollouts and the synthetic source 4x in a full run.
        full = 6 * throughput_s + summary["estimate_full_s"]
        loaded = 6 * throughput_s + summary["estimate_full_loaded_s"]
        print(
            f"quick run: {wall / 60:.1f} min wall; a full `make bench`: about {full / 60:.0f} min on free "
            f"cores, {loaded / 60:.0f} min as loaded as this run",
            flush=True,
        )


if __name__ == "__main__":
    main()
