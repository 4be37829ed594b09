"""Real Prometheus for tests: backfilled (exact answers, fast) or scraping live targets.

- ``openmetrics(series)`` writes OpenMetrics text with timestamps;
- ``backfilled_prometheus(text)`` loads it with ``promtool tsdb create-blocks-from
  openmetrics`` into a fresh data dir and serves it from a real Prometheus on a free
  loopback port (stopped by PID on exit). Query at the data's own timestamps: retention
  counts from the newest block, not from the wall clock, so old fixed timestamps are fine;
- ``make_policy(...)`` builds a Policy from the core dataclasses directly.

A missing ``prometheus``/``promtool`` binary FAILS the test with the install command.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from mesh_canary.core.model import (
    Check,
    MetricsSpec,
    Policy,
)
from mesh_canary.localmesh.prometheus import INSTALL_HINT, PrometheusServer, ScrapeJob
from tests.conftest import make_policy as shared_policy

__all__ = [
    "DEFAULT_CHECKS",
    "PrometheusServer",
    "ScrapeJob",
    "Series",
    "backfilled_prometheus",
    "make_policy",
    "openmetrics",
    "require",
]

# (metric name, labels, [(unix seconds, value), ...])
Series = tuple[str, Mapping[str, str], Sequence[tuple[float, float]]]


def require(name: str) -> str:
    """Path of the binary, or a test failure that says how to install it (never a skip)."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is missing; {INSTALL_HINT}", pytrace=False)
    return path


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    if v != v:
        return "NaN"
    return repr(float(v)) if v != int(v) else str(int(v))


def openmetrics(series: Sequence[Series]) -> str:
    """OpenMetrics text (untyped families, samples in time order, ``# EOF``)."""
    by_metric: dict[str, list[str]] = {}
    for name, labels, samples in series:
        inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
        for t, v in sorted(samples):
            by_metric.setdefault(name, []).append(f"{name}{{{inner}}} {_number(v)} {_number(t)}")
    lines = [line for group in by_metric.values() for line in group]
    return "\n".join([*lines, "# EOF", ""])


@contextmanager
def backfilled_prometheus(text: str) -> Iterator[PrometheusServer]:
    """A real Prometheus serving exactly the series in ``text``."""
    promtool = require("promtool")
    require("prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="prom-backfill-"))
    try:
        (workdir / "in.txt").write_text(text)
        done = subprocess.run(
            [
                promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(workdir / "in.txt"),
                str(workdir / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"promtool failed: {done.stderr or done.stdout}"
        with PrometheusServer(data_dir=workdir / "data") as server:
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def make_policy(
    checks: Sequence[Check],
    stable: str = "v1",
    candidate: str = "v2",
    host: str = "fraud-scorer",
    candidate_host: str | None = None,
    namespace: str = "models",
    profile: str = "istio",
    version_label: str = "destination_version",
    model_version_label: str = "version",
    address: str = "http://127.0.0.1:9",
    timeout_s: float = 5.0,
    variables: Mapping[str, str] | None = None,
) -> Policy:
    """The shared Policy (subsets ``stable`` / ``candidate``) reading this Prometheus."""
    return shared_policy(
        checks,
        metrics_versions=(stable, candidate),
        subsets=("stable", "candidate"),
        hosts=(host, candidate_host),
        namespace=namespace,
        metrics=MetricsSpec(
            profile=profile,  # type: ignore[arg-type]
            address=address,
            version_label=version_label,
            model_version_label=model_version_label,
            timeout_s=timeout_s,
            variables=dict(variables or {}),
        ),
    )


DEFAULT_CHECKS = (
    Check(metric="errorRate", name="errorRate", max_increase=0.005),
    Check(metric="latency", name="latency", quantile=0.99, max_increase_ratio=0.1),
)
