"""accuracy, precision, recall and f1: judged on labelled predictions (ground truth that
arrives late), as rates of the confusion counts.

accuracy: correct / labelled; precision: true positives / predicted as the class; recall:
true positives / actually the class; f1: true positives / (predicted or actually the
class), since F1 = 2t / (1 + t) of that share t.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mesh_canary.checks.base import CheckKind, Judging
from mesh_canary.checks.bounds import Subject
from mesh_canary.checks.evidence import Evidence, num
from mesh_canary.checks.rates import Prepared, RateKind, evaluate_rate
from mesh_canary.core.model import Check
from mesh_canary.core.observations import VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext

_SAMPLES = "labelled predictions"


def _f1(t: float) -> float:
    """F1 from t = TP / (TP + FP + FN): F1 = 2TP / (2TP + FP + FN) = 2t / (1 + t)."""
    return 2.0 * t / (1.0 + t)


def _accuracy_counts(check: Check, counts: VersionCounts) -> tuple[float, float]:
    return num(counts.correct), num(counts.labeled)


def _class_counts(check: Check, counts: VersionCounts) -> tuple[float, float, float]:
    """True positives, false positives and false negatives of the check's class."""
    k = check.class_ or ""
    tp = fp = fn = 0.0
    for (pred, actual), c in counts.confusion.items():
        c = num(c)
        if pred == k and actual == k:
            tp += c
        elif pred == k:
            fp += c
        elif actual == k:
            fn += c
    return tp, fp, fn


def _precision(check: Check, counts: VersionCounts) -> tuple[float, float]:
    tp, fp, _ = _class_counts(check, counts)
    return tp, tp + fp


def _recall(check: Check, counts: VersionCounts) -> tuple[float, float]:
    tp, _, fn = _class_counts(check, counts)
    return tp, tp + fn


def _f1_share(check: Check, counts: VersionCounts) -> tuple[float, float]:
    tp, fp, fn = _class_counts(check, counts)
    return tp, tp + fp + fn


def _of_class(check: Check, ev: Evidence, ctx: JudgeContext) -> Prepared:
    return Subject(f"{check.metric} for class {check.class_!r}", "rate", _SAMPLES), []


def _no_class_labels(check: Check) -> str:
    return f"no labelled predictions involving class {check.class_!r}"


def _kind(
    name: str, title: str, rate: RateKind, qualifiers: tuple[str, ...], class_name: bool = True
) -> CheckKind:
    def evaluate(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
        return evaluate_rate(rate, judge, check, ev, ctx, alpha)

    def named(check: Mapping[str, Any]) -> str:
        return f"{name}-{check['class']}" if isinstance(check.get("class"), str) else name

    return CheckKind(
        name=name,
        title=title,
        bounds=("maxDecrease", "min"),
        qualifiers=qualifiers,
        required={"class": f"{name} checks judge one class"} if class_name else {},
        signals=frozenset({"confusion"}),
        evaluate=evaluate,
        counts=lambda check, c: [(_SAMPLES, v) for v in c.confusion.values()],
        label_based=True,
        default_name=named if class_name else None,
        is_share=lambda check: True,
        rate=rate.counts,
    )


ACCURACY = _kind(
    "accuracy",
    "accuracy",
    # Judged as the wrong-prediction rate, a small rate, then flipped.
    RateKind(
        _accuracy_counts,
        lambda check, ev, ctx: (Subject("accuracy", "rate", _SAMPLES), []),
        lambda check: "no labelled predictions",
        complement=True,
        labels=True,
    ),
    ("minLabeled",),
    class_name=False,
)
_BY_CLASS = ("class", "minLabeled")
PRECISION = _kind(
    "precision",
    "precision",
    RateKind(_precision, _of_class, _no_class_labels, general_prior=True, labels=True),
    _BY_CLASS,
)
RECALL = _kind(
    "recall",
    "recall",
    RateKind(_recall, _of_class, _no_class_labels, general_prior=True, labels=True),
    _BY_CLASS,
)
F1 = _kind(
    "f1",
    "F1",
    RateKind(_f1_share, _of_class, _no_class_labels, general_prior=True, transform=_f1, labels=True),
    _BY_CLASS,
)
