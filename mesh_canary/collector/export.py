"""/metrics: the store's counters as the model metrics convention (names and buckets from
mesh_canary.modelmetrics, written once there) plus the collector's own series.

Convention (per ``version``): ``model_predictions_total{class}``,
``model_feedback_total{predicted,actual}``, ``model_prediction_score`` (only predictions
that carried a score), ``model_label_delay_seconds``. The collector's own:
``collector_events_total{kind,outcome}`` (kind: prediction, request, label; outcome:
stored, joined, duplicate, conflict, unmatched, ignored, rejected),
``collector_unlabelled_predictions{version}`` and ``collector_unmatched_labels`` (gauges:
waiting now), ``collector_expired_unlabelled_total{version}`` and
``collector_expired_labels_total`` (deleted by retention without ever being joined).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mesh_canary.collector import store as s
from mesh_canary.modelmetrics import (
    FEEDBACK,
    LABEL_DELAY,
    LABEL_DELAY_BUCKETS,
    PREDICTIONS,
    SCORE,
    SCORE_BUCKETS,
)


class StoreCollector(Collector):
    def __init__(self, store: s.Store, version_label: str = "version") -> None:
        self.store = store
        self.version_label = version_label

    def collect(self) -> Iterator[Metric]:
        counters, unlabelled, unmatched = self.store.snapshot()
        v = self.version_label
        versions = sorted({key[1] for key in counters if key[0] == s.PRED})
        predictions = CounterMetricFamily(
            PREDICTIONS, "Predictions made, by predicted class.", labels=[v, "class"]
        )
        feedback = CounterMetricFamily(
            FEEDBACK,
            "Ground truth received, by predicted and actual class.",
            labels=[v, "predicted", "actual"],
        )
        for key, value in sorted(counters.items()):
            if key[0] == s.PRED:
                predictions.add_metric(list(key[1:]), value)
            elif key[0] == s.FEEDBACK:
                feedback.add_metric(list(key[1:]), value)
        yield predictions
        yield feedback
        yield _histogram(
            SCORE, "Score of the predicted class.", v, versions, counters, s.SCORE, s.SCORE_SUM, SCORE_BUCKETS
        )
        yield _histogram(
            LABEL_DELAY,
            "Seconds from a prediction to its label.",
            v,
            versions,
            counters,
            s.DELAY,
            s.DELAY_SUM,
            LABEL_DELAY_BUCKETS,
        )
        events = CounterMetricFamily(
            "collector_events",
            "Events received, by kind and what became of them.",
            labels=["kind", "outcome"],
        )
        expired = CounterMetricFamily(
            "collector_expired_unlabelled", "Predictions deleted by retention without a label.", labels=[v]
        )
        for key, value in sorted(counters.items()):
            if key[0] == s.EVENTS:
                events.add_metric(list(key[1:]), value)
            elif key[0] == s.EXPIRED_UNLABELLED:
                expired.add_metric([key[1]], value)
        yield events
        yield expired
        yield CounterMetricFamily(
            "collector_expired_labels",
            "Labels deleted by retention without a prediction.",
            value=counters.get((s.EXPIRED_LABELS,), 0.0),
        )
        waiting = GaugeMetricFamily(
            "collector_unlabelled_predictions", "Predictions waiting for a label.", labels=[v]
        )
        for version in sorted(unlabelled):
            waiting.add_metric([version], unlabelled[version])
        yield waiting
        yield GaugeMetricFamily(
            "collector_unmatched_labels", "Labels waiting for their prediction.", value=float(unmatched)
        )


def _histogram(
    name: str,
    doc: str,
    version_label: str,
    versions: Sequence[str],
    counters: dict[s.Key, float],
    family: str,
    sum_family: str,
    bounds: Sequence[float],
) -> HistogramMetricFamily:
    """Every version gets the series (at zero if need be): a real zero, never a gap."""
    metric = HistogramMetricFamily(name, doc, labels=[version_label])
    for version in versions:
        running = 0.0
        buckets = []
        for i, bound in enumerate([*bounds, float("inf")]):
            running += counters.get((family, version, str(i)), 0.0)
            buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        metric.add_metric([version], buckets, counters.get((sum_family, version), 0.0))
    return metric


def render(store: s.Store, version_label: str = "version") -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, version_label))
    return generate_latest(registry)
