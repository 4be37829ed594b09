"""custom: a user's PromQL giving one number per version, judged as a point value against
its bounds (no counts behind it, so no statistics)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mesh_canary.checks.base import CheckKind, Judging
from mesh_canary.checks.bounds import (
    Est,
    Outcome,
    bounds_of,
    difference,
    div,
    finite_or_none,
    inconclusive,
    judge_bound,
)
from mesh_canary.checks.evidence import Evidence, custom_value, num, stable_counts
from mesh_canary.checks.words import plain
from mesh_canary.core.model import Check
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict

# Placeholders a query may use besides metrics.variables (as the Prometheus adapter fills them).
BUILTIN_PLACEHOLDERS = frozenset({"version", "window"})
PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHECK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _evaluate(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
    """A user's value per version: no counts behind it, so no statistics. Judged as a point
    value against its bounds once both versions have their minimum requests: it fails only
    when the value is present and outside a bound."""
    window = ev.current
    c = custom_value(window.candidate.custom.get(check.name))
    if c is None:
        return inconclusive(check, f"no data for the candidate: no value for {check.name!r}")
    stable_vc = stable_counts(window, ctx)
    s = custom_value(stable_vc.custom.get(check.name))
    bounds = bounds_of(check)
    if not bounds:
        return inconclusive(check, "no bound to judge", enough=True)
    point = Est(c, c, c, 1.0)
    stable = Est(s, s, s, 1.0) if s is not None else None
    diff = difference(point, stable, 1.0) if stable is not None else None
    ratio = Est(div(c, s), div(c, s), div(c, s), 1.0) if s is not None else None
    outcomes = [judge_bound(k, v, point, diff, ratio, "value") for k, v in bounds]
    relative = any(o.relative for o in outcomes)
    need = ctx.min_requests
    n_c = num(window.candidate.requests)
    n_s = num(stable_vc.requests)
    enough = n_c >= need and (not relative or n_s >= need)
    verdict, shown = _verdict(outcomes, enough)
    broken = any(o.failed for o in outcomes)
    values = f"{check.name} {plain(c)}" + (f" vs stable {plain(s)}" if s is not None and relative else "")
    if shown.est is None:
        reason = f"{values}: no value for stable to compare with ({shown.words})"
    else:
        state = "outside" if shown.failed else "within"
        reason = f"{values} is {state} the bound {shown.words} (a point value: no confidence bounds)"
    if not enough:
        reason += f"; waiting for {need} requests per version"
    e = shown.est
    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=verdict,
        reason=reason,
        estimate=finite_or_none(e.est) if e else c,
        stable_estimate=s,
        lower=finite_or_none(e.lo) if e else None,
        upper=finite_or_none(e.hi) if e else None,
        bound=shown.words,
        quantity=f"{shown.quantity} ({check.name})",
        samples=n_c,
        enough_data=enough,
        leaning_fail=verdict is Verdict.INCONCLUSIVE and broken,
    )


def _verdict(outcomes: list[Outcome], enough: bool) -> tuple[Verdict, Outcome]:
    """Fails only when the value is present and outside a bound (with enough requests)."""
    broken = [o for o in outcomes if o.failed]
    if broken and enough:
        return Verdict.FAIL, broken[0]
    if enough and all(o.passed for o in outcomes):
        return Verdict.PASS, outcomes[0]
    return Verdict.INCONCLUSIVE, (broken or [o for o in outcomes if o.est is None] or outcomes)[0]


def _rules(check: Mapping[str, Any], variables: frozenset[str]) -> list[tuple[str, str]]:
    """A custom check needs a name usable in a query's answer and a query whose
    placeholders are known."""
    out = []
    name = check.get("name")
    if "name" not in check:
        out.append(("name", "this required field is missing: a custom check needs a name"))
    elif isinstance(name, str) and _CHECK_NAME.fullmatch(name) and not _IDENT.fullmatch(name):
        out.append(
            (
                "name",
                f"{name!r} is not a valid custom check name: use letters, digits and _, "
                "not starting with a digit",
            )
        )
    query = check.get("query")
    if "query" not in check:
        out.append(("query", "this required field is missing: a custom check needs a query"))
    elif isinstance(query, str) and query:
        used = [m.group(1).strip() for m in PLACEHOLDER.finditer(query)]
        builtin = " and ".join(sorted(BUILTIN_PLACEHOLDERS))
        for placeholder in dict.fromkeys(used):
            if placeholder not in BUILTIN_PLACEHOLDERS | variables:
                out.append(
                    (
                        "query",
                        f"the placeholder {{{{ {placeholder} }}}} is neither built in "
                        f"({builtin}) nor in spec.metrics.variables",
                    )
                )
    return out


KIND = CheckKind(
    name="custom",
    title="custom value",
    bounds=("max", "min", "maxIncrease", "maxIncreaseRatio", "maxDecrease"),
    qualifiers=("query",),
    signals=frozenset({"custom"}),
    evaluate=_evaluate,
    counts=lambda check, c: [("requests", c.requests)],
    never_negative=False,
    uses_statistics=lambda ctx: False,
    rules=_rules,
)
