"""The typed rollout policy: what `policy.load_policy` returns after validation.

Plain frozen dataclasses; durations are seconds, latencies milliseconds, shares 0..1,
weights integer percent. The YAML contract (camelCase) is in docs/policy.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Strategy = Literal["canary", "blueGreen"]
MetricKind = str
"""A check kind's name: a key of mesh_canary.checks.REGISTRY (errorRate, latency, accuracy, ...)."""


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class VersionSpec:
    destination: Destination
    version: str
    metrics_version: str  # the label value metrics carry (defaults to `version`)
    model: str | None = None  # in the model registry: models:/NAME@ALIAS or models:/NAME/VERSION


@dataclass(frozen=True)
class RouteRef:
    """The routing object whose weights the rollout moves, whatever the router.

    ``kind`` is the object's Kubernetes kind ("VirtualService", "HTTPRoute"); the routers'
    registry (``mesh_canary.routing``) maps it to the router that writes it. ``routes``
    picks the managed parts of it: names (or, where the kind allows, indexes) of its
    http routes / rules; empty: every one whose backends are exactly stable + candidate.
    """

    name: str
    namespace: str
    routes: tuple[str | int, ...] = ()
    kind: str = "VirtualService"

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


VirtualServiceRef = RouteRef  # the name before routes could be other kinds (kind defaults to it)


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[int, ...] = (5, 10, 25, 50, 100)
    min_step_duration_s: float = 60.0
    max_step_duration_s: float = 900.0


@dataclass(frozen=True)
class BlueGreenSpec:
    mirror_percent: int = 100
    preview_duration_s: float = 600.0
    post_switch_window_s: float = 900.0
    # Live traffic kept on stable after the switch: the concurrent control that relative
    # checks compare with in the post-switch window (0: compare with stable's preview).
    holdback_percent: int = 5


@dataclass(frozen=True)
class Check:
    """One analysis check. Unset bounds are None; at least one bound is set."""

    metric: MetricKind
    name: str  # unique within the policy; defaults to the metric (plus qualifier)
    quantile: float | None = None  # latency: which quantile
    slower_than_ms: float | None = None  # latency: judge the share slower than this
    max: float | None = None  # absolute SLO on the candidate (latency: ms)
    min: float | None = None
    max_increase: float | None = None  # candidate - stable (absolute units)
    max_increase_ratio: float | None = None  # candidate / stable - 1
    max_decrease: float | None = None  # stable - candidate (absolute units)
    min_labeled: int | None = None  # accuracy family: labelled samples before promotion
    class_: str | None = None  # precision/recall/f1: which class
    feature: str | None = None  # featureDrift: which input feature
    max_psi: float | None = None  # drift checks
    max_deviation: float | None = None  # trafficShare
    query: str | None = None  # custom: PromQL with {{ version }} and {{ window }}

    @property
    def is_relative(self) -> bool:
        return (
            self.max_increase is not None
            or self.max_increase_ratio is not None
            or self.max_decrease is not None
            or self.max_psi is not None
        )


@dataclass(frozen=True)
class AnalysisSpec:
    interval_s: float = 30.0
    confidence: float = 0.99
    min_requests: int = 100
    no_data_timeout_s: float = 300.0
    checks: tuple[Check, ...] = ()
    # What a step still undecided at maxStepDuration does: roll back (fail closed), advance
    # (no check failed) or pause for a person.
    on_timeout: Literal["rollback", "promote", "pause"] = "rollback"
    # What promotion needs: no check found a regression, or every check proven within tolerance.
    promotion: Literal["noRegression", "proven"] = "noRegression"
    # How long a burst may last: a candidate's excess errors that stand out for at most this
    # long are set aside as a burst; elevation that lasts longer is judged in full.
    burst_duration_s: float = 180.0


@dataclass(frozen=True)
class MetricsSpec:
    provider: Literal["prometheus", "local"] = "prometheus"
    profile: Literal["istio", "envoy", "kserve"] = "istio"
    address: str = "http://prometheus.istio-system:9090"
    version_label: str = "destination_version"
    model_version_label: str = "version"  # label on the model metrics convention's series
    timeout_s: float = 10.0
    variables: dict[str, str] = field(default_factory=dict)  # for custom queries


# Where PagerDuty's Events API v2 takes events (EU accounts: events.eu.pagerduty.com).
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class Webhook:
    """One notification target of `spec.notifications` (its `kind` says which: a webhook,
    PagerDuty or Microsoft Teams; mesh_canary.notify has one module per kind)."""

    url: str | None = None
    url_from_env: str | None = None
    url_from_secret: dict[str, str] | None = None  # {name, key}
    format: Literal["slack", "json"] = "json"
    kind: str = "webhook"  # webhook | pagerduty | teams
    # Which events reach it (announcement kinds, mesh_canary.core.events); None: the kind's default.
    events: tuple[str, ...] | None = None
    # PagerDuty: the routing (integration) key, only ever from the environment or a Secret.
    key_from_env: str | None = None
    key_from_secret: dict[str, str] | None = None
    severity: Literal["critical", "error", "warning", "info"] = "critical"
    # Total deadline of one notification, all attempts included.
    timeout_s: float = 10.0


@dataclass(frozen=True)
class RegistrySpec:
    """The model registry the versions' ``model`` URIs name (mesh_canary.registry)."""

    tracking_uri: str
    provider: str = "mlflow"
    alias: str = "champion"  # moves to the candidate's version on promotion
    timeout_s: float = 10.0
    token_from_env: str | None = None


@dataclass(frozen=True)
class HookHeader:
    """One header of a hook call: a value, or where to read it (never logged)."""

    name: str
    value: str | None = None
    value_from_env: str | None = None
    value_from_secret: dict[str, str] | None = None  # {name, key}


@dataclass(frozen=True)
class HookCall:
    """One HTTP call of a step hook (docs/policy.md, "Step hooks")."""

    name: str
    url: str | None = None
    url_from_env: str | None = None
    url_from_secret: dict[str, str] | None = None  # {name, key}
    method: str = "POST"
    headers: tuple[HookHeader, ...] = ()
    body: str | None = None  # a template with {{ field }} placeholders; None: every field as JSON
    timeout_s: float = 10.0  # the call's total deadline, every attempt included
    retries: int = 0


@dataclass(frozen=True)
class Hooks:
    """The HTTP calls made at each point of a rollout, in order (policy ``hooks:``)."""

    pre_rollout: tuple[HookCall, ...] = ()
    pre_step: tuple[HookCall, ...] = ()
    during_step: tuple[HookCall, ...] = ()
    confirm_promotion: tuple[HookCall, ...] = ()
    post_rollout: tuple[HookCall, ...] = ()
    on_rollback: tuple[HookCall, ...] = ()

    def calls(self, phase: str) -> tuple[HookCall, ...]:
        """The calls of one phase by its policy name (``preRollout``, ...)."""
        calls: tuple[HookCall, ...] = getattr(self, HOOK_FIELDS[phase])
        return calls


# A hook phase's policy name -> its field in Hooks: the one list of phases.
HOOK_FIELDS: dict[str, str] = {
    "preRollout": "pre_rollout",
    "preStep": "pre_step",
    "duringStep": "during_step",
    "confirmPromotion": "confirm_promotion",
    "postRollout": "post_rollout",
    "onRollback": "on_rollback",
}


@dataclass(frozen=True)
class Policy:
    name: str
    namespace: str
    route: RouteRef
    stable: VersionSpec
    candidate: VersionSpec
    fallback: Destination | None = None
    strategy: Strategy = "canary"
    canary: CanarySpec = field(default_factory=CanarySpec)
    blue_green: BlueGreenSpec = field(default_factory=BlueGreenSpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    approval: Literal["none", "beforePromotion"] = "none"
    notifications: tuple[Webhook, ...] = ()
    hooks: Hooks = field(default_factory=Hooks)
    document: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """The validated YAML document with defaults filled in (camelCase, as written)."""
    registry: RegistrySpec | None = None
    # spec.fallback.watchAfterRollback: how long stable is still judged against its absolute
    # limits after a rollback to it (core/fallback.py); 0: only in the rollback's own analysis.
    fallback_watch_s: float = 0.0

    @property
    def virtual_service(self) -> RouteRef:
        """The route reference under its former name (whatever its kind); use `route`."""
        return self.route
