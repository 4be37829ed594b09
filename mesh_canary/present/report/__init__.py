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

import re
from collections.abc import Mapping
from typing import Any

from mesh_canary.core.engine import RolloutState, policy_fingerprint, schedule
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import PolicyError, load_policy, resource_document
from mesh_canary.errors import BadInput
from mesh_canary.kube.names import API_VERSION, KIND
from mesh_canary.present.report import charts, tables, ticks
from mesh_canary.present.report.model import Page, esc, mapping
from mesh_canary.present.report.style import CSS

__all__ = [
    "ReportError",
    "default_report_name",
    "policy_of_resource",
    "render_main",
    "render_page",
    "render_report",
    "render_resource_report",
    "resource_page",
    "state_page",
]


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


def state_page(
    state: Mapping[str, Any],
    *,
    policy: Policy | None = None,
    status: Mapping[str, Any] | None = None,
    source: str = "",
    generated_at: float | None = None,
) -> Page:
    """What the page of one rollout shows (see `render_report`); ReportError for a state
    that cannot be read."""
    try:
        parsed = RolloutState.from_dict(dict(state))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ReportError(f"not a readable rollout state ({type(e).__name__}: {e})") from e
    return Page.of(parsed, policy, dict(status or {}), source, generated_at)


def resource_page(obj: Mapping[str, Any], *, source: str = "", generated_at: float | None = None) -> Page:
    """What the page of a ModelRollout read from the API shows (its ``status.rollout`` and spec)."""
    meta = mapping(obj.get("metadata"))
    status = mapping(obj.get("status"))
    name = f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"
    state = status.get("rollout")
    if not isinstance(state, Mapping):
        phase = status.get("phase") or "Pending"
        raise ReportError(f"ModelRollout {name} has no rollout recorded in its status yet (phase {phase})")
    return state_page(
        state,
        policy=policy_of_resource(obj, str(state.get("policyFingerprint") or "")),
        status=status,
        source=source or f"ModelRollout {name}",
        generated_at=generated_at,
    )


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
    page = state_page(state, policy=policy, status=status, source=source, generated_at=generated_at)
    return render_page(page)


def render_resource_report(
    obj: Mapping[str, Any], *, source: str = "", generated_at: float | None = None
) -> str:
    """The page for a ModelRollout read from the API (its ``status.rollout`` and spec)."""
    return render_page(resource_page(obj, source=source, generated_at=generated_at))


def policy_of_resource(obj: Mapping[str, Any], fingerprint: str = "") -> Policy | None:
    """The policy of the rollout recorded in a ModelRollout's status.

    The spec may have changed since (an edit not yet reconciled, an invalid edit): the
    spec the controller applied (``status.appliedSpec``) is tried too, and only a policy
    whose fingerprint matches the recorded rollout is used.
    """
    specs = [obj.get("spec"), mapping(obj.get("status")).get("appliedSpec")]
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


# --------------------------------------------------------------------------- the page


def title_of(page: Page) -> str:
    return f"Rollout {page.state.name}: {page.stable_version} → {page.candidate_version}"


def render_main(page: Page, controls: str = "") -> str:
    """The page's content (the dashboard swaps it in place while the rollout runs)."""
    st = page.state
    step = f"step {st.step_index + 1}" + (f" of {len(schedule(page.policy))}" if page.policy else "")
    parts = [
        f"<h1>{esc(title_of(page))}</h1>",
        f'<p class="sub">{esc(st.strategy)} rollout · phase {esc(st.phase.value)} · {esc(step)}'
        f" · candidate at {esc(st.weights.candidate)}% · {esc(st.ticks)} analyses</p>",
        controls,
        tables.decision(page),
        tables.facts(page),
        "<h2>Candidate weight over time</h2>",
        charts.weight_chart(page),
    ]
    if page.points:
        parts += [
            "<h2>Per-version metrics at every analysis</h2>",
            f'<div class="charts">{ticks.version_charts(page)}</div>',
            "<h2>Every check at every analysis</h2>",
            '<p class="note">Each check\'s estimate (line) with its confidence bounds (shaded) and the '
            "tolerated region (green band, dashed limit); a dot per analysis, coloured by its verdict.</p>",
            f'<div class="charts">{ticks.check_charts(page)}</div>',
        ]
    else:
        parts.append(charts.metric_charts(page))
    parts += [
        "<h2>Steps</h2>",
        tables.steps_table(page),
        "<h2>Latest verdict of every check</h2>",
        tables.checks_table(page),
        tables.events(page),
        tables.conditions(page),
        tables.history(page),
        tables.footer(page),
    ]
    return "\n".join(p for p in parts if p)


def render_page(page: Page, *, nav: str = "", controls: str = "", script: str = "", src: str = "") -> str:
    """The whole HTML document for one rollout: frozen (the report) unless the dashboard
    adds its navigation, buttons and the script that keeps it up to date."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title_of(page))}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        nav,
        f'<main id="page" data-src="{esc(src)}">{render_main(page, controls)}</main>'
        if src
        else f'<main id="page">{render_main(page, controls)}</main>',
        script,
        "</body>",
        "</html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
