"""What checks are judged on: counts read safely, and the evidence of a whole rollout."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mesh_canary.core.model import Check
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.verdicts import JudgeContext

INF = math.inf


def num(x: float | None) -> float:
    """A count as a float; None, NaN, infinities and negatives (a broken exporter) become 0."""
    if x is None:
        return 0.0
    x = float(x)
    return x if 1e-9 <= x < INF else 0.0  # below 1e-9: float dust, as in stats


def custom_value(x: float | None) -> float | None:
    """A custom value: None when missing, NaN or infinite (no data), else the float."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def stable_counts(window: Observation, ctx: JudgeContext) -> VersionCounts:
    """What relative bounds compare with: stable in the same window, or, after a blue/green
    switch, stable's preview window."""
    return ctx.stable_baseline.stable if ctx.stable_baseline is not None else window.stable


def concurrent(window: Observation, ctx: JudgeContext) -> bool:
    """Did both arms' counts come from the same stream of requests (same window)?"""
    return ctx.stable_baseline is None or ctx.stable_baseline.stable == window.stable


def labelled(counts: VersionCounts) -> float:
    """Labelled predictions (ground truth received) in the window."""
    return sum(num(c) for c in counts.confusion.values())


def latency_histograms(window: Observation, ctx: JudgeContext) -> tuple[Histogram | None, Histogram | None]:
    return window.candidate.latency_ms, stable_counts(window, ctx).latency_ms


@dataclass(frozen=True)
class Evidence:
    """What checks are judged on.

    ``strata`` are the windows whose evidence adds up: the completed canary steps' windows
    (``ctx.earlier_windows``) and then the current one, or just the current one. ``window``
    is their sum (per-version counts over the whole rollout so far); ``windows`` is how many
    of the engine's per-window budgets the judge may spend on it at once.
    """

    current: Observation
    window: Observation
    strata: tuple[Observation, ...]
    windows: int


def gather_evidence(window: Observation, ctx: JudgeContext) -> Evidence:
    """The evidence a canary step is judged on.

    Adding earlier steps is sound when each version's behaviour does not depend on its
    traffic weight (it is the same model whatever share it serves). It needs the whole
    history: with every completed step present, one sequence runs from the first request
    to the last and may spend the whole rollout's budget (every judged window's share).
    Blue/green windows, mirrored previews and incomplete histories (a state saved without
    them) are judged on their own window at ``ctx.alpha``, as before.
    """
    earlier = tuple(w for _, w in ctx.earlier_windows)
    whole = (
        ctx.stable_baseline is None
        and not ctx.mirrored
        and len(earlier) == ctx.step_index
        and not any(w.problem for w in earlier)
    )
    if not whole:
        return Evidence(window, window, (window,), 1)
    strata = (*earlier, window)
    total = window
    if earlier:
        total = Observation(
            earlier[0].since,
            window.at,
            matched_stable(strata),
            _sum_counts([w.candidate for w in strata]),
        )
    # Steps are rising percentages ending at 100, and every step but the last is judged.
    return Evidence(window, total, strata, max(ctx.step_count - 1, 1))


def _profile_weights(cand: Sequence[float], stable: Sequence[float]) -> tuple[list[float], float]:
    """Post-stratification weights that give stable's strata the candidate's time profile,
    and the factor that shrinks stable's counts to their Kish effective sample size.

    Stratum k gets w_k = (c_k / C) / (s_k / S): reweighted, stable's counts come from the
    same mix of time as the candidate's (strata with no stable data are left out and the
    rest renormalised). Unequal weights leave less information than S requests, so the
    counts are scaled by n_eff / S, with n_eff = (sum w_k s_k)^2 / sum w_k^2 s_k (Kish 1965).
    """
    pairs = [(num(c), num(s)) for c, s in zip(cand, stable, strict=True)]
    c_total = sum(c for c, s in pairs if s > 0)
    s_total = sum(s for _, s in pairs)
    if c_total <= 0 or s_total <= 0:
        return [1.0] * len(pairs), 1.0
    weights = [(c / c_total) / (s / s_total) if s > 0 else 0.0 for c, s in pairs]
    weighted = sum(w * s for w, (_, s) in zip(weights, pairs, strict=True))
    squares = sum(w * w * s for w, (_, s) in zip(weights, pairs, strict=True))
    n_eff = weighted * weighted / squares if squares > 0 else s_total
    return weights, min(n_eff / s_total, 1.0)


def matched_stable(strata: Sequence[Observation]) -> VersionCounts:
    """Stable's counts over the strata, time-matched to the candidate's.

    The candidate's traffic share rises step by step, so most of its requests come late and
    most of stable's early: pooled per version, a change both versions share (a feature
    store degrading, the input mix shifting) would look like a difference between them
    (Simpson's paradox). Post-stratified, stable is compared over the same time mix. Each
    signal has its own profile (labels arrive later than requests). One stratum: unchanged.
    """
    if len(strata) == 1:
        return strata[0].stable
    cand = [w.candidate for w in strata]
    stab = [w.stable for w in strata]

    def hist_total(h: Histogram | None) -> float:
        return num(h.total) if h is not None and h.counts else 0.0

    # Each signal is scaled by its own profile and summed over the strata (as scale_counts
    # then _sum_counts would, the same operations in the same order), and only that signal.
    def factors(total: Callable[[VersionCounts], float]) -> list[float]:
        weights, g = _profile_weights([total(c) for c in cand], [total(s) for s in stab])
        return [w * g for w in weights]

    def summed(values: Sequence[float], fs: list[float]) -> float:
        return sum(num(v * f) for v, f in zip(values, fs, strict=True))

    def summed_maps(maps: Sequence[dict[Any, float]], fs: list[float]) -> dict[Any, float]:
        out: dict[Any, float] = {}
        for m, f in zip(maps, fs, strict=True):
            for k, v in m.items():
                out[k] = out.get(k, 0.0) + num(v * f)
        return out

    def summed_hists(hs: Sequence[Histogram | None], fs: list[float]) -> Histogram | None:
        like = hs[-1]
        if like is None:
            return None
        sums = [0.0] * len(like.counts)
        for h, f in zip(hs, fs, strict=True):
            if h is not None and h.bounds == like.bounds:
                for i, c in enumerate(h.counts):
                    sums[i] += num(c * f)
        return Histogram(like.bounds, tuple(sums))

    by_requests = factors(lambda vc: vc.requests)

    def feature(name: str) -> Histogram | None:
        hs = [vc.features.get(name) for vc in stab]
        return summed_hists(hs, factors(lambda vc: hist_total(vc.features.get(name))))

    features = {name: feature(name) for name in strata[-1].stable.features}
    return VersionCounts(
        requests=summed([vc.requests for vc in stab], by_requests),
        errors=summed([vc.errors for vc in stab], by_requests),
        latency_ms=summed_hists(
            [vc.latency_ms for vc in stab], factors(lambda vc: hist_total(vc.latency_ms))
        ),
        confusion=summed_maps(
            [vc.confusion for vc in stab], factors(lambda vc: sum(num(v) for v in vc.confusion.values()))
        ),
        predictions=summed_maps(
            [vc.predictions for vc in stab], factors(lambda vc: sum(num(v) for v in vc.predictions.values()))
        ),
        features={k: h for k, h in features.items() if h is not None},
        custom=dict(stab[-1].custom),
    )


def scale_counts(counts: VersionCounts, f: float) -> VersionCounts:
    """Every count multiplied by ``f``, as it is (a broken count stays broken, to be
    reported); custom values are not counts and are kept."""

    def hist(h: Histogram) -> Histogram:
        return Histogram(h.bounds, tuple(c * f for c in h.counts))

    return replace(
        counts,
        requests=counts.requests * f,
        errors=counts.errors * f,
        latency_ms=hist(counts.latency_ms) if counts.latency_ms is not None else None,
        confusion={k: v * f for k, v in counts.confusion.items()},
        predictions={k: v * f for k, v in counts.predictions.items()},
        features={k: hist(h) for k, h in counts.features.items()},
    )


def _sum_counts(parts: Sequence[VersionCounts]) -> VersionCounts:
    """Counts over consecutive windows added up (histograms with other bounds than the
    latest window's are left out: their buckets cannot be added)."""
    last = parts[-1]

    def hist(hs: Sequence[Histogram | None], like: Histogram | None) -> Histogram | None:
        if like is None:
            return None
        sums = [0.0] * len(like.counts)
        for h in hs:
            if h is not None and h.bounds == like.bounds:
                for i, c in enumerate(h.counts):
                    sums[i] += num(c)
        return Histogram(like.bounds, tuple(sums))

    def add(maps: Sequence[dict[Any, float]]) -> dict[Any, float]:
        out: dict[Any, float] = {}
        for m in maps:
            for k, v in m.items():
                out[k] = out.get(k, 0.0) + num(v)
        return out

    return VersionCounts(
        requests=sum(num(p.requests) for p in parts),
        errors=sum(num(p.errors) for p in parts),
        latency_ms=hist([p.latency_ms for p in parts], last.latency_ms),
        confusion=add([p.confusion for p in parts]),
        predictions=add([p.predictions for p in parts]),
        features={
            k: h for k, h0 in last.features.items() if (h := hist([p.features.get(k) for p in parts], h0))
        },
        custom=dict(last.custom),
    )


def min_samples(check: Check, ctx: JudgeContext, labels: bool = False) -> int:
    """Samples per version a verdict needs: labelled ones (``minLabeled``) for label-based
    checks, else the analysis's minimum requests."""
    if labels and check.min_labeled is not None:
        return check.min_labeled
    return ctx.min_requests
