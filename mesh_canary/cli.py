"""`mesh-canary`: a thin click layer over the library. Exit codes as in docs/cli.md:
0 success, 1 could not do the work, 2 bad input, 3 rolled back, 4 did not finish."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mesh_canary.core.durations import parse_duration
from mesh_canary.core.engine import Outcome
from mesh_canary.core.model import Policy
from mesh_canary.core.power import Traffic
from mesh_canary.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_UNFINISHED, BadInput, MeshCanaryError
from mesh_canary.kube.errors import KubeError
from mesh_canary.kube.names import KIND
from mesh_canary.kube.rollouts import RolloutClient, api_client
from mesh_canary.logs import setup_logging
from mesh_canary.present.view import TERMINAL_PHASES, RolloutView, dump, history_documents
from mesh_canary.routing import ROUTERS, router_name_for

F = TypeVar("F", bound=Callable[..., Any])

output_option = click.option(
    "-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True
)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def friendly_errors(fn: F) -> F:
    """One clear sentence on stderr instead of a traceback (unless --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MeshCanaryError as e:
            # Every error of ours carries its exit code: the one place that maps them.
            if _debug() and not isinstance(e, BadInput):
                raise  # --debug: the traceback of work that could not be done
            for line in e.lines():
                click.echo(line, err=True)
            sys.exit(e.code)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as Unix tools do.
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_FAILURE)
        except (SystemExit, KeyboardInterrupt, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as e:
            if _debug():
                raise
            fail(f"{e} (run with --debug for details)")

    return wrapper  # type: ignore[return-value]


def _debug() -> bool:
    return bool(click.get_current_context().find_root().params.get("debug"))


def read_policy(path: str) -> Policy:
    """The policy in a file, with every check `validate` makes; PolicyError (exit 2) names the
    file and each problem."""
    from mesh_canary.run.policy_loading import load_policy_file

    return load_policy_file(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", help="Log line format.")
@click.version_option(package_name="mesh-canary")
def main(debug: bool, log_format: str) -> None:
    """Safe canary and blue/green rollouts of ML model services behind a service mesh."""
    setup_logging(logging.DEBUG if debug else logging.WARNING, json_lines=log_format == "json")


@main.command()
@click.argument("policies", nargs=-1, required=True, type=click.Path())
@click.option(
    "--rps",
    type=float,
    help="Also warn where the policy cannot reach its minimum samples at this rate (req/s).",
)
@output_option
@friendly_errors
def validate(policies: tuple[str, ...], rps: float | None, fmt: str) -> None:
    """Check policies against the schema and the rules; print every problem with its path."""
    results: list[dict[str, Any]] = []
    from mesh_canary.run.policy_loading import validate_policy_file

    traffic = None if rps is None else _traffic(rps, 0.005, 0.9, None, 1.0)
    for path in policies:
        problems = validate_policy_file(path)
        if traffic is not None and not problems:
            _warn_unreachable(read_policy(path), traffic)
        results.append(
            {
                "file": path,
                "valid": not problems,
                "problems": [{"path": p.path, "message": p.message, "line": p.line} for p in problems],
                "text": [str(p) for p in problems],
            }
        )
    if fmt == "text":
        for r in results:
            if r["valid"]:
                click.echo(f"{r['file']}: valid")
            for line in r.get("text", []) or [f"{r['file']}: {p['message']}" for p in r["problems"]]:
                click.echo(line, err=True)
    else:
        docs = [{k: v for k, v in r.items() if k != "text"} for r in results]
        click.echo(dump(docs if len(docs) > 1 else docs[0], fmt))
    if not all(r["valid"] for r in results):
        sys.exit(EXIT_BAD_INPUT)


@main.command()
@click.option("-f", "--filename", "policy_path", required=True, type=click.Path(), help="Policy YAML.")
@click.option(
    "--backend",
    type=click.Choice(sorted(ROUTERS)),
    help="Where the weights go: local (the embedded mesh) or the cluster router of the policy's route "
    "(istio for a VirtualService, gateway-api for an HTTPRoute; the default).",
)
@click.option("--prometheus", "prometheus_url", help="Prometheus URL (overrides spec.metrics.address).")
@click.option(
    "--metrics",
    "metrics_mode",
    type=click.Choice(["auto", "direct", "prometheus"]),
    default="auto",
    help="local backend: read Envoy/model servers directly, or through a real Prometheus.",
)
@click.option("--kubeconfig", type=click.Path(), help="istio backend: kubeconfig file.")
@click.option("--context", "kube_context", help="istio backend: kubeconfig context.")
@click.option("--state", "state_path", type=click.Path(), help="Save state here; a rerun resumes from it.")
@click.option("--timeout", "timeout", help="Give up (exit 4) after this long, e.g. 30m.")
@click.option(
    "--candidate",
    "candidate_mode",
    type=click.Choice(["healthy", "degraded"]),
    default="healthy",
    help="local backend: start the candidate model server healthy or degraded.",
)
@click.option(
    "--rps", type=float, default=100.0, show_default=True, help="local backend: load generator rate."
)
@output_option
@friendly_errors
def run(
    policy_path: str,
    backend: str | None,
    prometheus_url: str | None,
    metrics_mode: str,
    kubeconfig: str | None,
    kube_context: str | None,
    state_path: str | None,
    timeout: str | None,
    candidate_mode: str,
    rps: float,
    fmt: str,
) -> None:
    """Run one rollout in this process, start to finish, and exit with its outcome."""
    from mesh_canary.run import wiring

    policy = read_policy(policy_path)
    timeout_s = _duration_arg("--timeout", timeout)
    if state_path:
        check_state_file(state_path, policy)  # a damaged file: exit 2 before anything is touched
    result = wiring.run_policy(
        policy,
        backend=backend or router_name_for(policy),
        prometheus_url=prometheus_url,
        metrics_mode=metrics_mode,
        kubeconfig=kubeconfig,
        kube_context=kube_context,
        state_path=state_path,
        timeout_s=timeout_s,
        candidate_degraded=candidate_mode == "degraded",
        rps=rps,
        live=fmt == "text",
    )
    _print_result(policy, result, fmt)
    sys.exit(result.exit_code)


_NUMBER = (int, float)
_STATE_FIELDS: tuple[tuple[str, tuple[type, ...], bool, str], ...] = (
    # (field, accepted types, required, in words)
    ("name", (str,), True, "a string"),
    ("strategy", (str,), True, "a string"),
    ("phase", (str,), True, "a string"),
    ("stepIndex", (int,), True, "a whole number"),
    ("weights", (dict,), True, "an object"),
    ("startedAt", _NUMBER, True, "a number"),
    ("stepStartedAt", _NUMBER, True, "a number"),
    ("lastDataAt", _NUMBER, True, "a number"),
    ("lastTickAt", (*_NUMBER, type(None)), False, "a number or null"),
    ("finishedAt", (*_NUMBER, type(None)), False, "a number or null"),
    ("paused", (bool,), False, "true or false"),
    ("approved", (bool,), False, "true or false"),
    ("atGate", (bool,), False, "true or false"),
    ("reason", (str,), False, "a string"),
    ("failedChecks", (list,), False, "a list"),
    ("checks", (list,), False, "a list"),
    ("steps", (list,), False, "a list"),
    ("stableBaseline", (dict, type(None)), False, "an object or null"),
    ("earlierWindows", (list,), False, "a list"),
    ("policyFingerprint", (str,), False, "a string"),
    ("ticks", (int,), False, "a whole number"),
)


def state_problem(data: dict[str, Any], policy: Policy) -> str | None:
    """What is wrong with a saved rollout state, naming the field; None when it can resume."""
    import math

    from mesh_canary.core import engine
    from mesh_canary.core.engine import Phase, RolloutState, StepRecord
    from mesh_canary.core.observations import Observation
    from mesh_canary.core.verdicts import CheckResult
    from mesh_canary.core.weights import Weights

    for key, types, required, words in _STATE_FIELDS:
        if key not in data:
            if required:
                return f"the field {key!r} is missing"
            continue
        value = data[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"the field {key!r} must be {words}, not {type(value).__name__} {str(value)[:40]!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"the field {key!r} must be a finite number, not {value}"
    if data["phase"] not in {p.value for p in Phase}:
        return f"the field 'phase' holds {str(data['phase'])[:40]!r}, which is not a phase"
    parts: list[tuple[str, Callable[[], object]]] = [("weights", lambda: Weights.from_dict(data["weights"]))]
    for i, c in enumerate(data.get("checks", [])):
        parts.append((f"checks[{i}]", functools.partial(CheckResult.from_dict, c)))
    for i, st in enumerate(data.get("steps", [])):
        parts.append((f"steps[{i}]", functools.partial(StepRecord.from_dict, st)))
    if data.get("stableBaseline"):
        parts.append(("stableBaseline", lambda: Observation.from_dict(data["stableBaseline"])))
    for i, w in enumerate(data.get("earlierWindows", [])):
        parts.append((f"earlierWindows[{i}]", functools.partial(_earlier_window, w)))
    parts.append(("", lambda: RolloutState.from_dict(data)))
    for where, build in parts:
        try:
            build()
        except KeyError as e:
            return f"{where + ': ' if where else ''}the field {e.args[0]!r} is missing"
        except (TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
            return f"{'the field ' + repr(where) if where else 'the state'} is damaged ({e})"
    if data.get("policyFingerprint") == engine.policy_fingerprint(policy):
        # The same rollout: it resumes at this step, which the policy must have.
        count = len(engine.schedule(policy))
        if not 0 <= data["stepIndex"] < count:
            return f"the field 'stepIndex' is {data['stepIndex']}, but the policy has {count} steps"
    return None


def _earlier_window(w: Any) -> object:
    from mesh_canary.core.observations import Observation

    return float(w["share"]), Observation.from_dict(w["window"])


def check_state_file(path: str, policy: Policy) -> None:
    """Refuse (exit 2, nothing changed) a state file that cannot be resumed from."""
    from mesh_canary.run.stores import FileStateStore

    data = FileStateStore(path).load()  # StateFileError: bad input
    if data is None:
        return
    problem = state_problem(data, policy)
    if problem is not None:
        raise BadInput(f"state file {path} is damaged: {problem}; fix or remove it to start over")


def _print_result(policy: Policy, result: Any, fmt: str) -> None:
    if fmt == "text":
        from rich.console import Console

        from mesh_canary.present.console import render_state

        Console().print(render_state(policy, result.state))
        click.echo(f"outcome: {result.outcome}")
    else:
        click.echo(
            dump(RolloutView.from_state(result.state, policy, outcome=result.outcome).to_document(), fmt)
        )


def _traffic(
    rps: float, error_rate: float, accuracy: float, label_delay: str | None, labelled: float
) -> Traffic:
    """The traffic `plan` assumes; BadInput (exit 2) naming a value out of range."""
    from mesh_canary.core.power import Traffic

    if not rps > 0:
        raise BadInput(f"--rps must be above 0 requests per second, got {rps:g}")
    if not 0 <= error_rate < 1:
        raise BadInput(f"--error-rate must be a share in [0, 1), got {error_rate:g}")
    if not 0 < accuracy <= 1:
        raise BadInput(f"--accuracy must be a share in (0, 1], got {accuracy:g}")
    if not 0 < labelled <= 1:
        raise BadInput(f"--labelled must be a share in (0, 1], got {labelled:g}")
    delay = _duration_arg("--label-delay", label_delay) or 0.0
    return Traffic(rps, error_rate, accuracy, delay, labelled)


def _warn_unreachable(policy: Policy, traffic: Traffic) -> None:
    """A WARNING on stderr for each check that cannot reach its minimum samples at ``traffic``."""
    from mesh_canary.core.power import unreachable

    for line in unreachable(policy, traffic):
        click.echo(f"WARNING: {policy.name}: {line}", err=True)


@main.command("plan")
@click.option("-f", "--filename", "policy_path", required=True, type=click.Path(), help="Policy YAML.")
@click.option("--rps", type=float, required=True, help="Requests per second to both versions together.")
@click.option("--error-rate", type=float, default=0.005, show_default=True, help="Stable's error rate.")
@click.option("--accuracy", type=float, default=0.9, show_default=True, help="Stable's accuracy.")
@click.option("--label-delay", help="Mean delay of a label (exponential), e.g. 60s. Default: 0s.")
@click.option("--labelled", type=float, default=1.0, show_default=True, help="Share of predictions labelled.")
@output_option
@friendly_errors
def plan_command(
    policy_path: str,
    rps: float,
    error_rate: float,
    accuracy: float,
    label_delay: str | None,
    labelled: float,
    fmt: str,
) -> None:
    """Per check and step: expected samples at --rps, whether the minimum samples are
    reachable by maxStepDuration, and the smallest regression detectable with 95% power."""
    from mesh_canary.present.plan import plan_document

    traffic = _traffic(rps, error_rate, accuracy, label_delay, labelled)
    doc = plan_document(read_policy(policy_path), traffic)
    if fmt != "text":
        click.echo(dump(doc, fmt))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{doc['policy']} at {rps:g} req/s: power {doc['power']:.0%}")
    for col in (
        "check",
        "step",
        "weight",
        "candidate",
        "stable",
        "minimum",
        "reachable",
        "smallest regression",
    ):
        t.add_column(col)
    for c in doc["checks"]:
        for st in c["steps"]:
            eff = st.get("smallestEffect")
            words = "n/a" if not c["estimated"] else ("none" if eff is None else f"{100 * eff:.2g} points")
            t.add_row(
                c["name"], str(st["step"]), f"{st['weight']}%", f"{st['candidateSamples']:.0f}",
                f"{st['stableSamples']:.0f}", str(st["minimum"]), "yes" if st["reachable"] else "NO", words,
            )  # fmt: skip
    console = Console()
    console.print(t)
    for c in doc["checks"]:
        click.echo(c["summary"])  # one line each, for grep
    for line in doc["warnings"]:
        click.echo(f"WARNING: {line}", err=True)


def _duration_arg(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise BadInput(f"{name}: {e}") from e


@main.command()
@click.option("-f", "--filename", "policy_path", required=True, type=click.Path(), help="Policy YAML.")
@click.option("--scenario", "scenario_path", required=True, type=click.Path(), help="Scenario YAML.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True)
@output_option
@friendly_errors
def simulate(policy_path: str, scenario_path: str, seed: int, runs: int, fmt: str) -> None:
    """Run the policy against simulated traffic in virtual time (no network, no sleeping)."""
    from mesh_canary.simulation.simulate import simulate_rollout
    from mesh_canary.simulation.traffic import load_scenario_text

    policy = read_policy(policy_path)
    try:
        text = Path(scenario_path).read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(f"cannot read scenario {scenario_path}: {e.strerror}") from e
    except UnicodeDecodeError:
        raise BadInput(f"scenario {scenario_path} is not valid UTF-8 text; save it as UTF-8") from None
    scenario = load_scenario_text(text, source=scenario_path)  # ScenarioError: bad input
    from mesh_canary.core.power import Traffic

    st = scenario.stable
    if scenario.traffic.rps > 0:
        seen = Traffic(
            scenario.traffic.rps, st.error_rate, st.accuracy, st.labels.delay_mean_s, 1 - st.labels.missing
        )
        _warn_unreachable(policy, seen)
    from rich.console import Console
    from rich.progress import Progress

    results = []
    # Thousands of runs take a while: show progress on a terminal (never in the JSON stream).
    progress = Progress(console=Console(stderr=True), transient=True, disable=runs < 50)
    task = progress.add_task("simulating", total=runs)
    with progress:
        for i in range(runs):
            results.append(simulate_rollout(policy, scenario, seed=seed + i))
            progress.advance(task)
            _emit_simulation(results[-1], fmt, last=i == runs - 1, many=runs > 1)
    if fmt == "text":
        _print_simulation_text(results)
    if runs == 1:
        sys.exit(Outcome(results[0]["outcome"]).exit_code)


def _emit_simulation(r: dict[str, Any], fmt: str, last: bool, many: bool) -> None:
    if fmt == "json":
        click.echo(json.dumps(r) if many else json.dumps(r, indent=2))
    elif fmt == "yaml":
        click.echo(dump(r, "yaml") + ("" if last else "---"))


def _print_simulation_text(results: list[dict[str, Any]]) -> None:
    """A row per run for a few runs; for many, what a person wants: how often, how fast, how much harm."""
    from collections import Counter
    from statistics import median

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(results) <= 20:
        t = Table(title="simulated rollouts")
        for col in ("seed", "outcome", "decided", "candidate requests", "errors", "wrong", "reason"):
            t.add_column(col)
        for r in results:
            t.add_row(
                str(r["seed"]), r["outcome"], f"{r['decidedAtS']:.0f}s", str(r["candidateRequests"]),
                str(r["candidateErrors"]), str(r["candidateWrong"]), r["reason"][:80],
            )  # fmt: skip
        console.print(t)
    counts = Counter(r["outcome"] for r in results)
    t = Table(title=f"{len(results)} runs" if len(results) > 1 else None)
    for col in (
        "outcome",
        "runs",
        "share",
        "median decided",
        "median candidate requests",
        "median candidate errors",
    ):
        t.add_column(col)
    for outcome, n in sorted(counts.items()):
        rs = [r for r in results if r["outcome"] == outcome]
        t.add_row(
            outcome, str(n), f"{n / len(results):.1%}", f"{median(r['decidedAtS'] for r in rs):.0f}s",
            f"{median(r['candidateRequests'] for r in rs):.0f}", f"{median(r['candidateErrors'] for r in rs):.0f}",
        )  # fmt: skip
    console.print(t)


@main.command()
@click.option("--rps", type=float, default=100.0, show_default=True, help="Load generator rate.")
@click.option(
    "--metrics",
    "metrics_mode",
    type=click.Choice(["auto", "direct", "prometheus"]),
    default="auto",
    show_default=True,
    help="Read metrics through a real Prometheus (auto: when `prometheus` is installed) or scrape directly.",
)
@output_option
@friendly_errors
def demo(rps: float, metrics_mode: str, fmt: str) -> None:
    """The whole loop on the embedded local mesh: a healthy candidate promoted, a degraded one
    rolled back (about a minute)."""
    from mesh_canary.run.demo import run_demo

    report = run_demo(rps=rps, live=fmt == "text", metrics_mode=metrics_mode)
    if fmt != "text":
        click.echo(dump(report, fmt))
    sys.exit(0 if report["ok"] else EXIT_FAILURE)


# --------------------------------------------------------------------------- the cluster
# `rollout ...` talks to the API server about ModelRollout resources; the in-cluster
# `controller` does the work. People's orders are annotations on the resource (see
# docs/controller.md): the controller handles each new value once.


def kube_options(fn: F) -> F:
    fn = click.option("--context", "kube_context", help="kubeconfig context.")(fn)
    fn = click.option(
        "--kubeconfig",
        type=click.Path(),
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).",
    )(fn)
    fn = click.option("-n", "--namespace", help="Namespace (default: the context's, else default).")(fn)
    return fn


def rollout_view(obj: dict[str, Any]) -> dict[str, Any]:
    """What `rollout status` shows, as a plain document (the json/yaml output): the one view."""
    return RolloutView.from_resource(obj).to_document()


def _print_rollout_text(view: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from mesh_canary.core.verdicts import CheckResult
    from mesh_canary.present.console import checks_table

    console = Console(width=max(Console().width, 120))
    w = view.get("weights") or {}
    step = f"step {view['currentStep']}/{view['stepCount']}" if view.get("currentStep") else "not started"
    mirror = f" (+{w['mirrorPercent']}% mirrored)" if w.get("mirrorPercent") else ""
    weights = f"stable {w.get('stable', '-')}% / candidate {w.get('candidate', '-')}%{mirror}" if w else "-"
    console.print(
        Text.assemble(
            (f"{view['namespace']}/{view['name']} ", "bold"),
            f"{view.get('stableVersion')} -> {view.get('candidateVersion')}  ",
            (str(view["phase"]), "bold cyan"),
            f"  {step}  weights {weights}",
        )
    )
    if view.get("message"):
        console.print(f"  {view['message']}")
    checks = []
    for c in view.get("checks") or []:
        try:
            checks.append(CheckResult.from_dict(c))
        except (KeyError, ValueError):
            continue
    if checks:
        console.print(checks_table(checks))
    if view.get("conditions"):
        t = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("condition", "status", "reason", "since", "message"):
            t.add_column(col)
        for c in view["conditions"]:
            t.add_row(
                c.get("type", ""),
                c.get("status", ""),
                c.get("reason", ""),
                c.get("lastTransitionTime", ""),
                c.get("message", ""),
            )
        console.print(t)


def _emit_view(view: dict[str, Any], fmt: str, stream: bool = False) -> None:
    if fmt == "text":
        _print_rollout_text(view)
    elif fmt == "json" and stream:
        click.echo(json.dumps(view))  # one document per line while watching
    else:
        click.echo(dump(view, fmt) + ("---" if fmt == "yaml" and stream else ""))


def _follow(
    client: RolloutClient,
    name: str,
    fmt: str,
    timeout_s: float | None,
    generation: int | None = None,
    poll_s: float = 1.0,
) -> tuple[dict[str, Any], str]:
    """Poll the rollout until it ends (or needs a person, or time runs out); print each change.

    Returns the last object and why following stopped: an outcome (promoted | rolled_back |
    aborted | timed_out), waiting or invalid.
    """
    import time

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last_key: Any = None
    while True:
        obj = client.get(name)
        view = rollout_view(obj)
        current = generation is None or (view.get("observedGeneration") or 0) >= generation
        key = (
            view["phase"],
            view.get("currentStep"),
            json.dumps(view.get("weights"), sort_keys=True),
            view.get("message"),
        )
        if key != last_key and current:
            last_key = key
            if fmt == "text":
                click.echo(f"{view['phase']}: {view.get('message') or ''}".rstrip(": "))
            else:
                _emit_view(view, fmt, stream=True)
        if current:
            valid = next((c for c in view["conditions"] if c.get("type") == "PolicyValid"), None)
            if valid and valid.get("status") == "False" and view["phase"] in ("Invalid", "Pending"):
                return obj, "invalid"
            if view["outcome"] is not None:
                return obj, view["outcome"]
            if view["phase"] in ("WaitingForApproval", "Paused"):
                return obj, "waiting"
        if deadline is not None and time.monotonic() >= deadline:
            return obj, Outcome.TIMED_OUT.value
        time.sleep(poll_s)


_FOLLOW_EXIT = {
    **{o.value: o.exit_code for o in Outcome},
    "waiting": EXIT_UNFINISHED,
    "invalid": EXIT_BAD_INPUT,
}


@main.group()
def rollout() -> None:
    """ModelRollout resources for the in-cluster controller: start, follow, steer, review."""


@rollout.command("start")
@click.option("-f", "--filename", "policy_path", required=True, type=click.Path(), help="Policy YAML.")
@click.option("--wait", is_flag=True, help="Follow the rollout to its end and exit with its outcome.")
@click.option("--timeout", "timeout", help="With --wait: give up (exit 4) after this long, e.g. 30m.")
@kube_options
@output_option
@friendly_errors
def rollout_start(
    policy_path: str,
    wait: bool,
    timeout: str | None,
    namespace: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    fmt: str,
) -> None:
    """Apply the policy as a ModelRollout (create or replace); --wait follows it to the end.

    Exit codes with --wait: 0 promoted, 3 rolled back, 4 timed out or waiting for a
    person (approval, pause), 2 the controller found the policy invalid.
    """
    import yaml

    from mesh_canary.run.policy_loading import read_policy_file

    read_policy(policy_path)  # every problem reported before anything touches the cluster
    doc = yaml.safe_load(read_policy_file(policy_path))
    timeout_s = _duration_arg("--timeout", timeout)
    meta = doc.setdefault("metadata", {})
    if namespace and meta.get("namespace") and meta["namespace"] != namespace:
        raise BadInput(
            f"the policy's metadata.namespace {meta['namespace']!r} does not match --namespace {namespace!r}"
        )
    client = RolloutClient(kubeconfig, kube_context, namespace or meta.get("namespace"))
    meta["namespace"] = client.namespace
    obj, what = client.apply(doc)
    if fmt == "text":
        click.echo(f"{client.ref(meta['name'])} {what}")
    if not wait:
        if fmt != "text":
            _emit_view(rollout_view(obj), fmt)
        return
    generation = (obj.get("metadata") or {}).get("generation")
    last, why = _follow(client, meta["name"], fmt, timeout_s, generation=generation)
    if fmt == "text":
        view = rollout_view(last)
        messages = {
            "promoted": f"promoted {view.get('candidateVersion')}",
            "rolled_back": f"rolled back: {view.get('reason')}",
            "aborted": f"aborted: {view.get('reason')}",
            "waiting": f"{view['phase']}: waiting for a person "
            f"(`mesh-canary rollout {'approve' if view['phase'] == 'WaitingForApproval' else 'resume'} {meta['name']}`)",
            "timed_out": f"still {view['phase']} after {timeout}",
            "invalid": "the controller found the policy invalid: "
            + next((c.get("message", "") for c in view["conditions"] if c.get("type") == "PolicyValid"), ""),
        }
        click.echo(f"outcome: {messages[why]}", err=why not in ("promoted",))
    sys.exit(_FOLLOW_EXIT[why])


@rollout.command("status")
@click.argument("name")
@click.option("-w", "--watch", is_flag=True, help="Keep showing changes until the rollout ends.")
@kube_options
@output_option
@friendly_errors
def rollout_status(
    name: str, watch: bool, namespace: str | None, kubeconfig: str | None, kube_context: str | None, fmt: str
) -> None:
    """Phase, step, weights, every check's latest estimate/bounds/verdict, conditions."""
    import time

    client = RolloutClient(kubeconfig, kube_context, namespace)
    last: Any = None
    while True:
        view = rollout_view(client.get(name))
        if view != last:
            if last is not None and fmt == "text":
                click.echo("")
            _emit_view(view, fmt, stream=watch)
            last = view
        if not watch or view["phase"] in TERMINAL_PHASES:
            return
        time.sleep(1.0)


def _command(
    word: str,
    value: str,
    name: str,
    namespace: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    wait: bool,
    timeout: str | None,
    fmt: str,
) -> None:
    import time

    from mesh_canary.kube.status import COMMAND_ANNOTATIONS

    client = RolloutClient(kubeconfig, kube_context, namespace)
    timeout_s = _duration_arg("--timeout", timeout) or 30.0
    client.annotate(name, COMMAND_ANNOTATIONS[word], value)
    if fmt == "text":
        click.echo(f"{client.ref(name)}: {word} requested ({COMMAND_ANNOTATIONS[word]}={value})")
    view = None
    handled = False
    deadline = time.monotonic() + timeout_s
    while wait:
        obj = client.get(name)
        view = rollout_view(obj)
        handled = ((obj.get("status") or {}).get("handledCommands") or {}).get(word) == value
        if handled or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if fmt != "text":
        click.echo(
            dump(
                {
                    "name": name,
                    "namespace": client.namespace,
                    "command": word,
                    "request": value,
                    "handled": handled if wait else None,
                    "status": view,
                },
                fmt,
            )
        )
    elif wait and handled and view is not None:
        click.echo(f"handled by the controller: {view['phase']}: {view.get('message') or ''}")
    if wait and not handled:
        click.echo(
            "the order is recorded on the resource, but the controller has not handled it within "
            f"{timeout_s:.0f}s (is it running?)",
            err=True,
        )
        sys.exit(4)


def _command_verb(word: str, verb: str, doc: str) -> None:
    @rollout.command(verb, help=doc)
    @click.argument("name")
    @click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Wait until the controller has handled the order.",
    )
    @click.option("--timeout", "timeout", help="How long to wait for the controller (default 30s).")
    @kube_options
    @output_option
    @friendly_errors
    def command(
        name: str,
        wait: bool,
        timeout: str | None,
        namespace: str | None,
        kubeconfig: str | None,
        kube_context: str | None,
        fmt: str,
    ) -> None:
        from mesh_canary.kube.orders import order

        _, value = order(verb)  # the same order the dashboard's buttons give
        _command(word, value, name, namespace, kubeconfig, kube_context, wait, timeout, fmt)


_command_verb("abort", "abort", "Snap to 100% stable now (recorded as a manual rollback).")
_command_verb("approve", "approve", "Open the human gate: let the rollout promote.")
_command_verb("pause", "pause", "Hold the current weight (checks still run; a failure still rolls back).")
_command_verb("pause", "resume", "Release a paused rollout.")


@rollout.command("history")
@click.argument("name", required=False)
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option(
    "--audit",
    is_flag=True,
    help="NAME's audit record (every decision); NAME may be a `run --state` file. -o json: JSON lines.",
)
@kube_options
@output_option
@friendly_errors
def rollout_history(
    name: str | None,
    all_namespaces: bool,
    audit: bool,
    namespace: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
    fmt: str,
) -> None:
    """Past rollouts (and the one in progress): versions, outcome, reason, duration."""
    if audit:
        _audit(name, namespace, kubeconfig, kube_context, fmt)
        return
    client = RolloutClient(kubeconfig, kube_context, namespace)
    objs = [client.get(name)] if name else client.list(all_namespaces)
    rows = [row for obj in objs for row in history_documents(obj)]
    if fmt != "text":
        click.echo(dump(rows, fmt))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("rollout", "stable", "candidate", "outcome", "started", "duration", "reason"):
        t.add_column(col)
    for r in rows:
        duration = (
            f"{r['durationSeconds']:.0f}s" if isinstance(r.get("durationSeconds"), (int, float)) else "-"
        )
        t.add_row(
            f"{r['namespace']}/{r['name']}",
            str(r.get("stableVersion") or "-"),
            str(r.get("candidateVersion") or "-"),
            str(r.get("outcome")),
            str(r.get("startedAt") or "-"),
            duration,
            str(r.get("reason") or "")[:100],
        )
    if rows:
        Console(width=max(Console().width, 140)).print(t)
    else:
        click.echo("no rollouts recorded yet")


@main.command()
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    metavar="NS",
    help="Watch this namespace (repeat or comma-separate for several; default: every namespace).",
)
@click.option(
    "--leader-elect", is_flag=True, help="Reconcile only while holding the Lease (for replicas > 1)."
)
@click.option("--lease-namespace", help="Namespace of the Lease (default: $POD_NAMESPACE, else --namespace).")
@click.option(
    "--metrics-addr",
    default=":8080",
    show_default=True,
    help="Serve /livez, /readyz, /metrics here (HOST:PORT, or :PORT on --bind-address).",
)
@click.option(
    "--bind-address",
    default="127.0.0.1",
    show_default=True,
    help="Interface for a --metrics-addr without a host (0.0.0.0: every interface, as a pod's probes need).",
)
@click.option(
    "--prometheus",
    "prometheus_url",
    help="Prometheus URL for rollouts whose spec names none (default http://prometheus.istio-system:9090); "
    "the only one allowed unless --allow-metrics-address adds more.",
)
@click.option(
    "--allow-metrics-address",
    "allowed_metrics",
    multiple=True,
    metavar="URL",
    help="A Prometheus that spec.metrics.address may name (repeat; default: only --prometheus).",
)
@click.option(
    "--allow-cross-namespace",
    is_flag=True,
    help="Let a ModelRollout move a VirtualService in another namespace (off: only its own).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Rollouts analysed at once."
)
@click.option(
    "--max-workers",
    type=click.IntRange(min=1),
    help="Threads in all, counting slow reconciles that no longer hold a worker (default 4 x --workers).",
)
@click.option(
    "--slow-after",
    default="5s",
    show_default=True,
    help="A reconcile running this long stops holding a worker, so others are not starved.",
)
@click.option(
    "--stuck-after",
    default="5m",
    show_default=True,
    help="A reconcile running this long is wedged: /livez fails, so Kubernetes restarts the controller.",
)
@click.option(
    "--kubeconfig", type=click.Path(), help="kubeconfig file (default: in-cluster service account)."
)
@click.option("--context", "kube_context", help="kubeconfig context.")
@friendly_errors
def controller(
    namespaces: tuple[str, ...],
    leader_elect: bool,
    lease_namespace: str | None,
    metrics_addr: str,
    bind_address: str,
    prometheus_url: str | None,
    allowed_metrics: tuple[str, ...],
    allow_cross_namespace: bool,
    workers: int,
    max_workers: int | None,
    slow_after: str,
    stuck_after: str,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    """The long-running in-cluster controller: reconciles every ModelRollout (stop: SIGTERM)."""
    from mesh_canary.controller import Controller, ControllerSettings, MetricsAddress, parse_addr

    debug = _debug()
    setup_logging(logging.DEBUG if debug else logging.INFO, json_lines=True)
    try:
        parse_addr(metrics_addr, bind_address)
        for url in (prometheus_url, *allowed_metrics):
            if url is not None:
                MetricsAddress.parse(url)  # also registers its password as a secret
        slow_s, stuck_s = parse_duration(slow_after), parse_duration(stuck_after)
    except ValueError as e:
        raise BadInput(str(e)) from e
    for ns in (n.strip() for group in namespaces for n in group.split(",")):
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", ns):
            raise BadInput(f"--namespace {ns!r} is not a Kubernetes namespace name")
    if not 0 < slow_s < stuck_s:
        raise BadInput(f"--slow-after ({slow_after}) must be above 0 and below --stuck-after ({stuck_after})")
    if max_workers is not None and max_workers < workers:
        raise BadInput(f"--max-workers ({max_workers}) must be at least --workers ({workers})")
    settings = ControllerSettings(
        namespaces=namespaces,
        prometheus_url=prometheus_url,
        allowed_metrics_addresses=allowed_metrics,
        allow_cross_namespace=allow_cross_namespace,
        workers=workers,
        max_workers=max_workers,
        slow_after_s=slow_s,
        stuck_after_s=stuck_s,
        metrics_addr=metrics_addr,
        bind_address=bind_address,
        leader_elect=leader_elect,
        lease_namespace=lease_namespace,
    )
    Controller(api_client(kubeconfig, kube_context), settings).run()


# --------------------------------------------------------------------------- report


@main.command()
@click.argument("target", metavar="NAME|STATEFILE")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Write the page here (default: NAME-report.html).",
)
@click.option(
    "-o",
    "--output",
    "old_out_path",
    type=click.Path(dir_okay=False),
    help="The output format: html, the page (json and yaml are `rollout status -o`). "
    "A path here is the deprecated spelling of --out.",
)
@click.option(
    "-f",
    "--filename",
    "policy_path",
    type=click.Path(),
    help="With a state file: the policy it ran (versions, plan, tolerances).",
)
@kube_options
@friendly_errors
def report(
    target: str,
    out_path: str | None,
    old_out_path: str | None,
    policy_path: str | None,
    namespace: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    """A self-contained HTML page about one rollout: weights and per-version metrics over time,
    each decision marked with its reason.

    NAME|STATEFILE is a state file (`mesh-canary run --state FILE`, or a ModelRollout saved
    with `kubectl get -o yaml`) when such a file exists, else a ModelRollout in the cluster.
    """
    import time

    from mesh_canary.present.report import (
        ReportError,
        default_report_name,
        render_report,
        render_resource_report,
    )

    out_path = _report_out(out_path, old_out_path)
    now = time.time()
    policy = read_policy(policy_path) if policy_path else None
    path = Path(target)
    try:
        if path.is_file():
            doc = _read_report_input(path)
            if doc.get("kind") == KIND or "status" in doc:
                page = render_resource_report(doc, source=str(path), generated_at=now)
                name = str((doc.get("metadata") or {}).get("name") or path.stem)
            else:
                page = render_report(doc, policy=policy, source=str(path), generated_at=now)
                name = str(doc.get("name") or path.stem)
        elif path.suffix in (".json", ".yaml", ".yml") or "/" in target or path.exists():
            raise BadInput(f"no state file {target}")
        else:
            try:
                client = RolloutClient(kubeconfig, kube_context, namespace)
            except KubeError as e:
                # Not a file, and no cluster to look it up in: the missing file is the news.
                raise BadInput(
                    f"no state file {target} (nor a cluster to read a ModelRollout from: {e})"
                ) from e
            obj = client.get(target)
            page = render_resource_report(obj, source=client.ref(target), generated_at=now)
            name = target
    except ReportError as e:
        raise BadInput(f"{target}: {e}") from e
    # An explicit --out is honoured as given; the default is a plain name in this directory.
    out = Path(out_path) if out_path else Path(default_report_name(name))
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror}")
    click.echo(str(out))


# Output formats of any command: `report -o WORD` with one of these is a format, not a path.
REPORT_FORMAT_WORDS = frozenset({"text", "json", "yaml", "yml", "wide", "name", "html"})


def _report_out(out_path: str | None, old_out_path: str | None) -> str | None:
    """The page's path from --out, or from the deprecated `-o FILE` (kept for one release).

    `-o` is the output format in every other command, so a format word is taken as one: the
    page is `html`; any other (json, yaml, ...) is an error, never a file of that name."""
    if old_out_path is None:
        return out_path
    if old_out_path.lower() == "html":
        return out_path
    if old_out_path.lower() in REPORT_FORMAT_WORDS:
        raise BadInput(
            f"report has no -o {old_out_path} output: it writes an HTML page (-o html), to --out FILE; "
            f"for the rollout as {old_out_path} use `mesh-canary rollout status NAME -o {old_out_path}`"
            if old_out_path.lower() in ("json", "yaml")
            else f"report has no -o {old_out_path} output: it writes an HTML page (-o html), to --out FILE"
        )
    if out_path is not None:
        raise BadInput("give the page's path once, with --out (-o FILE is its deprecated spelling)")
    click.echo(
        "note: `report -o FILE` is deprecated and will mean the output format in a later release; "
        "use `--out FILE`",
        err=True,
    )
    return old_out_path


def _audit(
    name: str | None, namespace: str | None, kubeconfig: str | None, context: str | None, fmt: str
) -> None:
    """`rollout history NAME --audit`: from a state file when NAME is one, else the cluster."""
    from mesh_canary.present.audit import audit_entries, audit_json_lines, audit_text

    if not name:
        raise BadInput("--audit needs NAME: a ModelRollout or a `mesh-canary run --state` file")
    path = Path(name)
    if path.is_file():
        doc = _read_report_input(path)
    elif path.suffix in (".json", ".yaml", ".yml") or "/" in name:
        raise BadInput(f"no state file {name}")
    else:
        doc = RolloutClient(kubeconfig, context, namespace).get(name)
    entries, dropped = audit_entries(doc)
    if fmt == "json":
        click.echo(audit_json_lines(entries))
    elif fmt == "yaml":
        click.echo(dump(entries, fmt))
    else:
        click.echo(audit_text(entries, dropped))


def _read_report_input(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {path}: {e}") from e
    try:
        doc: Any = json.loads(text)
    except ValueError:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BadInput(f"{path} is neither JSON nor YAML: {e}") from e
    if not isinstance(doc, dict):
        raise BadInput(f"{path} does not hold a rollout state (a JSON object) or a ModelRollout")
    return doc


# --------------------------------------------------------------------------- dashboard


@main.command()
@click.option(
    "--state",
    "state_paths",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="A `mesh-canary run --state FILE` file to show (repeat for several; it may not exist yet).",
)
@click.option(
    "-f",
    "--filename",
    "policy_paths",
    multiple=True,
    type=click.Path(),
    help="With --state: the policy a state file runs (versions, plan, tolerances; repeat).",
)
@click.option("-A", "--all-namespaces", is_flag=True, help="ModelRollouts of every namespace.")
@click.option(
    "--address",
    default="127.0.0.1:8080",
    show_default=True,
    help="Serve here (HOST:PORT; port 0 picks a free one).",
)
@click.option(
    "--allow-writes",
    is_flag=True,
    help="Offer pause/resume/approve/abort buttons (ModelRollouts); without it every order answers 403.",
)
@kube_options
@friendly_errors
def dashboard(
    state_paths: tuple[str, ...],
    policy_paths: tuple[str, ...],
    all_namespaces: bool,
    address: str,
    allow_writes: bool,
    namespace: str | None,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    """A live web page of rollouts: weights, per-version metrics and every check at every
    analysis, the reasons, the steps and Events; it follows a running rollout (stop: Ctrl-C).

    With --state FILE it shows those files (a `run` in progress); otherwise, or with
    --namespace as well, the ModelRollouts of the namespace (or -A: every namespace).

    \b
    Examples:
      mesh-canary run -f policy.yaml --backend local --state st.json &
      mesh-canary dashboard --state st.json -f policy.yaml
      mesh-canary dashboard -n models --allow-writes --address 0.0.0.0:8080
    """
    import signal
    import threading

    from mesh_canary.present.dashboard import Dashboard, DashboardServer, Poller, Source, serve
    from mesh_canary.run.dashboard_sources import ModelRollouts, StateFiles

    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BadInput(f"--address {address!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    policies = [read_policy(p) for p in policy_paths]
    sources: list[Source] = []
    if state_paths:
        sources.append(StateFiles(state_paths, policies))
    if not state_paths or namespace or all_namespaces:
        sources.append(ModelRollouts(kubeconfig, kube_context, namespace, all_namespaces))
    poller = Poller(sources)
    try:
        server = DashboardServer((host or "127.0.0.1", int(port_text)), Dashboard(poller, allow_writes))
    except OSError as e:
        fail(f"cannot serve on {address}: {e.strerror or e}")
    poller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mode = "orders allowed" if allow_writes else "read-only (--allow-writes adds pause/resume/approve/abort)"
    click.echo(f"dashboard: open {server.url} ({mode}; Ctrl-C stops)", err=True)
    serve(server, stop)  # until Ctrl-C or SIGTERM
