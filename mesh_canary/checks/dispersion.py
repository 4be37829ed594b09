"""Overdispersion: counts that vary more from interval to interval than independent
requests would (see docs/statistics.md, "Bursts").

The confidence sequences treat every request as an independent trial. Real errors come in
bursts (a bad pod, a GC pause, a retry storm): a 60-second burst puts a dozen errors in one
interval, and judged request by request it looks like proof that the version is worse,
although its long-run rate is not. So each rate check measures, tick by tick, how much its
counts vary between analysis intervals beyond what independent requests give, and
discounts its evidence by that factor (quasi-likelihood: Wedderburn 1974; McCullagh and
Nelder, *Generalized Linear Models*, 1989, section 4.5, as in quasi-binomial regression):

* an interval closes once it holds at least :data:`MIN_INTERVAL_EVENTS` events (fewer make
  Pearson's terms too skewed); the interval still open is looked at too, provisionally, so
  a burst counts while it happens, and a step's last interval is closed when it ends;
* each interval is compared with a *prediction from the intervals before it* (prequential,
  Dawid 1984), shrunk towards "both versions alike" by :data:`PRIOR_EVENTS` pseudo-events:
  fitted to all the data, a burst early in a rollout would explain itself away;
* the *split* statistic: given the interval's events, how many came from the candidate,
  against the share its requests and the predicted rates give (a burst in one version
  shows here; a change both versions share does not);
* the *own* statistic: each version's events against its predicted rate (shared bursts and
  real changes show here too: an absolute bound should see those as variation);
* an interval in which the candidate has far more events than predicted (beyond the
  prediction plus :data:`BURST_SDS` standard deviations) is part of a burst: its excess
  over the prediction is set aside (not judged against the candidate), as long as the
  candidate has stood out for at most the policy's ``analysis.burstDuration``. An
  elevation that outlasts it is no burst: what was set aside is restored and the rest of
  it is judged in full, so a real regression is delayed by at most ``burstDuration``.
  Under independent requests an interval that far out almost never happens. A quasi-
  likelihood discount alone is not enough: a burst's variance grows with the square of the
  traffic, so at high traffic one burst outweighs any constant factor;
* a split term counts only where the candidate is predicted :data:`MIN_SPLIT_EXPECTED`
  events or the interval stands out (Cochran 1954): at a fraction of an event predicted, a
  regression read against a prediction still learning it would count as dispersion;
* the dispersion is ``(X^2 + K) / (df + K)`` with :data:`PRIOR_INTERVALS` pseudo-intervals
  at 1, never below 1: independent traffic keeps it near 1, a lone odd interval does not
  swing it far, bursty traffic raises it.

Dividing counts by the dispersion keeps the rates and shares and shrinks the evidence, as
an effective sample size. It is an approximation (the dispersion is estimated, not known);
the benchmark's burst scenarios measure what it holds and what it costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mesh_canary.core.frozen import replace
from mesh_canary.core.verdicts import Tally

MIN_INTERVAL_EVENTS = 10.0
PRIOR_INTERVALS = 4.0
PRIOR_EVENTS = 10.0
BURST_SDS = 3.0
# Intervals that only build the prediction: with nothing before them, a candidate broken
# from its first request and a burst look the same, and a broken one must roll back at once.
MIN_HISTORY = 0
# The interval still open is looked at once it has this many events.
_MIN_OPEN_EVENTS = 3.0
# An arm's own Pearson term needs this many expected events in the interval.
_MIN_EXPECTED = 2.0
# The split's Pearson term needs the candidate to be predicted this many of the interval's
# events (Cochran's rule of thumb for chi-squared cells: expected counts of at least 5).
MIN_SPLIT_EXPECTED = 5.0

Counts = tuple[float, float, float, float]  # events_c, trials_c, events_s, trials_s
_ZERO: Counts = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Dispersion:
    """How much to discount a check's evidence, and the tally to carry to the next tick."""

    split: float  # for the two-arm tests (how events split between the versions)
    own: float  # for each version's own sequences
    tally: Tally
    clipped: tuple[float, ...] = ()  # candidate events set aside as bursts, per step

    def set_aside(self, step: int) -> float:
        return self.clipped[step] if 0 <= step < len(self.clipped) else 0.0

    def note(self) -> str | None:
        """A sentence for the reason when the discount matters."""
        worst = max(self.split, self.own)
        if worst < 1.5:
            return None
        return (
            f"counts vary {worst:.1f}x more between intervals than independent requests would "
            "(bursts): the evidence is discounted by that factor"
        )


def unchanged(name: str, step: int, before: Tally | None) -> Dispersion:
    """No discount and nothing set aside (one window, or nothing to split)."""
    tally = before or Tally(name, step)
    return Dispersion(1.0, 1.0, replace(tally, bursting=False) if tally.bursting else tally)


def _phi(x2: float, df: int) -> float:
    return max(1.0, (x2 + PRIOR_INTERVALS) / (df + PRIOR_INTERVALS))


def _four(values: tuple[float, ...]) -> Counts:
    return (values[0], values[1], values[2], values[3]) if len(values) == 4 else _ZERO


def _minus(a: Counts, b: Counts) -> Counts:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3])


@dataclass(frozen=True)
class Clock:
    """When this tick's counts end, when the current step began (seconds on the driver's
    clock), and the policy's burstDuration."""

    at: float
    step_since: float
    burst_s: float


def measure(
    name: str,
    step: int,
    counts: Counts,
    before: Tally | None,
    clock: Clock,
    finished: Counts | None = None,
) -> Dispersion:
    """The dispersion after this tick.

    ``counts``: the step's cumulative ``(events_c, trials_c, events_s, trials_s)`` of the
    events the check tests; ``before``: the previous tick's tally; ``finished``: the final
    cumulative counts of the step ``before`` was in, when that step has ended (its last
    interval, however short, is closed with them: a burst at a step's end counts).
    """
    tally = before if before is not None and before.name == name else Tally(name, step)
    if finished is not None and tally.step != step and len(tally.last) == 4:
        last = _minus(finished, _four(tally.last))
        if _judgeable(last, _MIN_OPEN_EVENTS):
            tally = _closed(tally, finished, last, replace(clock, at=clock.step_since))
    last_seen = _four(tally.last)
    if tally.step != step or any(c < was for c, was in zip(counts, last_seen, strict=True)):
        # A new step (or a window that started again): its counts start from zero.
        tally = replace(tally, step=step, last=_ZERO, opened_at=clock.step_since)
    interval = _minus(counts, _four(tally.last))
    if not _judgeable(interval, _MIN_OPEN_EVENTS):
        return _dispersion(tally, tally)
    closed = _closed(tally, counts, interval, clock)
    # The open interval counts now (a burst cannot prove anything before it is seen), but
    # is carried only once it has closed.
    return _dispersion(closed, closed if interval[0] + interval[2] >= MIN_INTERVAL_EVENTS else tally)


def _dispersion(now: Tally, keep: Tally) -> Dispersion:
    # A burst is under way if this look (the open interval included) or the last closed
    # interval says so: only a closed interval, with enough events to tell, ends a burst.
    bursting = _under_way(now) or _under_way(keep)
    carried = keep if keep.bursting == bursting else replace(keep, bursting=bursting)
    return Dispersion(_phi(now.x2_split, now.df_split), _phi(now.x2_own, now.df_own), carried, now.clipped)


def _under_way(tally: Tally) -> bool:
    """Is a burst of the candidate's events being set aside (it has not outlasted burstDuration)?"""
    return tally.burst_since is not None and not tally.burst_outlasted


def _judgeable(interval: Counts, min_events: float) -> bool:
    de_c, dn_c, de_s, dn_s = interval
    return dn_c > 0 and dn_s > 0 and de_c + de_s >= min_events


def _predicted(seen: Counts, interval: Counts) -> tuple[float, float]:
    """Each version's rate predicted from the closed intervals before this one, shrunk
    towards their common rate by PRIOR_EVENTS pseudo-events each."""
    e_c, n_c, e_s, n_s = seen
    de_c, dn_c, de_s, dn_s = interval
    common = (e_c + e_s + de_c + de_s) / (n_c + n_s + dn_c + dn_s)
    if common <= 0.0:
        return 0.0, 0.0
    pseudo = PRIOR_EVENTS / common
    return (e_c + PRIOR_EVENTS) / (n_c + pseudo), (e_s + PRIOR_EVENTS) / (n_s + pseudo)


def _closed(tally: Tally, counts: Counts, interval: Counts, clock: Clock) -> Tally:
    """The tally with one more closed interval, ending at ``clock.at``."""
    de_c, dn_c, de_s, dn_s = interval
    seen = _four(tally.seen)
    p_c, p_s = (min(max(p, 0.0), 1.0) for p in _predicted(seen, interval))
    x2_split, df_split, x2_own, df_own = 0.0, 0, 0.0, 0
    m = de_c + de_s
    expected_c, expected_s = dn_c * p_c, dn_s * p_s
    excess = 0.0
    stands_out = False
    learning = tally.intervals < MIN_HISTORY
    if learning:
        pass  # nothing to predict from yet: this interval only teaches the prediction
    elif expected_c + expected_s > 0:
        pi = expected_c / (expected_c + expected_s)
        if 0.0 < pi < 1.0:
            var = m * pi * (1.0 - pi)
            stands_out = de_c > m * pi + BURST_SDS * math.sqrt(var) + 1.0
            excess = de_c - m * pi if stands_out else 0.0
            # Counted in full: a burst's variance grows with the square of the traffic, and
            # setting aside its excess alone leaves the part within the cap to prove it.
            # Only where it stands out (a burst) or the candidate is predicted enough events
            # for Pearson's term to mean something (Cochran 1954): below, one event more than
            # a fraction predicted weighs like many, and a regression read against a
            # prediction still learning it was taken for dispersion for the whole rollout.
            if stands_out or m * pi >= MIN_SPLIT_EXPECTED:
                x2_split = (de_c - m * pi) ** 2 / var
                df_split = 1
    for de, dn, p in ((de_c, dn_c, p_c), (de_s, dn_s, p_s)):
        var = dn * p * (1.0 - p)
        if not learning and dn * p >= _MIN_EXPECTED and math.isfinite(var) and var > 0:
            x2_own += (de - dn * p) ** 2 / var
            df_own += 1
    burst = _burst(tally, stands_out, excess, (x2_split, df_split, x2_own, df_own), (de_c, dn_c), clock)
    learn_e, learn_n = burst.learn
    if burst.restart:  # a change point: the candidate is predicted from the change on
        learn_e, learn_n = learn_e - seen[0], learn_n - seen[1]
    total = (seen[0] + learn_e, seen[1] + learn_n, seen[2] + de_s, seen[3] + dn_s)
    x2 = burst.pearson
    return replace(
        burst.tally,
        last=counts,
        seen=total,
        x2_split=tally.x2_split + x2[0],
        df_split=tally.df_split + round(x2[1]),
        x2_own=tally.x2_own + x2[2],
        df_own=tally.df_own + round(x2[3]),
        intervals=tally.intervals + 1,
        opened_at=clock.at,
    )


Pearson = tuple[float, float, float, float]  # x2_split, df_split, x2_own, df_own
_NO_PEARSON: Pearson = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class _BurstStep:
    tally: Tally
    learn: tuple[float, float]  # candidate events and trials the prediction learns from
    pearson: Pearson  # what to add to the Pearson statistics (negative: taken back)
    restart: bool = False  # the candidate's prediction starts again from ``learn``


def _per_step(values: tuple[float, ...], step: int, add: float) -> tuple[float, ...]:
    out = list(values) + [0.0] * max(0, step + 1 - len(values))
    out[step] += add
    return tuple(out)


def _burst(
    tally: Tally,
    stands_out: bool,
    excess: float,
    pearson: Pearson,
    candidate: tuple[float, float],
    clock: Clock,
) -> _BurstStep:
    """The burst bookkeeping after an interval of ``candidate`` (events, trials).

    While the candidate stands out for at most burstDuration, its excess over the prediction
    is set aside and its variation counts as dispersion; the prediction does not learn from
    it (it would otherwise take the burst for the new normal within an interval or two, and
    the burst would seem to end). Once it stands out longer, it is no burst but a change:
    what was set aside is given back, the candidate is predicted from the change on, and neither its
    intervals nor later ones that still stand out count as dispersion (a level shift would
    otherwise discount the very evidence of it); from then on nothing is set aside in this
    rollout (the prediction, learning from all of history, takes a while to reach the new
    level, and the intervals that stand out meanwhile are the change, not bursts). A burst
    that ends stays set aside, and the prediction never learns from it."""
    if tally.burst_outlasted:
        return _BurstStep(tally, candidate, _NO_PEARSON if stands_out else pearson)
    if not stands_out:
        ended = replace(tally, burst_since=None, burst_clipped=(), burst_pearson=(), burst_seen=())
        return _BurstStep(ended, candidate, pearson)
    began = tally.opened_at if tally.opened_at is not None else clock.step_since
    since = tally.burst_since if tally.burst_since is not None else began
    run = tally.burst_pearson if len(tally.burst_pearson) == 4 else _NO_PEARSON
    run_seen = tally.burst_seen if len(tally.burst_seen) == 2 else (0.0, 0.0)
    if clock.at - since > clock.burst_s:
        restored = tuple(
            c - (tally.burst_clipped[k] if k < len(tally.burst_clipped) else 0.0)
            for k, c in enumerate(tally.clipped)
        )
        outlasted = replace(
            tally,
            clipped=restored,
            burst_since=since,
            burst_clipped=(),
            burst_outlasted=True,
            burst_pearson=(),
            burst_seen=(),
        )
        learn = (run_seen[0] + candidate[0], run_seen[1] + candidate[1])
        return _BurstStep(outlasted, learn, (-run[0], -run[1], -run[2], -run[3]), restart=True)
    set_aside = replace(
        tally,
        clipped=_per_step(tally.clipped, tally.step, excess),
        burst_since=since,
        burst_clipped=_per_step(tally.burst_clipped, tally.step, excess),
        burst_pearson=tuple(a + b for a, b in zip(run, pearson, strict=True)),
        burst_seen=(run_seen[0] + candidate[0], run_seen[1] + candidate[1]),
    )
    return _BurstStep(set_aside, (0.0, 0.0), pearson)
