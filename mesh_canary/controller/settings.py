"""The controller's configuration: one frozen object, built from `mesh-canary controller`'s flags.

Everything the controller's parts need to know about how they were asked to run is here
(what to watch, how many workers, what a spec may name, the Lease, the timings); the parts
get this object, never a list of arguments. It checks itself when built (ValueError), and
the Prometheus addresses a spec may name are parsed (and their credentials registered as
secrets) once, here.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mesh_canary.redact import redact_url, register_secret

DEFAULT_LEASE_NAME = "mesh-canary-controller"
# With --shards K: shard i is held through the Lease "<lease name>-shard-<i>".
SHARD_LEASE_INFIX = "-shard-"
# The policy's default spec.metrics.address: the one Prometheus allowed when nothing is configured.
DEFAULT_METRICS_ADDRESS = "http://prometheus.istio-system:9090"
# A reconcile is slow after this long (it stops holding a worker), stuck after this long
# (/livez fails): far past every outside call's own total deadline (metrics.timeout, the
# API request timeout, the runner's write deadline).
DEFAULT_SLOW_AFTER_S = 5.0
DEFAULT_STUCK_AFTER_S = 300.0
DEFAULT_BIND_ADDRESS = "127.0.0.1"


def parse_addr(
    addr: str, bind_address: str = DEFAULT_BIND_ADDRESS, flag: str = "--metrics-addr"
) -> tuple[str, int]:
    """``:8080`` -> (bind_address, 8080); ``127.0.0.1:0`` -> ("127.0.0.1", 0).

    Loopback by default: the probes and metrics are not for the whole network unless the
    operator says so (the Deployment passes ``--bind-address 0.0.0.0`` for the kubelet).
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} {addr!r} is not HOST:PORT or :PORT")
    return host.strip("[]") or bind_address, int(port)


def address_key(url: str) -> tuple[str, str, int, str] | None:
    """What identifies a Prometheus: scheme, host, port, path; None for anything else (a query string...)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    if "?" in url or "#" in url:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), parts.path.rstrip("/")


@dataclass(frozen=True)
class MetricsAddress:
    """One Prometheus the controller may query, from its own configuration (never from a spec)."""

    url: str  # as configured, credentials included: what is queried
    key: tuple[str, str, int, str]  # (scheme, host, port, path): what a spec's address is matched on

    @classmethod
    def parse(cls, url: str) -> MetricsAddress:
        key = address_key(url)
        if key is None:
            raise ValueError(
                f"metrics address {redact_url(url)!r} is not an http(s) URL with a host and no query string"
            )
        parts = urlsplit(url.strip())
        # Never in a log, status, Event or payload (a token alone sits where the user would).
        register_secret(parts.password if parts.password is not None else parts.username)
        return cls(url.strip().rstrip("/"), key)

    def __str__(self) -> str:
        return redact_url(self.url)


def _namespaces(given: str | Sequence[str]) -> tuple[str, ...]:
    """One namespace, several (repeated or comma-separated), or none (every namespace)."""
    names = [given] if isinstance(given, str) else list(given)
    return tuple(dict.fromkeys(n.strip() for ns in names for n in ns.split(",") if n.strip()))


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of a ModelRollout: a stable hash of ``namespace/name`` (the same in every process and release)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def _identity() -> str:
    # Unique per process, like client-go's: a restarted container must not pass for the old one.
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller runs. Built once (from the CLI's flags, or by a test) and never changed.

    ``namespaces``: watched (empty: all); ``prometheus_url`` and
    ``allowed_metrics_addresses``: the Prometheus servers a spec may name, the first one is
    what a spec naming none gets; ``workers`` reconciles at once, ``max_workers`` threads in
    all (slow reconciles stop holding a worker after ``slow_after_s``; one running
    ``stuck_after_s`` fails /livez); ``metrics_addr`` (None: no server) on
    ``bind_address``; the Lease when ``leader_elect``; with ``shards`` K > 0, one Lease per
    shard instead (``<lease_name>-shard-<i>``), this process holding at most
    ``shard_limit`` of them while every expected process (``replicas``) is alive; the
    API's timings.
    """

    namespaces: str | Sequence[str] = ()
    prometheus_url: str | None = None
    allowed_metrics_addresses: Sequence[str] = ()
    allow_cross_namespace: bool = False
    # The model registries spec.registry.trackingUri may name, and the environment variable
    # (set from a Secret) with their bearer token: the controller's, never the spec's.
    allowed_registries: Sequence[str] = ()
    registry_token_env: str | None = None
    workers: int = 4
    max_workers: int | None = None
    slow_after_s: float = DEFAULT_SLOW_AFTER_S
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S
    metrics_addr: str | None = None
    bind_address: str = DEFAULT_BIND_ADDRESS
    leader_elect: bool = False
    # The live dashboard of the rollouts it watches (None: not served); read-only unless
    # ``dashboard_allow_writes`` (its buttons then write the same orders as `rollout pause`...).
    dashboard_addr: str | None = None
    dashboard_allow_writes: bool = False
    lease_name: str = DEFAULT_LEASE_NAME
    shards: int = 0
    replicas: int = 1
    lease_namespace: str | None = None
    identity: str = field(default_factory=_identity)
    lease_duration_s: int = 15
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    watch_timeout_s: int = 30
    error_retry_s: float = 5.0
    request_timeout_s: float = 10.0
    # Derived when built: the Prometheus servers a spec may name, parsed.
    allowed_metrics: tuple[MetricsAddress, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.workers < 1 or not 0 < self.slow_after_s < self.stuck_after_s:
            raise ValueError("the controller needs workers >= 1 and 0 < slow-after < stuck-after")
        if self.shards < 0 or self.replicas < 1:
            raise ValueError("the controller needs shards >= 0 and replicas >= 1")
        if self.shards and self.leader_elect:
            raise ValueError("--shards elects a holder per shard: leave out --leader-elect")
        if self.metrics_addr is not None:
            parse_addr(self.metrics_addr, self.bind_address)
        if self.dashboard_addr is not None:
            parse_addr(self.dashboard_addr, self.bind_address, "--dashboard-address")
        # What spec.metrics.address may name: the controller's own configuration, never the spec's.
        # --prometheus (else the policy's default address) first: it is also what a spec
        # that names no address gets, unless only --allow-metrics-address entries were given.
        configured = [
            *([self.prometheus_url] if self.prometheus_url else []),
            *self.allowed_metrics_addresses,
        ]
        allowed = tuple(MetricsAddress.parse(a) for a in configured or [DEFAULT_METRICS_ADDRESS])
        object.__setattr__(self, "namespaces", _namespaces(self.namespaces))
        object.__setattr__(self, "allowed_metrics_addresses", tuple(self.allowed_metrics_addresses))
        object.__setattr__(self, "allowed_metrics", allowed)

    @property
    def watched(self) -> tuple[str, ...]:
        """The namespaces, normalised (empty: every namespace)."""
        return _namespaces(self.namespaces)

    @property
    def thread_limit(self) -> int:
        """Reconcile threads in all, slow ones included (default 4 x workers, never below workers)."""
        return max(self.max_workers if self.max_workers is not None else 4 * self.workers, self.workers)

    @property
    def shard_limit(self) -> int:
        """Shards one process takes while others may want them: ceil(shards / replicas)."""
        return math.ceil(self.shards / self.replicas)

    def shard_lease(self, shard: int) -> str:
        return f"{self.lease_name}{SHARD_LEASE_INFIX}{shard}"

    def lease_namespace_or_default(self) -> str:
        """Where the Lease lives: the flag, else the pod's namespace, else the first watched one."""
        watched = self.watched
        return (
            self.lease_namespace or os.environ.get("POD_NAMESPACE") or (watched[0] if watched else "default")
        )
