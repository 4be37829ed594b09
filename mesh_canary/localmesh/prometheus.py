"""A real Prometheus server on loopback, for the local mesh (demo ``--metrics prometheus``) and tests.

It runs the ``prometheus`` binary (Debian package ``prometheus``) with a generated config
that scrapes the given jobs every ``scrape_interval_s``, a private data directory and a
free 127.0.0.1 port, waits for ``/-/ready``, and stops it by PID. Give ``data_dir`` to
serve blocks made beforehand (``promtool tsdb create-blocks-from openmetrics``).

    with LocalMesh() as mesh, prometheus_for(mesh) as prom:
        source = PrometheusMetricsSource(policy, url=prom.url)   # profile: envoy

First scraped data is queryable a few seconds after start; ``wait_for_series`` waits for
a query to return something.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from mesh_canary.localmesh import children

if TYPE_CHECKING:
    from mesh_canary.localmesh.mesh import LocalMesh

__all__ = ["INSTALL_HINT", "PrometheusServer", "ScrapeJob", "find_binary", "free_port", "prometheus_for"]

INSTALL_HINT = "install it: apt-get install -y --no-install-recommends prometheus"


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: ``targets`` are ``host:port``; Envoy's admin path is /stats/prometheus."""

    name: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"


def find_binary(name: str = "prometheus") -> str:
    """The path of ``prometheus`` (or ``promtool``); FileNotFoundError says how to install it."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; {INSTALL_HINT}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrometheusServer:
    """``with PrometheusServer([ScrapeJob("envoy", ("127.0.0.1:9901",), "/stats/prometheus")]) as prom:``

    ``prom.url`` is then ready for queries. ``stop`` (or leaving the block) ends the process
    and removes the data directory if this object created it.
    """

    def __init__(
        self,
        jobs: Sequence[ScrapeJob] = (),
        data_dir: str | Path | None = None,
        scrape_interval_s: float = 1.0,
        port: int | None = None,
        retention: str = "100y",
        scrape_configs: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """``scrape_configs``: raw Prometheus ``scrape_configs`` entries, added after ``jobs``."""
        self.jobs = tuple(jobs)
        self.scrape_configs = [dict(c) for c in scrape_configs]
        self.scrape_interval_s = scrape_interval_s
        self.port = port or free_port()
        self.retention = retention
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def config(self) -> dict[str, object]:
        interval = f"{max(int(self.scrape_interval_s * 1000), 100)}ms"
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": self.scrape_configs
            + [
                {
                    "job_name": job.name,
                    "metrics_path": job.metrics_path,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": list(job.targets)}],
                }
                for job in self.jobs
            ],
        }

    def start(self, ready_timeout_s: float = 30.0) -> PrometheusServer:
        binary = find_binary("prometheus")
        self._workdir = Path(tempfile.mkdtemp(prefix="mesh-canary-prometheus-"))
        config_path = self._workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        data_dir = self._given_data_dir or self._workdir / "data"
        log = (self._workdir / "prometheus.log").open("wb")
        args = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with log:
            self._process = children.spawn(args, log_file=log, workdir=self._workdir)
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with code {self._process.returncode}: {self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"prometheus was not ready within {timeout_s:g}s: {self.log_tail()}")

    def query(self, promql: str, at: float | None = None, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The result of an instant query (for waiting and checks; the adapter has its own client)."""
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.load(response)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, count: int = 1, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``promql`` until it returns at least ``count`` series; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                result = self.query(promql)
                if len(result) >= count:
                    return result
            time.sleep(0.2)
        raise TimeoutError(f"{promql} returned {len(result)} series, not {count}, within {timeout_s:g}s")

    def wait_for_scrapes(self, after: float, scrapes: int = 1, timeout_s: float = 60.0) -> float:
        """Wait until every target has been scraped ``scrapes`` times after the Unix time
        ``after`` (each round: every target's latest ``up`` sample is later than the last
        round's); the time of the last round's oldest scrape. A slow machine waits longer."""
        deadline = time.monotonic() + timeout_s
        for _ in range(scrapes):
            while True:
                with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                    stamps = [float(r["value"][1]) for r in self.query("timestamp(up)")]
                    if stamps and min(stamps) > after:
                        after = min(stamps)
                        break
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"targets not scraped {scrapes} times within {timeout_s:g}s")
                time.sleep(0.1)
        return after

    def log_tail(self, lines: int = 15) -> str:
        if self._workdir is None or not (self._workdir / "prometheus.log").exists():
            return ""
        text = (self._workdir / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            children.stop(process, grace_s=10.0)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> PrometheusServer:
        return self.start() if self._process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def prometheus_for(mesh: LocalMesh, scrape_interval_s: float = 1.0) -> PrometheusServer:
    """A (not yet started) Prometheus that scrapes ``mesh``: Envoy's /stats/prometheus and
    every model server's /metrics. Use it as a context manager, or call start()/stop()."""
    return PrometheusServer(
        scrape_configs=mesh.prometheus_scrape_configs(), scrape_interval_s=scrape_interval_s
    )
