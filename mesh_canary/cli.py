"""`mesh-canary`: a thin click layer over the library. Exit codes as in docs/cli.md:
0 success, 1 could not do the work, 2 bad input, 3 rolled back, 4 did not finish."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
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
    """Safe canary and blue/green rollouts of ML model services behind a service mesh.

    \b
    Examples:
      mesh-canary demo
      mesh-canary validate policies/*.yaml
      mesh-canary rollout start -f policy.yaml --wait
    """
    setup_logging(logging.DEBUG if debug else logging.WARNING, json_lines=log_format == "json")


@main.command()
@click.argument("policies", nargs=-1, required=True, type=click.Path())
@click.option(
    "--rps",
    type=float,
    help="Also warn where the policy cannot reach its minimum samples at this rate (req/s).",
)
@click.option(
    "-o",
    "--output",
    "fmt",
    type=click.Choice(["text", "json", "yaml", "github"]),
    default="text",
    show_default=True,
    help="github: one GitHub Actions annotation per problem (::error file=...,line=...,col=...::).",
)
@friendly_errors
def validate(policies: tuple[str, ...], rps: float | None, fmt: str) -> None:
    """Check policies against the schema and the rules; print every problem with its path.

    \b
    Examples:
      mesh-canary validate policy.yaml
      mesh-canary validate policies/*.yaml -o json
      mesh-canary validate policy.yaml --rps 20
    """
    results: list[dict[str, Any]] = []
    from mesh_canary.run.policy_loading import validate_policy_file

    traffic = None if rps is None else _traffic(rps, 0.005, 0.9, None, 1.0)
    found = {}
    for path in policies:
        problems = found[path] = validate_policy_file(path)
        if traffic is not None and not problems:
            _warn_unreachable(read_policy(path), traffic, path if fmt == "github" else None)
        results.append(
            {
                "file": path,
                "valid": not problems,
                "problems": [{"path": p.path, "message": p.message, "line": p.line} for p in problems],
                "text": [str(p) for p in problems],
            }
        )
    if fmt == "github":
        from mesh_canary.present.annotations import github_annotations

        for path, problems in found.items():
            click.echo("\n".join(github_annotations(path, problems)) if problems else f"{path}: valid")
    elif fmt == "text":
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
    "--stable",
    "stable_mode",
    type=click.Choice(["healthy", "degraded"]),
    help="local backend: stable's model server, healthy (default) or degraded (to see the fallback).",
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
    stable_mode: str | None,
    rps: float,
    fmt: str,
) -> None:
    """Run one rollout in this process, start to finish, and exit with its outcome
    (0 promoted, 3 rolled back, 4 timed out; 2 bad input, nothing changed).

    \b
    Examples:
      mesh-canary run -f policy.yaml --state st.json
      mesh-canary run -f policies/local-demo.yaml --backend local --candidate degraded
      mesh-canary run -f policies/local-fallback.yaml --backend local --candidate degraded --stable degraded
      mesh-canary run -f policy.yaml --prometheus http://prometheus:9090 --timeout 30m -o json
    """
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
        stable_degraded=stable_mode == "degraded",  # None: healthy
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


def _warn_unreachable(policy: Policy, traffic: Traffic, annotate: str | None = None) -> None:
    """A WARNING on stderr for each check that cannot reach its minimum samples at ``traffic``
    (``annotate``: as a GitHub warning annotation on that file, on stdout)."""
    from mesh_canary.core.power import unreachable
    from mesh_canary.present.annotations import github_warning

    for line in unreachable(policy, traffic):
        if annotate is not None:
            click.echo(github_warning(annotate, f"{policy.name}: {line}"))
        else:
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
    reachable by maxStepDuration, and the smallest regression detectable with 95% power.

    \b
    Examples:
      mesh-canary plan -f policy.yaml --rps 20
      mesh-canary plan -f policy.yaml --rps 5 --label-delay 10m --labelled 0.3 -o json
    """
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
    """Run the policy against simulated traffic in virtual time (no network, no sleeping).

    \b
    Examples:
      mesh-canary simulate -f policy.yaml --scenario scenarios/aa.yaml
      mesh-canary simulate -f policy.yaml --scenario scenarios/aa.yaml --runs 200 -o json
    """
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
    results = []
    # Thousands of runs take a while: show progress on a terminal (never in the JSON stream).
    # A few runs take well under a second: then rich (~0.2 s to import) is not even loaded.
    with contextlib.ExitStack() as stack:
        advance = _simulation_progress(stack, runs) if runs >= 50 else (lambda: None)
        for i in range(runs):
            results.append(simulate_rollout(policy, scenario, seed=seed + i))
            advance()
            _emit_simulation(results[-1], fmt, last=i == runs - 1, many=runs > 1)
    if fmt == "text":
        _print_simulation_text(results)
    if runs == 1:
        sys.exit(Outcome(results[0]["outcome"]).exit_code)


def _simulation_progress(stack: contextlib.ExitStack, runs: int) -> Callable[[], None]:
    """A progress bar on stderr, shown while ``stack`` is open; returns "one more run"."""
    from rich.console import Console
    from rich.progress import Progress

    progress = stack.enter_context(Progress(console=Console(stderr=True), transient=True))
    task = progress.add_task("simulating", total=runs)
    return lambda: progress.advance(task)


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
@click.option(
    "--labels",
    type=click.Choice(["feedback", "collector"]),
    default="feedback",
    show_default=True,
    help="collector: the model servers send payload-logger CloudEvents to a prediction-label collector.",
)
@output_option
@friendly_errors
def demo(rps: float, metrics_mode: str, labels: str, fmt: str) -> None:
    """The whole loop on the embedded local mesh: a healthy candidate promoted, a degraded one
    rolled back (about a minute).

    \b
    Examples:
      mesh-canary demo
      mesh-canary demo --metrics direct -o json
    """
    from mesh_canary.run.demo import run_demo

    report = run_demo(rps=rps, live=fmt == "text", metrics_mode=metrics_mode, labels=labels)
    if fmt != "text":
        click.echo(dump(report, fmt))
    sys.exit(0 if report["ok"] else EXIT_FAILURE)


# --------------------------------------------------------------------------- the cluster
# `rollout ...` talks to the API server about ModelRollout resources; the in-cluster
# `controller` does the work. People's orders are annotations on the resource (see
# docs/controller.md): the controller handles each new value once.


@dataclass(frozen=True)
class Kube:
    """Where a command finds the cluster: the -n/--kubeconfig/--context options, as one value."""

    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None

    def client(self, namespace: str | None = None) -> RolloutClient:
        """The ModelRollout client in ``namespace`` (default: -n, else the context's)."""
        return RolloutClient(self.kubeconfig, self.context, self.namespace or namespace)


def kube_options(fn: F) -> F:
    """-n/--namespace, --kubeconfig and --context, given to the command as ``kube: Kube``."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any, namespace: str | None, kubeconfig: str | None, kube_context: str | None, **kw: Any
    ) -> Any:
        return fn(*args, kube=Kube(namespace, kubeconfig, kube_context), **kw)

    out: Any = wrapper
    out = click.option("--context", "kube_context", help="kubeconfig context.")(out)
    out = click.option(
        "--kubeconfig",
        type=click.Path(),
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).",
    )(out)
    out = click.option("-n", "--namespace", help="Namespace (default: the context's, else default).")(out)
    return out  # type: ignore[no-any-return]


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
    """ModelRollout resources for the in-cluster controller: start, follow, steer, review.

    \b
    Examples:
      mesh-canary rollout start -f policy.yaml --wait
      mesh-canary rollout list -A -w
      mesh-canary rollout get fraud-scorer -n models -o yaml
    """


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
    kube: Kube,
    fmt: str,
) -> None:
    """Apply the policy as a ModelRollout (create or replace); --wait follows it to the end.

    Exit codes with --wait: 0 promoted, 3 rolled back, 4 timed out or waiting for a
    person (approval, pause), 2 the controller found the policy invalid.

    \b
    Examples:
      mesh-canary rollout start -f policy.yaml
      mesh-canary rollout start -f policy.yaml -n models --wait --timeout 30m -o json
    """
    import yaml

    from mesh_canary.run.policy_loading import read_policy_file

    read_policy(policy_path)  # every problem reported before anything touches the cluster
    doc = yaml.safe_load(read_policy_file(policy_path))
    timeout_s = _duration_arg("--timeout", timeout)
    meta = doc.setdefault("metadata", {})
    if kube.namespace and meta.get("namespace") and meta["namespace"] != kube.namespace:
        raise BadInput(
            f"the policy's metadata.namespace {meta['namespace']!r} does not match --namespace {kube.namespace!r}"
        )
    client = kube.client(meta.get("namespace"))
    meta["namespace"] = client.namespace
    _refuse_a_start_of_a_stable_not_live(client, doc, kube)
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


def _refuse_a_start_of_a_stable_not_live(client: RolloutClient, doc: dict[str, Any], kube: Kube) -> None:
    """A new spec whose stable is no longer live (the route sends 100% to its candidate, as
    after a promotion) is refused before it reaches the cluster: exit 2, nothing changed.
    Re-applying the spec already there is not a start, so it is never refused."""
    import copy

    from mesh_canary.run.policy_loading import load_checked_policy
    from mesh_canary.run.verbs import live_route_problem

    try:
        existing: dict[str, Any] | None = client.get(doc["metadata"]["name"])
    except KubeError as e:
        if not e.not_found:
            raise
        existing = None
    if existing is not None and existing.get("spec") == doc.get("spec"):
        return
    policy = load_checked_policy(copy.deepcopy(doc))  # in the namespace it is applied to
    problem = live_route_problem(policy, kube.kubeconfig, kube.context)
    if problem is not None:
        raise BadInput(problem)


@rollout.command("status")
@click.argument("name")
@click.option("-w", "--watch", is_flag=True, help="Keep showing changes until the rollout ends.")
@kube_options
@output_option
@friendly_errors
def rollout_status(name: str, watch: bool, kube: Kube, fmt: str) -> None:
    """Phase, step, weights, every check's latest estimate/bounds/verdict, conditions.

    \b
    Examples:
      mesh-canary rollout status fraud-scorer -n models
      mesh-canary rollout status fraud-scorer -n models --watch -o json
    """
    import time

    client = kube.client()
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


def order_options(fn: F) -> F:
    """--wait/--timeout, the cluster options, -o and friendly errors: every order verb's."""
    fn = friendly_errors(fn)
    fn = output_option(fn)
    fn = kube_options(fn)
    fn = click.option("--timeout", "timeout", help="How long to wait for the controller (default 30s).")(fn)
    fn = click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Wait until the controller has handled the order.",
    )(fn)
    return fn


def _order(
    verb: str,
    name: str,
    kube: Kube,
    wait: bool,
    timeout: str | None,
    fmt: str,
) -> None:
    """Write the order ``verb`` (kube/orders.py, the same as the dashboard's buttons) after
    checking the rollout's phase allows it (exit 2 otherwise, nothing written); with
    ``wait``, until the controller has handled it (exit 4 if it has not in time)."""
    import time

    from mesh_canary.kube.orders import annotation, order, refusal

    client = kube.client()
    timeout_s = _duration_arg("--timeout", timeout) or 30.0
    problem = refusal(verb, name, client.get(name).get("status") or {})
    if problem is not None:
        raise BadInput(problem)
    word, value = order(verb)
    client.annotate(name, annotation(word), value)
    if fmt == "text":
        click.echo(f"{client.ref(name)}: {verb.replace('-', ' --')} requested ({annotation(word)}={value})")
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
        doc = {"name": name, "namespace": client.namespace, "command": word, "request": value}
        click.echo(dump({**doc, "handled": handled if wait else None, "status": view}, fmt))
    elif wait and handled and view is not None:
        click.echo(f"handled by the controller: {view['phase']}: {view.get('message') or ''}")
    if wait and not handled:
        click.echo(
            "the order is recorded on the resource, but the controller has not handled it within "
            f"{timeout_s:.0f}s (is it running?)",
            err=True,
        )
        sys.exit(EXIT_UNFINISHED)


def _order_verb(verb: str, doc: str) -> None:
    @rollout.command(verb, help=doc)
    @click.argument("name")
    @order_options
    def command(
        name: str,
        wait: bool,
        timeout: str | None,
        kube: Kube,
        fmt: str,
    ) -> None:
        _order(verb, name, kube, wait, timeout, fmt)


def _examples(*lines: str) -> str:
    """A command's --help example block (click keeps a \b paragraph as written)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


_order_verb(
    "abort",
    "Snap to 100% stable now (recorded as a manual rollback).\n\n"
    + _examples(
        "mesh-canary rollout abort fraud-scorer -n models", "mesh-canary rollout abort fraud-scorer --no-wait"
    ),
)
_order_verb(
    "approve",
    "Open the human gate: let the rollout promote.\n\n"
    + _examples("mesh-canary rollout approve fraud-scorer -n models"),
)
_order_verb(
    "pause",
    "Hold the current weight (checks still run; a failure still rolls back).\n\n"
    + _examples(
        "mesh-canary rollout pause fraud-scorer -n models",
        "mesh-canary rollout resume fraud-scorer -n models",
    ),
)
_order_verb(
    "resume",
    "Release a paused rollout.\n\n" + _examples("mesh-canary rollout resume fraud-scorer -n models"),
)


@rollout.command("promote")
@click.argument("name")
@click.option("--full", is_flag=True, help="Skip the remaining steps (required: the only promotion order).")
@order_options
def rollout_promote(
    name: str,
    full: bool,
    wait: bool,
    timeout: str | None,
    kube: Kube,
    fmt: str,
) -> None:
    """Promote a running rollout now, skipping its remaining steps, pauses and gates.

    Nothing is written by this command: the controller promotes at the rollout's next
    analysis, after judging it. A check that fails in it still rolls back (--full never
    overrides a failed check, and it is refused while a check shows failed); with no data
    it waits for data (missing data is never a pass). If someone moved traffic towards
    stable meanwhile, the rollout stops without writing over them.

    \b
    Examples:
      mesh-canary rollout promote fraud-scorer --full -n models
      mesh-canary rollout promote fraud-scorer --full --no-wait -o json
    """
    if not full:
        raise BadInput(
            "promote needs --full (skip the remaining steps); to let a rollout waiting at its gate "
            f"promote, use `mesh-canary rollout approve {name}`"
        )
    _order("promote-full", name, kube, wait, timeout, fmt)


@rollout.command("retry")
@click.argument("name", required=False)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    help="A `run --state FILE` file: the next `run --state FILE` starts again from step 1.",
)
@order_options
def rollout_retry(
    name: str | None,
    state_path: str | None,
    wait: bool,
    timeout: str | None,
    kube: Kube,
    fmt: str,
) -> None:
    """Restart a RolledBack or Aborted rollout from step 1 (refused in any other phase).

    This command never moves traffic: the controller (or, with --state, the next
    `mesh-canary run`) makes the first write, checks included.

    \b
    Examples:
      mesh-canary rollout retry fraud-scorer -n models
      mesh-canary rollout retry --state st.json && mesh-canary run -f policy.yaml --state st.json
    """
    if state_path is None:
        if not name:
            raise BadInput("give the ModelRollout's NAME, or --state FILE for a `run --state` file")
        _order("retry", name, kube, wait, timeout, fmt)
        return
    from mesh_canary.run.verbs import load_state, retry_state_file

    state_name = load_state(state_path).name
    if name and name != state_name:
        raise BadInput(f"{state_path} holds the rollout {state_name!r}, not {name!r}")
    kept = retry_state_file(state_path)
    if fmt == "text":
        click.echo(
            f"{state_name}: the finished run is kept as {kept}; `mesh-canary run -f POLICY --state {state_path}` "
            "starts it again from step 1"
        )
        return
    doc = {"name": state_name, "namespace": None, "command": "retry", "request": None, "handled": True}
    click.echo(dump({**doc, "status": None, "kept": str(kept)}, fmt))


def state_options(fn: F) -> F:
    """--state FILE and -f POLICY: a `run --state` file instead of the cluster."""
    fn = click.option(
        "-f", "--filename", "policy_path", type=click.Path(), help="With --state: the policy it runs."
    )(fn)
    fn = click.option(
        "--state",
        "state_path",
        type=click.Path(dir_okay=False),
        help="A `mesh-canary run --state FILE` file instead of a ModelRollout in the cluster.",
    )(fn)
    return fn


# --- restore-stable: traffic from the fallback back to stable (core/fallback.py) -----------


@rollout.command("restore-stable")
@click.argument("name", required=False)
@state_options
@order_options
def rollout_restore_stable(
    name: str | None,
    state_path: str | None,
    policy_path: str | None,
    wait: bool,
    timeout: str | None,
    kube: Kube,
    fmt: str,
) -> None:
    """Send traffic from the fallback back to 100% stable (refused when not on the fallback).

    A rollout whose stable broke its limits while the candidate failed holds 100% on the
    fallback until a person says otherwise: mesh-canary itself never moves it back. The
    controller (or, with --state, this command through the policy's route) makes one write
    of 100% stable, recorded and announced (RestoredStable).

    \b
    Examples:
      mesh-canary rollout restore-stable fraud-scorer -n models
      mesh-canary rollout restore-stable --state st.json -f policy.yaml
    """
    if state_path is None:
        if not name:
            raise BadInput("give the ModelRollout's NAME, or --state FILE -f POLICY for a `run --state` file")
        _order("restore-stable", name, kube, wait, timeout, fmt)
        return
    if not policy_path:
        raise BadInput("--state needs -f POLICY: the policy names the route to write")
    from mesh_canary.routing import RouterTarget, router_for_route
    from mesh_canary.run.restore import restore_state_file

    policy = read_policy(policy_path)
    if name and name != policy.name:
        raise BadInput(f"{policy_path} is the policy of {policy.name!r}, not {name!r}")
    router = router_for_route(policy, RouterTarget(api_client=api_client(kube.kubeconfig, kube.context)))
    state = restore_state_file(policy, state_path, router)
    if fmt == "text":
        click.echo(f"{state.name}: traffic is back on stable ({policy.route} holds 100% stable)")
        return
    doc = {"name": state.name, "namespace": policy.namespace, "command": "restore", "request": None}
    click.echo(dump({**doc, "handled": True, "status": None}, fmt))


def _state_object(state_path: str, policy_path: str | None) -> dict[str, Any]:
    """The ModelRollout object of a state file (and the policy it runs, when given)."""
    import time

    import yaml

    from mesh_canary.run.policy_loading import read_policy_file
    from mesh_canary.run.verbs import load_state, resource_from_state

    policy = read_policy(policy_path) if policy_path else None
    spec = (yaml.safe_load(read_policy_file(policy_path)) or {}).get("spec") if policy_path else None
    return resource_from_state(load_state(state_path), policy, spec, now=time.time())


@rollout.command("get")
@click.argument("name", required=False)
@state_options
@kube_options
@output_option
@friendly_errors
def rollout_get(
    name: str | None,
    state_path: str | None,
    policy_path: str | None,
    kube: Kube,
    fmt: str,
) -> None:
    """One rollout: for people, its phase, step, weights, checks and conditions; with
    -o json|yaml the ModelRollout object as kubectl prints it (with --state FILE, the same
    object built from a `run --state` file).

    \b
    Examples:
      mesh-canary rollout get fraud-scorer -n models
      mesh-canary rollout get fraud-scorer -n models -o yaml
      mesh-canary rollout get --state st.json -f policy.yaml -o json
    """
    if state_path:
        obj = _state_object(state_path, policy_path)
        if name and name != obj["metadata"]["name"]:
            raise BadInput(f"{state_path} holds the rollout {obj['metadata']['name']!r}, not {name!r}")
    elif not name:
        raise BadInput("give the ModelRollout's NAME, or --state FILE for a `run --state` file")
    else:
        obj = kube.client().get(name)
    if fmt == "text":
        _print_rollout_text(rollout_view(obj))
    else:
        click.echo(dump(obj, fmt))


def _table_lines(rows: list[dict[str, str]], widths: dict[str, int] | None = None) -> list[str]:
    """kubectl-style columns: each as wide as its widest cell (at least ``widths``)."""
    from mesh_canary.run.verbs import LIST_COLUMNS

    w = {c: max([len(c), *(len(r[c]) for r in rows), (widths or {}).get(c, 0)]) for c in LIST_COLUMNS}
    if widths is not None:
        widths.update(w)
    return ["   ".join(r[c].ljust(w[c]) for c in LIST_COLUMNS).rstrip() for r in rows]


@rollout.command("list")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("-w", "--watch", is_flag=True, help="Then print every change until Ctrl-C.")
@kube_options
@output_option
@friendly_errors
def rollout_list(
    all_namespaces: bool,
    watch: bool,
    kube: Kube,
    fmt: str,
) -> None:
    """Every ModelRollout of the namespace (or -A: all): phase, step, weight, versions, age.
    -o json|yaml: a List of the objects, as kubectl prints it; with --watch, one object per
    change (one JSON document per line).

    \b
    Examples:
      mesh-canary rollout list -n models
      mesh-canary rollout list -A --watch
      mesh-canary rollout list -n models -w -o json | jq -c '.status.phase'
    """
    import time

    from mesh_canary.run.verbs import LIST_COLUMNS, list_row, object_list

    client = kube.client()
    objs = client.list(all_namespaces)
    if fmt != "text" and not watch:
        click.echo(dump(object_list(objs), fmt))
        return
    widths: dict[str, int] = {}
    seen: dict[tuple[str, str], Any] = {}

    def show(items: list[dict[str, Any]]) -> None:
        rows = []
        now = time.time()
        current = set()
        for obj in items:
            meta = obj.get("metadata") or {}
            key = (str(meta.get("namespace")), str(meta.get("name")))
            current.add(key)
            # text: a line when the row changes; json: an object per new resourceVersion (kubectl -w)
            mark = meta.get("resourceVersion") if fmt != "text" else list_row(obj, 0.0)
            if seen.get(key) == mark:
                continue
            seen[key] = mark
            if fmt == "text":
                rows.append(list_row(obj, now))
            else:
                _emit_view(obj, fmt, stream=True)
        for key in set(seen) - current:
            del seen[key]
            if fmt == "text":
                click.echo(f"{key[0]}/{key[1]} deleted")
        if rows:
            header = not widths
            lines = _table_lines([dict(zip(LIST_COLUMNS, LIST_COLUMNS, strict=True)), *rows], widths)
            click.echo("\n".join(lines if header else lines[1:]))

    if not objs and fmt == "text" and not watch:
        click.echo(f"no ModelRollouts in {'any namespace' if all_namespaces else client.namespace}")
        return
    show(objs)
    try:
        while watch:
            time.sleep(1.0)
            show(client.list(all_namespaces))
    except KeyboardInterrupt:
        return  # Ctrl-C ends a watch: not an error


@rollout.command("next")
@click.argument("name", required=False)
@click.option(
    "--candidate", "candidate", required=True, metavar="VERSION", help="The next release's version."
)
@click.option(
    "--metrics-version",
    help="The label value the new candidate's metrics carry (default: the destination's, else VERSION).",
)
@click.option(
    "-f",
    "--filename",
    "policy_path",
    type=click.Path(),
    help="Rewrite this policy file's release (printed; --out writes it) instead of a ModelRollout.",
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), help="With -f: write the new policy here."
)
@kube_options
@output_option
@friendly_errors
def rollout_next(
    name: str | None,
    candidate: str,
    metrics_version: str | None,
    policy_path: str | None,
    out_path: str | None,
    kube: Kube,
    fmt: str,
) -> None:
    """The release after a promotion: the promoted candidate becomes stable and the old
    stable's destination takes the new --candidate version (deploy it there first).

    For a ModelRollout NAME (it must have Succeeded), the new spec is applied and the
    controller starts the next rollout; with -f POLICY the new policy is printed (or
    written to --out) for `run` or `rollout start`. Without this swap, a start whose stable
    is no longer live is refused (exit 2): it would move traffic back to the old model.

    \b
    Examples:
      mesh-canary rollout next fraud-scorer --candidate 1.6.0 -n models
      mesh-canary rollout next -f policy.yaml --candidate 1.6.0 --out policy.yaml
      mesh-canary run -f policy.yaml --state st.json
    """
    import yaml

    from mesh_canary.run.verbs import next_document, next_refusal

    if policy_path:
        from mesh_canary.run.policy_loading import read_policy_file

        read_policy(policy_path)  # every problem of the file first
        doc = next_document(yaml.safe_load(read_policy_file(policy_path)), candidate, metrics_version)
        text = dump(doc, fmt) if fmt != "text" else str(yaml.safe_dump(doc, sort_keys=False))
        if out_path:
            try:
                Path(out_path).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
            except OSError as e:
                fail(f"cannot write {out_path}: {e.strerror}")
        else:
            click.echo(text.rstrip("\n"))
        _say_next(doc, err=not out_path)
        return
    if not name:
        raise BadInput("give the ModelRollout's NAME, or -f POLICY for a policy file")
    client = kube.client()
    obj = client.get(name)
    problem = next_refusal(obj)
    if problem is not None:
        raise BadInput(problem)
    doc = next_document(obj, candidate, metrics_version)
    applied, what = client.apply(doc)
    if fmt != "text":
        click.echo(dump(applied, fmt))
        return
    click.echo(f"{client.ref(name)} {what}")
    _say_next(doc)


def _say_next(doc: dict[str, Any], err: bool = False) -> None:
    spec = doc["spec"]
    where = "{host}{sub}".format(
        host=spec["candidate"]["destination"].get("host"),
        sub=f" subset {spec['candidate']['destination']['subset']}"
        if spec["candidate"]["destination"].get("subset")
        else "",
    )
    click.echo(
        f"next release: stable {spec['stable']['version']}, candidate {spec['candidate']['version']} "
        f"(deploy it behind {where})",
        err=err,
    )


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
    kube: Kube,
    fmt: str,
) -> None:
    """Past rollouts (and the one in progress): versions, outcome, reason, duration; with
    --audit, every decision of one rollout.

    \b
    Examples:
      mesh-canary rollout history fraud-scorer -n models
      mesh-canary rollout history -A -o json
      mesh-canary rollout history fraud-scorer --audit -o json
      mesh-canary rollout history rollout-state.json --audit
    """
    if audit:
        _audit(name, kube, fmt)
        return
    client = kube.client()
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
    "--shards",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Split the rollouts into this many shards (hash of namespace/name), one Lease each "
    "(<lease>-shard-<i>); this process reconciles the shards whose Lease it holds (0: no sharding).",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With --shards: how many controller processes are expected; each takes at most "
    "ceil(shards / replicas) while the others live, and more only when a shard is left without one.",
)
@click.option(
    "--lease-duration",
    default="15s",
    show_default=True,
    help="How long a Lease holds without renewal (another process takes it over after this).",
)
@click.option(
    "--renew-deadline",
    default="10s",
    show_default=True,
    help="A holder that could not renew for this long stops reconciling (below --lease-duration).",
)
@click.option(
    "--retry-period", default="2s", show_default=True, help="How often each Lease is renewed or tried."
)
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
    "--allow-registry",
    "allowed_registries",
    multiple=True,
    metavar="URL",
    help="A model registry (MLflow tracking URI) that spec.registry.trackingUri may name (repeat; default: none). "
    "Credentials may be in the URL here, never in the spec.",
)
@click.option(
    "--registry-token-env",
    metavar="NAME",
    help="Environment variable holding the bearer token sent to an --allow-registry registry "
    "(set it from a Secret); never logged.",
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
    "--dashboard-address",
    "dashboard_addr",
    metavar="HOST:PORT",
    help="Also serve the live dashboard of the watched ModelRollouts here (:PORT: on --bind-address).",
)
@click.option(
    "--dashboard-allow-writes",
    is_flag=True,
    help="Offer the dashboard's pause/resume/approve/abort buttons (without it every order answers 403).",
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
    shards: int,
    replicas: int,
    lease_duration: str,
    renew_deadline: str,
    retry_period: str,
    metrics_addr: str,
    bind_address: str,
    prometheus_url: str | None,
    allowed_metrics: tuple[str, ...],
    allowed_registries: tuple[str, ...],
    registry_token_env: str | None,
    allow_cross_namespace: bool,
    workers: int,
    max_workers: int | None,
    slow_after: str,
    stuck_after: str,
    dashboard_addr: str | None,
    dashboard_allow_writes: bool,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    """The long-running in-cluster controller: reconciles every ModelRollout (stop: SIGTERM).

    \b
    Examples:
      mesh-canary controller --namespace models --leader-elect --metrics-addr :8080 --bind-address 0.0.0.0
      mesh-canary controller --shards 6 --replicas 3 --metrics-addr :8080 --bind-address 0.0.0.0
      mesh-canary controller --kubeconfig ~/.kube/config --dashboard-address 127.0.0.1:8081
    """
    from mesh_canary.controller import Controller, ControllerSettings, MetricsAddress, parse_addr
    from mesh_canary.controller.admission import registry_address

    debug = _debug()
    setup_logging(logging.DEBUG if debug else logging.INFO, json_lines=True)
    try:
        parse_addr(metrics_addr, bind_address)
        if dashboard_addr is not None:
            parse_addr(dashboard_addr, bind_address, "--dashboard-address")
        elif dashboard_allow_writes:
            raise ValueError(
                "--dashboard-allow-writes needs --dashboard-address (where to serve the dashboard)"
            )
        for url in (prometheus_url, *allowed_metrics):
            if url is not None:
                MetricsAddress.parse(url)  # also registers its password as a secret
        for url in allowed_registries:
            registry_address(url)  # also registers its password as a secret
        if registry_token_env is not None and not os.environ.get(registry_token_env):
            raise ValueError(f"--registry-token-env names {registry_token_env}, which is not set")
        slow_s, stuck_s = parse_duration(slow_after), parse_duration(stuck_after)
        lease_s, renew_s, retry_s = (
            parse_duration(d) for d in (lease_duration, renew_deadline, retry_period)
        )
        if not (lease_s >= 2 and lease_s == int(lease_s) and lease_s > renew_s > retry_s > 0):
            raise ValueError(
                "the Leases need whole seconds (2 or more) for --lease-duration, and "
                "--lease-duration > --renew-deadline > --retry-period > 0"
            )
    except ValueError as e:
        raise BadInput(str(e)) from e
    for ns in (n.strip() for group in namespaces for n in group.split(",")):
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", ns):
            raise BadInput(f"--namespace {ns!r} is not a Kubernetes namespace name")
    if not 0 < slow_s < stuck_s:
        raise BadInput(f"--slow-after ({slow_after}) must be above 0 and below --stuck-after ({stuck_after})")
    if max_workers is not None and max_workers < workers:
        raise BadInput(f"--max-workers ({max_workers}) must be at least --workers ({workers})")
    try:
        settings = ControllerSettings(
            namespaces=namespaces,
            prometheus_url=prometheus_url,
            allowed_metrics_addresses=allowed_metrics,
            allowed_registries=allowed_registries,
            registry_token_env=registry_token_env,
            allow_cross_namespace=allow_cross_namespace,
            workers=workers,
            max_workers=max_workers,
            slow_after_s=slow_s,
            stuck_after_s=stuck_s,
            metrics_addr=metrics_addr,
            bind_address=bind_address,
            leader_elect=leader_elect,
            lease_namespace=lease_namespace,
            shards=shards,
            replicas=replicas,
            lease_duration_s=int(lease_s),
            renew_deadline_s=renew_s,
            retry_period_s=retry_s,
            dashboard_addr=dashboard_addr,
            dashboard_allow_writes=dashboard_allow_writes,
        )
    except ValueError as e:
        raise BadInput(str(e)) from e
    client = api_client(kubeconfig, kube_context)
    # Which process wrote what, in the API server's audit log (and the tests' stand-in).
    client.user_agent = f"mesh-canary-controller/{settings.identity}"
    Controller(client, settings).run()


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
    kube: Kube,
) -> None:
    """A self-contained HTML page about one rollout: weights and per-version metrics over time,
    each decision marked with its reason.

    NAME|STATEFILE is a state file (`mesh-canary run --state FILE`, or a ModelRollout saved
    with `kubectl get -o yaml`) when such a file exists, else a ModelRollout in the cluster.

    \b
    Examples:
      mesh-canary report fraud-scorer -n models --out fraud-scorer.html
      mesh-canary report st.json -f policy.yaml --out report.html
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
                client = kube.client()
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


def _audit(name: str | None, kube: Kube, fmt: str) -> None:
    """`rollout history NAME --audit`: from a state file when NAME is one, else the cluster."""
    from mesh_canary.present.audit import audit_documents, audit_entries, audit_json_lines, audit_text

    if not name:
        raise BadInput("--audit needs NAME: a ModelRollout or a `mesh-canary run --state` file")
    path = Path(name)
    if path.is_file():
        doc = _read_report_input(path)
    elif path.suffix in (".json", ".yaml", ".yml") or "/" in name:
        raise BadInput(f"no state file {name}")
    else:
        doc = kube.client().get(name)
    entries, dropped = audit_entries(doc)
    if fmt == "json":
        click.echo(audit_json_lines(entries))
    elif fmt == "yaml":
        click.echo(dump(audit_documents(entries), fmt))
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
    kube: Kube,
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
    if not state_paths or kube.namespace or all_namespaces:
        sources.append(ModelRollouts(kube.kubeconfig, kube.context, kube.namespace, all_namespaces))
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


# --------------------------------------------------------------------------- the collector
@main.group()
def collector() -> None:
    """The prediction-label collector: accuracy from labels for any model server (docs/collector.md).

    \b
    Examples:
      mesh-canary collector serve --address 0.0.0.0:8080 --db /data/collector.sqlite
      mesh-canary collector import-labels labels.csv --url http://collector.models:8080
    """


@collector.command("serve")
@click.option(
    "--address", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on (port 0: any)."
)
@click.option(
    "--db", "db_path", default="collector.sqlite", show_default=True, help="The sqlite file (WAL mode)."
)
@click.option("--retention", default="7d", show_default=True, help="Keep predictions and labels this long.")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=1 << 20, show_default=True)
@click.option("--request-timeout", default="10s", show_default=True, help="Deadline of one request.")
@click.option("--max-connections", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--max-versions", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-classes", type=click.IntRange(min=2), default=256, show_default=True)
@friendly_errors
def collector_serve(
    address: str,
    db_path: str,
    retention: str,
    max_body_bytes: int,
    request_timeout: str,
    max_connections: int,
    max_versions: int,
    max_classes: int,
) -> None:
    """Receive predictions and labels, join them, serve /metrics (until SIGTERM or Ctrl-C).

    \b
    Examples:
      mesh-canary collector serve --address 0.0.0.0:8080 --db /data/collector.sqlite --retention 7d
      mesh-canary collector serve --address 127.0.0.1:0
    """
    from mesh_canary.collector.run import serve_address

    sys.exit(
        serve_address(
            address,
            db_path,
            retention,
            request_timeout,
            max_body_bytes,
            max_connections,
            max_versions,
            max_classes,
        )
    )


@collector.command("import-labels")
@click.argument("file", type=click.Path())
@click.option("--url", required=True, help="The collector, e.g. http://collector.models:8080")
@click.option("--id-column", default="id", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--batch", type=click.IntRange(min=1, max=100_000), default=1000, show_default=True)
@output_option
@friendly_errors
def collector_import_labels(
    file: str, url: str, id_column: str, label_column: str, batch: int, fmt: str
) -> None:
    """Send labels from a warehouse export (CSV with a header row, or JSON Lines) to a collector.
    The whole file is checked first: a bad row stops it before anything is sent (exit 2).

    \b
    Examples:
      mesh-canary collector import-labels labels.csv --url http://collector.models:8080
      mesh-canary collector import-labels export.jsonl --url http://127.0.0.1:8080 --id-column request_id -o json
    """
    from mesh_canary.collector.importer import import_labels

    result = import_labels(Path(file), url, id_column, label_column, batch)
    report = {"labels": result.labels, **result.outcome}
    click.echo(dump(report, fmt) if fmt != "text" else " ".join(f"{k}={v}" for k, v in report.items()))


# --------------------------------------------------------------------------- on-call


@rollout.command("ack")
@click.argument("name")
@click.option(
    "-f",
    "--filename",
    "policy_path",
    type=click.Path(),
    help="The rollout's policy file (a standalone `run`); default: the ModelRollout in the cluster.",
)
@click.option("--message", "note", default="", help="Why, in a few words (shown with the acknowledgement).")
@kube_options
@output_option
@friendly_errors
def rollout_ack(
    name: str,
    policy_path: str | None,
    note: str,
    kube: Kube,
    fmt: str,
) -> None:
    """A person acknowledges NAME's rollback: its PagerDuty page is resolved, and every
    notification target that takes `Acknowledged` hears it.

    Exit codes: 0 every receiver took it, 1 one could not be reached, 2 no target of the
    rollout takes `Acknowledged` (nothing was sent).

    \b
    Examples:
      mesh-canary rollout ack fraud-scorer -n models --message "looking into it"
      mesh-canary rollout ack fraud-scorer -f policy.yaml -o json
    """
    import getpass

    from mesh_canary.core.policy import load_policy, resource_document
    from mesh_canary.kube.rollouts import read_secret_key
    from mesh_canary.notify import acknowledge

    read_secret = None
    if policy_path is not None:
        policy = read_policy(policy_path)
        if policy.name != name:
            raise BadInput(f"{policy_path} is the policy of {policy.name!r}, not {name!r}")
        if kube.namespace and kube.namespace != policy.namespace:
            raise BadInput(f"{policy_path} is in namespace {policy.namespace!r}, not {kube.namespace!r}")
    else:
        policy = load_policy(resource_document(kube.client().get(name)))
        read_secret = functools.partial(
            read_secret_key, api_client(kube.kubeconfig, kube.context), policy.namespace
        )
    try:
        who = getpass.getuser()
    except Exception:  # no user name in this environment (a bare container)
        who = "a person"
    message = f"acknowledged by {who}" + (f": {note}" if note else "")
    sent = acknowledge(policy.notifications, name, policy.namespace, message, read_secret)
    if not sent:
        raise BadInput(f"no notification target of {name} takes Acknowledged (a pagerduty target does)")
    if fmt == "text":
        for receiver, outcome in sent.items():
            click.echo(f"{policy.namespace}/{name}: {receiver}: {outcome}", err=outcome != "sent")
    else:
        click.echo(
            dump(
                {"name": name, "namespace": policy.namespace, "event": "Acknowledged", "receivers": sent}, fmt
            )
        )
    if any(outcome != "sent" for outcome in sent.values()):
        sys.exit(EXIT_FAILURE)
