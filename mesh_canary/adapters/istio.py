"""TrafficRouter for Istio: writes the weights into the user's VirtualService.

Through the official ``kubernetes`` client (CustomObjectsApi, ``networking.istio.io/v1``).
Every write reads the object, computes the new one with the pure `vs_patch` module (only
the managed routes' weights and the candidate's mirror change), and replaces it carrying
the resourceVersion it read, so a concurrent change is never overwritten: the API server
answers 409 Conflict and the write starts again from a fresh read. A rollback (everything
to stable) retries hardest: on conflicts, throttling, server errors and lost connections.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from mesh_canary.adapters import vs_patch
from mesh_canary.adapters.vs_patch import RouteTargets, VirtualServicePatchError
from mesh_canary.core.model import Policy
from mesh_canary.core.weights import ALL_STABLE, Weights

GROUP = "networking.istio.io"
VERSION = "v1"
PLURAL = "virtualservices"

__all__ = ["IstioRouter", "IstioRouterError", "VirtualServicePatchError"]


class IstioRouterError(RuntimeError):
    """The VirtualService could not be read or written."""


class IstioRouter:
    """Reads and writes stable/candidate (and fallback) weights and the mirror of one VirtualService."""

    def __init__(
        self,
        policy: Policy,
        api_client: kubernetes.client.ApiClient,
        *,
        attempts: int = 5,
        rollback_attempts: int = 30,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        request_timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = policy.virtual_service.name
        self.namespace = policy.virtual_service.namespace
        self.targets = RouteTargets.from_policy(policy)
        self._api = kubernetes.client.CustomObjectsApi(api_client)
        self._attempts = attempts
        self._rollback_attempts = rollback_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._timeout = request_timeout_s
        self._sleep = sleep
        self.last_written: Weights | None = None
        self.writes = 0  # replace calls that went through (for metrics and tests)
        self.conflicts = 0  # 409 answers seen

    @property
    def ref(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"

    def read(self) -> dict[str, Any]:
        """The VirtualService as the API server holds it."""
        try:
            obj: Any = self._api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 404:
                raise IstioRouterError(f"{self.ref} does not exist.") from e
            raise
        if not isinstance(obj, dict):
            raise IstioRouterError(f"the API server answered something other than an object for {self.ref}.")
        return obj

    def get_weights(self) -> Weights:
        return self._call(lambda: vs_patch.read_weights(self.read(), self.targets), "read the weights of")

    def set_weights(self, weights: Weights, *, rollback: bool | None = None) -> None:
        """Write ``weights`` to every managed route; a rollback (default: all stable) retries hardest."""
        if rollback is None:
            rollback = weights == ALL_STABLE
        attempts = self._rollback_attempts if rollback else self._attempts
        for attempt in range(1, attempts + 1):
            try:
                current = self.read()
                desired = vs_patch.apply_weights(current, self.targets, weights)
                if desired != current:
                    # `desired` carries the resourceVersion we read: a stale one is a 409.
                    self._api.replace_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        self.name,
                        desired,
                        _request_timeout=self._timeout,
                    )
                    self.writes += 1
                self.last_written = weights
                return
            except ApiException as e:
                self.conflicts += e.status == 409
                retry = e.status == 409 or (rollback and (e.status in (0, 429) or e.status >= 500))
                if not retry or attempt == attempts:
                    raise IstioRouterError(
                        f"could not write weights to {self.ref} after {attempt} attempt(s): "
                        f"HTTP {e.status} {e.reason}: {_message(e)}"
                    ) from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if not rollback or attempt == attempts:
                    raise IstioRouterError(
                        f"could not reach the API server to write weights to {self.ref}: {e}"
                    ) from e
            self._sleep(
                min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            )

    def check_drift(self, expected: Weights | None = None) -> str | None:
        """A sentence when the live weights differ from ``expected`` (default: what we last wrote).

        This is how a GitOps tool syncing the VirtualService back is noticed: the controller
        reports it as a condition and an Event instead of silently fighting it.
        """
        expected = expected if expected is not None else self.last_written
        if expected is None:
            return None
        try:
            vs = self.read()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            raise IstioRouterError(f"could not read {self.ref} to check its weights: {e}") from e
        try:
            return vs_patch.drift(vs, self.targets, expected)
        except VirtualServicePatchError as e:
            return f"{self.ref} no longer has the routes mesh-canary manages: {e}"

    def _call(self, fn: Callable[[], Weights], what: str) -> Weights:
        try:
            return fn()
        except ApiException as e:
            raise IstioRouterError(
                f"could not {what} {self.ref}: HTTP {e.status} {e.reason}: {_message(e)}"
            ) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise IstioRouterError(f"could not reach the API server to {what} {self.ref}: {e}") from e


def _message(e: ApiException) -> str:
    """The Status message of an API error, or its raw body."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.body)
    except ValueError:
        return str(e.body)
