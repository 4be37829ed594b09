"""The embedded local mesh: model servers behind a real Envoy, on one machine.

    with LocalMesh(candidate=Degradation(error_rate=0.05), load=LoadSettings(rate=100)) as mesh:
        mesh.router.set_weights(Weights.candidate_at(20))
        observation = mesh.metrics_source().read(since, now)

starts one model server process per version (stable, candidate and optionally a
fallback), each on a free 127.0.0.1 port, then Envoy in front of them (see
mesh_canary.localmesh.envoy), then optionally the load generator (threads in this
process). ``stop()`` (also on leaving the ``with`` block, and at interpreter exit as a
safety net) stops every process it started: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import mesh_canary
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.localmesh import children
from mesh_canary.localmesh.envoy import Envoy
from mesh_canary.localmesh.loadgen import LoadGenerator
from mesh_canary.localmesh.model_server import HEALTHY, Degradation
from mesh_canary.metrics.local import LocalMetricsSource
from mesh_canary.routing.local import LocalRouter

__all__ = ["HEALTHY", "Degradation", "LoadSettings", "LocalMesh", "ModelServerProcess", "check_labels"]

LISTENING = "listening on "
LABEL_MODES = ("feedback", "collector")
PACKAGE_ROOT = str(Path(mesh_canary.__file__).resolve().parent.parent)


@dataclass(frozen=True)
class LoadSettings:
    """How the mesh's load generator sends traffic (see LoadGenerator)."""

    rate: float = 100.0
    label_delay_s: float = 1.0
    missing: float = 0.0
    seed: int = 7
    threads: int = 4


class ListeningProcess:
    """A child process of ours that prints ``listening on URL`` once it serves."""

    def __init__(self, name: str, command: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])),
        }
        with self.log_path.open("wb") as log:
            self.process = children.spawn(command, log_file=log, env=env, workdir=log_dir)
        self.url = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def wait_listening(self, deadline: float) -> None:
        """Wait for the ``listening on URL`` line; raise if the process dies or time runs out."""
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith(LISTENING):
                    self.url = line[len(LISTENING) :].strip()
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}: {text[-2000:]}")
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} did not start listening in time")

    def stop(self, grace_s: float = 5.0) -> None:
        children.stop(self.process, grace_s)


class ModelServerProcess(ListeningProcess):
    """One ``python -m mesh_canary.localmesh.model_server`` process."""

    def __init__(
        self,
        version: str,
        seed: int,
        degradation: Degradation,
        latency_ms: float,
        log_dir: Path,
        port: int = 0,
        payload_logger: str | None = None,
    ) -> None:
        self.version = version
        self.degradation = degradation
        # Every value is glued to its option (``--version=VALUE``): a label such as
        # ``--seed`` (from a policy's metricsVersion) must stay a value, never become an option.
        command = [
            sys.executable, "-m", "mesh_canary.localmesh.model_server", f"--version={version}",
            f"--seed={seed}", f"--port={port}", f"--latency-ms={latency_ms}", *degradation.args(),
        ]  # fmt: skip
        if payload_logger:
            command.append(f"--payload-logger={payload_logger}")
        super().__init__(f"model server {version}", command, log_dir)


class CollectorProcess(ListeningProcess):
    """``mesh-canary collector serve`` on 127.0.0.1, its store in ``db_path`` (kept across
    a restart: give the old port and the same file)."""

    def __init__(self, db_path: Path, log_dir: Path, port: int = 0) -> None:
        self.db_path = db_path
        command = [
            sys.executable, "-m", "mesh_canary", "collector", "serve", f"--address=127.0.0.1:{port}",
            f"--db={db_path}",
        ]  # fmt: skip
        super().__init__("collector", command, log_dir)


def check_labels(stable: str, candidate: str, fallback: str | None = None) -> None:
    """Raise ValueError (one sentence) unless the labels can name the mesh's versions."""
    versions = [stable, candidate] + ([fallback] if fallback else [])
    if len(set(versions)) != len(versions):
        raise ValueError(f"version labels must differ: {versions}")
    for v in versions:
        if not v or "." in v or not v.replace("-", "").replace("_", "").isalnum():
            # Envoy's stat names are dot-separated: a dot would split the cluster name.
            raise ValueError(f"version label {v!r} must be letters, digits, '-' or '_' (no dots)")


class LocalMesh:
    """Stable + candidate (+ fallback) model servers behind Envoy; a context manager."""

    def __init__(
        self,
        stable_version: str = "v1",
        candidate_version: str = "v2",
        *,
        candidate: Degradation = HEALTHY,
        stable: Degradation = HEALTHY,
        fallback_version: str | None = None,
        seed: int = 1,
        candidate_seed: int | None = None,
        latency_ms: float = 2.0,
        initial: Weights = ALL_STABLE,
        load: LoadSettings | None = None,
        start_timeout_s: float = 20.0,
        labels: str = "feedback",
    ) -> None:
        """``seed`` trains stable (and fallback); the candidate is trained on ``candidate_seed``
        (default ``seed + 1``): a different model of the same quality, unless degraded.
        ``labels``: ``feedback`` (the model servers count their own labels on /feedback) or
        ``collector`` (a collector process: the servers send it payload-logger CloudEvents,
        the load posts labels to it, and its /metrics carries the model metrics)."""
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, not {labels!r}")
        self.labels = labels
        self.collector: CollectorProcess | None = None
        check_labels(stable_version, candidate_version, fallback_version)
        self.stable_version = stable_version
        self.candidate_version = candidate_version
        self.fallback_version = fallback_version
        self._plan: dict[str, tuple[int, Degradation]] = {
            stable_version: (seed, stable),
            candidate_version: (seed + 1 if candidate_seed is None else candidate_seed, candidate),
        }
        if fallback_version:
            self._plan[fallback_version] = (seed, HEALTHY)
        self.latency_ms = latency_ms
        self.initial = initial
        self.load_settings = load
        self.start_timeout_s = start_timeout_s
        self.servers: dict[str, ModelServerProcess] = {}
        self.envoy: Envoy | None = None
        self.loadgen: LoadGenerator | None = None
        self._workdir: Path | None = None
        self.startup_s: float | None = None
        # What Envoy held when the mesh was stopped: where traffic was left, read back live.
        self.weights_at_stop: Weights | None = None

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> LocalMesh:
        """Start the servers, then Envoy, then the load (if any). On any failure, stop all and raise."""
        if self._workdir is not None:
            raise RuntimeError("this LocalMesh is already started")
        began = time.monotonic()
        self._workdir = Path(tempfile.mkdtemp(prefix="mesh-canary-local-"))
        atexit.register(self.stop)
        try:
            deadline = began + self.start_timeout_s
            if self.labels == "collector":
                self.collector = CollectorProcess(self._workdir / "collector.sqlite", self._workdir)
                self.collector.wait_listening(deadline)
            for version, (seed, degradation) in self._plan.items():
                self.servers[version] = ModelServerProcess(
                    version,
                    seed,
                    degradation,
                    self.latency_ms,
                    self._workdir,
                    payload_logger=self.collector_url,
                )
            for server in self.servers.values():
                server.wait_listening(deadline)
            self.envoy = Envoy(
                {v: s.port for v, s in self.servers.items()},
                self.stable_version,
                self.candidate_version,
                fallback=self.fallback_version,
                initial=self.initial,
            ).start(timeout_s=max(deadline - time.monotonic(), 1.0))
            self.startup_s = time.monotonic() - began
            if self.load_settings is not None:
                self.start_load(self.load_settings)
        except BaseException:
            self.stop()
            raise
        return self

    def start_load(
        self, settings: LoadSettings | None = None, duration_s: float | None = None
    ) -> LoadGenerator:
        """Start (or replace) the load generator; it runs until ``duration_s`` or ``stop()``."""
        settings = settings or self.load_settings or LoadSettings()
        if self.loadgen is not None:
            self.loadgen.stop()
        self.loadgen = LoadGenerator(
            self.envoy_url, self.model_urls, rate=settings.rate, duration_s=duration_s,
            label_delay_s=settings.label_delay_s, missing=settings.missing, seed=settings.seed,
            threads=settings.threads, labels_url=self.collector_url,
        ).start()  # fmt: skip
        return self.loadgen

    def restart_model_server(self, version: str, degradation: Degradation | None = None) -> None:
        """Replace one model server by a fresh process on the same port (its counters restart at 0)."""
        old = self.servers[version]
        old.stop()
        seed = self._plan[version][0]
        new = ModelServerProcess(
            version,
            seed,
            degradation or old.degradation,
            self.latency_ms,
            self._require_workdir(),
            port=old.port,
            payload_logger=self.collector_url,
        )
        self.servers[version] = new
        new.wait_listening(time.monotonic() + self.start_timeout_s)

    def restart_collector(self, kill: bool = False) -> None:
        """Stop the collector (SIGKILL if ``kill``: no clean shutdown) and start a new one on
        the same port and store, as a crashed pod comes back with its volume. Call it from a
        thread that outlives the mesh: a child dies with the thread that started it (children.spawn)."""
        old = self.collector
        if old is None:
            raise RuntimeError("this mesh has no collector (labels='collector')")
        if kill:
            old.process.kill()
            old.process.wait(timeout=10)
        else:
            old.stop()
        self.collector = CollectorProcess(old.db_path, self._require_workdir(), port=old.port)
        self.collector.wait_listening(time.monotonic() + self.start_timeout_s)

    def stop(self) -> None:
        """Stop the load, Envoy and every model server; remove temp files. Idempotent."""
        atexit.unregister(self.stop)
        if self.loadgen is not None:
            self.loadgen.stop()
        if self.envoy is not None:
            if self.envoy.url:
                try:
                    self.weights_at_stop = self.router.get_weights()
                except Exception:  # a dead Envoy has no weights to report; stop the rest anyway
                    self.weights_at_stop = None
            self.envoy.stop()
        for server in self.servers.values():
            server.stop()
        if self.collector is not None:
            self.collector.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalMesh:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- what drivers and tests use -----------------------------------------------------

    @property
    def envoy_url(self) -> str:
        """Where clients send requests (Envoy's listener)."""
        return self._require_envoy().url

    @property
    def admin_url(self) -> str:
        return self._require_envoy().admin_url

    @property
    def collector_url(self) -> str | None:
        return self.collector.url if self.collector is not None else None

    @property
    def model_metrics_urls(self) -> dict[str, str]:
        """Version label -> the /metrics URL with its model metrics (its server's, or the collector's)."""
        base = self.collector_url
        return {v: f"{base or u}/metrics" for v, u in self.model_urls.items()}

    @property
    def model_urls(self) -> dict[str, str]:
        """Version label -> that model server's base URL."""
        return {v: s.url for v, s in self.servers.items()}

    @property
    def pids(self) -> list[int]:
        """Every process this mesh started (to check that none is left after stop)."""
        pids = [s.process.pid for s in self.servers.values()]
        pids += [self.collector.process.pid] if self.collector is not None else []
        envoy_pid = self.envoy.pid if self.envoy else None
        return pids + ([envoy_pid] if envoy_pid is not None else [])

    @property
    def router(self) -> LocalRouter:
        return LocalRouter(self.admin_url, self.stable_version, self.candidate_version, self.fallback_version)

    def metrics_source(self, origin: float | None = None) -> LocalMetricsSource:
        """A fresh LocalMetricsSource over this mesh; ``origin``: when, on the caller's clock,
        every counter was zero (the mesh's start), if the caller knows."""
        return LocalMetricsSource(
            self.admin_url,
            self.model_metrics_urls,
            self.stable_version,
            self.candidate_version,
            origin=origin,
        )

    def requests_served(self, version: str) -> int:
        """``/predict`` requests the model server itself answered (any code, mirrored copies included)."""
        response = httpx.get(f"{self.model_urls[version]}/metrics", timeout=2.0)
        response.raise_for_status()
        return int(
            sum(
                s.value
                for family in text_string_to_metric_families(response.text)
                for s in family.samples
                if s.name == "model_http_requests_total" and s.labels.get("version") == version
            )
        )

    def prometheus_scrape_configs(self) -> list[dict[str, Any]]:
        """``scrape_configs`` entries for a Prometheus that should scrape this mesh."""
        host_port = [u.split("://", 1)[1] for u in self.model_urls.values()]
        if self.collector_url:
            host_port.append(self.collector_url.split("://", 1)[1])
        return [
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [self.admin_url.split("://", 1)[1]]}],
            },
            {"job_name": "models", "metrics_path": "/metrics", "static_configs": [{"targets": host_port}]},
        ]

    def _require_envoy(self) -> Envoy:
        if self.envoy is None or not self.envoy.url:
            raise RuntimeError("the local mesh is not running: call start() or use it in a with block")
        return self.envoy

    def _require_workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("the local mesh is not running: call start() or use it in a with block")
        return self._workdir
