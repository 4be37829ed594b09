"""Per-tick charts from the rollout's bounded history (core/timeline.py): each version's
error rate, latency and accuracy at every analysis, and each check's estimate with its
confidence bounds and the tolerated region drawn as bands."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mesh_canary.core.timeline import accuracy, error_rate
from mesh_canary.present import numbers
from mesh_canary.present.report.charts import nice_axis, time_axis
from mesh_canary.present.report.model import LEFT, RIGHT, TOP, Page, esc

W, HEIGHT, BOTTOM = 720, 240, 40  # a chart in a grid of two: its own width
Line = list[tuple[float, float | None]]  # (seconds since start, value or a gap)


def _y(lo: float, hi: float) -> Callable[[float], float]:
    def y(v: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - (min(max(v, lo), hi) - lo) / (hi - lo))

    return y


def _path(page: Page, line: Line, y: Callable[[float], float]) -> str:
    """An SVG path through the points, broken where a value is missing."""
    out, pen = [], "M"
    for t, v in line:
        if v is None:
            pen = "M"
            continue
        out.append(f"{pen}{page.x(t, W):.1f},{y(v):.1f}")
        pen = "L"
    return " ".join(out)


def _band(
    page: Page, band: Sequence[tuple[float, float | None, float | None]], y: Callable[[float], float]
) -> str:
    """A closed polygon between the lower and upper values (runs with both ends only)."""
    polys: list[str] = []
    run: list[tuple[float, float, float]] = []
    for t, lo, hi in [*band, (0.0, None, None)]:
        if lo is None or hi is None:
            if len(run) > 1:
                top = [f"{page.x(tt, W):.1f},{y(h):.1f}" for tt, _, h in run]
                bottom = [f"{page.x(tt, W):.1f},{y(lv):.1f}" for tt, lv, _ in reversed(run)]
                polys.append("M" + " L".join(top + bottom) + " Z")
            run = []
            continue
        run.append((t, lo, hi))
    return " ".join(polys)


def _frame(
    page: Page, title: str, ticks: list[float], fmt: Callable[[float], str], y: Callable[[float], float]
) -> list[str]:
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {HEIGHT}" role="img" aria-label="{esc(title)}">',
        f'<text x="{LEFT}" y="16" font-weight="600">{esc(title)}</text>',
    ]
    for v in ticks:
        svg.append(f'<line class="grid" x1="{LEFT}" y1="{y(v):.1f}" x2="{W - RIGHT}" y2="{y(v):.1f}"/>')
        svg.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{esc(fmt(v))}</text>'
        )
    svg += time_axis(page, HEIGHT, BOTTOM, W)
    for s in page.steps[1:]:  # where each step began
        x = page.x(s.start, W)
        svg.append(
            f'<line class="stepline" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}">'
            f"<title>{esc(f'step {s.index + 1} at {s.record.weight}% from {numbers.duration(s.start)}')}</title></line>"
        )
    st = page.state
    if st.terminal and st.finished_at is not None:
        word, cls = page.outcome()
        x = page.x(st.finished_at - st.started_at, W)
        svg.append(
            f'<line class="decide {cls}" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}">'
            f"<title>{esc(f'{word}: {st.reason}')}</title></line>"
        )
    return svg


def _axis(
    values: list[float], unit: str, from_zero: bool
) -> tuple[float, float, list[float], Callable[[float], str]]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.05 or 0.01
    lo, hi = (min(0.0, lo) if from_zero else lo - pad), hi + pad
    if unit == "rate" and from_zero:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    lo, hi, ticks, _ = nice_axis(lo, hi)
    return lo, hi, ticks, lambda v: numbers.in_unit(v, unit)


def version_chart(
    page: Page, title: str, unit: str, series: Sequence[tuple[str, str, Line]], from_zero: bool = True
) -> str:
    """Lines per version (``series``: css class, label, line); '' without any value."""
    values = [v for _, _, line in series for _, v in line if v is not None]
    if not values:
        return ""
    lo, hi, ticks, fmt = _axis(values, unit, from_zero)
    y = _y(lo, hi)
    svg = _frame(page, title, ticks, fmt, y)
    legend = []
    for cls, label, line in series:
        d = _path(page, line, y)
        if d:
            svg.append(f'<path class="series {cls}" d="{d}"><title>{esc(label)}</title></path>')
            last = next((v for _, v in reversed(line) if v is not None), None)
            legend.append(
                f'<span class="{cls.split()[0]}"><i></i>{esc(label)}: {esc(fmt(last) if last is not None else numbers.NONE)}</span>'
            )
    svg.append("</svg>")
    return f'<figure class="chart">{"".join(svg)}<figcaption class="legend">{"".join(legend)}</figcaption></figure>'


def _version_line(page: Page, which: str, value: Callable[[Mapping[str, Any] | None], float | None]) -> Line:
    t0 = page.state.started_at
    return [(float(p["at"]) - t0, value(p.get(which))) for p in page.points]


def _field(name: str) -> Callable[[Mapping[str, Any] | None], float | None]:
    def get(v: Mapping[str, Any] | None) -> float | None:
        x = (v or {}).get(name)
        return float(x) if isinstance(x, (int, float)) else None

    return get


def _both(
    page: Page, value: Callable[[Mapping[str, Any] | None], float | None], suffix: str = "", cls: str = ""
) -> list[tuple[str, str, Line]]:
    """The stable and the candidate line of one value."""
    return [
        (f"{which}{cls}", f"{which} {version}{suffix}", _version_line(page, which, value))
        for which, version in (("stable", page.stable_version), ("candidate", page.candidate_version))
    ]


def version_charts(page: Page) -> str:
    """Each version's error rate, p50/p99 latency and accuracy at every analysis."""
    latency = _both(page, _field("p99Ms"), " p99") + _both(page, _field("p50Ms"), " p50", " p50")
    charts = [
        version_chart(
            page, "error rate per analysis (the step's window so far)", "rate", _both(page, error_rate)
        ),
        version_chart(page, "latency per analysis (p99 solid, p50 dashed)", "ms", latency),
        version_chart(
            page,
            "accuracy per analysis (labels that arrived)",
            "rate",
            _both(page, accuracy),
            from_zero=False,
        ),
    ]
    return "\n".join(x for x in charts if x)


def check_chart(page: Page, name: str, info: Mapping[str, Any]) -> str:
    """One check's estimate per analysis, its confidence bounds as a band, and the
    tolerated region as a band with its limit."""
    t0 = page.state.started_at
    unit = str(info.get("unit") or "value")
    rows: list[tuple[float, str, float | None, float | None, float | None]] = []
    for p in page.points:
        v = (p.get("checks") or {}).get(name)
        if not isinstance(v, (list, tuple)) or len(v) < 4:
            continue
        t = float(p["at"]) - t0
        if len(v) >= 5 and v[4] != info.get("tag"):
            rows.append((t, str(v[0]), None, None, None))  # another bound's numbers: a gap
        else:
            rows.append((t, str(v[0]), _num(v[1]), _num(v[2]), _num(v[3])))
    tol = info.get("tolerance") if isinstance(info.get("tolerance"), (list, tuple)) else None
    limits = [float(x) for x in tol or () if isinstance(x, (int, float))]
    # The axis spans the estimates, the limits and the latest bounds: early bounds are wide
    # (few samples) and are cut at the chart's edge rather than flattening everything else.
    values = [r[2] for r in rows if r[2] is not None] + limits
    measured = [r for r in rows if any(v is not None for v in r[2:])]
    values += [v for v in measured[-1][3:] if v is not None] if measured else []
    if not rows or not values:
        return ""
    signed = str(info.get("quantity") or "").startswith("candidate - stable")
    lo, hi, ticks, _ = _axis(values, unit, from_zero=False)
    y = _y(lo, hi)

    def fmt(v: float) -> str:
        return numbers.in_unit(v, unit, signed)

    quantity = str(info.get("quantity") or "")
    svg = _frame(page, f"{name}: {quantity}" if quantity else name, ticks, fmt, y)
    words = ""
    if tol is not None and len(tol) == 2:
        t_lo = _num(tol[0])
        t_hi = _num(tol[1])
        top, bottom = y(hi if t_hi is None else t_hi), y(lo if t_lo is None else t_lo)
        svg.append(
            f'<rect class="tolerated" x="{LEFT}" y="{top:.1f}" width="{W - LEFT - RIGHT}" height="{max(bottom - top, 0):.1f}">'
            f"<title>tolerated: {esc(numbers.interval(t_lo, t_hi, unit, signed))}</title></rect>"
        )
        for limit in (t_lo, t_hi):
            if limit is not None:
                svg.append(
                    f'<line class="limit" x1="{LEFT}" y1="{y(limit):.1f}" x2="{W - RIGHT}" y2="{y(limit):.1f}"/>'
                )
        words = f"tolerated {numbers.interval(t_lo, t_hi, unit, signed)}"
    band = _band(page, [(t, low, up) for t, _, _, low, up in rows], y)
    if band:
        svg.append(f'<path class="ci" d="{band}"><title>confidence bounds</title></path>')
    line = _path(page, [(t, e) for t, _, e, _, _ in rows], y)
    if line:
        svg.append(f'<path class="series candidate" d="{line}"/>')
    for t, verdict, e, low, up in rows:
        if e is not None:
            tip = f"{numbers.duration(t)}: {verdict}, estimate {fmt(e)}, bounds {numbers.interval(low, up, unit, signed)}"
            svg.append(
                f'<circle class="dot {esc(verdict)}" cx="{page.x(t, W):.1f}" cy="{y(e):.1f}" r="2.5"><title>{esc(tip)}</title></circle>'
            )
    svg.append("</svg>")
    # The caption: the last analysis that measured this quantity.
    t, verdict, e, low, up = next((r for r in reversed(rows) if any(v is not None for v in r[2:])), rows[-1])
    caption = (
        f'<span class="badge {esc(verdict)}">{esc(verdict)}</span> estimate {esc(fmt(e) if e is not None else numbers.NONE)}, '
        f"bounds {esc(numbers.interval(low, up, unit, signed))}" + (f"; {esc(words)}" if words else "")
    )
    return f'<figure class="chart">{"".join(svg)}<figcaption>{caption}</figcaption></figure>'


def _num(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def check_charts(page: Page) -> str:
    """Every check with a history, in the policy's order: one chart per quantity its
    numbers measured (a check with several bounds shows the most telling one at each tick)."""
    infos = page.state.timeline.get("checks")
    if not isinstance(infos, Mapping):
        return ""
    names = [c.name for c in page.state.checks]
    names += [str(n) for n in infos if n not in set(names)]
    charts = []
    for name in names:
        kept = infos.get(name)
        for info in kept.values() if isinstance(kept, Mapping) else ():
            if isinstance(info, Mapping):
                charts.append(check_chart(page, name, info))
    return "\n".join(x for x in charts if x)
