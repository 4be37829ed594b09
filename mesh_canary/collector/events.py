"""What the collector accepts, parsed into predictions and labels; anything else is a
``Malformed`` with one sentence saying what is wrong (the server answers 400 with it).

Predictions come as:

- KServe payload-logger CloudEvents (binary or structured mode, or a JSON batch of
  structured events). Binary mode (what KServe's logger sends) is read straight from the
  headers (``binary_attributes``: one event per HTTP request must be cheap); structured
  mode, batches and spec versions other than 1.0 go through the ``cloudevents`` SDK. KServe's logger
  (pkg/logger/worker.go in kserve/kserve, Apache-2.0) sends one event per request and one
  per response, both with ``ce-id`` = the request id, ``ce-type``
  ``org.kubeflow.serving.inference.request`` / ``.response``, and the extensions
  ``inferenceservicename``, ``namespace``, ``component``, ``endpoint`` and ``metadata``.
  Only response events carry a prediction; request events are acknowledged and dropped
  (nothing of them is kept: bounded memory).
- plain JSON ``{"id", "version", "prediction", "score"?}`` or a list of them.

A response's prediction: ``{"class"|"prediction"|"label": c, "score"?: p}`` (one), the
V1 protocol's ``{"predictions": [c | {"class"|..., "score"|"probability"?}, ...]}``, or
the Open Inference Protocol's ``{"outputs": [{"data": [...]}, ...]}`` (the first output's
data are the classes; an output named ``score`` or ``probability`` gives the scores).
One prediction keeps the event id; N > 1 in one response get ``ID/0`` .. ``ID/N-1``.

The version (the convention's ``version`` label, a policy's ``metricsVersion``) is, in
order: the response's ``model_version`` or ``version``; the Knative revision named in
``ce-source`` (``<isvc>-predictor-00002``, as KServe's serverless canary names its
revisions); the ``endpoint`` extension. Classes are kept as strings (``1`` -> ``"1"``).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
CE_CONTENT_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json")
CE_PREFIX = "ce-"  # a binary-mode event's attribute headers
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
OPTIONAL_ATTRIBUTES = ("datacontenttype", "dataschema", "subject", "time")
_REQUIRED = frozenset(REQUIRED_ATTRIBUTES)
_OPTIONAL = frozenset(OPTIONAL_ATTRIBUTES)
# A Knative revision name inside ce-source, e.g. http://fraud-predictor-00002-deployment-7d9.../
REVISION = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?-predictor(-default)?-\d{5})")
MAX_TEXT = 253  # longest id, version or class kept (a Kubernetes name's limit)
CLASS_KEYS = ("class", "prediction", "label")
SCORE_KEYS = ("score", "probability")


class Malformed(ValueError):
    """One sentence: what is wrong with what was sent."""


@dataclass(frozen=True)
class Prediction:
    id: str
    version: str
    predicted: str
    score: float | None
    at: float  # seconds since the epoch: the event's time, else when it arrived


@dataclass(frozen=True)
class Label:
    id: str
    label: str
    at: float


@dataclass(frozen=True)
class Parsed:
    predictions: list[Prediction]
    requests: int = 0  # request events: acknowledged, not kept


def _text(value: Any, what: str, of: str = "") -> str:
    """``value`` as a class, id or version text; ``what + of`` names it in an error."""
    if type(value) is str:  # the usual case first
        if 0 < len(value) <= MAX_TEXT:
            return value
    elif isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Malformed(f"{what}{of} must be a string (or an integer), not {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_TEXT:
        raise Malformed(f"{what}{of} must be 1 to {MAX_TEXT} characters long")
    return text


def _score(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise Malformed(f"score must be a number between 0 and 1, not {value!r}")
    return float(value)


def _one(item: Any, what: str) -> tuple[str, float | None]:
    """(class, score) of one prediction: a bare class or a dict naming it."""
    if isinstance(item, Mapping):
        for key in CLASS_KEYS:
            if key in item:
                break
        else:
            raise Malformed(f"{what} names no class (one of {', '.join(CLASS_KEYS)})")
        score = None
        for name in SCORE_KEYS:
            if name in item:
                score = item[name]
                break
        return _text(item[key], what, "'s class"), _score(score)
    return _text(item, what, "'s class"), None


def response_predictions(body: Any) -> list[tuple[str, float | None]]:
    """(class, score) of each prediction in a model server's response body."""
    if not isinstance(body, Mapping):
        raise Malformed("a response event's data must be a JSON object")
    if "predictions" in body:
        items = body["predictions"]
        if not isinstance(items, list) or not items:
            raise Malformed("predictions must be a non-empty list")
        return [_one(item, f"predictions[{i}]") for i, item in enumerate(items)]
    if "outputs" in body:
        return _oip_predictions(body["outputs"])
    return [_one(body, "the response")]


def _oip_predictions(outputs: Any) -> list[tuple[str, float | None]]:
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, Mapping) for o in outputs):
        raise Malformed("outputs must be a non-empty list of objects")
    scores_out = next((o for o in outputs if o.get("name") in SCORE_KEYS), None)
    classes_out = next((o for o in outputs if o is not scores_out), None)
    if classes_out is None or not isinstance(classes_out.get("data"), list) or not classes_out["data"]:
        raise Malformed("outputs name no class data")
    classes = classes_out["data"]
    scores = scores_out.get("data") if scores_out is not None else None
    if scores is not None and (not isinstance(scores, list) or len(scores) != len(classes)):
        raise Malformed("the score output must have one score per class output")
    return [
        (_text(c, f"outputs data[{i}]"), _score(scores[i]) if scores is not None else None)
        for i, c in enumerate(classes)
    ]


def _version(body: Mapping[str, Any], attributes: Mapping[str, Any]) -> str:
    for key in ("model_version", "version"):
        if body.get(key) not in (None, ""):
            return _text(body[key], key)
    found = REVISION.search(str(attributes.get("source") or ""))
    if found:
        return found.group(1)
    if attributes.get("endpoint"):
        return _text(attributes["endpoint"], "the endpoint extension")
    raise Malformed(
        "the response names no version: give model_version in the response, a revision in ce-source "
        "or the endpoint extension"
    )


def _event_time(attributes: Mapping[str, Any], received: float) -> float:
    raw = attributes.get("time")
    if not raw:
        return received
    if isinstance(raw, datetime.datetime):
        return raw.timestamp() if raw.tzinfo else raw.replace(tzinfo=datetime.UTC).timestamp()
    try:
        stamp = datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        raise Malformed(f"ce-time {raw!r} is not an RFC 3339 time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def from_cloudevent(attributes: Mapping[str, Any], data: Any, received: float) -> Parsed:
    """One payload-logger event (its attributes and its data, decoded) -> predictions."""
    event_type = attributes.get("type")
    at = min(_event_time(attributes, received), received)  # a clock ahead must not make delays negative
    if event_type == REQUEST_TYPE:
        return Parsed([], requests=1)
    if event_type != RESPONSE_TYPE:
        raise Malformed(f"ce-type must be {REQUEST_TYPE} or {RESPONSE_TYPE}, not {event_type!r}")
    event_id = _text(attributes.get("id"), "ce-id")
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise Malformed("the response event's data is not JSON") from None
    if not isinstance(data, Mapping):
        raise Malformed("a response event's data must be a JSON object")
    found = response_predictions(data)
    version = _version(data, attributes)
    ids = [event_id] if len(found) == 1 else [f"{event_id}/{i}" for i in range(len(found))]
    return Parsed([Prediction(i, version, c, s, at) for i, (c, s) in zip(ids, found, strict=True)])


def parse_cloudevents(
    headers: Mapping[str, str], body: bytes, received: float, *, lowered: bool = False
) -> Parsed:
    """A binary-mode, structured-mode or batch HTTP request -> predictions (``lowered``:
    the header names are in lower case already)."""
    lower = headers if lowered else {k.lower(): v for k, v in headers.items()}
    if lower.get("content-type", "").startswith("application/cloudevents-batch+json"):
        try:
            raw = json.loads(body)
        except ValueError:
            raise Malformed("the batch is not JSON") from None
        if not isinstance(raw, list):
            raise Malformed("a CloudEvents batch must be a JSON list of events")
        one = {"content-type": "application/cloudevents+json"}
        parts = [parse_cloudevents(one, json.dumps(item).encode(), received) for item in raw]
        return Parsed([p for part in parts for p in part.predictions], sum(p.requests for p in parts))
    if any(k.startswith(CE_PREFIX) for k in lower):
        attributes = binary_attributes(lower)
        if attributes is not None:
            return from_cloudevent(attributes, body or None, received)
    return _parse_with_sdk(lower, body, received)


def parse_event_request(lower: Mapping[str, str], body: bytes, received: float) -> Parsed | None:
    """What ``parse_cloudevents`` gives for a request that is a CloudEvent (a ``ce-`` header
    or a CloudEvents content type; header names in lower case), else None (plain JSON).
    One pass over the headers: KServe's logger sends one binary-mode event per request."""
    if lower.get("content-type", "").startswith(CE_CONTENT_TYPES):
        return parse_cloudevents(lower, body, received, lowered=True)
    attributes = _ce_headers(lower)
    if not attributes:
        return None
    if _check_binary(attributes, lower):
        return from_cloudevent(attributes, body or None, received)
    return _parse_with_sdk(lower, body, received)


def _ce_headers(lower: Mapping[str, str]) -> dict[str, str]:
    """Each ``ce-NAME`` header as attribute NAME, percent-decoded (the HTTP binding)."""
    return {
        name[3:]: unquote(value) if "%" in value else value
        for name, value in lower.items()
        if name[:3] == CE_PREFIX
    }


def binary_attributes(lower: Mapping[str, str]) -> dict[str, str] | None:
    """A binary-mode CloudEvents 1.0 event's attributes, read straight from its headers
    (lower-case names) as the HTTP binding says: each ``ce-NAME`` header is attribute NAME,
    percent-decoded; Content-Type is ``datacontenttype``. Checks what the SDK checks: the
    required attributes present and not empty, and extension names of a-z and 0-9 only.
    ``time`` stays text (``from_cloudevent`` reads it). None for a specversion other than
    1.0: the SDK then decides (0.3, or its error message)."""
    attributes = _ce_headers(lower)
    return attributes if _check_binary(attributes, lower) else None


def _check_binary(attributes: dict[str, str], lower: Mapping[str, str]) -> bool:
    """``binary_attributes``'s checks on the ``ce-`` headers' attributes (Malformed), and the
    content type added; False for a specversion other than 1.0 (nothing checked)."""
    if attributes.get("specversion") != "1.0":
        return False
    if not (attributes.get("id") and attributes.get("source") and attributes.get("type")):
        missing = [name for name in REQUIRED_ATTRIBUTES if not attributes.get(name)]
        raise Malformed(f"not a CloudEvent: {', '.join(CE_PREFIX + m for m in missing)} missing or empty")
    for name, value in attributes.items():
        if name in _REQUIRED:
            continue
        if name in _OPTIONAL:
            if not value:
                raise Malformed(f"not a CloudEvent: {CE_PREFIX}{name} is empty")
        elif name == "data" or not (name.isascii() and name.isalnum()):
            raise Malformed(
                f"not a CloudEvent: {CE_PREFIX}{name} is no valid extension (a-z and 0-9 only; not 'data')"
            )
    if "content-type" in lower:
        attributes["datacontenttype"] = lower["content-type"]
    return True


def _parse_with_sdk(lower: Mapping[str, str], body: bytes, received: float) -> Parsed:
    """Structured mode, and binary mode of other spec versions: the cloudevents SDK."""
    from cloudevents.core.bindings.http import HTTPMessage, from_http
    from cloudevents.core.exceptions import BaseCloudEventException
    from cloudevents.core.formats.json import JSONFormat

    try:
        event = from_http(HTTPMessage(dict(lower), body), JSONFormat())
    except (BaseCloudEventException, ValueError, TypeError, KeyError, AttributeError) as exc:
        text = str(exc).split("::", 1)[-1].strip() or type(exc).__name__
        raise Malformed(f"not a CloudEvent: {text.splitlines()[0][:200]}") from None
    return from_cloudevent(event.get_attributes(), event.get_data(), received)


def parse_plain(body: Any, received: float) -> Parsed:
    """``{"id", "version", "prediction", "score"?}`` or a list of them -> predictions."""
    items = body if isinstance(body, list) else [body]
    out = []
    for i, item in enumerate(items):
        where = f"item {i}: " if isinstance(body, list) else ""
        if not isinstance(item, Mapping):
            raise Malformed(f'{where}expected {{"id", "version", "prediction", "score"?}}')
        try:
            predicted, score = _one(item, "the prediction")
            out.append(
                Prediction(
                    _text(item.get("id"), "id"),
                    _text(item.get("version"), "version"),
                    predicted,
                    score,
                    received,
                )
            )
        except Malformed as exc:
            raise Malformed(f"{where}{exc}") from None
    return Parsed(out)


def parse_labels(body: Any, received: float) -> list[Label]:
    """``{"id", "label"}``, a list of them, or ``{"items": [...]}`` -> labels."""
    items = body.get("items", [body]) if isinstance(body, Mapping) and "items" in body else body
    items = items if isinstance(items, list) else [items]
    labels = []
    for i, item in enumerate(items):
        where = f"item {i}: " if len(items) > 1 else ""
        if not isinstance(item, Mapping):
            raise Malformed(f'{where}expected {{"id", "label"}}')
        try:
            labels.append(Label(_text(item.get("id"), "id"), _text(item.get("label"), "label"), received))
        except Malformed as exc:
            raise Malformed(f"{where}{exc}") from None
    return labels
