"""ModelMetrics emits exactly the model metrics convention (docs/metrics-convention.md)."""

from __future__ import annotations

import math

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from mesh_canary.modelmetrics import DEFAULT_FEATURE_BUCKETS, SCORE_BUCKETS, ModelMetrics


def exposed(registry: CollectorRegistry) -> list[Sample]:
    text = generate_latest(registry).decode()
    return [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # prometheus_client's own extra, not a convention series
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return float(found[0])


def test_exactly_the_convention_families_with_their_labels() -> None:
    registry = CollectorRegistry()
    ModelMetrics("v2", registry, classes=["a", "b"], features=["x"])
    families = {
        f.name: f
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        if not f.name.endswith("_created")  # prometheus_client's extra, off in our model server
    }
    assert set(families) == {
        "model_predictions",
        "model_feedback",
        "model_prediction_score",
        "model_feature_value",
    }
    assert families["model_predictions"].type == "counter"
    assert families["model_feedback"].type == "counter"
    assert families["model_prediction_score"].type == "histogram"
    assert families["model_feature_value"].type == "histogram"
    samples = exposed(registry)
    label_sets = {
        s.name: frozenset(k for k in s.labels if k != "le")
        for s in samples
        if not s.name.endswith(("_sum", "_count"))
    }
    assert label_sets == {
        "model_predictions_total": {"version", "class"},
        "model_feedback_total": {"version", "predicted", "actual"},
        "model_prediction_score_bucket": {"version"},
        "model_feature_value_bucket": {"version", "feature"},
    }


def test_named_classes_and_features_start_at_a_real_zero() -> None:
    registry = CollectorRegistry()
    ModelMetrics("v1", registry, classes=["a", "b"], features=["x", "y"])
    samples = exposed(registry)
    assert value(samples, "model_predictions_total", version="v1", **{"class": "b"}) == 0
    cells = [s for s in samples if s.name == "model_feedback_total"]
    assert {(s.labels["predicted"], s.labels["actual"]) for s in cells} == {
        ("a", "a"), ("a", "b"), ("b", "a"), ("b", "b"),
    }  # fmt: skip
    assert value(samples, "model_feature_value_count", version="v1", feature="y") == 0
    assert value(samples, "model_prediction_score_count", version="v1") == 0


def test_buckets_are_the_documented_ones() -> None:
    registry = CollectorRegistry()
    ModelMetrics("v1", registry, features=["x"])
    samples = exposed(registry)
    score_bounds = [float(s.labels["le"]) for s in samples if s.name == "model_prediction_score_bucket"]
    assert score_bounds == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, math.inf]
    assert tuple(score_bounds[:-1]) == SCORE_BUCKETS
    feature_bounds = [float(s.labels["le"]) for s in samples if s.name == "model_feature_value_bucket"]
    assert feature_bounds == [*DEFAULT_FEATURE_BUCKETS, math.inf]
    assert DEFAULT_FEATURE_BUCKETS[0] == -3.0 and DEFAULT_FEATURE_BUCKETS[-1] == 3.0


def test_observations_land_in_the_right_series() -> None:
    registry = CollectorRegistry()
    metrics = ModelMetrics("v7", registry, classes=["a", "b"], features=["x"])
    metrics.observe_prediction("a", 0.95, {"x": 0.25, "not_chosen": 9.0})
    metrics.observe_prediction("a", 0.55, {"x": -2.7})
    metrics.observe_prediction("b", 0.42)
    metrics.observe_feedback(predicted="a", actual="b")
    metrics.observe_feedback(predicted="a", actual="b")
    metrics.observe_feedback(predicted="b", actual="b")
    samples = exposed(registry)
    assert value(samples, "model_predictions_total", version="v7", **{"class": "a"}) == 2
    assert value(samples, "model_predictions_total", version="v7", **{"class": "b"}) == 1
    assert value(samples, "model_feedback_total", version="v7", predicted="a", actual="b") == 2
    assert value(samples, "model_feedback_total", version="v7", predicted="b", actual="b") == 1
    assert value(samples, "model_feedback_total", version="v7", predicted="a", actual="a") == 0
    assert value(samples, "model_prediction_score_bucket", version="v7", le="0.5") == 1  # 0.42
    assert value(samples, "model_prediction_score_bucket", version="v7", le="0.6") == 2  # + 0.55
    assert value(samples, "model_prediction_score_count", version="v7") == 3
    assert value(samples, "model_feature_value_bucket", version="v7", feature="x", le="-2.5") == 1
    assert value(samples, "model_feature_value_bucket", version="v7", feature="x", le="0.5") == 2
    # Only the chosen features are recorded when some are named (bounded cardinality).
    assert not [s for s in samples if s.labels.get("feature") == "not_chosen"]


def test_every_feature_is_recorded_when_none_are_named_and_the_version_label_can_be_renamed() -> None:
    registry = CollectorRegistry()
    metrics = ModelMetrics("1.5.0", registry, feature_buckets=(0.0, 10.0), version_label="model_version")
    metrics.observe_prediction("fraud", 0.7, {"amount": 5.0, "age": -1.0})
    samples = exposed(registry)
    assert value(samples, "model_predictions_total", model_version="1.5.0", **{"class": "fraud"}) == 1
    assert (
        value(samples, "model_feature_value_bucket", model_version="1.5.0", feature="amount", le="10.0") == 1
    )
    assert value(samples, "model_feature_value_bucket", model_version="1.5.0", feature="age", le="0.0") == 1


def test_without_a_registry_it_uses_the_default_one() -> None:
    metrics = ModelMetrics("v9", classes=["a"])
    try:
        metrics.observe_prediction("a", 0.8)
        assert REGISTRY.get_sample_value("model_predictions_total", {"version": "v9", "class": "a"}) == 1
    finally:
        for collector in (metrics._predictions, metrics._feedback, metrics._score, metrics._feature):
            REGISTRY.unregister(collector)
