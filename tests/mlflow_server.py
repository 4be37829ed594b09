"""A real ``mlflow server`` (sqlite backend, a free port on 127.0.0.1) for the registry tests.

mlflow is in the test extra only; the package talks to it over REST (mesh_canary.registry.mlflow).
``start_mlflow(workdir)`` starts one and yields an `Mlflow` client of its REST API; ``mlflow_server``
is a module-scoped fixture of one, ``model`` a fresh registered model on it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mesh_canary.localmesh.prometheus import free_port
from tests.waiting import wait_for


class Mlflow:
    """A client of a running mlflow server's REST API (``stop`` ends the server itself)."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.url = url
        self.api = httpx.Client(base_url=f"{url}/api/2.0/mlflow", timeout=30)
        self.proc = proc

    def stop(self) -> None:
        """Stop the server (its whole process group) and wait until it is gone; again: nothing."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def post(self, path: str, **body: Any) -> dict[str, Any]:
        answer = self.api.post(path, json=body)
        answer.raise_for_status()
        return dict(answer.json())

    def model(self, name: str, versions: int, aliases: dict[str, str]) -> None:
        self.post("registered-models/create", name=name)
        for v in range(1, versions + 1):
            self.post("model-versions/create", name=name, source=f"s3://models/{name}/{v}")
        for alias, version in aliases.items():
            self.post("registered-models/alias", name=name, alias=alias, version=version)

    def alias(self, name: str, alias: str) -> str | None:
        answer = self.api.get("registered-models/alias", params={"name": name, "alias": alias})
        return None if answer.status_code != 200 else str(answer.json()["model_version"]["version"])

    def tags(self, name: str, version: str) -> dict[str, str]:
        answer = self.api.get("model-versions/get", params={"name": name, "version": version})
        answer.raise_for_status()
        return {t["key"]: t["value"] for t in answer.json()["model_version"].get("tags", [])}


@contextlib.contextmanager
def start_mlflow(work: pathlib.Path) -> Iterator[Mlflow]:
    """A running ``mlflow server`` keeping its data in ``work``; stopped (its whole process group) on exit."""
    binary = shutil.which("mlflow", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("mlflow")
    if binary is None:
        pytest.fail("mlflow is not installed: pip install -e '.[test]' (mlflow is in the test extra)")
    port = free_port()
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            "server",
            "--backend-store-uri",
            f"sqlite:///{work}/mlflow.db",
            "--default-artifact-root",
            str(work / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers go with it
    )
    url = f"http://127.0.0.1:{port}"
    server = Mlflow(url, proc)
    try:
        wait_for(
            "mlflow server /health",
            lambda: proc.poll() is None and httpx.get(f"{url}/health", timeout=5).status_code == 200,
            timeout_s=180,
            every_s=0.5,
        )
        yield server
    finally:
        server.stop()
        log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mlflow]:
    with start_mlflow(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture
def model(mlflow_server: Mlflow, request: pytest.FixtureRequest) -> str:
    """A fresh registered model on ``mlflow_server``: versions 1..3, champion -> 1, challenger -> 2."""
    name = f"fraud-scorer-{request.node.name.replace('_', '-')[:40]}"
    mlflow_server.model(name, 3, {"champion": "1", "challenger": "2"})
    return name
