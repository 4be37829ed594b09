"""Power you can see before a rollout: per check and step, the samples a policy can expect
at a traffic rate, whether its minimum samples are reachable in time, and the smallest
regression it detects with 95% power (docs/statistics.md, "Power").

Pure: a policy and a traffic description in, plain data out. The confidence sequences are
the judge's own (:func:`mesh_canary.core.stats.rate_cs` with the judge's prior, at the share
of the false-rollback budget the judge gives one sequence); only the power part is a normal
approximation: the difference between the arms' rates is taken at its 5% quantile in the
unlucky direction (candidate low, stable high), split between the arms in proportion to
their variances, and a regression is detectable when the judge's bound still fails at
those counts.

Supported: rate checks whose rate is the error rate or the wrong-prediction rate
(``errorRate``; ``accuracy`` on labels), with ``max``/``min``, ``maxIncrease``/
``maxDecrease`` and ``maxIncreaseRatio``. Other kinds are listed with their samples only.
Two simplifications, both conservative (the judge is at least as sharp): the difference and
ratio bounds are taken from the two arms' sequences (the judge intersects them with a
two-arm test that is tighter when the candidate's share is small), and the steps before the
judged one last ``minStepDuration`` (the fastest a rollout moves) while the judged one holds
to ``maxStepDuration`` (a regression holds its step until proven or timed out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh_canary.checks import REGISTRY
from mesh_canary.core.model import Check, Policy
from mesh_canary.core.stats import SMALL_RATE_PRIOR, rate_cs
from mesh_canary.core.verdicts import JudgeContext

POWER = 0.95
# The one-sided 95% quantile of the difference between the arms' rates.
_Z = 1.6448536269514722
# The engine's share of the budget for the last step's own window (engine.OWN_WINDOW_BUDGET).
_OWN_WINDOW_BUDGET = 0.1
_RATE_METRICS = {"errorRate": "error rate", "accuracy": "accuracy"}


@dataclass(frozen=True)
class Traffic:
    """What the rollout will see: requests per second (both versions together), stable's
    error rate and accuracy, and for labels their mean delay (exponential) and the share of
    predictions ever labelled."""

    rps: float
    error_rate: float = 0.005
    accuracy: float = 0.9
    label_delay_s: float = 0.0
    labelled: float = 1.0


@dataclass(frozen=True)
class StepPower:
    step: int  # from 1
    weight: int
    candidate: float  # expected samples the check is judged on by the step's timeout
    stable: float
    minimum: int
    reachable: bool  # the minimum samples are expected within maxStepDuration
    effect: float | None  # smallest detectable regression (rate units; None: none < 100%)
    ratio: float | None  # the same as candidate / stable


@dataclass(frozen=True)
class CheckPower:
    name: str
    metric: str
    supported: bool
    label_based: bool
    steps: tuple[StepPower, ...]
    note: str = ""

    @property
    def detectable(self) -> StepPower | None:
        """The first step by which the smallest regression is detectable (None: never)."""
        return next((s for s in self.steps if s.effect is not None and s.reachable), None)

    def detects(self, effect: float) -> bool:
        """Is a regression of ``effect`` (rate units) detected with 95% power by the end?"""
        last = self.steps[-1] if self.steps else None
        return last is not None and last.effect is not None and last.reachable and effect >= last.effect

    def words(self) -> str:
        """'errorRate: detects a rise of 0.42 points (1.84x) or more with 95% power by step 3'."""
        if not self.supported:
            return f"{self.name}: {self.note}"
        first = self.detectable
        last = self.steps[-1] if self.steps else None
        if first is None or first.effect is None or last is None or last.effect is None:
            return f"{self.name}: no regression is detectable with {POWER:.0%} power at this traffic"
        if self.metric == "accuracy":
            what = f"a drop of {100 * last.effect:.2g} points"
        else:
            what = f"a rise of {100 * last.effect:.2g} points ({_times(last.ratio)})"
        text = f"{self.name}: detects {what} or more with {POWER:.0%} power by step {last.step}"
        if first.step != last.step:
            text += f"; {100 * first.effect:.2g} points or more already by step {first.step}"
        return text


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.3g}x stable's rate"


def judged_steps(policy: Policy) -> tuple[int, ...]:
    """The weights of the judged canary steps (blue/green: its preview, mirrored)."""
    if policy.strategy == "blueGreen":
        return (policy.blue_green.mirror_percent,)
    return tuple(w for w in policy.canary.steps if w < 100)


def _stat_checks(policy: Policy) -> int:
    ctx = JudgeContext(candidate_share=0.1, alpha=0.01, min_requests=policy.analysis.min_requests)
    kinds = [REGISTRY.get(c.metric) for c in policy.analysis.checks]
    return max(sum(1 for k in kinds if k is None or k.uses_statistics(ctx)), 1)


def _objects(check: Check) -> int:
    """Sequences a rate check's budget is split over (as the judge's plan does)."""
    has_abs = check.max is not None or check.min is not None
    has_diff = check.max_increase is not None or check.max_decrease is not None
    up = check.max_increase_ratio is not None or check.max_increase is not None
    down = check.max_decrease is not None
    return max(int(has_abs or has_diff) + int(has_diff) + int(up) + int(down), 1)


def sequence_alpha(policy: Policy, check: Check) -> float:
    """The false-fail budget of one of the check's confidence sequences: the rollout's
    budget (less the last step's own window's share when evidence is carried) split over
    the checks that spend it and the check's sequences."""
    budget = 1.0 - policy.analysis.confidence
    if policy.strategy == "canary" and len(judged_steps(policy)) >= 2:
        budget *= 1.0 - _OWN_WINDOW_BUDGET
    else:
        budget /= 2 if policy.strategy == "blueGreen" else 1
    return budget / _stat_checks(policy) / _objects(check)


def _labels_arrived(rate: float, start: float, end: float, at: float, delay: float) -> float:
    """Labels arrived by ``at`` for requests at ``rate`` over [start, end] (exponential delay)."""
    if end <= start or at <= start:
        return 0.0
    end = min(end, at)
    if delay <= 0:
        return rate * (end - start)
    return rate * ((end - start) - delay * (math.exp(-(at - end) / delay) - math.exp(-(at - start) / delay)))


def expected_samples(policy: Policy, traffic: Traffic, label_based: bool) -> list[tuple[float, float]]:
    """Per judged step k: (candidate, stable) samples by its timeout, the steps before it
    having moved on at minStepDuration (labelled ones for label-based checks)."""
    weights = judged_steps(policy)
    lo, hi = _durations(policy)
    out = []
    for k in range(len(weights)):
        spans, t = [], 0.0
        for i, w in enumerate(weights[: k + 1]):
            d = hi if i == k else lo
            spans.append((w / 100.0, t, t + d))
            t += d
        cand = stab = 0.0
        for share, a, b in spans:
            c_share, s_share = (share, 1.0) if policy.strategy == "blueGreen" else (share, 1.0 - share)
            if label_based:
                f = traffic.labelled * traffic.rps
                cand += _labels_arrived(f * c_share, a, b, t, traffic.label_delay_s)
                stab += _labels_arrived(f * s_share, a, b, t, traffic.label_delay_s)
            else:
                cand += traffic.rps * c_share * (b - a)
                stab += traffic.rps * s_share * (b - a)
        out.append((cand, stab))
    return out


def _durations(policy: Policy) -> tuple[float, float]:
    if policy.strategy == "blueGreen":
        bg = policy.blue_green
        return bg.preview_duration_s, max(bg.preview_duration_s, policy.canary.max_step_duration_s)
    return policy.canary.min_step_duration_s, policy.canary.max_step_duration_s


def _fails(check: Check, p0: float, p: float, n_c: float, n_s: float, alpha: float) -> bool:
    """Does some bound of ``check`` fail at the unlucky counts when the event rate (errors,
    or wrong predictions) is ``p`` for the candidate and ``p0`` for stable?"""
    # The difference of the two rates at its 5% quantile, split between the arms in
    # proportion to their variances (the most likely way to be that unlucky).
    v_c = p * (1 - p) / n_c
    v_s = p0 * (1 - p0) / n_s if n_s > 0 else 0.0
    sd = math.sqrt(v_c + v_s)
    shift = _Z / sd if sd > 0 else 0.0
    s_c = max(n_c * (p - shift * v_c), 0.0)
    s_s = min(n_s * (p0 + shift * v_s), n_s)
    c_lo, _ = rate_cs(s_c, n_c, alpha, SMALL_RATE_PRIOR)
    _, s_hi = rate_cs(s_s, n_s, alpha, SMALL_RATE_PRIOR)
    accuracy = check.metric == "accuracy"
    upper_abs = (1.0 - check.min) if accuracy and check.min is not None else (None if accuracy else check.max)
    d = check.max_decrease if accuracy else check.max_increase
    if upper_abs is not None and c_lo > upper_abs:
        return True
    if d is not None and n_s > 0 and c_lo - s_hi > d:
        return True
    r = None if accuracy else check.max_increase_ratio
    return r is not None and n_s > 0 and s_hi > 0 and c_lo / s_hi > 1.0 + r


def smallest_effect(check: Check, p0: float, n_c: float, n_s: float, alpha: float) -> float | None:
    """The smallest rise of the event rate above ``p0`` that the check fails with 95% power
    at these samples (None: not even at a rate of 1)."""
    if n_c < 1 or not _fails(check, p0, 1.0 - 1e-9, n_c, n_s, alpha):
        return None
    lo, hi = p0, 1.0 - 1e-9
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _fails(check, p0, mid, n_c, n_s, alpha) else (mid, hi)
    return hi - p0


def check_power(policy: Policy, check: Check, traffic: Traffic) -> CheckPower:
    kind = REGISTRY.get(check.metric)
    label_based = kind is not None and kind.label_based
    minimum = (
        (check.min_labeled or policy.analysis.min_requests) if label_based else policy.analysis.min_requests
    )
    samples = expected_samples(policy, traffic, label_based)
    weights = judged_steps(policy)
    supported = check.metric in _RATE_METRICS and (check.quantile is None)
    p0 = traffic.error_rate if check.metric == "errorRate" else 1.0 - traffic.accuracy
    alpha = sequence_alpha(policy, check)
    steps = []
    relative = check.is_relative
    for k, ((n_c, n_s), w) in enumerate(zip(samples, weights, strict=True)):
        reachable = n_c >= minimum and (not relative or n_s >= minimum)
        effect = smallest_effect(check, p0, n_c, n_s, alpha) if supported else None
        ratio = None if effect is None or p0 <= 0 else (p0 + effect) / p0
        steps.append(StepPower(k + 1, w, n_c, n_s, minimum, reachable, effect, ratio))
    note = "" if supported else _not_estimated(check)
    return CheckPower(check.name, check.metric, supported, label_based, tuple(steps), note)


def _not_estimated(check: Check) -> str:
    if check.metric == "latency" and check.quantile is not None:
        return (
            "not estimated: a quantile is bracketed by histogram buckets, so a rise that stays "
            "inside one bucket is never proven (only a step timeout stops it); a slowerThan "
            "check at a bucket bound is the provable form"
        )
    return "not estimated: the smallest detectable effect is computed for errorRate and accuracy"


def plan(policy: Policy, traffic: Traffic) -> list[CheckPower]:
    """Every check's power at ``traffic``."""
    return [check_power(policy, c, traffic) for c in policy.analysis.checks]


def unreachable(policy: Policy, traffic: Traffic) -> list[str]:
    """Warnings where the policy cannot even reach its minimum samples at this traffic: a
    step whose checks need them before it may advance (label-based ones only before
    promotion), so every rollout would hold it to maxStepDuration."""
    out = []
    for cp in plan(policy, traffic):
        steps = cp.steps[-1:] if cp.label_based else cp.steps
        for s in steps:
            if not s.reachable:
                what = "labelled predictions" if cp.label_based else "requests"
                out.append(
                    f"{cp.name}: step {s.step} at {s.weight}% expects {s.candidate:.0f} candidate and "
                    f"{s.stable:.0f} stable {what} by maxStepDuration at {traffic.rps:g} req/s, "
                    f"fewer than the {s.minimum} it needs: it cannot advance and meets onTimeout"
                )
                break
    return out
