"""TrafficRouter for the embedded local mesh: Envoy's runtime, through its admin API.

The Envoy built by mesh_canary.localmesh.envoy reads each cluster's weight, and the share
mirrored to the candidate, from runtime keys on every request. ``set_weights`` writes all
of them in one ``POST /runtime_modify`` (one admin call, applied together);
``get_weights`` reads them back from ``GET /runtime``. A rollback's record rides in the
same ``runtime_modify`` call (key ``mesh_canary.rollback``), so it is there exactly when
the weights are.

Ownership of the route is a lock file next to the mesh (one per Envoy admin address, in
the temp directory), held with ``flock`` for as long as the run lives: a second run on the
same Envoy is refused, and a run that dies (even SIGKILL) releases it with its process.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any

import httpx

from mesh_canary.core.weights import Weights
from mesh_canary.routing.base import RollbackRecord, RouteOwned, RouterError, WeightsMoved

# The runtime keys the local mesh's Envoy reads (mesh_canary.localmesh.envoy builds it from these).
WEIGHT_KEY_PREFIX = "mesh_canary.weight"
MIRROR_KEY = "mesh_canary.mirror_percent"
ROLLBACK_KEY = "mesh_canary.rollback"
_PREFIX = "mc1."  # Envoy parses runtime values as YAML: the record travels base64-encoded


def weight_key(cluster: str) -> str:
    """The runtime key that holds ``cluster``'s weight."""
    return f"{WEIGHT_KEY_PREFIX}.{cluster}"


def runtime_values(
    stable: str, candidate: str, weights: Weights, fallback: str | None = None
) -> dict[str, int]:
    """The runtime keys and values that put ``weights`` in force."""
    if weights.fallback and fallback is None:
        raise ValueError(f"weights {weights} send traffic to a fallback, but there is no fallback cluster")
    values = {weight_key(stable): weights.stable, weight_key(candidate): weights.candidate}
    if fallback is not None:
        values[weight_key(fallback)] = weights.fallback
    values[MIRROR_KEY] = weights.mirror_percent
    return values


def _encode(text: str) -> str:
    return _PREFIX + base64.urlsafe_b64encode(text.encode()).decode()


def _decode(value: str) -> str:
    if not value.startswith(_PREFIX):
        return ""
    try:
        return base64.urlsafe_b64decode(value[len(_PREFIX) :].encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


class LocalRouterError(RouterError):
    pass


class LocalRouter:
    def __init__(
        self,
        admin_url: str,
        stable_cluster: str,
        candidate_cluster: str,
        fallback_cluster: str | None = None,
        timeout_s: float = 2.0,
        lock_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.stable_cluster = stable_cluster
        self.candidate_cluster = candidate_cluster
        self.fallback_cluster = fallback_cluster
        self.timeout_s = timeout_s
        name = re.sub(r"[^A-Za-z0-9]+", "_", self.admin_url.split("://", 1)[-1]).strip("_")
        self.lock_path = Path(lock_dir or tempfile.gettempdir()) / f"mesh-canary-route-{name}.lock"
        self._lock: IO[str] | None = None

    @property
    def ref(self) -> str:
        return f"the local mesh's Envoy at {self.admin_url}"

    def set_weights(self, weights: Weights) -> None:
        """Write every weight and the mirror share in one admin call; raise LocalRouterError on failure."""
        self.write(weights)

    def write(
        self,
        weights: Weights,
        *,
        owner: str = "",
        expected: Weights | None = None,
        rollback: RollbackRecord | None = None,
    ) -> None:
        """One attempt. Forward writes compare first (Envoy's admin has no compare-and-swap:
        read, then write); a rollback checks nothing and carries its record in the same call."""
        if rollback is None and expected is not None:
            live = self.get_weights()
            if live not in (expected, weights):
                raise WeightsMoved(live, expected, self.ref)
        values: dict[str, Any] = dict(
            runtime_values(self.stable_cluster, self.candidate_cluster, weights, self.fallback_cluster)
        )
        if rollback is not None:
            values[ROLLBACK_KEY] = _encode(rollback.to_json())
        response = self._call("POST", "/runtime_modify", params={k: str(v) for k, v in values.items()})
        if response.status_code != 200:
            raise LocalRouterError(
                f"Envoy at {self.admin_url} refused the weights {weights}: "
                f"{response.status_code} {response.text.strip()[:200]}"
            )

    def get_weights(self) -> Weights:
        """The weights Envoy has in force now, read from its runtime."""
        entries = self._entries()

        def value(key: str) -> int:
            final = entries.get(key, {}).get("final_value")
            try:
                return int(final)
            except (TypeError, ValueError):
                raise LocalRouterError(
                    f"Envoy at {self.admin_url} has no integer runtime value for {key} (got {final!r})"
                ) from None

        fallback = value(weight_key(self.fallback_cluster)) if self.fallback_cluster else 0
        try:
            return Weights(
                stable=value(weight_key(self.stable_cluster)),
                candidate=value(weight_key(self.candidate_cluster)),
                fallback=fallback,
                mirror_percent=value(MIRROR_KEY),
            )
        except ValueError as exc:  # someone wrote weights that do not add up to 100
            raise LocalRouterError(
                f"Envoy at {self.admin_url} holds weights that are not valid: {exc}"
            ) from None

    def recorded_rollback(self) -> RollbackRecord | None:
        final = self._entries().get(ROLLBACK_KEY, {}).get("final_value")
        return RollbackRecord.from_json(_decode(str(final))) if final else None

    def claim(self, owner: str, rollout: str, previous: str = "") -> None:
        """Hold the route's lock file for this process (a second run is refused)."""
        if self._lock is not None:
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            f = self.lock_path.open("a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise RouteOwned(
                    f"{self.ref} is already being rolled out by {holder}; refusing a second rollout on "
                    f"it, nothing was written (lock file {self.lock_path})"
                ) from None
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released (and removed) between our open and our lock: again
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{rollout} (run {owner}, pid {os.getpid()})\n")
            f.flush()
            self._lock = f
            return
        raise LocalRouterError(f"could not take the lock file {self.lock_path}")

    def release(self, owner: str) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path.unlink()  # while still held: a waiting opener sees it is gone
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

    def _entries(self) -> dict[str, Any]:
        response = self._call("GET", "/runtime")
        if response.status_code != 200:
            raise LocalRouterError(f"Envoy at {self.admin_url} answered {response.status_code} for /runtime")
        entries: dict[str, Any] = response.json().get("entries", {})
        return entries

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            return httpx.request(method, f"{self.admin_url}{path}", params=params, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise LocalRouterError(f"cannot reach Envoy's admin at {self.admin_url}: {exc}") from exc
