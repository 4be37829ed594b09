"""Synthetic traffic in virtual time: the TrafficRouter and MetricsSource of `simulate`.

A scenario (docs: scenarios/README.md, contract: SIMULATION.md) says how each version
behaves; :class:`SyntheticMesh` routes simulated requests with the weights it is given and
counts what Prometheus would count. Nothing sleeps and nothing touches the network: the
driver moves virtual time forward with :meth:`SyntheticMesh.advance` and reads windows with
:meth:`SyntheticMesh.read`::

    mesh = SyntheticMesh(scenario, seed=7)
    t = 0.0
    while t < scenario.duration_s:
        t += interval
        mesh.advance(t)
        obs = mesh.read(window_start, t)

Each chunk of time ``[t0, t1]`` is drawn from exactly the distribution that routing every
request at random would give, with a few numpy calls instead of a loop over requests:

* arrivals are Poisson (rate ``rps``, times ``1 + diurnal * sin(2 pi (t + timeOfDay) / 1 day)``,
  integrated exactly over the chunk); by Poisson splitting, the requests that stable keeps,
  the ones it also mirrors to the candidate and the ones the candidate serves are
  independent Poisson counts;
* every request's outcome is one draw from a joint multinomial: failed (5xx), or a
  prediction of class ``i`` whose true class is ``j`` and whose label arrives within this
  chunk, arrives later, or never (``labels.missing``); its latency (lognormal through
  ``medianMs`` and ``p99Ms``, over Istio's default buckets) and its input features are
  independent of that outcome and drawn for the same requests;
* label delays are exponential (mean ``labels.delayMeanS``). Requests arrive uniformly
  within a chunk, so a label arrives within its own chunk with probability
  ``1 - (1 - exp(-a)) / a`` (``a`` = chunk length / mean delay); a pending label arrives in
  any later chunk of length ``dt`` with probability ``1 - exp(-dt / mean delay)`` because the
  exponential is memoryless. Both are exact for any chunk lengths (given a rate that is
  constant within the chunk: a daily sine changes by well under 1% within a few minutes).

The cost is a handful of numpy calls per chunk whatever the traffic (about 20 µs for
``advance`` and 15 µs for ``read`` with three classes); it grows with the square of the
number of classes (the confusion cells). To run many seeds of one scenario, ``reset`` a
mesh rather than building a new one.

Choices this simulator makes (the contract leaves them open):

* a failed request counts as a request and has a latency (same distribution) and input
  features, but no prediction and so no label;
* a wrong prediction of class ``i`` has a true class ``j != i`` drawn in proportion to
  stable's prediction shares (the same inputs reach both versions), uniform if those are 0;
* mirrored copies (``Weights.mirror_percent`` of stable's requests) are handled by the
  candidate too: they count in the candidate's metrics, and their predictions are
  labelled like any other (feedback joins on the request), but they are not served to
  users, so they are not in ``candidate_served_*``;
* requests routed to a fallback destination (``versions.fallback``; default: stable's
  initial behaviour) are served by it and counted for neither version's metrics; what it
  served is drawn from a random stream of its own (so every other draw of a scenario stays
  what it was) and is reported as ``fallback_served_*``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from mesh_canary.checks import Signal
from mesh_canary.core.durations import format_duration, parse_duration
from mesh_canary.core.observations import INF, Histogram, Observation, VersionCounts
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.errors import BadInput
from mesh_canary.simulation.bursts import NO_BURST, Burst, draw_schedule, parse_bursts
from mesh_canary.simulation.latency_shapes import Tail, bucket_shares
from mesh_canary.simulation.prometheus_counting import (
    Pods,
    PrometheusCounter,
    PrometheusCounting,
    parse_pods,
    parse_prometheus,
)

__all__ = [
    "ISTIO_LATENCY_BUCKETS_MS",
    "Behaviour",
    "Burst",
    "Change",
    "FeatureDistribution",
    "LabelDelay",
    "Latency",
    "Outage",
    "Pods",
    "PrometheusCounting",
    "Scenario",
    "ScenarioError",
    "SyntheticMesh",
    "Tail",
    "Traffic",
    "load_scenario",
    "load_scenario_text",
]

# Istio's default buckets for istio_request_duration_milliseconds (what the Prometheus adapter reads).
ISTIO_LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0, INF,
)  # fmt: skip

_DAY_S = 86400.0
_Z99 = 2.3263478740408408  # standard normal quantile at 0.99
# What SyntheticMesh.read measures per version, in the check kinds' words (mesh_canary.checks):
# everything but custom values (a user's PromQL has nothing to run on here).
PRODUCED_SIGNALS: frozenset[Signal] = frozenset(
    {"requests", "errors", "latency", "confusion", "predictions", "features"}
)
_EPS = 1e-9  # times closer than this are the same instant
_MAX_TABLES = 4096  # probability tables kept at most (each a few kB)
_SUM_TOLERANCE = 1e-3  # shares must add up to 1 within this (then they are normalised)

# Defaults for the optional fields of `versions.stable` (the contract's example values).
_DEFAULT_ACCURACY = 0.9
_DEFAULT_DELAY_MEAN_S = 60.0
_DEFAULT_MISSING = 0.2
_DEFAULT_PREDICTIONS = (0.7, 0.2, 0.1)


# --------------------------------------------------------------------------- scenario


class ScenarioError(BadInput, ValueError):
    """The scenario is invalid; ``problems`` lists every ``(path, message)``."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "scenario") -> None:
        self.problems = list(problems)
        self.source = source
        parts = [f"{path}: {message}" if path else message for path, message in self.problems]
        if len(parts) == 1:
            text = f"{source} is invalid: {parts[0]}"
        else:
            text = f"{source} has {len(parts)} problems:\n" + "\n".join(f"  {p}" for p in parts)
        super().__init__(text)

    def lines(self) -> list[str]:
        return [f"{self.source}: {path}: {m}" if path else f"{self.source}: {m}" for path, m in self.problems]


@dataclass(frozen=True)
class Traffic:
    rps: float
    diurnal: float = 0.0  # relative amplitude of the daily sine
    time_of_day_s: float = 0.0  # time of day at virtual time 0 (the sine peaks at 6h)


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p99_ms: float  # of the lognormal body (a tail moves the overall p99 up)
    tail: Tail | None = None

    @property
    def sigma(self) -> float:
        """The lognormal's shape parameter."""
        return math.log(self.p99_ms / self.median_ms) / _Z99


@dataclass(frozen=True)
class LabelDelay:
    delay_mean_s: float
    missing: float  # share of predictions never labelled


@dataclass(frozen=True)
class FeatureDistribution:
    """Shares of an input feature's values per bucket: ``shares[i]`` is the share in
    ``(bounds[i-1], bounds[i]]``; the last share is above the last bound."""

    bounds: tuple[float, ...]
    shares: tuple[float, ...]


@dataclass(frozen=True)
class Behaviour:
    """How one version behaves (fully resolved: no field is missing)."""

    error_rate: float
    latency: Latency
    accuracy: float
    labels: LabelDelay
    predictions: tuple[float, ...]  # class shares, normalised to sum 1
    features: Mapping[str, FeatureDistribution] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """What is in force from ``at_s`` on (each change applies on top of the previous one)."""

    at_s: float
    stable: Behaviour
    candidate: Behaviour
    traffic: Traffic


@dataclass(frozen=True)
class Outage:
    """The metrics source answers with a problem during ``[at_s, at_s + for_s)``."""

    at_s: float
    for_s: float


@dataclass(frozen=True)
class Scenario:
    duration_s: float
    traffic: Traffic
    stable: Behaviour
    candidate: Behaviour
    changes: tuple[Change, ...] = ()
    outages: tuple[Outage, ...] = ()
    source: str = "scenario"
    bursts: tuple[Burst, ...] = ()
    pods: Pods | None = None
    prometheus: PrometheusCounting | None = None
    document: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # What the policy's fallback destination does (None: stable's initial behaviour).
    fallback: Behaviour | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names ``c0, c1, ...``: as many as the longest ``predictions`` list anywhere."""
        behaviours = [self.stable, self.candidate]
        for ch in self.changes:
            behaviours += [ch.stable, ch.candidate]
        k = max(len(b.predictions) for b in behaviours)
        return tuple(f"c{i}" for i in range(k))


def load_scenario_text(text: str, source: str = "scenario") -> Scenario:
    """Parse and validate scenario YAML; raise ScenarioError naming every problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError([("", f"is not valid YAML ({exc})")], source) from None
    if not isinstance(doc, dict):
        raise ScenarioError([("", "must be a YAML mapping with duration, traffic and versions")], source)
    return load_scenario(doc, source)


def load_scenario(doc: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate a parsed scenario document; raise ScenarioError naming every problem."""
    v = _Validator()
    top = v.mapping(
        doc, "", {"duration", "traffic", "versions", "changes", "outages", "bursts", "pods", "prometheus"}
    )
    if top is None:
        raise ScenarioError(v.problems, source)

    duration = v.required(top, "duration", "", lambda x, p: v.duration(x, p, positive=True))
    traffic = _traffic(v, top.get("traffic"), "traffic", None)

    stable: Behaviour | None = None
    candidate: Behaviour | None = None
    fallback: Behaviour | None = None
    versions = v.mapping(top.get("versions"), "versions", {"stable", "candidate", "fallback"})
    if versions is not None:
        stable = _behaviour(v, versions.get("stable"), "versions.stable", None)
        # An empty `candidate:` (or none at all) is an A/A test: it copies stable. If stable
        # is invalid, the candidate's own values are still checked against a placeholder.
        candidate = _behaviour(
            v, versions.get("candidate") or {}, "versions.candidate", stable or _PLACEHOLDER
        )
        if "fallback" in versions:  # missing fields copy stable's, as the candidate's do
            fallback = _behaviour(v, versions["fallback"] or {}, "versions.fallback", stable or _PLACEHOLDER)

    changes = _changes(v, top.get("changes"), duration, stable, candidate, traffic)
    outages = _outages(v, top.get("outages"))
    bursts = parse_bursts(v, top.get("bursts"))
    pods = parse_pods(v, top.get("pods"))
    prometheus = parse_prometheus(v, top.get("prometheus"))

    if v.problems or duration is None or traffic is None or stable is None or candidate is None:
        raise ScenarioError(v.problems, source)
    return Scenario(
        duration_s=duration,
        traffic=traffic,
        stable=stable,
        candidate=candidate,
        changes=changes,
        outages=outages,
        source=source,
        document=doc,
        bursts=bursts,
        pods=pods,
        prometheus=prometheus,
        fallback=fallback,
    )


# Stands in for an invalid base so that what builds on it is still checked on its own;
# _features knows its empty feature map means "any feature may exist".
_ANY_FEATURES: dict[str, FeatureDistribution] = {}
_PLACEHOLDER = Behaviour(
    0.0, Latency(1e-300, 1e300, Tail(0.0, 1.0)), 0.0, LabelDelay(0.0, 0.0), (0.5, 0.5), _ANY_FEATURES
)
_PLACEHOLDER_TRAFFIC = Traffic(rps=0.0)


class _Validator:
    """Collects ``(path, message)`` problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def bad(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def mapping(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any] | None:
        if value is None and path:
            self.bad(path, "is required")
            return None
        if not isinstance(value, dict):
            self.bad(path, "must be a mapping")
            return None
        ok = True
        for key in value:
            if key not in allowed:
                self.bad(_join(path, str(key)), f"is not a known field (known: {', '.join(sorted(allowed))})")
                ok = False
        return value if ok else {k: x for k, x in value.items() if k in allowed}

    def required(
        self, doc: dict[str, Any], key: str, path: str, check: Callable[[Any, str], float | None]
    ) -> float | None:
        if key not in doc:
            self.bad(_join(path, key), "is required")
            return None
        return check(doc[key], _join(path, key))

    def number(
        self, value: Any, path: str, *, low: float, high: float = INF, low_open: bool = False
    ) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            self.bad(path, "must be a number")
            return None
        x = float(value)
        if x < low or (low_open and x == low) or x > high:
            lo = f"above {low:g}" if low_open else f"at least {low:g}"
            self.bad(
                path, f"must be {lo}" + ("" if high == INF else f" and at most {high:g}") + f", not {x:g}"
            )
            return None
        return x

    def share(self, value: Any, path: str) -> float | None:
        return self.number(value, path, low=0.0, high=1.0)

    def duration(self, value: Any, path: str, *, positive: bool) -> float | None:
        if value is None or isinstance(value, (bool, list, dict)):
            self.bad(path, "must be a duration such as 30s, 20m or 2h")
            return None
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.bad(path, str(exc))
            return None
        if positive and seconds <= 0:
            self.bad(path, "must be longer than 0s")
            return None
        return seconds

    def shares(self, value: Any, path: str, length: int | None = None) -> tuple[float, ...] | None:
        if not isinstance(value, list) or not value:
            self.bad(path, "must be a list of shares such as [0.7, 0.2, 0.1]")
            return None
        items = [self.number(x, f"{path}[{i}]", low=0.0) for i, x in enumerate(value)]
        if any(x is None for x in items):
            return None
        xs = [x for x in items if x is not None]
        if length is not None and len(xs) != length:
            self.bad(path, f"must have {length} shares, one per bucket and one above the last bound")
            return None
        total = sum(xs)
        if abs(total - 1.0) > _SUM_TOLERANCE:
            self.bad(path, f"must add up to 1, not {total:g}")
            return None
        return tuple(x / total for x in xs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _traffic(v: _Validator, value: Any, path: str, base: Traffic | None) -> Traffic | None:
    doc = v.mapping(value, path, {"rps", "diurnal"} if base else {"rps", "diurnal", "timeOfDay"})
    if doc is None:
        return None
    rps: float | None
    if "rps" in doc:
        rps = v.number(doc["rps"], _join(path, "rps"), low=0.0)
    elif base is not None:
        rps = base.rps
    else:
        v.bad(_join(path, "rps"), "is required")
        rps = None
    diurnal = v.share(doc["diurnal"], _join(path, "diurnal")) if "diurnal" in doc else None
    tod = (
        v.duration(doc["timeOfDay"], _join(path, "timeOfDay"), positive=False) if "timeOfDay" in doc else None
    )
    if rps is None or ("diurnal" in doc and diurnal is None) or ("timeOfDay" in doc and tod is None):
        return None
    return Traffic(
        rps=rps,
        diurnal=diurnal if diurnal is not None else (base.diurnal if base else 0.0),
        time_of_day_s=tod if tod is not None else (base.time_of_day_s if base else 0.0),
    )


_BEHAVIOUR_KEYS = {"errorRate", "latency", "accuracy", "labels", "predictions", "features"}


def _behaviour(v: _Validator, value: Any, path: str, base: Behaviour | None) -> Behaviour | None:
    """``value`` resolved on top of ``base`` (stable has no base: its core fields are required)."""
    n_problems = len(v.problems)
    doc = v.mapping(value, path, _BEHAVIOUR_KEYS)
    if doc is None:
        return None

    def share_field(key: str, inherited: float | None) -> float | None:
        if key in doc:
            return v.share(doc[key], _join(path, key))
        if inherited is None:
            v.bad(_join(path, key), "is required")
        return inherited

    error_rate = share_field("errorRate", base.error_rate if base else None)
    accuracy = share_field("accuracy", base.accuracy if base else _DEFAULT_ACCURACY)
    latency = _latency(v, doc, path, base.latency if base else None)
    labels = _labels(v, doc, path, base.labels if base else None)
    predictions: tuple[float, ...] | None = base.predictions if base else _DEFAULT_PREDICTIONS
    if "predictions" in doc:
        predictions = v.shares(doc["predictions"], _join(path, "predictions"))
        if predictions is not None and len(predictions) < 2:
            v.bad(_join(path, "predictions"), "must list at least two classes")
    features = _features(v, doc.get("features"), _join(path, "features"), base.features if base else None)

    if len(v.problems) > n_problems:
        return None
    assert error_rate is not None and accuracy is not None and latency is not None
    assert labels is not None and predictions is not None and features is not None
    return Behaviour(error_rate, latency, accuracy, labels, predictions, features)


def _latency(v: _Validator, doc: dict[str, Any], path: str, base: Latency | None) -> Latency | None:
    lpath = _join(path, "latency")
    if "latency" not in doc:
        if base is None:
            v.bad(lpath, "is required (e.g. {medianMs: 80, p99Ms: 250})")
        return base
    sub = v.mapping(doc["latency"], lpath, {"medianMs", "p99Ms", "tail"})
    if sub is None:
        return None
    values: dict[str, float | None] = {}
    for key in ("medianMs", "p99Ms"):
        if key in sub:
            values[key] = v.number(sub[key], _join(lpath, key), low=0.0, low_open=True)
        elif base is not None:
            values[key] = base.median_ms if key == "medianMs" else base.p99_ms
        else:
            v.bad(_join(lpath, key), "is required")
            values[key] = None
    median, p99 = values["medianMs"], values["p99Ms"]
    n_problems = len(v.problems)
    tail = _tail(v, sub["tail"], _join(lpath, "tail"), base.tail if base else None) if "tail" in sub else None
    if "tail" not in sub and base is not None:
        tail = base.tail
    if median is None or p99 is None or len(v.problems) > n_problems:
        return None
    if p99 <= median:
        where = "p99Ms" if "p99Ms" in sub else "medianMs"
        v.bad(_join(lpath, where), f"p99Ms ({p99:g}) must be above medianMs ({median:g})")
        return None
    return Latency(median, p99, tail)


def _tail(v: _Validator, value: Any, path: str, base: Tail | None) -> Tail | None:
    """``latency.tail``: null removes an inherited tail; missing keys copy the inherited ones."""
    if value is None:
        return None
    doc = v.mapping(value, path, {"share", "alpha"})
    if doc is None:
        return None
    share = v.share(doc["share"], _join(path, "share")) if "share" in doc else (base.share if base else None)
    alpha = (
        v.number(doc["alpha"], _join(path, "alpha"), low=0.0, low_open=True)
        if "alpha" in doc
        else (base.alpha if base else None)
    )
    for key, got in (("share", share), ("alpha", alpha)):
        if key not in doc and got is None:
            v.bad(_join(path, key), "is required (e.g. tail: {share: 0.01, alpha: 1.5})")
    if share is None or alpha is None:
        return None
    return Tail(share, alpha)


def _labels(v: _Validator, doc: dict[str, Any], path: str, base: LabelDelay | None) -> LabelDelay | None:
    inherited = base or LabelDelay(_DEFAULT_DELAY_MEAN_S, _DEFAULT_MISSING)
    if "labels" not in doc:
        return inherited
    lpath = _join(path, "labels")
    sub = v.mapping(doc["labels"], lpath, {"delayMeanS", "missing"})
    if sub is None:
        return None
    delay = (
        v.duration(sub["delayMeanS"], _join(lpath, "delayMeanS"), positive=False)
        if "delayMeanS" in sub
        else inherited.delay_mean_s
    )
    missing = v.share(sub["missing"], _join(lpath, "missing")) if "missing" in sub else inherited.missing
    if delay is None or missing is None:
        return None
    return LabelDelay(delay, missing)


def _features(
    v: _Validator, value: Any, path: str, base: Mapping[str, FeatureDistribution] | None
) -> dict[str, FeatureDistribution] | None:
    out = dict(base or {})
    if value is None:
        return out
    if not isinstance(value, dict):
        v.bad(path, "must map feature names to {bounds, shares}")
        return None
    lenient = base is _ANY_FEATURES  # the base is invalid: check only what is written here
    ok = True
    for name, spec in value.items():
        fpath = f"{path}.{name}"
        inherited = out.get(str(name))
        if base is not None and inherited is None and not lenient:
            v.bad(fpath, "is not a feature of stable (declare it under versions.stable.features)")
            ok = False
            continue
        sub = v.mapping(spec, fpath, {"bounds", "shares"})
        if sub is None:
            ok = False
            continue
        bounds = inherited.bounds if inherited else None
        if "bounds" in sub:
            given = _bounds(v, sub["bounds"], _join(fpath, "bounds"))
            if given is not None and inherited is not None and given != inherited.bounds:
                v.bad(_join(fpath, "bounds"), "must equal stable's bounds (only shares may change)")
                given = None
            bounds = given
            if given is None:
                ok = False
                continue
        if bounds is None:
            if lenient:  # nothing to build on: check the shares alone
                if "shares" in sub:
                    v.shares(sub["shares"], _join(fpath, "shares"))
                continue
            v.bad(_join(fpath, "bounds"), "is required")
            ok = False
            continue
        if "shares" in sub:
            shares = v.shares(sub["shares"], _join(fpath, "shares"), len(bounds) + 1)
        elif inherited is not None:
            shares = inherited.shares
        else:
            v.bad(_join(fpath, "shares"), "is required")
            shares = None
        if shares is None:
            ok = False
            continue
        out[str(name)] = FeatureDistribution(bounds, shares)
    return out if ok else None


def _bounds(v: _Validator, value: Any, path: str) -> tuple[float, ...] | None:
    if not isinstance(value, list) or not value:
        v.bad(path, "must be a list of increasing bucket bounds")
        return None
    xs = [v.number(x, f"{path}[{i}]", low=-INF, high=INF) for i, x in enumerate(value)]
    if any(x is None or math.isinf(x) for x in xs):
        if all(x is not None for x in xs):
            v.bad(path, "must hold finite bounds (the bucket above the last bound is implied)")
        return None
    finite = tuple(x for x in xs if x is not None)
    if any(b <= a for a, b in pairwise(finite)):
        v.bad(path, "must be strictly increasing")
        return None
    return finite


def _changes(
    v: _Validator,
    value: Any,
    duration: float | None,
    stable: Behaviour | None,
    candidate: Behaviour | None,
    traffic: Traffic | None,
) -> tuple[Change, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        v.bad("changes", "must be a list of {at, candidate}")
        return ()
    # Each change builds on the state before it (placeholders where that state is invalid).
    stable_now, candidate_now = stable or _PLACEHOLDER, candidate or _PLACEHOLDER
    traffic_now = traffic or _PLACEHOLDER_TRAFFIC
    out: list[Change] = []
    previous_at = 0.0
    for i, item in enumerate(value):
        path = f"changes[{i}]"
        doc = v.mapping(item, path, {"at", "candidate", "stable", "traffic"})
        if doc is None:
            continue
        at = v.required(doc, "at", path, lambda x, p: v.duration(x, p, positive=False))
        if at is not None:
            if duration is not None and at > duration:
                v.bad(f"{path}.at", f"is after the scenario's duration ({format_duration(duration)})")
            elif at < previous_at:
                v.bad(
                    f"{path}.at", f"must not be before the previous change ({format_duration(previous_at)})"
                )
            else:
                previous_at = at
        if not ({"candidate", "stable", "traffic"} & set(doc)):
            v.bad(path, "must change candidate, stable or traffic")
        if "stable" in doc:
            stable_now = _behaviour(v, doc["stable"] or {}, f"{path}.stable", stable_now) or stable_now
        if "candidate" in doc:
            candidate_now = (
                _behaviour(v, doc["candidate"] or {}, f"{path}.candidate", candidate_now) or candidate_now
            )
        if "traffic" in doc:
            traffic_now = _traffic(v, doc["traffic"], f"{path}.traffic", traffic_now) or traffic_now
        if at is not None:
            out.append(Change(at, stable_now, candidate_now, traffic_now))
    return tuple(out)


def _outages(v: _Validator, value: Any) -> tuple[Outage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        v.bad("outages", "must be a list of {at, for}")
        return ()
    out: list[Outage] = []
    for i, item in enumerate(value):
        path = f"outages[{i}]"
        doc = v.mapping(item, path, {"at", "for"})
        if doc is None:
            continue
        at = v.required(doc, "at", path, lambda x, p: v.duration(x, p, positive=False))
        length = v.required(doc, "for", path, lambda x, p: v.duration(x, p, positive=True))
        if at is not None and length is not None:
            out.append(Outage(at, length))
    return tuple(out)


# --------------------------------------------------------------------------- the mesh

_IntArray = npt.NDArray[np.int64]
_FloatArray = npt.NDArray[np.float64]

# A state's dt-independent probability tables: the latency and feature layers per stream, and
# per stream what its outcome layer is made of (behaviour, error rate, ok x labelled, ok x missing).
_TableParts = tuple[_FloatArray, dict[int, tuple["Behaviour", float, _FloatArray, _FloatArray]]]

# Streams of requests, one row each in every array below.
_FALLBACK_STREAM = 0xFA11BAC  # seeds the fallback's own stream (with the scenario's seed)
_STABLE, _CANDIDATE, _MIRROR = 0, 1, 2


class SyntheticMesh:
    """A virtual-time TrafficRouter and MetricsSource driven by a Scenario.

    ``set_weights`` applies to traffic generated by later ``advance`` calls; ``read``
    returns what Prometheus would show over a window between recorded chunk ends.
    Everything is drawn from one ``numpy.random.Generator`` seeded with ``seed``, so a
    run is a pure function of (scenario, seed, the sequence of calls).
    """

    def __init__(self, scenario: Scenario, seed: int | None = None, weights: Weights = ALL_STABLE) -> None:
        self.scenario = scenario
        self._classes = scenario.classes
        k = self._k = len(self._classes)
        cells = self._cells = k * k  # (predicted, actual) pairs, row-major
        self._features = tuple(scenario.stable.features.items())
        feature_sizes = tuple(len(f.bounds) + 1 for _, f in self._features)
        n_latency = len(ISTIO_LATENCY_BUCKETS_MS)

        # One multinomial per chunk draws everything. Per stream it has these layers, each a
        # categorical over `width` slots (zero-padded):
        #   0: each request's outcome: failed | labelled within this chunk | labelled later |
        #      never labelled, the last three per (predicted, actual) cell;
        #   1: each request's latency bucket;  2..: each request's bucket of each feature;
        #   then, with few classes, one layer per cell for the labels pending from earlier
        #   chunks: arrives now | not yet. With many classes those layers would be mostly
        #   padding, so the pending labels get a binomial draw of their own instead.
        width = self._width = max(1 + 3 * cells, n_latency, *feature_sizes)
        request_layers = self._request_layers = 2 + len(self._features)
        self._merge_pending = cells * width <= 512
        n_layers = request_layers + (cells if self._merge_pending else 0)
        self._draw_counts: _IntArray = np.zeros((3, n_layers), dtype=np.int64)
        self._pending: _IntArray = np.zeros((3, cells), dtype=np.int64)
        self._new_pending = slice(1 + cells, 1 + 2 * cells)

        # What is kept of a stream's flattened draws (most slots are padding), in this order:
        # failed | labelled within | labelled later | never labelled (per cell) | latency
        # buckets | feature buckets | labels arrived from pending ones (per cell; drawn
        # separately, and appended, when they are not part of the multinomial).
        feature_cols = [(2 + j) * width + b for j, size in enumerate(feature_sizes) for b in range(size)]
        arrival_cols = [(request_layers + c) * width for c in range(cells)] if self._merge_pending else []
        self._kept_draws = np.array(
            [*range(1 + 3 * cells), *(width + b for b in range(n_latency)), *feature_cols, *arrival_cols],
            dtype=np.intp,
        )
        self._columns = len(self._kept_draws) + (0 if self._merge_pending else cells)

        # Reading: histograms are cumulative, one small matrix product makes them so.
        self._within = slice(1, 1 + cells)
        self._later = slice(1 + cells, 1 + 2 * cells)
        self._never = slice(1 + 2 * cells, 1 + 3 * cells)
        buckets = n_latency + sum(feature_sizes)
        self._buckets = slice(1 + 3 * cells, 1 + 3 * cells + buckets)
        self._arrived = slice(self._columns - cells, self._columns)
        cumulative = np.zeros((buckets, buckets))
        start = 0
        for size in (n_latency, *feature_sizes):
            block = slice(start, start + size)
            cumulative[block, block] = np.triu(np.ones((size, size)))
            start += size
        self._cumulative: _FloatArray = cumulative
        # Shown per version, in this order: errors | histograms | confusion | predictions.
        self._shown_width = 1 + buckets + cells + k
        self._latency_out = (1, 1 + n_latency)
        self._confusion_out = (1 + buckets, 1 + buckets + cells)
        self._predictions_out = (1 + buckets + cells, 1 + buckets + cells + k)
        lo = 1 + n_latency
        feature_slices = []
        for size in feature_sizes:
            feature_slices.append((lo, lo + size))
            lo += size
        self._wrong_cells = np.array([p * k + a for p in range(k) for a in range(k) if p != a], dtype=np.intp)
        self._feature_out = tuple(
            (name, (*f.bounds, INF), lo, hi)
            for (name, f), (lo, hi) in zip(self._features, feature_slices, strict=True)
        )
        self._confusion_keys = tuple((p, a) for p in self._classes for a in self._classes)

        # Cumulative kept draws per stream at every chunk end (floats: exact up to 2**53
        # and fast to multiply); a window is the difference of two of them.
        self._history: _FloatArray = np.zeros((256, 3, self._columns))
        # Probability tables by (changes applied, chunk length): kept across resets.
        self._tables: dict[tuple[int, float, tuple[int, int]], tuple[_FloatArray, _FloatArray]] = {}
        self._table_parts: dict[tuple[int, tuple[int, int]], _TableParts] = {}

        # Bursts: chunks are split at their edges too; the state is (stable's, candidate's)
        # burst index, NO_BURST when quiet. The schedule is drawn at reset.
        self._burst_edges: tuple[float, ...] = ()
        self._burst_states: tuple[tuple[int, int], ...] = ((NO_BURST, NO_BURST),)
        self._burst_state = (NO_BURST, NO_BURST)
        self._next_edge = 0
        # Prometheus-style counting of every chunk (only when the scenario asks for it).
        self._prom: PrometheusCounter | None = None
        if scenario.prometheus is not None:
            ok = np.zeros(self._columns, dtype=np.bool_)
            ok[1 : 1 + 3 * cells] = True
            ok[self._arrived] = True
            shown_matrix = self._shown(np.eye(self._columns))
            self._prom = PrometheusCounter(scenario.prometheus, scenario.pods, shown_matrix, 0, ok)
        self.reset(seed, weights)

    def reset(self, seed: int | None = None, weights: Weights = ALL_STABLE) -> None:
        """Start over at virtual time 0 with a new seed, as if newly made (but cheaper:
        a driver running many seeds of one scenario can reuse one mesh)."""
        self._rng = np.random.default_rng(seed)
        # The fallback's own stream: a scenario's other draws do not depend on it.
        self._fallback_rng = np.random.default_rng(None if seed is None else [seed, _FALLBACK_STREAM])
        self._fallback_served = [0, 0, 0]  # requests, errors, wrong predictions
        self._times: list[float] = [0.0]
        self._history[0] = 0.0
        self._count = 1  # rows of _history in use
        self._now = 0.0
        self._pending[:] = 0
        self._stable = self.scenario.stable
        self._candidate = self.scenario.candidate
        self._traffic = self.scenario.traffic
        self._next_change = 0
        self._weights = ALL_STABLE
        self._route = (1.0, 0.0, 0.0)
        self._burst_state = (NO_BURST, NO_BURST)
        self._next_edge = 0
        if self.scenario.bursts or self._prom is not None:
            # Streams of their own: the traffic draws stay what they are without these.
            burst_seed, prom_seed = np.random.SeedSequence(seed).spawn(2)
            if self.scenario.bursts:
                schedule = draw_schedule(
                    self.scenario.bursts, self.scenario.duration_s, np.random.default_rng(burst_seed)
                )
                self._burst_edges, self._burst_states = schedule.edges, schedule.state
                self._burst_state = schedule.state[0]
            if self._prom is not None:
                self._prom.reset(np.random.default_rng(prom_seed))
        self.set_weights(weights)
        self._apply_due_changes()

    # -- TrafficRouter

    def set_weights(self, weights: Weights) -> None:
        if not 0 <= weights.mirror_percent <= 100:
            raise ValueError(f"mirror_percent {weights.mirror_percent} is not between 0 and 100")
        self._weights = weights
        stable, mirror = weights.stable / 100.0, weights.mirror_percent / 100.0
        # Shares of all requests: kept by stable only, served by the candidate, stable's mirrored ones.
        self._route = (stable * (1.0 - mirror), weights.candidate / 100.0, stable * mirror)

    def get_weights(self) -> Weights:
        return self._weights

    # -- virtual time

    @property
    def now(self) -> float:
        """Virtual time up to which traffic has been generated."""
        return self._now

    @property
    def boundaries(self) -> tuple[float, ...]:
        """Chunk ends recorded so far (0 first); ``read`` windows start and end on these."""
        return tuple(self._times)

    def advance(self, to_t: float) -> None:
        """Generate the traffic of ``[now, to_t]``, split at scenario changes."""
        if to_t < self._now - _EPS:
            raise ValueError(f"cannot go back in virtual time from {self._now:g}s to {to_t:g}s")
        changes = self.scenario.changes
        edges = self._burst_edges
        while to_t - self._now > _EPS:
            end = to_t
            if self._next_change < len(changes) and changes[self._next_change].at_s < end:
                end = changes[self._next_change].at_s
            if self._next_edge < len(edges) and edges[self._next_edge] < end:
                end = edges[self._next_edge]
            self._chunk(end)
            self._apply_due_changes()
            while self._next_edge < len(edges) and edges[self._next_edge] <= self._now + _EPS:
                self._next_edge += 1
                self._burst_state = self._burst_states[self._next_edge]

    def _apply_due_changes(self) -> None:
        changes = self.scenario.changes
        while self._next_change < len(changes) and changes[self._next_change].at_s <= self._now + _EPS:
            change = changes[self._next_change]
            self._stable, self._candidate, self._traffic = change.stable, change.candidate, change.traffic
            self._next_change += 1

    def _chunk(self, end: float) -> None:
        start = self._now
        dt = end - start
        key = (self._next_change, dt, self._burst_state)
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) >= _MAX_TABLES:  # burst edges make chunk lengths of every size
                self._tables.clear()
            tables = self._tables[key] = self._build_tables(dt)
        pvals, pending_p = tables

        mean = self._expected_requests(start, end)
        if self._weights.fallback:
            self._fallback_chunk(mean * self._weights.fallback / 100.0)
        keep, serve, mirror = self._route
        rng = self._rng
        kept = rng.poisson(mean * keep) if keep > 0.0 else 0
        mirrored = rng.poisson(mean * mirror) if mirror > 0.0 else 0
        n = self._draw_counts
        layers = self._request_layers
        n[_STABLE, :layers] = kept + mirrored
        n[_CANDIDATE, :layers] = rng.poisson(mean * serve) if serve > 0.0 else 0
        n[_MIRROR, :layers] = mirrored
        if self._merge_pending:
            n[:, layers:] = self._pending
            drawn = rng.multinomial(n, pvals)  # (3 streams, layers, width)
            arrived = drawn[:, layers:, 0]
        else:
            drawn = rng.multinomial(n, pvals)
            arrived = rng.binomial(self._pending, pending_p)
        self._pending -= arrived  # the labels pending before this chunk, then the new ones
        self._pending += drawn[:, 0, self._new_pending]

        i = self._count
        if i == len(self._history):
            grown = np.zeros((2 * i, 3, self._columns))
            grown[:i] = self._history
            self._history = grown
        history = self._history
        kept_draws = drawn.reshape(3, -1).take(self._kept_draws, axis=1)
        if self._merge_pending:
            np.add(history[i - 1], kept_draws, out=history[i])
        else:
            n_kept = len(self._kept_draws)
            np.add(history[i - 1, :, :n_kept], kept_draws, out=history[i, :, :n_kept])
            np.add(history[i - 1, :, n_kept:], arrived, out=history[i, :, n_kept:])
        self._count = i + 1
        self._times.append(end)
        self._now = end
        if self._prom is not None:
            chunk = history[i] - history[i - 1]
            counts = np.rint(np.stack((chunk[_STABLE], chunk[_CANDIDATE] + chunk[_MIRROR]))).astype(np.int64)
            stable, candidate = self._in_force()
            self._prom.record(start, end, counts, (stable.error_rate, candidate.error_rate))

    def _fallback_chunk(self, mean: float) -> None:
        """The requests the fallback serves in a chunk: Poisson, each failing or (if not)
        wrong independently, at its behaviour's rates."""
        b = self.scenario.fallback or self.scenario.stable
        rng = self._fallback_rng
        n = int(rng.poisson(mean))
        errors = int(rng.binomial(n, b.error_rate))
        wrong = int(rng.binomial(n - errors, 1.0 - b.accuracy))
        for i, x in enumerate((n, errors, wrong)):
            self._fallback_served[i] += x

    def _expected_requests(self, start: float, end: float) -> float:
        t = self._traffic
        mean = t.rps * (end - start)
        if t.diurnal:
            w = 2.0 * math.pi / _DAY_S
            a, b = start + t.time_of_day_s, end + t.time_of_day_s
            mean += t.rps * t.diurnal * (math.cos(w * a) - math.cos(w * b)) / w
        return max(mean, 0.0)

    def _build_tables(self, dt: float) -> tuple[_FloatArray, _FloatArray]:
        """For a chunk of ``dt`` seconds: the multinomial's probabilities per stream and
        layer, and the chance that a pending label arrives within it, per stream."""
        # What does not depend on dt is built once per state (bursts make many states and
        # chunk lengths); the arithmetic is the same as building it all at once.
        state = (self._next_change, self._burst_state)
        parts = self._table_parts.get(state)
        if parts is None:
            parts = self._table_parts[state] = self._build_table_parts()
        base, outcome_parts = parts
        pvals = base.copy()
        pending_p = np.zeros((3, 1))
        for row, (b, error_rate, ok_labelled, ok_missing) in outcome_parts.items():
            within, later = _label_arrival(b.labels.delay_mean_s, dt)
            pending_p[row, 0] = later
            outcome = np.concatenate(
                ([error_rate], ok_labelled * within, ok_labelled * (1.0 - within), ok_missing)
            )
            pvals[row, 0, : len(outcome)] = _exact_sum(outcome)
            if self._merge_pending:
                pvals[row, self._request_layers :, :2] = _exact_sum([later, 1.0 - later])
        pvals[_MIRROR] = pvals[_CANDIDATE]  # mirrored copies are handled by the candidate
        pending_p[_MIRROR] = pending_p[_CANDIDATE]
        return pvals, pending_p

    def _build_table_parts(self) -> _TableParts:
        prior = _padded(self._stable.predictions, self._k)
        base = np.zeros((*self._draw_counts.shape, self._width))
        outcome_parts: dict[int, tuple[Behaviour, float, _FloatArray, _FloatArray]] = {}
        stable, candidate = self._in_force()
        for row, b in ((_STABLE, stable), (_CANDIDATE, candidate)):
            confusion = _confusion(_padded(b.predictions, self._k), b.accuracy, prior).ravel()
            ok = (1.0 - b.error_rate) * confusion
            labelled = 1.0 - b.labels.missing
            outcome_parts[row] = (b, b.error_rate, ok * labelled, ok * b.labels.missing)
            shares = [_latency_shares(b.latency)]
            shares += [np.asarray(b.features[name].shares) for name, _ in self._features]
            for j, layer in enumerate(shares, start=1):
                base[row, j, : len(layer)] = _exact_sum(layer)
        return base, outcome_parts

    def _in_force(self) -> tuple[Behaviour, Behaviour]:
        """Stable's and the candidate's behaviour now, bursts included."""
        s, c = self._burst_state
        return self._bursting(self._stable, s), self._bursting(self._candidate, c)

    def _bursting(self, b: Behaviour, burst_index: int) -> Behaviour:
        if burst_index == NO_BURST:
            return b
        burst = self.scenario.bursts[burst_index]
        latency = b.latency
        if burst.latency_factor != 1.0:
            f = burst.latency_factor
            latency = Latency(latency.median_ms * f, latency.p99_ms * f, latency.tail)
        return replace(b, error_rate=burst.error_rate, latency=latency)

    # -- MetricsSource

    def read(self, since: float, now: float) -> Observation:
        """Counts per version over ``[since, now]``, both taken at recorded chunk ends
        (the latest one at or before each)."""
        if now > self._now + _EPS:
            raise ValueError(
                f"read up to {now:g}s but traffic exists only up to {self._now:g}s: advance first"
            )
        if since > now + _EPS:
            raise ValueError(f"window starts at {since:g}s, after its end at {now:g}s")
        for outage in self.scenario.outages:
            if outage.at_s <= now < outage.at_s + outage.for_s:
                return Observation(since, now, problem="metrics unavailable (scenario outage)")
        if self._prom is not None:
            stable, candidate = self._prom.increase(since, now).tolist()
            return Observation(since, now, self._version_counts(stable), self._version_counts(candidate))
        times = self._times
        first = max(bisect_right(times, since + _EPS) - 1, 0)
        last = bisect_right(times, now + _EPS) - 1
        diff = self._history[last] - self._history[first]
        counts = diff[:2]
        counts[1] += diff[2]  # the candidate handled its mirrored copies too
        stable, candidate = self._shown(counts).tolist()
        return Observation(since, now, self._version_counts(stable), self._version_counts(candidate))

    def _shown(self, counts: _FloatArray) -> _FloatArray:
        """Rows of kept columns -> the series the judge reads (errors | cumulative
        histograms | confusion | predictions)."""
        rows = counts.shape[0]
        shown = np.empty((rows, self._shown_width))
        k, cells, buckets_end = self._k, self._cells, self._confusion_out[0]
        shown[:, 0] = counts[:, 0]
        np.matmul(counts[:, self._buckets], self._cumulative, out=shown[:, 1:buckets_end])
        np.add(
            counts[:, self._within], counts[:, self._arrived], out=shown[:, buckets_end : buckets_end + cells]
        )
        made = counts[:, self._within] + counts[:, self._later] + counts[:, self._never]
        made.reshape(rows, k, k).sum(axis=2, out=shown[:, buckets_end + cells :])
        return shown

    def _version_counts(self, shown: list[float]) -> VersionCounts:
        lat, conf, pred = self._latency_out, self._confusion_out, self._predictions_out
        return VersionCounts(
            requests=shown[lat[1] - 1],  # every request has a latency
            errors=shown[0],
            latency_ms=Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(shown[lat[0] : lat[1]])),
            confusion=dict(zip(self._confusion_keys, shown[conf[0] : conf[1]], strict=True)),
            predictions=dict(zip(self._classes, shown[pred[0] : pred[1]], strict=True)),
            features={
                name: Histogram(bounds, tuple(shown[lo:hi])) for name, bounds, lo, hi in self._feature_out
            },
        )

    # -- ground truth for the result

    def _latest(self, stream: int) -> _FloatArray:
        row: _FloatArray = self._history[self._count - 1, stream]
        return row

    @property
    def candidate_served_requests(self) -> int:
        """Requests the candidate served to users so far (not mirrored copies)."""
        return int(self._latest(_CANDIDATE)[self._buckets][: len(ISTIO_LATENCY_BUCKETS_MS)].sum())

    @property
    def candidate_served_errors(self) -> int:
        """Of those, failed ones."""
        return int(self._latest(_CANDIDATE)[0])

    @property
    def candidate_served_wrong(self) -> int:
        """Of those, wrong predictions, labelled or not."""
        row = self._latest(_CANDIDATE)
        made = row[self._within] + row[self._later] + row[self._never]
        return int(made[self._wrong_cells].sum())

    @property
    def fallback_served(self) -> tuple[int, int, int]:
        """Requests the fallback served to users so far, of those failed ones, and wrong
        predictions among the rest."""
        n, errors, wrong = self._fallback_served
        return n, errors, wrong

    @property
    def candidate_mirrored_requests(self) -> int:
        """Mirrored copies the candidate handled so far (counted in its metrics only)."""
        return int(self._latest(_MIRROR)[self._buckets][: len(ISTIO_LATENCY_BUCKETS_MS)].sum())

    def behaviours(self) -> tuple[Behaviour, Behaviour, Traffic]:
        """Stable's and the candidate's behaviour and the traffic in force now."""
        return self._stable, self._candidate, self._traffic


def _padded(shares: tuple[float, ...], k: int) -> _FloatArray:
    out = np.zeros(k)
    out[: len(shares)] = shares
    return out


def _confusion(predicted: _FloatArray, accuracy: float, prior: _FloatArray) -> _FloatArray:
    """P(predicted i, actual j): right with probability ``accuracy``; a wrong prediction's
    true class is another class in proportion to ``prior`` (uniform if that is all 0)."""
    k = len(predicted)
    others = np.tile(prior, (k, 1))
    np.fill_diagonal(others, 0.0)
    totals = others.sum(axis=1, keepdims=True)
    uniform = (1.0 - np.eye(k)) / max(k - 1, 1)
    others = np.where(totals > 0, others / np.where(totals > 0, totals, 1.0), uniform)
    out: _FloatArray = predicted[:, None] * ((1.0 - accuracy) * others + accuracy * np.eye(k))
    return out


def _label_arrival(delay_mean_s: float, dt: float) -> tuple[float, float]:
    """(chance that a label of a prediction made uniformly within a chunk of ``dt`` arrives
    within it, chance that a label pending at the chunk's start arrives within it)."""
    if delay_mean_s <= 0.0:
        return 1.0, 1.0
    a = dt / delay_mean_s
    pending = -math.expm1(-a)
    within = a / 2.0 - a * a / 6.0 if a < 1e-4 else 1.0 - pending / a
    return within, pending


def _latency_shares(latency: Latency) -> _FloatArray:
    """Chance of each Istio bucket under the lognormal through the median and the p99
    (and its heavy tail, if any)."""
    return bucket_shares(ISTIO_LATENCY_BUCKETS_MS, latency.median_ms, latency.sigma, latency.tail)


def _exact_sum(shares: Any) -> _FloatArray:
    """Shares whose last non-zero entry is exactly what numpy's multinomial has left over
    (it subtracts in order), so no count spills into the zero padding after it."""
    xs: _FloatArray = np.clip(np.asarray(shares, dtype=np.float64), 0.0, None)
    xs = xs / xs.sum()
    nonzero = np.flatnonzero(xs)
    if len(nonzero):
        last = int(nonzero[-1])
        rest = 1.0
        for x in xs[:last].tolist():
            rest -= x
        xs[last] = max(rest, 0.0)
    return xs
