"""Prometheus-style counting: what the judge reads when its numbers come from scraped
counters and ``increase()``, not from exact per-window counts.

Only used when a scenario has ``prometheus:`` (docs/simulation.md). Every version has
``pods.count`` pods (1 without ``pods:``), each a scrape target with its own counters for
every series the judge reads (requests, errors, every latency and feature bucket, every
confusion cell and predicted class). Per run:

* each target gets a fixed scrape phase, uniform in ``(-jitter, +jitter)`` around the
  ``scrapeInterval`` grid (Prometheus spreads its targets over the interval the same way:
  a fixed offset per target); its counters are sampled at ``phase + k * scrapeInterval``;
* a pod's error rate is the version's times ``lognormal(0, errorSpread)``, normalised so
  the version's pods average exactly the version's rate (clipped at 1); requests are spread
  evenly at random over the pods, so the version's total counts have the same
  distribution as without pods: pods change only what each series shows;
* at each scrape, with chance ``counterResets``, the pod restarted since its last scrape
  (at a point drawn in proportion to its requests): the counter restarts at 0, the requests
  before the restart are lost to Prometheus, and ``increase()`` corrects the drop as
  Prometheus does (a drop counts as a reset; a counter that restarted and grew past its old
  value is not seen as reset at all);
* a window ``[since, now]`` reads, per version, ``sum(increase(series[now - since]))`` at
  ``now`` over its targets, with Prometheus's own ``extrapolatedRate``: the samples in
  ``(since, now]`` (at least two per series, else the series is absent), reset correction,
  then (with ``extrapolate``) extrapolation to the window's edges unless a gap is longer than
  1.1 average sample intervals (then half an interval), never beyond where the counter would
  reach zero. The counts are fractional, as Prometheus's are.

The traffic itself is generated as without ``prometheus:`` (same seed, same requests, same
ground truth); counters are split over pods and scrape times by exact thinning (each request
of a chunk falls before a scrape time with chance proportional to the time elapsed, as
Poisson arrivals at a rate constant within the chunk do), from a random stream of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from mesh_canary.simulation.traffic import _Validator

__all__ = ["Pods", "PrometheusCounter", "PrometheusCounting", "parse_pods", "parse_prometheus"]

_FloatArray = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.int64]
_EPS = 1e-9
_MAX_PODS = 1000
_EXTRAPOLATION_THRESHOLD = 1.1  # Prometheus: gaps up to 1.1 sample intervals are extrapolated fully


@dataclass(frozen=True)
class Pods:
    count: int
    error_spread: float = 0.0


@dataclass(frozen=True)
class PrometheusCounting:
    scrape_interval_s: float = 15.0
    jitter_s: float = 0.0
    extrapolate: bool = True
    counter_resets: float = 0.0


def parse_pods(v: _Validator, value: Any, path: str = "pods") -> Pods | None:
    if value is None:
        return None
    doc = v.mapping(value, path, {"count", "errorSpread"})
    if doc is None:
        return None
    count = v.required(doc, "count", path, lambda x, p: v.number(x, p, low=1.0, high=_MAX_PODS))
    if count is not None and count != int(count):
        v.bad(f"{path}.count", f"must be a whole number, not {count:g}")
        return None
    spread = (
        v.number(doc["errorSpread"], f"{path}.errorSpread", low=0.0, high=5.0)
        if "errorSpread" in doc
        else 0.0
    )
    if count is None or spread is None:
        return None
    return Pods(int(count), spread)


def parse_prometheus(v: _Validator, value: Any, path: str = "prometheus") -> PrometheusCounting | None:
    if value is None:
        return None
    doc = v.mapping(value, path, {"scrapeInterval", "jitter", "extrapolate", "counterResets"})
    if doc is None:
        return None
    default = PrometheusCounting()
    n_problems = len(v.problems)
    interval = (
        v.duration(doc["scrapeInterval"], f"{path}.scrapeInterval", positive=True)
        if "scrapeInterval" in doc
        else default.scrape_interval_s
    )
    jitter = v.duration(doc["jitter"], f"{path}.jitter", positive=False) if "jitter" in doc else 0.0
    extrapolate = doc.get("extrapolate", True)
    if not isinstance(extrapolate, bool):
        v.bad(f"{path}.extrapolate", "must be true or false")
    resets = v.share(doc["counterResets"], f"{path}.counterResets") if "counterResets" in doc else 0.0
    if interval is not None and jitter is not None and jitter * 2.0 >= interval:
        v.bad(f"{path}.jitter", f"must be less than half the scrapeInterval ({interval:g}s), not {jitter:g}s")
    if len(v.problems) > n_problems or interval is None or jitter is None or resets is None:
        return None
    return PrometheusCounting(interval, jitter, bool(extrapolate), resets)


class PrometheusCounter:
    """Per-pod counters of both versions, sampled at scrape times; ``increase`` reads them
    as Prometheus would. Raw columns are the mesh's chunk columns; ``to_shown`` maps them to
    the series the judge reads (cumulative buckets and all)."""

    def __init__(
        self,
        spec: PrometheusCounting,
        pods: Pods | None,
        to_shown: _FloatArray,
        failed_column: int,
        ok_columns: npt.NDArray[np.bool_],
    ) -> None:
        self.spec = spec
        self.pods = pods or Pods(1)
        n = self.pods.count
        self._series = 2 * n  # version-major: series v * n + j is pod j of version v
        self._to_shown = to_shown
        columns, shown = to_shown.shape
        self._failed = failed_column
        self._ok = ok_columns
        self._capacity = 64
        # Per series and scrape: its time (inf where none yet), the shown counters' values,
        # and the running sum of their increases, each drop counted as a reset (so a window's
        # increase with Prometheus's reset correction is a difference of two entries).
        self._times: _FloatArray = np.full((self._series, self._capacity), np.inf)
        self._values: _FloatArray = np.zeros((self._series, self._capacity, shown))
        self._increases: _FloatArray = np.zeros((self._series, self._capacity, shown))
        self._true: _IntArray = np.zeros((self._series, columns), dtype=np.int64)
        self._base: _IntArray = np.zeros_like(self._true)
        self._at_last_scrape: _IntArray = np.zeros_like(self._true)
        self._count: _IntArray = np.zeros(self._series, dtype=np.int64)
        self._next: _FloatArray = np.zeros(self._series)
        self._multipliers: _FloatArray = np.ones((2, n))
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._true[:] = 0
        self._base[:] = 0
        self._at_last_scrape[:] = 0
        self._count[:] = 0
        self._times[:] = np.inf
        spec, n = self.spec, self.pods.count
        phase = (
            rng.uniform(-spec.jitter_s, spec.jitter_s, self._series)
            if spec.jitter_s
            else np.zeros(self._series)
        )
        self._next = np.where(phase > 0.0, phase, phase + spec.scrape_interval_s)
        m = rng.lognormal(0.0, self.pods.error_spread, (2, n)) if self.pods.error_spread else np.ones((2, n))
        self._multipliers = m / m.mean(axis=1, keepdims=True)  # keeps each version's mean rate

    def record(self, t0: float, t1: float, counts: _IntArray, error_rates: tuple[float, float]) -> None:
        """Count the chunk ``[t0, t1]``: ``counts`` per version (2 x columns)."""
        rng, n = self._rng, self.pods.count
        if n == 1:
            remaining = counts.copy()
        else:
            remaining = rng.multinomial(counts, self._pod_shares(error_rates)).transpose(0, 2, 1)
            remaining = remaining.reshape(self._series, -1)
        interval = self.spec.scrape_interval_s
        t_prev = np.full(self._series, t0)
        due = self._next <= t1 + _EPS
        while due.any():
            # Of the requests left between t_prev and t1, those before the scrape (uniform times).
            span = np.maximum(t1 - t_prev, _EPS)
            frac = np.where(due, np.clip((self._next - t_prev) / span, 0.0, 1.0), 0.0)
            taken = rng.binomial(remaining, frac[:, None])
            self._true += taken
            remaining -= taken
            self._scrape(np.flatnonzero(due))
            t_prev = np.where(due, self._next, t_prev)
            self._next = np.where(due, self._next + interval, self._next)
            due = self._next <= t1 + _EPS
        self._true += remaining

    def _pod_shares(self, error_rates: tuple[float, float]) -> _FloatArray:
        """Per version, column and pod: the pod's share of that column's count."""
        m = self._multipliers
        p_fail = np.minimum(np.asarray(error_rates)[:, None] * m, 1.0)  # (2, pods)
        columns = self._to_shown.shape[0]
        weights = np.ones((2, columns, m.shape[1]))
        weights[:, self._failed, :] = p_fail
        weights[:, self._ok, :] = (1.0 - p_fail)[:, None, :]
        totals = weights.sum(axis=2, keepdims=True)
        shares: _FloatArray = np.where(
            totals > 0.0, weights / np.where(totals > 0.0, totals, 1.0), 1.0 / m.shape[1]
        )
        return shares

    def _scrape(self, series: _IntArray) -> None:
        if self._count.max() >= self._capacity:
            self._grow()
        if self.spec.counter_resets > 0.0:
            restarted = series[self._rng.random(len(series)) < self.spec.counter_resets]
            if len(restarted):
                since_last = self._true[restarted] - self._at_last_scrape[restarted]
                lost = self._rng.binomial(since_last, self._rng.random(len(restarted))[:, None])
                self._base[restarted] = self._at_last_scrape[restarted] + lost
        k = self._count[series]
        values = (self._true[series] - self._base[series]) @ self._to_shown
        previous = self._values[series, k - 1]  # row -1 (unused, zeros) for a first scrape
        first = (k == 0)[:, None]
        step = np.where(first | (values < previous), values, values - previous)  # a drop: a reset
        self._increases[series, k] = np.where(first, 0.0, self._increases[series, k - 1] + step)
        self._times[series, k] = self._next[series]
        self._values[series, k] = values
        self._at_last_scrape[series] = self._true[series]
        self._count[series] = k + 1

    def _grow(self) -> None:
        used = self._capacity
        self._capacity *= 2
        times = np.full((self._series, self._capacity), np.inf)
        times[:, :used] = self._times
        self._times = times
        for name in ("_values", "_increases"):
            old = getattr(self, name)
            new = np.zeros((self._series, self._capacity, old.shape[2]))
            new[:, :used] = old
            setattr(self, name, new)

    def increase(self, since: float, now: float) -> _FloatArray:
        """Per version (rows) and shown series (columns): ``sum(increase(...[now - since]))``."""
        rows = np.arange(self._series)
        lo = (self._times <= since).sum(axis=1)  # first sample in (since, now]
        hi = (self._times <= now).sum(axis=1)  # one past the last
        present = hi - lo >= 2  # Prometheus needs two samples in the range, else the series is absent
        last = np.maximum(hi - 1, 0)
        first = np.minimum(lo, last)
        result = self._increases[rows, last] - self._increases[rows, first]
        if self.spec.extrapolate:
            result = self._extrapolated(
                result, self._values[rows, first], self._times[rows, first], self._times[rows, last],
                np.maximum(hi - lo, 2), since, now,
            )  # fmt: skip
        result[~present] = 0.0
        out: _FloatArray = result.reshape(2, self.pods.count, -1).sum(axis=1)
        return out

    @staticmethod
    def _extrapolated(
        result: _FloatArray,
        first_values: _FloatArray,
        first: _FloatArray,
        last: _FloatArray,
        samples: _IntArray,
        since: float,
        now: float,
    ) -> _FloatArray:
        """Prometheus's extrapolatedRate for counters: every series (rows) and column at once."""
        with np.errstate(divide="ignore", invalid="ignore"):
            sampled = np.where(last > first, last - first, 1.0)[:, None]
            average = sampled / (samples[:, None] - 1)
            threshold = average * _EXTRAPOLATION_THRESHOLD
            to_start = (first - since)[:, None]
            to_end = (now - last)[:, None]
            to_start = np.where(to_start < threshold, to_start, average / 2.0)
            to_end = np.where(to_end < threshold, to_end, average / 2.0)
            # Never extrapolate to before the counter would have been zero.
            to_zero = np.where(
                result > 0.0, sampled * first_values / np.where(result > 0.0, result, 1.0), np.inf
            )
            scaled: _FloatArray = result * (sampled + np.minimum(to_start, to_zero) + to_end) / sampled
        return np.where(np.isfinite(scaled), scaled, 0.0)
