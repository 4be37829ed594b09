"""The report's inline SVG charts: the candidate's weight over time with every step's
verdict and the decision, and per-version metrics, one window per step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from mesh_canary.present.report.model import (
    BOTTOM,
    LEFT,
    RIGHT,
    TOP,
    H,
    Page,
    Rates,
    StepView,
    W,
    dur,
    esc,
    num,
    pct,
)

_NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_LEGEND = (
    '<p class="legend note"><span><i style="background: var(--pass)"></i>step passed</span>'
    '<span><i style="background: var(--fail)"></i>step failed</span>'
    '<span><i style="background: var(--open)"></i>running / undecided / advanced unproven</span>'
    '<span><i style="background: #8c959f"></i>weight change</span></p>'
)
_BLUE_GREEN = (
    '<p class="note">blueGreen: the candidate serves 0% of live traffic while it previews '
    "on mirrored copies, then all of it after the switch.</p>"
)

Series = list[tuple[str, list[tuple[float, float, float]]]]  # (stable|candidate, [(t0, t1, value)])


# --------------------------------------------------------------------------- axes


def nice_axis(
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


def time_ticks(span: float, most: int = 8) -> list[float]:
    step = next((s for s in _NICE_STEPS_S if span / s <= most), None)
    if step is None:
        step = 86400 * math.ceil(span / 86400 / most)
    return [i * float(step) for i in range(int(span // step) + 1)]


def time_axis(page: Page, height: float, bottom: float, width: float = W) -> list[str]:
    out: list[str] = []
    for t in time_ticks(page.span / 1.06 if page.state.terminal else page.span):
        x = page.x(t, width)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{height - bottom}"/>')
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{esc(dur(t))}</text>'
        )
    out.append(
        f'<line class="axis" x1="{LEFT}" y1="{height - bottom}" x2="{width - RIGHT}" y2="{height - bottom}"/>'
    )
    out.append(
        f'<text class="tick" x="{width - RIGHT}" y="{height - 4}" text-anchor="end">time since start</text>'
    )
    return out


# --------------------------------------------------------------------------- the weight chart


def weight_chart(page: Page) -> str:
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" '
        f'role="img" aria-label="{esc("candidate weight over time")}">',
    ]
    for w in (0, 25, 50, 75, 100):
        y = page.y(w)
        svg.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}"/>')
        svg.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{w}%</text>')
    svg += time_axis(page, H, BOTTOM)
    svg.append(f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}"/>')
    prev: StepView | None = None
    for s in page.steps:
        svg += _step_marks(page, s, prev)
        prev = s
    svg += decision_marker(page, prev)
    svg.append("</svg>")
    legend = _LEGEND + (_BLUE_GREEN if page.state.strategy == "blueGreen" else "")
    return "\n".join(svg) + "\n" + legend


def _step_marks(page: Page, s: StepView, prev: StepView | None) -> list[str]:
    """One step's segment at its weight, the jump from the step before, its verdict's mark."""
    weight = s.record.weight
    x0, x1, y = page.x(s.start), page.x(s.end), page.y(weight)
    out: list[str] = []
    if prev is not None:
        out.append(
            f'<line class="jump" x1="{x0:.1f}" y1="{page.y(prev.record.weight):.1f}" x2="{x0:.1f}" y2="{y:.1f}"/>'
        )
    tip = f"step {s.index + 1} at {weight}%: {s.record.verdict or 'running'} ({dur(s.start)} to {dur(s.end)})"
    out.append(
        f'<line class="step {s.verdict}" x1="{x0:.1f}" y1="{y:.1f}" x2="{max(x1, x0 + 1):.1f}" '
        f'y2="{y:.1f}" stroke-width="3"><title>{esc(tip)}</title></line>'
    )
    if x1 - x0 > 44:
        out.append(
            f'<text class="tick" x="{(x0 + x1) / 2:.1f}" y="{y - 6:.1f}" text-anchor="middle">'
            f"{esc(f'step {s.index + 1} · {weight}%')}</text>"
        )
    if s.record.verdict is not None:
        out.append(
            f'<circle class="mark {s.verdict}" cx="{x1:.1f}" cy="{y:.1f}" r="4"><title>{esc(tip)}</title></circle>'
        )
    return out


def decision_marker(page: Page, last: StepView | None) -> list[str]:
    """Where the traffic went at the decision, and the decision with its reason."""
    st = page.state
    if not st.terminal or st.finished_at is None:
        return []
    word, cls = page.outcome()
    t = st.finished_at - st.started_at
    x = page.x(t)
    out: list[str] = []
    final = st.weights.candidate
    if last is not None and last.record.weight != final:
        out.append(
            f'<line class="drop" x1="{x:.1f}" y1="{page.y(last.record.weight):.1f}" '
            f'x2="{x:.1f}" y2="{page.y(final):.1f}" stroke-width="2"/>'
        )
    after = f"after the decision: {final}% of traffic on {page.candidate_version}"
    out.append(
        f'<line class="step {cls}" x1="{x:.1f}" y1="{page.y(final):.1f}" x2="{W - RIGHT}" '
        f'y2="{page.y(final):.1f}" stroke-width="3" stroke-dasharray="6 3"><title>{esc(after)}</title></line>'
    )
    out.append(
        f'<line class="decide {cls}" x1="{x:.1f}" y1="{TOP - 14}" x2="{x:.1f}" y2="{H - BOTTOM}">'
        f"<title>{esc(f'{word}: {st.reason}')}</title></line>"
    )
    anchor = "end" if x > W / 2 else "start"
    dx = -4 if anchor == "end" else 4
    out.append(
        f'<text class="{cls}" x="{x + dx:.1f}" y="{TOP - 16}" text-anchor="{anchor}">{esc(f"{word} at {dur(t)}")}'
        f"<title>{esc(st.reason)}</title></text>"
    )
    return out


# --------------------------------------------------------------------------- per-version metrics


def metric_charts(page: Page) -> str:
    windowed = [s for s in page.steps if s.window is not None]
    if not windowed:
        return (
            '<p class="note">No completed step window is recorded yet: per-version counts appear '
            "here once a step has passed.</p>"
        )
    charts = [
        "<h2>Per-version metrics, one window per step</h2>",
        '<p class="legend note">'
        f'<span><i style="background: var(--stable)"></i>stable {esc(page.stable_version)}</span>'
        f'<span><i style="background: var(--cand)"></i>candidate {esc(page.candidate_version)}</span>'
        "each segment spans the window the step was judged on</p>",
        series_chart(page, "error rate", windowed, lambda r: r.error_rate, percent=True, from_zero=True),
    ]
    if any(s.window and (s.window.stable.labeled or s.window.candidate.labeled) for s in windowed):
        charts.append(
            series_chart(
                page, "accuracy (labelled)", windowed, lambda r: r.accuracy, percent=True, from_zero=False
            )
        )
    if any(s.window and (s.window.stable.latency_ms or s.window.candidate.latency_ms) for s in windowed):
        charts.append(
            series_chart(
                page, "p99 latency (ms)", windowed, lambda r: r.p99_ms, percent=False, from_zero=True
            )
        )
    return "\n".join(charts)


def _series(page: Page, steps: Sequence[StepView], value: Callable[[Rates], float | None]) -> Series:
    """Each version's value in every step's window, as (start, end, value) segments."""
    st = page.state
    series: Series = []
    for cls in ("stable", "candidate"):
        segs = []
        for s in steps:
            assert s.window is not None
            v = value(Rates.of(s.window.stable if cls == "stable" else s.window.candidate))
            if v is not None:
                segs.append((s.window.since - st.started_at, s.window.at - st.started_at, float(v)))
        series.append((cls, segs))
    return series


def series_chart(
    page: Page,
    title: str,
    steps: Sequence[StepView],
    value: Callable[[Rates], float | None],
    *,
    percent: bool,
    from_zero: bool,
) -> str:
    height, bottom = 186, 40
    series = _series(page, steps, value)
    values = [v for _, segs in series for _, _, v in segs]
    if not values:
        return f'<p class="note">{esc(title)}: no data in the recorded windows.</p>'
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.05 or 0.01
    lo, hi = (0.0 if from_zero else lo - pad), hi + pad
    if percent:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    lo, hi, ticks, decimals = nice_axis(lo, hi, scale=100.0 if percent else 1.0)

    def y(v: float) -> float:
        return TOP + (height - TOP - bottom) * (1.0 - (v - lo) / (hi - lo))

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" '
        f'role="img" aria-label="{esc(title)}">',
        f'<text x="{LEFT}" y="16" font-weight="600">{esc(title)}</text>',
    ]
    for v in ticks:
        svg.append(f'<line class="grid" x1="{LEFT}" y1="{y(v):.1f}" x2="{W - RIGHT}" y2="{y(v):.1f}"/>')
        label = pct(v, decimals) if percent else f"{v:.{decimals}f}"
        svg.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{esc(label)}</text>'
        )
    svg += time_axis(page, height, bottom)
    for cls, segs in series:
        name = page.stable_version if cls == "stable" else page.candidate_version
        for t0, t1, v in segs:
            shown = pct(v, 3) if percent else num(v, 4)
            tip = esc(f"{cls} {name}: {title} {shown} over {dur(t0)} to {dur(t1)}")
            svg.append(
                f'<line class="{cls}" x1="{page.x(t0):.1f}" y1="{y(v):.1f}" x2="{page.x(t1):.1f}" '
                f'y2="{y(v):.1f}" stroke-width="3"><title>{tip}</title></line>'
            )
            svg.append(
                f'<circle class="{cls}" cx="{page.x(t1):.1f}" cy="{y(v):.1f}" r="3"><title>{tip}</title></circle>'
            )
    svg.append("</svg>")
    return "\n".join(svg)
