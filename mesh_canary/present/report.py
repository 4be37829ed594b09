"""`mesh-canary report`: one self-contained HTML page about one rollout.

Pure rendering: a saved engine state (the ``--state`` file of `mesh-canary run`, or
``status.rollout`` of a ModelRollout), optionally with the policy and the resource's
status, becomes one HTML string with no external CSS, scripts or fonts. The page shows
the candidate's weight over time with each step's verdict and the final decision with its
reason (an inline SVG), the per-version counts of every completed step's window, the
latest verdict of every check, and, for a ModelRollout, its conditions and history.

Every string from the state, the policy or the status goes through `html.escape`: check
reasons and names come from the cluster and may hold anything.
"""

from __future__ import annotations

import datetime
import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh_canary.core.durations import format_duration
from mesh_canary.core.engine import Phase, RolloutState, StepRecord, policy_fingerprint, schedule
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.policy import PolicyError, load_policy, resource_document
from mesh_canary.errors import BadInput
from mesh_canary.kube.names import API_VERSION, KIND

__all__ = [
    "ReportError",
    "default_report_name",
    "policy_of_resource",
    "render_report",
    "render_resource_report",
]


_NONE = "\N{EN DASH}"  # shown for a missing value


class ReportError(BadInput, ValueError):
    """The input does not hold a rollout state that can be shown."""


# --------------------------------------------------------------------------- entry points


def default_report_name(name: str) -> str:
    """The default file name of a rollout's page: ``NAME-report.html``, one plain file name.

    The name comes from a file or the cluster and may hold anything (``../../evil``,
    ``a/b``, a NUL): every run of characters other than letters, digits, ``.``, ``_`` and
    ``-`` becomes one ``_``, and leading dots, dashes and underscores go, so the page lands
    in the directory it was asked for and is never a hidden file or read as an option.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._-")[:200]
    return f"{safe or 'rollout'}-report.html"


def render_report(
    state: Mapping[str, Any],
    *,
    policy: Policy | None = None,
    status: Mapping[str, Any] | None = None,
    source: str = "",
    generated_at: float | None = None,
) -> str:
    """The page for one rollout.

    ``state``: `RolloutState.to_dict()` (nulls may be missing, as in a status). ``policy``:
    the policy the rollout ran (versions, schedule, tolerances). ``status``: the
    ModelRollout's status (versions, conditions, history). ``source``: where the state
    came from, shown in the footer. ``generated_at``: epoch seconds shown as the page's
    time (the renderer has no clock).
    """
    try:
        parsed = RolloutState.from_dict(dict(state))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ReportError(f"not a readable rollout state ({type(e).__name__}: {e})") from e
    return _Page(parsed, policy, dict(status or {}), source, generated_at).render()


def render_resource_report(
    obj: Mapping[str, Any], *, source: str = "", generated_at: float | None = None
) -> str:
    """The page for a ModelRollout read from the API (its ``status.rollout`` and spec)."""
    meta = _mapping(obj.get("metadata"))
    status = _mapping(obj.get("status"))
    name = f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
    state = status.get("rollout")
    if not isinstance(state, Mapping):
        phase = status.get("phase") or "Pending"
        raise ReportError(f"ModelRollout {name} has no rollout recorded in its status yet (phase {phase})")
    return render_report(
        state,
        policy=policy_of_resource(obj, str(state.get("policyFingerprint") or "")),
        status=status,
        source=source or f"ModelRollout {name}",
        generated_at=generated_at,
    )


def policy_of_resource(obj: Mapping[str, Any], fingerprint: str = "") -> Policy | None:
    """The policy of the rollout recorded in a ModelRollout's status.

    The spec may have changed since (an edit not yet reconciled, an invalid edit): the
    spec the controller applied (``status.appliedSpec``) is tried too, and only a policy
    whose fingerprint matches the recorded rollout is used.
    """
    specs = [obj.get("spec"), _mapping(obj.get("status")).get("appliedSpec")]
    found: Policy | None = None
    for spec in specs:
        if not isinstance(spec, Mapping):
            continue
        doc = resource_document({**obj, "spec": spec})
        doc.setdefault("apiVersion", API_VERSION)
        doc.setdefault("kind", KIND)
        try:
            policy = load_policy(doc)
        except PolicyError:
            continue
        if not fingerprint or policy_fingerprint(policy) == fingerprint:
            return policy
        found = found or policy
    return None if fingerprint else found


# --------------------------------------------------------------------------- formatting helpers


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return _NONE
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) < 1e12:
        return f"{int(x)}"
    return f"{x:.{digits}g}"


def _pct(x: float | None, digits: int = 2) -> str:
    return _NONE if x is None else f"{x * 100:.{digits}f}%"


def _when(t: float) -> str:
    """A time of the driver's clock: UTC for wall-clock times, else seconds (virtual time)."""
    if t > 1e9:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"t={_num(t)}s"


def _dur(seconds: float | None) -> str:
    return _NONE if seconds is None else format_duration(max(seconds, 0.0))


def histogram_quantile(q: float, h: Histogram) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket holding the q-th observation."""
    total = h.total
    if total <= 0 or not h.bounds:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(h.bounds, h.counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bound: the best known lower bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


@dataclass(frozen=True)
class _Rates:
    requests: float
    errors: float
    error_rate: float | None
    labeled: float
    accuracy: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, c: VersionCounts) -> _Rates:
        return cls(
            requests=c.requests,
            errors=c.errors,
            error_rate=c.errors / c.requests if c.requests > 0 else None,
            labeled=c.labeled,
            accuracy=c.correct / c.labeled if c.labeled > 0 else None,
            p99_ms=histogram_quantile(0.99, c.latency_ms) if c.latency_ms is not None else None,
        )


# --------------------------------------------------------------------------- the page

_CSS = """
:root { --pass: #1a7f37; --fail: #cf222e; --open: #9a6700; --stable: #0969da; --cand: #bc4c00;
        --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       margin: 0 auto; max-width: 1100px; padding: 24px; line-height: 1.45; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.sub { color: var(--muted); margin: 0 0 16px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
.decision { border-left: 4px solid var(--muted); background: #f6f8fa; padding: 10px 14px; margin: 16px 0; }
.decision.pass { border-color: var(--pass); }
.decision.fail { border-color: var(--fail); }
.decision.open { border-color: var(--open); }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 0.85em; font-weight: 600;
         color: #fff; background: var(--muted); }
.badge.pass { background: var(--pass); }
.badge.fail { background: var(--fail); }
.badge.open, .badge.inconclusive { background: var(--open); }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin: 8px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.why { max-width: 480px; }
.note { color: var(--muted); font-size: 0.9em; }
svg { display: block; max-width: 100%; height: auto; font-size: 11px; }
svg .grid { stroke: #eaeef2; }
svg .axis { stroke: #8c959f; }
svg .tick { fill: var(--muted); }
svg .step.pass { stroke: var(--pass); }
svg .step.fail { stroke: var(--fail); }
svg .step.open { stroke: var(--open); }
svg .jump { stroke: #8c959f; stroke-dasharray: 2 2; }
svg .drop { stroke: #8c959f; stroke-dasharray: 2 2; }
svg .mark.pass { fill: var(--pass); }
svg .mark.fail { fill: var(--fail); }
svg .mark.open { fill: var(--open); }
svg .decide { stroke-dasharray: 4 3; }
svg .decide.pass { stroke: var(--pass); }
svg .decide.fail { stroke: var(--fail); }
svg text.pass { fill: var(--pass); font-weight: 600; }
svg text.fail { fill: var(--fail); font-weight: 600; }
svg .stable { stroke: var(--stable); fill: var(--stable); }
svg .candidate { stroke: var(--cand); fill: var(--cand); }
.legend span { margin-right: 16px; }
.legend i { display: inline-block; width: 18px; height: 3px; vertical-align: middle; margin-right: 4px; }
footer { color: var(--muted); font-size: 0.85em; margin-top: 32px; border-top: 1px solid var(--line);
         padding-top: 8px; }
"""

_VERDICT_CLASS = {"pass": "pass", "fail": "fail"}
_OUTCOME = {
    Phase.SUCCEEDED: ("promoted", "pass"),
    Phase.ROLLED_BACK: ("rolled back", "fail"),
    Phase.PROGRESSING: ("in progress", "open"),
    Phase.PAUSED: ("paused", "open"),
    Phase.WAITING_FOR_APPROVAL: ("waiting for approval", "open"),
}

# The weight chart's geometry (SVG user units).
_W, _H = 900, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 52, 20, 30, 40


@dataclass(frozen=True)
class _StepView:
    index: int
    record: StepRecord
    start: float  # seconds since the rollout started
    end: float
    verdict: str  # pass | fail | open
    window: Observation | None


class _Page:
    def __init__(
        self,
        state: RolloutState,
        policy: Policy | None,
        status: dict[str, Any],
        source: str,
        generated_at: float | None,
    ) -> None:
        self.state = state
        self.policy = policy
        self.status = status
        self.source = source
        self.generated_at = generated_at
        self.stable_version = (
            policy.stable.version if policy else str(status.get("stableVersion") or "stable")
        )
        self.candidate_version = (
            policy.candidate.version if policy else str(status.get("candidateVersion") or "candidate")
        )
        self.steps = self._step_views()
        ends = [s.end for s in self.steps]
        if state.finished_at is not None:
            ends.append(state.finished_at - state.started_at)
        if state.last_tick_at is not None:
            ends.append(state.last_tick_at - state.started_at)
        # A little room after a decision shows where the traffic went.
        self.span = max([*ends, 1.0]) * (1.06 if state.terminal else 1.0)

    # -- data ------------------------------------------------------------------------------

    def _step_views(self) -> list[_StepView]:
        st = self.state
        windows = [w for _, w in st.earlier_windows]
        if st.stable_baseline is not None:
            windows.append(st.stable_baseline)  # blueGreen: the preview window
        now = (st.finished_at if st.finished_at is not None else st.last_tick_at) or st.step_started_at
        views: list[_StepView] = []
        for i, rec in enumerate(st.steps):
            end = rec.end_s if rec.end_s is not None else max(now - st.started_at, rec.start_s)
            verdict = _VERDICT_CLASS.get(rec.verdict or "", "open")
            # A step's window starts with the step (the engine reads from step start).
            match = next((w for w in windows if abs((w.since - st.started_at) - rec.start_s) < 0.5), None)
            views.append(
                _StepView(
                    index=i,
                    record=rec,
                    start=rec.start_s,
                    end=end,
                    verdict=verdict,
                    window=match,
                )
            )
        return views

    def _outcome(self) -> tuple[str, str]:
        return _OUTCOME.get(self.state.phase, (self.state.phase.value, "open"))

    # -- sections ----------------------------------------------------------------------------

    def render(self) -> str:
        st = self.state
        title = f"Rollout {st.name}: {self.stable_version} → {self.candidate_version}"
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>{esc(title)}</h1>",
            f'<p class="sub">{esc(st.strategy)} rollout · phase {esc(st.phase.value)}'
            f" · {esc(len(st.steps))} step(s) · {esc(st.ticks)} analyses</p>",
            self._decision(),
            self._facts(),
            "<h2>Candidate weight over time</h2>",
            self._weight_chart(),
            self._metric_charts(),
            "<h2>Steps</h2>",
            self._steps_table(),
            "<h2>Latest verdict of every check</h2>",
            self._checks_table(),
            self._conditions(),
            self._history(),
            self._footer(),
            "</body>",
            "</html>",
        ]
        return "\n".join(p for p in parts if p) + "\n"

    def _decision(self) -> str:
        st = self.state
        word, cls = self._outcome()
        lines = [f'<div class="decision {cls}">', f'<p><span class="badge {cls}">{esc(word)}</span> ']
        if st.terminal:
            at = _dur((st.finished_at or st.started_at) - st.started_at)
            lines.append(f"after {esc(at)}: {esc(st.reason or 'no reason recorded')}</p>")
        else:
            where = f"step {st.step_index + 1} at {st.weights.candidate}% of traffic"
            if st.weights.mirror_percent:
                where += f" (mirroring {st.weights.mirror_percent}%)"
            lines.append(f"{esc(where)}</p>")
        if st.failed_checks:
            names = ", ".join(st.failed_checks)
            lines.append(f"<p>failed: {esc(names)}</p>")
        lines.append("</div>")
        return "\n".join(lines)

    def _facts(self) -> str:
        st = self.state
        rows: list[tuple[str, str]] = [
            ("stable", self.stable_version),
            ("candidate", self.candidate_version),
        ]
        if self.policy is not None:
            if st.policy_fingerprint and policy_fingerprint(self.policy) != st.policy_fingerprint:
                rows.append(("warning", "the policy given is not the one this rollout ran (another spec)"))
            sched = schedule(self.policy)
            plan = " → ".join(f"{w}%" for w in sched)
            if self.policy.strategy == "blueGreen":
                plan = f"preview mirroring {self.policy.blue_green.mirror_percent}%, then switch to 100%"
            rows.append(("plan", plan))
            a = self.policy.analysis
            rows.append(
                (
                    "analysis",
                    f"every {_dur(a.interval_s)}, confidence {_num(a.confidence)}, "
                    f"{a.min_requests} requests per version before a relative verdict",
                )
            )
            if self.policy.namespace:
                rows.append(("namespace", self.policy.namespace))
        rows.append(("started", _when(st.started_at)))
        if st.finished_at is not None:
            rows.append(("finished", _when(st.finished_at)))
            rows.append(("duration", _dur(st.finished_at - st.started_at)))
        elif st.last_tick_at is not None:
            rows.append(("last analysis", _when(st.last_tick_at)))
        w = st.weights
        weights = f"stable {w.stable}% / candidate {w.candidate}%"
        if w.fallback:
            weights += f" / fallback {w.fallback}%"
        if w.mirror_percent:
            weights += f" (+{w.mirror_percent}% mirrored)"
        rows.append(("weights now", weights))
        if st.approved:
            rows.append(("approval", "approved by a person"))
        body = "\n".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
        return f'<dl class="facts">\n{body}\n</dl>'

    # -- the weight chart ----------------------------------------------------------------------

    def _x(self, t: float) -> float:
        return _LEFT + (_W - _LEFT - _RIGHT) * min(max(t, 0.0), self.span) / self.span

    @staticmethod
    def _y(weight: float) -> float:
        return _TOP + (_H - _TOP - _BOTTOM) * (1.0 - weight / 100.0)

    def _time_axis(self, height: float, bottom: float) -> list[str]:
        out: list[str] = []
        for t in _time_ticks(self.span / 1.06 if self.state.terminal else self.span):
            x = self._x(t)
            out.append(f'<line class="grid" x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{height - bottom}"/>')
            out.append(
                f'<text class="tick" x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                f"{esc(_dur(t))}</text>"
            )
        out.append(
            f'<line class="axis" x1="{_LEFT}" y1="{height - bottom}" x2="{_W - _RIGHT}" y2="{height - bottom}"/>'
        )
        out.append(
            f'<text class="tick" x="{_W - _RIGHT}" y="{height - 4}" text-anchor="end">time since start</text>'
        )
        return out

    def _weight_chart(self) -> str:
        st = self.state
        svg = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
            f'role="img" aria-label="{esc("candidate weight over time")}">',
        ]
        for w in (0, 25, 50, 75, 100):
            y = self._y(w)
            svg.append(f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{_W - _RIGHT}" y2="{y:.1f}"/>')
            svg.append(f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{w}%</text>')
        svg += self._time_axis(_H, _BOTTOM)
        svg.append(f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_H - _BOTTOM}"/>')
        prev: _StepView | None = None
        for s in self.steps:
            weight = s.record.weight
            x0, x1, y = self._x(s.start), self._x(s.end), self._y(weight)
            if prev is not None:
                svg.append(
                    f'<line class="jump" x1="{x0:.1f}" y1="{self._y(prev.record.weight):.1f}" '
                    f'x2="{x0:.1f}" y2="{y:.1f}"/>'
                )
            tip = (
                f"step {s.index + 1} at {weight}%: {s.record.verdict or 'running'} "
                f"({_dur(s.start)} to {_dur(s.end)})"
            )
            svg.append(
                f'<line class="step {s.verdict}" x1="{x0:.1f}" y1="{y:.1f}" x2="{max(x1, x0 + 1):.1f}" '
                f'y2="{y:.1f}" stroke-width="3"><title>{esc(tip)}</title></line>'
            )
            if x1 - x0 > 44:
                svg.append(
                    f'<text class="tick" x="{(x0 + x1) / 2:.1f}" y="{y - 6:.1f}" text-anchor="middle">'
                    f"{esc(f'step {s.index + 1} · {weight}%')}</text>"
                )
            if s.record.verdict is not None:
                svg.append(
                    f'<circle class="mark {s.verdict}" cx="{x1:.1f}" cy="{y:.1f}" r="4">'
                    f"<title>{esc(tip)}</title></circle>"
                )
            prev = s
        svg += self._decision_marker(prev)
        svg.append("</svg>")
        legend = (
            '<p class="legend note"><span><i style="background: var(--pass)"></i>step passed</span>'
            '<span><i style="background: var(--fail)"></i>step failed</span>'
            '<span><i style="background: var(--open)"></i>running / undecided</span>'
            '<span><i style="background: #8c959f"></i>weight change</span></p>'
        )
        if st.strategy == "blueGreen":
            legend += (
                '<p class="note">blueGreen: the candidate serves 0% of live traffic while it previews '
                "on mirrored copies, then all of it after the switch.</p>"
            )
        return "\n".join(svg) + "\n" + legend

    def _decision_marker(self, last: _StepView | None) -> list[str]:
        st = self.state
        if not st.terminal or st.finished_at is None:
            return []
        word, cls = self._outcome()
        t = st.finished_at - st.started_at
        x = self._x(t)
        out: list[str] = []
        final = st.weights.candidate
        if last is not None and last.record.weight != final:
            out.append(
                f'<line class="drop" x1="{x:.1f}" y1="{self._y(last.record.weight):.1f}" '
                f'x2="{x:.1f}" y2="{self._y(final):.1f}" stroke-width="2"/>'
            )
        after = f"after the decision: {final}% of traffic on {self.candidate_version}"
        out.append(
            f'<line class="step {cls}" x1="{x:.1f}" y1="{self._y(final):.1f}" x2="{_W - _RIGHT}" '
            f'y2="{self._y(final):.1f}" stroke-width="3" stroke-dasharray="6 3"><title>{esc(after)}</title></line>'
        )
        out.append(
            f'<line class="decide {cls}" x1="{x:.1f}" y1="{_TOP - 14}" x2="{x:.1f}" y2="{_H - _BOTTOM}">'
            f"<title>{esc(f'{word}: {st.reason}')}</title></line>"
        )
        anchor = "end" if x > _W / 2 else "start"
        dx = -4 if anchor == "end" else 4
        label = f"{word} at {_dur(t)}"
        out.append(
            f'<text class="{cls}" x="{x + dx:.1f}" y="{_TOP - 16}" text-anchor="{anchor}">{esc(label)}'
            f"<title>{esc(st.reason)}</title></text>"
        )
        reason = st.reason if len(st.reason) <= 110 else st.reason[:107] + "..."
        out.append(
            f'<text class="tick" x="{x + dx:.1f}" y="{_TOP - 2}" text-anchor="{anchor}">{esc(reason)}</text>'
        )
        return out

    # -- per-version metrics over time -------------------------------------------------------------

    def _metric_charts(self) -> str:
        windowed = [s for s in self.steps if s.window is not None]
        if not windowed:
            return (
                '<p class="note">No completed step window is recorded yet: per-version counts appear '
                "here once a step has passed.</p>"
            )
        charts = ["<h2>Per-version metrics, one window per step</h2>"]
        charts.append(
            '<p class="legend note">'
            f'<span><i style="background: var(--stable)"></i>stable {esc(self.stable_version)}</span>'
            f'<span><i style="background: var(--cand)"></i>candidate {esc(self.candidate_version)}</span>'
            "each segment spans the window the step was judged on</p>"
        )
        charts.append(
            self._series_chart("error rate", windowed, lambda r: r.error_rate, percent=True, from_zero=True)
        )
        if any(s.window and (s.window.stable.labeled or s.window.candidate.labeled) for s in windowed):
            charts.append(
                self._series_chart(
                    "accuracy (labelled)", windowed, lambda r: r.accuracy, percent=True, from_zero=False
                )
            )
        if any(s.window and (s.window.stable.latency_ms or s.window.candidate.latency_ms) for s in windowed):
            charts.append(
                self._series_chart(
                    "p99 latency (ms)", windowed, lambda r: r.p99_ms, percent=False, from_zero=True
                )
            )
        return "\n".join(charts)

    def _series_chart(
        self,
        title: str,
        steps: Sequence[_StepView],
        value: Callable[[_Rates], float | None],
        *,
        percent: bool,
        from_zero: bool,
    ) -> str:
        height, bottom = 186, 40
        st = self.state
        series: list[tuple[str, list[tuple[float, float, float]]]] = []
        for cls in ("stable", "candidate"):
            segs = []
            for s in steps:
                assert s.window is not None
                v = value(_Rates.of(s.window.stable if cls == "stable" else s.window.candidate))
                if v is not None:
                    segs.append((s.window.since - st.started_at, s.window.at - st.started_at, float(v)))
            series.append((cls, segs))
        values = [v for _, segs in series for _, _, v in segs]
        if not values:
            return f'<p class="note">{esc(title)}: no data in the recorded windows.</p>'
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.1 or abs(hi) * 0.05 or 0.01
        lo, hi = (0.0 if from_zero else lo - pad), hi + pad
        if percent:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        lo, hi, ticks, decimals = _nice_axis(lo, hi, scale=100.0 if percent else 1.0)

        def y(v: float) -> float:
            return _TOP + (height - _TOP - bottom) * (1.0 - (v - lo) / (hi - lo))

        svg = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" width="{_W}" '
            f'height="{height}" role="img" aria-label="{esc(title)}">',
            f'<text x="{_LEFT}" y="16" font-weight="600">{esc(title)}</text>',
        ]
        for v in ticks:
            svg.append(
                f'<line class="grid" x1="{_LEFT}" y1="{y(v):.1f}" x2="{_W - _RIGHT}" y2="{y(v):.1f}"/>'
            )
            label = _pct(v, decimals) if percent else f"{v:.{decimals}f}"
            svg.append(
                f'<text class="tick" x="{_LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{esc(label)}</text>'
            )
        svg += self._time_axis(height, bottom)
        for cls, segs in series:
            name = self.stable_version if cls == "stable" else self.candidate_version
            for t0, t1, v in segs:
                shown = _pct(v, 3) if percent else _num(v, 4)
                tip = f"{cls} {name}: {title} {shown} over {_dur(t0)} to {_dur(t1)}"
                svg.append(
                    f'<line class="{cls}" x1="{self._x(t0):.1f}" y1="{y(v):.1f}" x2="{self._x(t1):.1f}" '
                    f'y2="{y(v):.1f}" stroke-width="3"><title>{esc(tip)}</title></line>'
                )
                svg.append(
                    f'<circle class="{cls}" cx="{self._x(t1):.1f}" cy="{y(v):.1f}" r="3">'
                    f"<title>{esc(tip)}</title></circle>"
                )
        svg.append("</svg>")
        return "\n".join(svg)

    # -- tables --------------------------------------------------------------------------------

    def _steps_table(self) -> str:
        if not self.steps:
            return '<p class="note">No step recorded.</p>'
        windows = [s.window for s in self.steps if s.window is not None]
        labels = any(w.stable.labeled or w.candidate.labeled for w in windows)
        latency = any(w.stable.latency_ms or w.candidate.latency_ms for w in windows)
        per_version = ["requests", "errors", "error rate"]
        if labels:
            per_version += ["labelled", "accuracy"]
        if latency:
            per_version += ["p99 ms"]
        n = len(per_version)
        head = [
            "<table>",
            "<thead>",
            '<tr><th rowspan="2">step</th><th rowspan="2">weight</th><th rowspan="2">from</th>'
            '<th rowspan="2">to</th><th rowspan="2">verdict</th>'
            f'<th colspan="{n}">stable {esc(self.stable_version)}</th>'
            f'<th colspan="{n}">candidate {esc(self.candidate_version)}</th></tr>',
            "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in per_version * 2) + "</tr>",
            "</thead>",
            "<tbody>",
        ]
        rows: list[str] = []
        last = self.steps[-1].index
        for s in self.steps:
            verdict = s.record.verdict or ("running" if not self.state.terminal else "undecided")
            weight = f"{s.record.weight}%"
            if self.state.strategy == "blueGreen" and s.index == 0:
                weight = "0% (preview, mirrored)"
            cells = [
                f"<td>{s.index + 1}</td>",
                f'<td class="n">{esc(weight)}</td>',
                f'<td class="n">{esc(_dur(s.start))}</td>',
                f'<td class="n">{esc(_dur(s.end))}</td>',
                f'<td><span class="badge {s.verdict}">{esc(verdict)}</span></td>',
            ]
            if s.window is not None:
                for counts in (s.window.stable, s.window.candidate):
                    r = _Rates.of(counts)
                    vals = [_num(r.requests), _num(r.errors), _pct(r.error_rate, 3)]
                    if labels:
                        vals += [_num(r.labeled), _pct(r.accuracy, 2)]
                    if latency:
                        vals += [_num(r.p99_ms, 4)]
                    cells += [f'<td class="n">{esc(v)}</td>' for v in vals]
            else:
                why = (
                    "its window is judged by the latest checks below"
                    if s.index == last
                    else "no window recorded for this step"
                )
                if s.index == last and self.state.terminal and s.start == s.end:
                    why = "reached at the decision: no window of its own"
                cells.append(f'<td colspan="{2 * n}" class="note">{esc(why)}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return "\n".join([*head, *rows, "</tbody>", "</table>"])

    def _checks_table(self) -> str:
        checks = self.state.checks
        if not checks:
            return '<p class="note">No analysis has run yet.</p>'
        tolerances = {c.name: c for c in self.policy.analysis.checks} if self.policy else {}
        rows = [
            "<table>",
            "<thead><tr><th>check</th><th>metric</th><th>verdict</th><th>estimate</th><th>stable</th>"
            "<th>measured as</th>"
            "<th>bounds</th><th>tolerance</th><th>samples</th><th>reason</th></tr></thead>",
            "<tbody>",
        ]
        failed = set(self.state.failed_checks)
        for c in checks:
            bounds = _NONE if c.lower is None and c.upper is None else f"[{_num(c.lower)}, {_num(c.upper)}]"
            tol = c.bound or ""
            if not tol and c.name in tolerances:
                tol = _tolerance_words(tolerances[c.name])
            name = c.name + (" ✗" if c.name in failed else "")
            rows.append(
                "<tr>"
                f"<td>{esc(name)}</td>"
                f"<td>{esc(c.metric)}</td>"
                f'<td><span class="badge {esc(c.verdict.value)}">{esc(c.verdict.value)}</span></td>'
                f'<td class="n">{esc(_num(c.estimate))}</td>'
                f'<td class="n">{esc(_num(c.stable_estimate))}</td>'
                f'<td class="note">{esc(c.quantity or _NONE)}</td>'
                f'<td class="n">{esc(bounds)}</td>'
                f"<td>{esc(tol or _NONE)}</td>"
                f'<td class="n">{esc(_num(c.samples))}{"" if c.enough_data else " (not enough yet)"}</td>'
                f'<td class="why">{esc(c.reason)}</td>'
                "</tr>"
            )
        rows += ["</tbody>", "</table>"]
        return "\n".join(rows)

    def _conditions(self) -> str:
        conditions = [c for c in self.status.get("conditions") or [] if isinstance(c, Mapping)]
        if not conditions:
            return ""
        rows = [
            "<h2>Conditions</h2>",
            "<table>",
            "<thead><tr><th>type</th><th>status</th><th>reason</th><th>since</th><th>message</th></tr></thead>",
            "<tbody>",
        ]
        for c in conditions:
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{esc(c.get(k, ''))}</td>"
                    for k in ("type", "status", "reason", "lastTransitionTime", "message")
                )
                + "</tr>"
            )
        rows += ["</tbody>", "</table>"]
        return "\n".join(rows)

    def _history(self) -> str:
        history = [h for h in self.status.get("history") or [] if isinstance(h, Mapping)]
        if not history:
            return ""
        rows = [
            "<h2>Rollouts of this resource</h2>",
            "<table>",
            "<thead><tr><th>stable</th><th>candidate</th><th>outcome</th><th>started</th><th>duration</th>"
            "<th>reason</th></tr></thead>",
            "<tbody>",
        ]
        for h in history:
            duration = h.get("durationSeconds")
            shown = _dur(float(duration)) if isinstance(duration, (int, float)) else _NONE
            rows.append(
                "<tr>"
                f"<td>{esc(h.get('stableVersion', ''))}</td>"
                f"<td>{esc(h.get('candidateVersion', ''))}</td>"
                f"<td>{esc(h.get('outcome', ''))}</td>"
                f"<td>{esc(h.get('startedAt', ''))}</td>"
                f'<td class="n">{esc(shown)}</td>'
                f'<td class="why">{esc(h.get("reason", ""))}</td>'
                "</tr>"
            )
        rows += ["</tbody>", "</table>"]
        return "\n".join(rows)

    def _footer(self) -> str:
        bits = ["made by mesh-canary report"]
        if self.source:
            bits.append(f"from {self.source}")
        if self.generated_at is not None:
            bits.append(f"at {_when(self.generated_at)}")
        if self.state.policy_fingerprint:
            bits.append(f"policy fingerprint {self.state.policy_fingerprint}")
        return f"<footer>{esc(' · '.join(bits))}</footer>"


def _tolerance_words(check: Any) -> str:
    """A check's tolerance from the policy, when the verdict did not carry one."""
    words = []
    for attr, text in (
        ("max", "at most {}"),
        ("min", "at least {}"),
        ("max_increase", "at most stable + {}"),
        ("max_increase_ratio", "at most stable x (1 + {})"),
        ("max_decrease", "at least stable - {}"),
        ("max_psi", "PSI at most {}"),
        ("max_deviation", "share within ±{}"),
    ):
        v = getattr(check, attr, None)
        if v is not None:
            words.append(text.format(_num(float(v))))
    return "; ".join(words)


def _nice_axis(
    lo: float, hi: float, scale: float = 1.0, most: int = 5
) -> tuple[float, float, list[float], int]:
    """Round axis limits and evenly spaced ticks (1, 2, 2.5 or 5 times a power of ten).

    Returns (lo, hi, ticks, decimals to show a tick ``v * scale`` with)."""
    span = max(hi - lo, 1e-12)
    raw = span / most
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw - 1e-15)
    lo_n = math.floor(lo / step + 1e-9) * step
    hi_n = max(math.ceil(hi / step - 1e-9) * step, lo_n + step)
    count = round((hi_n - lo_n) / step)
    ticks = [lo_n + i * step for i in range(count + 1)]
    shown = step * scale
    decimals = max(0, -math.floor(math.log10(shown) + 1e-9))
    if round(shown / 10.0 ** math.floor(math.log10(shown) + 1e-9), 6) == 2.5:
        decimals += 1
    return lo_n, hi_n, ticks, decimals


_NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _time_ticks(span: float, most: int = 8) -> list[float]:
    step = next((s for s in _NICE_STEPS_S if span / s <= most), None)
    if step is None:
        step = 86400 * math.ceil(span / 86400 / most)
    return [i * float(step) for i in range(int(span // step) + 1)]
