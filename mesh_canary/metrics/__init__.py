"""Metrics providers: one module per provider, one line per provider in ``PROVIDERS``.

A provider implements :class:`mesh_canary.protocols.MetricsSource` (``read(since, now)``
-> an :class:`~mesh_canary.core.observations.Observation`) and turns a failure to read
into missing data, never into a pass. The wiring and the controller build providers only
through :func:`metrics_for`; the key is ``spec.metrics.provider`` of the policy.

- ``prometheus``: PromQL over the Prometheus HTTP API (:mod:`.prometheus`, the queries in
  :mod:`.promql`, the transport with a total deadline in :mod:`.deadline_http` and
  :mod:`.deadline_requests`; queries shared between rollouts in :mod:`.coalesce`).
- ``local``: the embedded local mesh's Envoy and model servers, read directly (:mod:`.local`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mesh_canary.core.model import Policy
from mesh_canary.protocols import MetricsSource

if TYPE_CHECKING:
    from mesh_canary.metrics.coalesce import QueryCoalescer

__all__ = ["PROVIDERS", "MetricsFactory", "MetricsTarget", "metrics_for"]


@dataclass(frozen=True)
class MetricsTarget:
    """What a provider needs besides the policy: where it reads."""

    url: str | None = None  # a Prometheus address (None: the policy's spec.metrics.address)
    envoy_admin_url: str | None = None  # the local mesh's Envoy admin address
    model_metrics_urls: Mapping[str, str] = field(default_factory=dict)  # version -> /metrics URL
    # Prometheus: shares each family's query with the other rollouts reading at the same instant
    # (the controller's; see mesh_canary.metrics.coalesce). None: every read sends its own.
    coalescer: QueryCoalescer | None = None


class MetricsFactory(Protocol):
    def __call__(self, policy: Policy, target: MetricsTarget, /) -> MetricsSource: ...


# Each factory imports its module when called (prometheus-api-client and requests are slow to import).
def _prometheus(policy: Policy, target: MetricsTarget) -> MetricsSource:
    from mesh_canary.metrics.prometheus import PrometheusMetricsSource

    return PrometheusMetricsSource(policy, url=target.url, coalescer=target.coalescer)


def _local(policy: Policy, target: MetricsTarget) -> MetricsSource:
    from mesh_canary.metrics.local import LocalMetricsSource

    if target.envoy_admin_url is None:
        raise ValueError("the local metrics provider needs the local mesh's Envoy admin address")
    return LocalMetricsSource(
        target.envoy_admin_url,
        target.model_metrics_urls,
        policy.stable.metrics_version,
        policy.candidate.metrics_version,
    )


PROVIDERS: dict[str, MetricsFactory] = {
    "prometheus": _prometheus,
    "local": _local,
}


def metrics_for(provider: str, policy: Policy, target: MetricsTarget) -> MetricsSource:
    """The metrics source of ``provider`` for ``policy``; ValueError naming the known ones otherwise."""
    factory = PROVIDERS.get(provider)
    if factory is None:
        raise ValueError(f"no metrics provider {provider!r}; known providers: {', '.join(sorted(PROVIDERS))}")
    return factory(policy, target)
