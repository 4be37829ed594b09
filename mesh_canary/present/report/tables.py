"""The report's text sections: the decision, the facts, the steps with their windows, the
latest verdict of every check, and a ModelRollout's conditions and history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from mesh_canary.checks import REGISTRY, tolerance_words
from mesh_canary.core import timeline
from mesh_canary.core.engine import policy_fingerprint, schedule
from mesh_canary.core.observations import VersionCounts
from mesh_canary.core.verdicts import CheckResult
from mesh_canary.present import numbers
from mesh_canary.present.report.model import NONE, Page, Rates, StepView, dur, esc, num, when
from mesh_canary.present.view import outcome_word


def _table(head: list[str], rows: list[str], title: str = "") -> str:
    """A table with one header row (``head``: escaped already) and rendered rows."""
    top = [title] if title else []
    head_row = "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>"
    return "\n".join(
        [*top, '<div class="table-wrap"><table>', head_row, "<tbody>", *rows, "</tbody>", "</table></div>"]
    )


def decision(page: Page) -> str:
    st = page.state
    word, cls = page.outcome()
    lines = [f'<div class="decision {cls}">', f'<p><span class="badge {cls}">{esc(word)}</span> ']
    if st.terminal:
        at = dur((st.finished_at or st.started_at) - st.started_at)
        lines.append(f"after {esc(at)}: {esc(st.reason or 'no reason recorded')}</p>")
    else:
        where = f"step {st.step_index + 1} at {st.weights.candidate}% of traffic"
        if st.weights.mirror_percent:
            where += f" (mirroring {st.weights.mirror_percent}%)"
        lines.append(f"{esc(where)}</p>")
    if st.failed_checks:
        lines.append(f"<p>failed: {esc(', '.join(st.failed_checks))}</p>")
    lines.append("</div>")
    return "\n".join(lines)


def _plan_facts(page: Page) -> list[tuple[str, str]]:
    """What the policy says: the plan, the analysis, the namespace (when it is known)."""
    policy, st = page.policy, page.state
    if policy is None:
        return []
    rows: list[tuple[str, str]] = []
    if st.policy_fingerprint and policy_fingerprint(policy) != st.policy_fingerprint:
        rows.append(("warning", "the policy given is not the one this rollout ran (another spec)"))
    plan = " → ".join(f"{w}%" for w in schedule(policy))
    if policy.strategy == "blueGreen":
        plan = f"preview mirroring {policy.blue_green.mirror_percent}%, then switch to 100%"
    rows.append(("plan", plan))
    a = policy.analysis
    rows.append(
        (
            "analysis",
            f"every {dur(a.interval_s)}, confidence {num(a.confidence)}, "
            f"{a.min_requests} requests per version before a relative verdict",
        )
    )
    if policy.namespace:
        rows.append(("namespace", policy.namespace))
    return rows


def facts(page: Page) -> str:
    st = page.state
    rows = [("stable", page.stable_version), ("candidate", page.candidate_version), *_plan_facts(page)]
    rows.append(("started", when(st.started_at)))
    if st.finished_at is not None:
        rows.append(("finished", when(st.finished_at)))
        rows.append(("duration", dur(st.finished_at - st.started_at)))
    elif st.last_tick_at is not None:
        rows.append(("last analysis", when(st.last_tick_at)))
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


# --------------------------------------------------------------------------- steps


def _columns(page: Page) -> tuple[bool, bool]:
    """Whether any recorded window has labels, and latency."""
    windows = [s.window for s in page.steps if s.window is not None]
    labels = any(w.stable.labeled or w.candidate.labeled for w in windows)
    latency = any(w.stable.latency_ms or w.candidate.latency_ms for w in windows)
    return labels, latency


def _version_cells(counts: VersionCounts, labels: bool, latency: bool) -> list[str]:
    r = Rates.of(counts)
    vals = [numbers.count(r.requests), numbers.count(r.errors), numbers.percent(r.error_rate)]
    if labels:
        vals += [numbers.count(r.labeled), numbers.percent(r.accuracy)]
    if latency:
        vals += [numbers.millis(r.p99_ms)]
    return [f'<td class="n">{esc(v)}</td>' for v in vals]


def _step_row(page: Page, s: StepView, labels: bool, latency: bool, width: int) -> str:
    st = page.state
    verdict = s.record.verdict or ("running" if not st.terminal else "undecided")
    weight = (
        "0% (preview, mirrored)" if st.strategy == "blueGreen" and s.index == 0 else f"{s.record.weight}%"
    )
    cells = [
        f"<td>{s.index + 1}</td>",
        f'<td class="n">{esc(weight)}</td>',
        f'<td class="n">{esc(dur(s.start))}</td>',
        f'<td class="n">{esc(dur(s.end))}</td>',
        f'<td><span class="badge {s.verdict}">{esc(verdict)}</span></td>',
    ]
    if s.window is not None:
        for counts in (s.window.stable, s.window.candidate):
            cells += _version_cells(counts, labels, latency)
    else:
        last = s.index == page.steps[-1].index
        why = (
            "its window is judged by the latest checks below" if last else "no window recorded for this step"
        )
        if last and st.terminal and s.start == s.end:
            why = "reached at the decision: no window of its own"
        cells.append(f'<td colspan="{width}" class="note">{esc(why)}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def steps_table(page: Page) -> str:
    if not page.steps:
        return '<p class="note">No step recorded.</p>'
    labels, latency = _columns(page)
    per_version = ["requests", "errors", "error rate"]
    per_version += ["labelled", "accuracy"] if labels else []
    per_version += ["p99 latency"] if latency else []
    n = len(per_version)
    head = [
        "<table>",
        "<thead>",
        '<tr><th rowspan="2">step</th><th rowspan="2">weight</th><th rowspan="2">from</th>'
        '<th rowspan="2">to</th><th rowspan="2">verdict</th>'
        f'<th colspan="{n}">stable {esc(page.stable_version)}</th>'
        f'<th colspan="{n}">candidate {esc(page.candidate_version)}</th></tr>',
        "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in per_version * 2) + "</tr>",
        "</thead>",
        "<tbody>",
    ]
    rows = [_step_row(page, s, labels, latency, 2 * n) for s in page.steps]
    return "\n".join([*head, *rows, "</tbody>", "</table>"])


# --------------------------------------------------------------------------- checks, conditions, history


def check_unit(page: Page, c: CheckResult) -> str:
    """The unit of a check's numbers: from the history, else from its kind and the policy."""
    infos = page.state.timeline.get("checks")
    kept = infos.get(c.name) if isinstance(infos, Mapping) else None
    info = kept.get(timeline.quantity_tag(c.quantity)) if isinstance(kept, Mapping) else None
    if isinstance(info, Mapping) and isinstance(info.get("unit"), str):
        return str(info["unit"])
    policy_check = (
        next((k for k in page.policy.analysis.checks if k.name == c.name), None) if page.policy else None
    )
    return timeline.check_unit(policy_check, c)


def checks_table(page: Page) -> str:
    checks = page.state.checks
    if not checks:
        return '<p class="note">No analysis has run yet.</p>'
    tolerances = {c.name: c for c in page.policy.analysis.checks} if page.policy else {}
    failed = set(page.state.failed_checks)
    rows = []
    for c in checks:
        unit = check_unit(page, c)
        signed = c.quantity.startswith("candidate - stable")
        # A ratio's stable estimate is in the check's own unit (ms for latency).
        stable_unit = check_unit(page, replace(c, quantity="candidate")) if unit == "ratio" else unit
        stable = numbers.in_unit(c.stable_estimate, stable_unit) if c.stable_estimate is not None else NONE
        tol = c.bound or (tolerance_words(tolerances[c.name], num) if c.name in tolerances else "")
        samples = numbers.count(c.samples) + ("" if c.enough_data else " (not enough yet)")
        rows.append(
            "<tr>"
            f"<td>{esc(c.name + (' ✗' if c.name in failed else ''))}</td>"
            f"{_metric_cell(c.metric)}"
            f'<td><span class="badge {esc(c.verdict.value)}">{esc(c.verdict.value)}</span></td>'
            f'<td class="n">{esc(numbers.in_unit(c.estimate, unit, signed))}</td>'
            f'<td class="n">{esc(stable)}</td>'
            f'<td class="note">{esc(c.quantity or NONE)}</td>'
            f'<td class="n">{esc(numbers.interval(c.lower, c.upper, unit, signed))}</td>'
            f'<td class="nw">{esc(tol or NONE)}</td>'
            f'<td class="n">{esc(samples)}</td>'
            f'<td class="why">{esc(c.reason)}</td>'
            "</tr>"
        )
    head = [
        "check",
        "metric",
        "verdict",
        "estimate",
        "stable",
        "measured as",
        "bounds",
        "tolerance",
        "samples",
    ]
    return _table([*head, "reason"], rows)


def events(page: Page) -> str:
    """A ModelRollout's Kubernetes Events, newest first (the dashboard reads them)."""
    if not page.events:
        return ""
    keys = ("lastTimestamp", "type", "reason", "count", "message")
    rows = [
        "<tr>" + "".join(f"<td>{esc(e.get(k) if e.get(k) is not None else '')}</td>" for k in keys) + "</tr>"
        for e in page.events
    ]
    return _table(["last seen", "type", "reason", "count", "message"], rows, "<h2>Events</h2>")


def conditions(page: Page) -> str:
    found = [c for c in page.status.get("conditions") or [] if isinstance(c, Mapping)]
    if not found:
        return ""
    keys = ("type", "status", "reason", "lastTransitionTime", "message")
    rows = ["<tr>" + "".join(f"<td>{esc(c.get(k, ''))}</td>" for k in keys) + "</tr>" for c in found]
    return _table(["type", "status", "reason", "since", "message"], rows, "<h2>Conditions</h2>")


def history(page: Page) -> str:
    found = [h for h in page.status.get("history") or [] if isinstance(h, Mapping)]
    if not found:
        return ""
    rows = []
    for h in found:
        duration = h.get("durationSeconds")
        shown = dur(float(duration)) if isinstance(duration, (int, float)) else NONE
        rows.append(
            "<tr>"
            f"<td>{esc(h.get('stableVersion', ''))}</td>"
            f"<td>{esc(h.get('candidateVersion', ''))}</td>"
            f"<td>{esc(outcome_word(h.get('outcome')) or h.get('outcome', ''))}</td>"
            f"<td>{esc(h.get('startedAt', ''))}</td>"
            f'<td class="n">{esc(shown)}</td>'
            f'<td class="why">{esc(h.get("reason", ""))}</td>'
            "</tr>"
        )
    head = ["stable", "candidate", "outcome", "started", "duration", "reason"]
    return _table(head, rows, "<h2>Rollouts of this resource</h2>")


def footer(page: Page) -> str:
    bits = ["served live by mesh-canary dashboard" if page.live else "made by mesh-canary report"]
    if page.source:
        bits.append(f"from {page.source}")
    if page.generated_at is not None:
        bits.append(f"at {when(page.generated_at)}")
    if page.state.policy_fingerprint:
        bits.append(f"policy fingerprint {page.state.policy_fingerprint}")
    return f"<footer>{esc(' · '.join(bits))}</footer>"


def _metric_cell(metric: str) -> str:
    """A check's metric, with its kind's name in words as the cell's tooltip."""
    kind = REGISTRY.get(metric)
    return (
        f'<td title="{esc(kind.title)}">{esc(metric)}</td>' if kind is not None else f"<td>{esc(metric)}</td>"
    )
