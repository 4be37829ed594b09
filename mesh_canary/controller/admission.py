"""What this controller refuses to do for a spec that is otherwise valid, and where it connects.

A ModelRollout may only move the routes of its own namespace (unless the controller was
started with --allow-cross-namespace), and may only name a Prometheus and a model registry
the controller itself was configured with (--allow-metrics-address, --allow-registry): a spec must not be able to make the controller write another team's
VirtualService or send requests anywhere. A spec never chooses where the controller writes
or connects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from mesh_canary.controller.handler import meta
from mesh_canary.controller.settings import ControllerSettings, MetricsAddress, address_key
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import PolicyError, Problem
from mesh_canary.redact import redact_url, register_secret


class Admission:
    """The controller's own limits on specs (`admit`), and the Prometheus a policy gets (`metrics_url`)."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.registries = tuple(registry_address(url) for url in settings.allowed_registries)

    def admit(self, obj: Mapping[str, Any], policy: Policy) -> None:
        """PolicyError naming every limit the spec of ``obj`` (parsed as ``policy``) goes past."""
        problems = [
            *self._route_problems(obj, policy),
            *self._metrics_problems(obj),
            *self._registry_problems(policy),
        ]
        if problems:
            raise PolicyError(problems)

    def _route_problems(self, obj: Mapping[str, Any], policy: Policy) -> list[Problem]:
        own = str(meta(obj).get("namespace") or "")
        vs_ns = policy.virtual_service.namespace
        if vs_ns == own or self.settings.allow_cross_namespace:
            return []
        return [
            Problem(
                "spec.virtualService.namespace",
                f"the VirtualService must be in this ModelRollout's namespace {own!r}, not {vs_ns!r}: "
                "this controller changes routes only in the rollout's own namespace "
                "(an operator can allow it with --allow-cross-namespace); nothing was changed",
            )
        ]

    def _metrics_problems(self, obj: Mapping[str, Any]) -> list[Problem]:
        spec = obj.get("spec")
        metrics = spec.get("metrics") if isinstance(spec, Mapping) else None
        named = metrics.get("address") if isinstance(metrics, Mapping) else None
        if not isinstance(named, str):
            return []
        if self.allowed(named) is None:
            allowed = ", ".join(str(a) for a in self.settings.allowed_metrics)
            return [
                Problem(
                    "spec.metrics.address",
                    f"{redact_url(named)!r} is not a Prometheus this controller may query "
                    f"(allowed: {allowed}; an operator adds one with --allow-metrics-address); "
                    "it was not contacted and nothing was changed",
                )
            ]
        password = urlsplit(named.strip()).password
        if password is None:
            return []
        register_secret(password)
        return [
            Problem(
                "spec.metrics.address",
                "must not carry credentials (everyone who can read the ModelRollout sees them): "
                "give them to the controller's --prometheus or --allow-metrics-address instead",
            )
        ]

    def _registry_problems(self, policy: Policy) -> list[Problem]:
        spec = policy.registry
        if spec is None:
            return []
        problems: list[Problem] = []
        if spec.token_from_env:
            problems.append(
                Problem(
                    "spec.registry.tokenFromEnv",
                    "a spec cannot choose which of the controller's environment variables is sent: "
                    "the controller sends the token of its own --registry-token-env (set from a Secret); "
                    "remove tokenFromEnv",
                )
            )
        if self.allowed(spec.tracking_uri, self.registries) is None:
            allowed = ", ".join(str(a) for a in self.registries) or "none"
            problems.append(
                Problem(
                    "spec.registry.trackingUri",
                    f"{redact_url(spec.tracking_uri)!r} is not a model registry this controller may call "
                    f"(allowed: {allowed}; an operator adds one with --allow-registry); "
                    "it was not contacted and nothing was changed",
                )
            )
        elif urlsplit(spec.tracking_uri.strip()).password is not None:
            register_secret(urlsplit(spec.tracking_uri.strip()).password)
            problems.append(
                Problem(
                    "spec.registry.trackingUri",
                    "must not carry credentials (everyone who can read the ModelRollout sees them): "
                    "give them to the controller's --allow-registry or --registry-token-env instead",
                )
            )
        return problems

    def registry_url(self, tracking_uri: str) -> str:
        """The registry to call for a spec's (admitted) ``trackingUri``: the configured entry, credentials included."""
        found = self.allowed(tracking_uri, self.registries)
        if found is None:
            raise PolicyError([Problem("spec.registry.trackingUri", "is not an allowed model registry")])
        return found.url

    def routes_allowed(self, namespace: str, policy: Policy) -> bool:
        """May a rollout in ``namespace`` move the route ``policy`` names?"""
        return self.settings.allow_cross_namespace or policy.virtual_service.namespace == namespace

    def allowed(self, url: str, among: Sequence[MetricsAddress] | None = None) -> MetricsAddress | None:
        """The configured entry ``url`` names among ``among`` (default: the allowed Prometheus servers)."""
        key = address_key(url)
        choices = self.settings.allowed_metrics if among is None else among
        return next((a for a in choices if a.key == key), None) if key else None

    def metrics_url(self, policy: Policy) -> str:
        """The Prometheus to query for ``policy``: the configured entry its address names, else the default."""
        named = self.allowed(policy.metrics.address)
        if named is not None:
            return named.url
        # The spec named no address (admission rejects any other): the controller's own.
        return self.settings.allowed_metrics[0].url


def registry_address(url: str) -> MetricsAddress:
    """One ``--allow-registry`` URL, parsed (its password registered as a secret); ValueError if unusable."""
    try:
        return MetricsAddress.parse(url)
    except ValueError:
        raise ValueError(
            f"--allow-registry {redact_url(url)!r} is not an http(s) URL with a host and no query string"
        ) from None
