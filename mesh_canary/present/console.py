"""How results are shown to people: tables and a live display. The JSON/YAML documents for
scripts are the one rollout view of :mod:`mesh_canary.present.view`."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mesh_canary.core.engine import RolloutState, schedule
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import CheckResult
from mesh_canary.present import numbers

_VERDICT_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}


def checks_table(checks: tuple[CheckResult, ...] | list[CheckResult]) -> Table:
    """One row per check: its verdict and the sentence that says why (values, bounds, tolerance)."""
    t = Table(box=None, pad_edge=False, show_edge=False, expand=True)
    t.add_column("check", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    t.add_column("n", justify="right", no_wrap=True)
    t.add_column("why", ratio=1)
    for c in checks:
        t.add_row(
            c.name,
            Text(c.verdict.value, style=_VERDICT_STYLE.get(c.verdict.value, "")),
            numbers.count(c.samples),  # the one readable-number module
            c.reason + (f"; not ruled out: {c.not_ruled_out}" if c.not_ruled_out else ""),
        )
    return t


def headline(policy: Policy, state: RolloutState, now: float | None = None) -> Text:
    sched = schedule(policy)
    w = state.weights
    elapsed = "" if now is None else f"  step time {now - state.step_started_at:.0f}s"
    mirror = f" (+{w.mirror_percent}% mirrored)" if w.mirror_percent else ""
    return Text.assemble(
        (f"{state.name} ", "bold"),
        f"{policy.stable.version} -> {policy.candidate.version}  ",
        (f"{state.phase.value}", "bold cyan"),
        f"  step {state.step_index + 1}/{len(sched)}  weights stable {w.stable}% / candidate {w.candidate}%{mirror}",
        elapsed,
    )


def render_state(policy: Policy, state: RolloutState, now: float | None = None) -> Group:
    parts: list[Any] = [headline(policy, state, now)]
    if state.checks:
        parts.append(checks_table(state.checks))
    if state.reason and state.terminal:
        style = "green" if state.phase.value == "Succeeded" else "bold red"
        parts.append(Text(f"{state.phase.value}: {state.reason}", style=style))
    return Group(*parts)


class LiveProgress:
    """A live display of the rollout for a terminal; plain lines when not a terminal."""

    def __init__(self, policy: Policy, console: Console | None = None, enabled: bool = True) -> None:
        self.policy = policy
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._last_line = ""

    def __enter__(self) -> LiveProgress:
        if self.enabled and self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, state: RolloutState, observation: Observation | None) -> None:
        if not self.enabled:
            return
        now = observation.at if observation is not None else None
        if self._live is not None:
            self._live.update(render_state(self.policy, state, now))
            return
        # Not a terminal (CI logs): one line per change of step or phase, plus verdicts.
        verdicts = " ".join(f"{c.name}={c.verdict.value}" for c in state.checks)
        line = f"{headline(self.policy, state).plain}  {verdicts}"
        if line != self._last_line:
            self.console.print(line, highlight=False)
            self._last_line = line
