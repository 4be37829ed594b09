"""MetricsSource for the embedded local mesh: scrape Envoy and the model servers directly.

Each ``read(since, now)`` scrapes, once:

- Envoy's ``/stats/prometheus`` for each version's cluster (cluster name = version label):
  requests = ``envoy_cluster_upstream_rq_completed`` (not ``upstream_rq_total``: a request
  that never got a connection counts as a 503 but not in ``_total``); errors =
  ``envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}``, which already holds
  Envoy's own 503/504 for upstream resets, connect failures and timeouts; latency =
  ``envoy_cluster_upstream_rq_time`` (ms; Envoy's default buckets, the same bounds as
  Istio's). Mirrored (shadow) copies count for the cluster that received them. Envoy
  updates histograms only on a stats flush (every 1 s here), so latency lags the counters
  by up to a second.
- each model server's ``/metrics`` (the model metrics convention): ``model_feedback_total``
  -> confusion, ``model_predictions_total`` -> predictions by class,
  ``model_feature_value`` -> feature histograms.

These cumulative counts are kept as a history of (now, snapshot); the window's counts are
the newest snapshot minus the one taken at or before ``since``. The driver reads at every
tick, so such a snapshot exists at each step's start. If none does (the first read), the
oldest snapshot is used (the window is then shorter than asked, which only ever means less
data), except that when ``origin`` (a time at which every counter was zero, e.g. when the
mesh started) is at or after ``since``, the whole cumulative count is the window.

One scrape (all three requests together) ends within ``timeout_s`` whatever the servers do
(``deadline_http`` gives each socket step only the time left), so a stuck model server cannot
hold a tick, and a rollback decision, for longer than that.

Never raises: a failed or unparsable scrape gives an Observation with ``problem`` set and
no counts (nothing a server sent is copied into it). A counter that went down (a process restarted) is reported as a problem for that
read and the history starts again from that snapshot.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.errors import CouldNotWork
from mesh_canary.metrics.deadline_http import DeadlineClient, DeadlineExceeded, TooLarge, Unreachable
from mesh_canary.redact import redact_url

CLUSTER_LABEL = "envoy_cluster_name"
# Counter samples are matched by their name with "_total" (Envoy exposes these without it;
# _samples adds it, as prometheus_client's parser does).
REQUESTS = "envoy_cluster_upstream_rq_completed_total"
RESPONSE_CLASSES = "envoy_cluster_upstream_rq_xx_total"
LATENCY_BUCKET = "envoy_cluster_upstream_rq_time_bucket"
PREDICTIONS = "model_predictions_total"
FEEDBACK = "model_feedback_total"
FEATURE_BUCKET = "model_feature_value_bucket"

_COUNTS = frozenset({REQUESTS, RESPONSE_CLASSES, LATENCY_BUCKET, PREDICTIONS, FEEDBACK, FEATURE_BUCKET})

Snapshot = dict[str, VersionCounts]  # version label -> cumulative counts


class ScrapeError(CouldNotWork):
    pass


@dataclass(frozen=True)
class _Entry:
    at: float
    counts: Snapshot


class LocalMetricsSource:
    def __init__(
        self,
        envoy_admin_url: str,
        model_metrics_urls: Mapping[str, str],
        stable_label: str,
        candidate_label: str,
        *,
        origin: float | None = None,
        version_label: str = "version",
        timeout_s: float = 5.0,
        history_s: float = 6 * 3600.0,
    ) -> None:
        """``model_metrics_urls`` maps a version label to its server's full metrics URL."""
        self.envoy_admin_url = envoy_admin_url.rstrip("/")
        self.model_metrics_urls = dict(model_metrics_urls)
        self.stable_label = stable_label
        self.candidate_label = candidate_label
        self.origin = origin
        self.version_label = version_label
        self.timeout_s = timeout_s
        self.history_s = history_s
        self._history: list[_Entry] = []
        self._client = DeadlineClient(max_body_bytes=16 * 2**20)
        labels = "|".join(re.escape(v) for v in self._labels)
        # Native stat names (before tag extraction): keeps the scrape small.
        self._envoy_filter = rf"^cluster\.({labels})\.upstream_rq_(completed|time|[1-5]xx)$"

    @property
    def _labels(self) -> tuple[str, str]:
        return (self.stable_label, self.candidate_label)

    def read(self, since: float, now: float) -> Observation:
        try:
            current = self.scrape()
        except ScrapeError as exc:
            return Observation(since=since, at=now, problem=str(exc))
        if self._history and (went_down := _decreased(self._history[-1].counts, current)):
            self._history = [_Entry(now, current)]
            return Observation(
                since=since,
                at=now,
                problem=f"{went_down} went down (a restart?); counting again from this read",
            )
        self._history.append(_Entry(now, current))
        self._prune(now)
        base = self._base(since)
        return Observation(
            since=since,
            at=now,
            stable=current[self.stable_label].minus(base.get(self.stable_label) if base else None),
            candidate=current[self.candidate_label].minus(base.get(self.candidate_label) if base else None),
        )

    def _base(self, since: float) -> Snapshot | None:
        at_or_before = [e for e in self._history if e.at <= since]
        if at_or_before:
            return at_or_before[-1].counts
        if self.origin is not None and since <= self.origin:
            return None  # every counter was zero at the origin
        return self._history[0].counts

    def _prune(self, now: float) -> None:
        # Keep the newest snapshot that is older than the horizon: it still covers it.
        while len(self._history) > 1 and self._history[1].at <= now - self.history_s:
            self._history.pop(0)

    def scrape(self) -> Snapshot:
        """Cumulative counts per version, now; raise ScrapeError on any failure.

        The whole scrape (Envoy and every model server) ends within ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        envoy = self._families(
            f"{self.envoy_admin_url}/stats/prometheus", {"filter": self._envoy_filter}, "Envoy", deadline
        )
        models = {
            label: self._families(url, None, f"the {label} model server", deadline)
            for label, url in self.model_metrics_urls.items()
            if label in self._labels
        }
        return {label: self._counts(label, envoy, models.get(label, [])) for label in self._labels}

    def close(self) -> None:
        self._client.close()

    def _families(self, url: str, params: dict[str, str] | None, what: str, deadline: float) -> list[Sample]:
        shown = redact_url(url)
        try:
            answer = self._client.get(url, params, deadline)
        except DeadlineExceeded:
            raise ScrapeError(f"{what} at {shown} did not answer within {self.timeout_s:g}s") from None
        except (Unreachable, TooLarge) as exc:
            raise ScrapeError(f"cannot scrape {what} at {shown}: {exc}") from None
        except Exception:  # not HTTP at all
            raise ScrapeError(f"cannot scrape {what} at {shown}: it did not answer in HTTP") from None
        if answer.status != 200:
            raise ScrapeError(f"{what} at {shown} answered HTTP {answer.status}")
        return _parse(answer.body.decode("utf-8", errors="replace"), what, shown)

    def _counts(self, label: str, envoy: list[Sample], model: list[Sample]) -> VersionCounts:
        mine = [s for s in envoy if s.labels.get(CLUSTER_LABEL) == label]
        requests = [float(s.value) for s in mine if s.name == REQUESTS]
        if not requests:
            raise ScrapeError(f"Envoy reports no requests counter for a cluster named {label!r}")
        errors = sum(
            float(s.value)
            for s in mine
            if s.name == RESPONSE_CLASSES and s.labels.get("envoy_response_code_class") == "5"
        )
        latency = _histogram((s.labels["le"], s.value) for s in mine if s.name == LATENCY_BUCKET)
        ours = [s for s in model if s.labels.get(self.version_label) == label]
        confusion: dict[tuple[str, str], float] = {}
        predictions: dict[str, float] = {}
        buckets: dict[str, list[tuple[str, float]]] = {}
        for s in ours:
            if s.name == FEEDBACK:
                key = (s.labels["predicted"], s.labels["actual"])
                confusion[key] = confusion.get(key, 0.0) + s.value
            elif s.name == PREDICTIONS:
                predictions[s.labels["class"]] = predictions.get(s.labels["class"], 0.0) + s.value
            elif s.name == FEATURE_BUCKET:
                buckets.setdefault(s.labels["feature"], []).append((s.labels["le"], s.value))
        features = {name: h for name, pairs in buckets.items() if (h := _histogram(pairs)) is not None}
        return VersionCounts(
            requests=requests[0],
            errors=errors,
            latency_ms=latency,
            confusion=confusion,
            predictions=predictions,
            features=features,
        )


def _parse(text: str, what: str, shown: str) -> list[Sample]:
    try:
        samples = [
            s._replace(name=f"{s.name}_total")
            if family.type == "counter" and not s.name.endswith("_total")
            else s
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except (ValueError, TypeError, IndexError, KeyError):
        # The parser's message quotes the offending line: not copied (it is the server's text).
        raise ScrapeError(f"{what} at {shown} sent metrics that do not parse") from None
    if any(not math.isfinite(s.value) for s in samples):
        raise ScrapeError(f"{what} at {shown} reported NaN or an infinite value")
    if any(s.value < 0 for s in samples if s.name in _COUNTS):
        raise ScrapeError(f"{what} at {shown} reported a negative count")
    return samples


def _histogram(pairs: Iterable[tuple[str, float]]) -> Histogram | None:
    by_bound = sorted((float(le), value) for le, value in pairs)
    if not by_bound:
        return None
    if by_bound[-1][0] != math.inf:
        raise ScrapeError("a histogram has no +Inf bucket")
    return Histogram(tuple(b for b, _ in by_bound), tuple(float(v) for _, v in by_bound))


def _decreased(before: Snapshot, after: Snapshot) -> str | None:
    """The first cumulative count that is lower in ``after`` (a counter reset), if any."""
    for label, old in before.items():
        new = after.get(label)
        if new is None:
            continue
        pairs: list[tuple[str, float, float]] = [
            ("requests", old.requests, new.requests),
            ("errors", old.errors, new.errors),
        ]
        if old.latency_ms is not None:
            pairs.append(
                ("latency count", old.latency_ms.total, new.latency_ms.total if new.latency_ms else 0.0)
            )
        pairs += [(f"feedback {k}", v, new.confusion.get(k, 0.0)) for k, v in old.confusion.items()]
        pairs += [(f"predictions {k}", v, new.predictions.get(k, 0.0)) for k, v in old.predictions.items()]
        pairs += [
            (f"feature {k}", h.total, new.features[k].total if k in new.features else 0.0)
            for k, h in old.features.items()
        ]
        for name, was, now in pairs:
            if now < was:
                return f"{label}'s {name} counter ({was:g} -> {now:g})"
    return None
