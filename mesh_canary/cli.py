"""`mesh-canary`: a thin click layer over the library. Exit codes as in docs/cli.md:
0 success, 1 could not do the work, 2 bad input, 3 rolled back, 4 did not finish."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mesh_canary.core.durations import parse_duration
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import PolicyError, load_policy_text, validate_text
from mesh_canary.logs import setup_logging
from mesh_canary.runner import EXIT_BAD_INPUT, EXIT_FAILURE

F = TypeVar("F", bound=Callable[..., Any])

output_option = click.option(
    "-o", "--output", "fmt", type=click.Choice(["text", "json", "yaml"]), default="text", show_default=True
)


class BadInput(Exception):
    """Invalid policy, scenario or arguments: exit 2, nothing changed."""


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def friendly_errors(fn: F) -> F:
    """One clear sentence on stderr instead of a traceback (unless --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PolicyError as e:
            for p in e.problems:
                click.echo(str(p), err=True)
            sys.exit(EXIT_BAD_INPUT)
        except BadInput as e:
            fail(str(e), EXIT_BAD_INPUT)
        except (SystemExit, KeyboardInterrupt, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as e:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            fail(f"{e} (run with --debug for details)")

    return wrapper  # type: ignore[return-value]


def read_policy(path: str) -> Policy:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BadInput(f"cannot read policy {path}: {e.strerror}") from e
    return load_policy_text(text, source=path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", help="Log line format.")
@click.version_option(package_name="mesh-canary")
def main(debug: bool, log_format: str) -> None:
    """Safe canary and blue/green rollouts of ML model services behind a service mesh."""
    setup_logging(logging.DEBUG if debug else logging.WARNING, json_lines=log_format == "json")


@main.command()
@click.argument("policies", nargs=-1, required=True, type=click.Path())
@output_option
@friendly_errors
def validate(policies: tuple[str, ...], fmt: str) -> None:
    """Check policies against the schema and the rules; print every problem with its path."""
    results: list[dict[str, Any]] = []
    for path in policies:
        try:
            text = Path(path).read_text()
        except OSError as e:
            results.append(
                {
                    "file": path,
                    "valid": False,
                    "problems": [{"path": "", "message": f"cannot read: {e.strerror}"}],
                }
            )
            continue
        problems = validate_text(text, source=path)
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
        from mesh_canary.output import dump

        docs = [{k: v for k, v in r.items() if k != "text"} for r in results]
        click.echo(dump(docs if len(docs) > 1 else docs[0], fmt))
    if not all(r["valid"] for r in results):
        sys.exit(EXIT_BAD_INPUT)


@main.command()
@click.option("-f", "--filename", "policy_path", required=True, type=click.Path(), help="Policy YAML.")
@click.option("--backend", type=click.Choice(["istio", "local"]), default="istio", show_default=True)
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
    backend: str,
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
    from mesh_canary import drivers

    policy = read_policy(policy_path)
    timeout_s = _duration_arg("--timeout", timeout)
    result = drivers.run_policy(
        policy,
        backend=backend,
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


def _print_result(policy: Policy, result: Any, fmt: str) -> None:
    from mesh_canary.output import dump, render_state, rollout_document

    if fmt == "text":
        from rich.console import Console

        Console().print(render_state(policy, result.state))
        click.echo(f"outcome: {result.outcome}")
    else:
        click.echo(dump(rollout_document(policy, result.state, result.outcome), fmt))


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
    from mesh_canary.adapters.synthetic import ScenarioError, load_scenario_text
    from mesh_canary.simulate import simulate_rollout

    policy = read_policy(policy_path)
    try:
        text = Path(scenario_path).read_text()
    except OSError as e:
        raise BadInput(f"cannot read scenario {scenario_path}: {e.strerror}") from e
    try:
        scenario = load_scenario_text(text, source=scenario_path)
    except ScenarioError as e:
        for path, message in e.problems:
            click.echo(
                f"{scenario_path}: {path}: {message}" if path else f"{scenario_path}: {message}", err=True
            )
        sys.exit(EXIT_BAD_INPUT)
    results = []
    for i in range(runs):
        r = simulate_rollout(policy, scenario, seed=seed + i)
        results.append(r)
        if fmt == "json":
            click.echo(json.dumps(r) if runs > 1 else json.dumps(r, indent=2))
        elif fmt == "yaml":
            from mesh_canary.output import dump

            click.echo(dump(r, "yaml") + ("---" if i < runs - 1 else ""))
    if fmt == "text":
        _print_simulation_text(results)
    if runs == 1:
        sys.exit({"promoted": 0, "rolled_back": 3}.get(results[0]["outcome"], 4))


def _print_simulation_text(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="simulated rollouts")
    for col in ("seed", "outcome", "decided", "candidate requests", "errors", "wrong", "reason"):
        t.add_column(col)
    for r in results:
        t.add_row(
            str(r["seed"]),
            r["outcome"],
            f"{r['decidedAtS']:.0f}s",
            str(r["candidateRequests"]),
            str(r["candidateErrors"]),
            str(r["candidateWrong"]),
            r["reason"][:80],
        )
    Console().print(t)
    if len(results) > 1:
        from collections import Counter

        counts = Counter(r["outcome"] for r in results)
        click.echo(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


@main.command()
@click.option("--rps", type=float, default=100.0, show_default=True, help="Load generator rate.")
@output_option
@friendly_errors
def demo(rps: float, fmt: str) -> None:
    """The whole loop on the embedded local mesh: a healthy candidate promoted, a degraded one
    rolled back (about two minutes)."""
    from mesh_canary.demo import run_demo

    report = run_demo(rps=rps, live=fmt == "text")
    if fmt != "text":
        from mesh_canary.output import dump

        click.echo(dump(report, fmt))
    sys.exit(0 if report["ok"] else EXIT_FAILURE)


def install_interrupt_handler(on_interrupt: Callable[[], None]) -> None:
    """First Ctrl-C / SIGTERM: roll back to stable (safety first); second: exit now."""
    state = {"count": 0}

    def handler(signum: int, frame: object) -> None:
        state["count"] += 1
        if state["count"] > 1:
            raise KeyboardInterrupt
        click.echo("interrupted: rolling back to 100% stable (press Ctrl-C again to quit at once)", err=True)
        on_interrupt()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
