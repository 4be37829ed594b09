"""Bursts of errors (and slowness): the overdispersion real traffic has and independent
requests do not (a bad pod, a GC pause, a retry storm).

A scenario's ``bursts`` list (docs/simulation.md) gives, per entry, which versions burst
(``each``: one independent process per version; ``shared``: one process for both at once;
``stable`` or ``candidate``: that version only), the error rate during a burst (it replaces
the version's own rate), an optional latency factor, the burst's length and the mean time
between burst starts.

Each process alternates between a burst of exactly ``duration`` and a quiet gap that is
exponential with mean ``every - duration``: burst starts are ``every`` apart on average,
bursts of one process never overlap, and the long-run share of time in a burst is exactly
``duration / every`` (a plain Poisson process of starts would let bursts overlap and cover
only ``1 - exp(-duration / every)`` of the time). The process starts in its stationary
state (in a burst with chance ``duration / every``), so time 0 is not special.

The schedule of a run is drawn once, at reset, from its own random stream: the traffic
generator splits its chunks at burst edges (as at scenario changes), so the generator stays
vectorised and exact, and a scenario without bursts draws exactly what it drew before.
Burst edges are rounded to whole seconds: chunk lengths then come from a small set and the
generator's probability tables are reused (random edges made a new table per edge, 3.7x
slower per tick).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

if TYPE_CHECKING:
    from mesh_canary.simulation.traffic import _Validator

__all__ = ["BURST_VERSIONS", "Burst", "BurstSchedule", "draw_schedule", "parse_bursts"]

BurstVersions = Literal["each", "shared", "stable", "candidate"]
BURST_VERSIONS: tuple[BurstVersions, ...] = ("each", "shared", "stable", "candidate")
NO_BURST = -1  # a version's burst index when it is not in a burst


@dataclass(frozen=True)
class Burst:
    versions: BurstVersions
    error_rate: float
    duration_s: float
    every_s: float
    latency_factor: float = 1.0

    def processes(self) -> tuple[tuple[bool, bool], ...]:
        """One (affects stable, affects candidate) pair per independent on/off process."""
        return {
            "each": ((True, False), (False, True)),
            "shared": ((True, True),),
            "stable": ((True, False),),
            "candidate": ((False, True),),
        }[self.versions]


@dataclass(frozen=True)
class BurstSchedule:
    """Burst state per segment: ``state[i]`` holds between ``edges[i-1]`` and ``edges[i]``
    (from 0 for the first; ``state[len(edges)]`` after the last edge), as a pair of burst
    indices (stable's, candidate's), NO_BURST where that version is quiet."""

    edges: tuple[float, ...]
    state: tuple[tuple[int, int], ...]


def parse_bursts(v: _Validator, value: Any, path: str = "bursts") -> tuple[Burst, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        v.bad(path, "must be a list of {versions, errorRate, duration, every}")
        return ()
    out: list[Burst] = []
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        doc = v.mapping(item, p, {"versions", "errorRate", "latencyFactor", "duration", "every"})
        if doc is None:
            continue
        versions = doc.get("versions", "each")
        if versions not in BURST_VERSIONS:
            v.bad(f"{p}.versions", f"must be one of {', '.join(BURST_VERSIONS)}, not {versions!r}")
        rate = v.required(doc, "errorRate", p, v.share)
        factor = (
            v.number(doc["latencyFactor"], f"{p}.latencyFactor", low=0.0, low_open=True)
            if "latencyFactor" in doc
            else 1.0
        )
        length = v.required(doc, "duration", p, lambda x, q: v.duration(x, q, positive=True))
        every = v.required(doc, "every", p, lambda x, q: v.duration(x, q, positive=True))
        if length is not None and every is not None and every <= length:
            v.bad(
                f"{p}.every",
                f"must be longer than duration ({length:g}s): it is the mean time between starts",
            )
            continue
        if versions in BURST_VERSIONS and None not in (rate, factor, length, every):
            fields = (cast(float, x) for x in (rate, length, every, factor))
            out.append(Burst(cast(BurstVersions, versions), *fields))
    return tuple(out)


def draw_schedule(bursts: tuple[Burst, ...], until_s: float, rng: np.random.Generator) -> BurstSchedule:
    """Every burst of every process in ``[0, until_s]``; later entries of ``bursts`` win
    where two overlap for one version."""
    # (start, end, burst index, affects stable, affects candidate)
    spans: list[tuple[float, float, int, bool, bool]] = []
    for index, burst in enumerate(bursts):
        d, gap_mean = burst.duration_s, burst.every_s - burst.duration_s
        for on_stable, on_candidate in burst.processes():
            # Stationary start: in a burst with chance d / every, with a uniform remainder.
            t = -d * rng.random() if rng.random() < d / burst.every_s else rng.exponential(gap_mean)
            while t < until_s:
                start, end = max(round(t), 0.0), min(round(t + d), until_s)
                if end > start:
                    spans.append((start, end, index, on_stable, on_candidate))
                t += d + rng.exponential(gap_mean)
    edges = sorted({x for s, e, *_ in spans for x in (s, e) if 0.0 < x < until_s} | {until_s})
    starts = [0.0, *edges]  # segment i runs from starts[i] to the next one
    stable = [NO_BURST] * len(starts)
    candidate = [NO_BURST] * len(starts)
    for s, e, index, on_stable, on_candidate in spans:  # in index order: later entries win
        for i in range(bisect_left(starts, s), bisect_left(starts, e)):
            if on_stable:
                stable[i] = index
            if on_candidate:
                candidate[i] = index
    return BurstSchedule(tuple(edges), tuple(zip(stable, candidate, strict=True)))
