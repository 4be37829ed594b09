"""The report page's style sheet (inline: the page loads nothing from elsewhere)."""

CSS = """
:root { --pass: #1a7f37; --fail: #cf222e; --open: #9a6700; --stable: #0969da; --cand: #bc4c00;
        --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       margin: 0; padding: 16px 24px; line-height: 1.45; }
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
.badge.open, .badge.inconclusive, .badge.advanced { background: var(--open); }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin: 8px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.why { min-width: 28em; overflow-wrap: anywhere; }
.badge, td.nw { white-space: nowrap; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 560px), 1fr)); gap: 8px 24px; }
figure.chart { margin: 0; }
figure.chart figcaption { font-size: 0.9em; }
.legend span { white-space: nowrap; }
.legend span i { display: inline-block; width: 18px; height: 3px; vertical-align: middle; margin-right: 4px;
                 background: var(--muted); }
.legend span.stable i { background: var(--stable); }
.legend span.candidate i { background: var(--cand); }
.table-wrap { overflow-x: auto; }
nav.top { display: flex; gap: 16px; align-items: baseline; flex-wrap: wrap; }
.controls button { font: inherit; padding: 4px 14px; margin-right: 8px; border: 1px solid var(--line);
                   border-radius: 6px; background: #f6f8fa; cursor: pointer; }
.controls button.abort { color: var(--fail); border-color: var(--fail); }
#live { color: var(--muted); font-size: 0.85em; }
svg path.series { fill: none; stroke-width: 2; }
svg .series.p50 { stroke-dasharray: 5 3; stroke-width: 1.5; }
svg .stepline { stroke: #8c959f; stroke-dasharray: 2 3; }
svg .ci { fill: var(--cand); fill-opacity: 0.18; stroke: none; }
svg .tolerated { fill: var(--pass); fill-opacity: 0.10; }
svg .limit { stroke: var(--pass); stroke-dasharray: 6 3; }
svg .dot.fail { fill: var(--fail); stroke: var(--fail); }
svg .dot.pass { fill: var(--pass); stroke: var(--pass); }
svg .dot.inconclusive { fill: var(--cand); }
.note { color: var(--muted); font-size: 0.9em; }
svg { display: block; width: 100%; height: auto; font-size: 13px; }
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
