"""The image the Dockerfile describes, built without Docker (no engine on this machine).

The Dockerfile's own lines are read and carried out: its COPY lines fill a build directory
from the repository, its `pip install` RUN line runs there into a fresh venv (with
``--no-deps`` added, the one difference: the dependencies come from this test venv's
site-packages, appended to the fresh one's path, so the test needs no network; that the
declared dependencies are enough is checked with ``pip check``). Then the ENTRYPOINT runs
with ``--help`` and with the Deployment's command and ``--help``, under the Dockerfile's
ENV, and must write nothing (the root filesystem is read-only in the pod). The user, the
ports and the image tag must be the ones the manifests use, the tag the one docs/image.md
documents.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "manifests" / "controller" / "deployment.yaml"
REGISTRY = "ghcr.io/mesh-canary/mesh-canary"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def one(keyword: str) -> str:
    [found] = [rest for k, rest in instructions() if k == keyword]
    return found


def env_of_dockerfile() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def container() -> dict[str, Any]:
    doc = yaml.safe_load(DEPLOYMENT.read_text())
    [c] = doc["spec"]["template"]["spec"]["containers"]
    return {"pod": doc["spec"]["template"]["spec"], **c}


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def files(*dirs: Path) -> dict[str, tuple[float, int]]:
    return {str(p): (p.stat().st_mtime, p.stat().st_size) for d in dirs for p in d.rglob("*") if p.is_file()}


def test_the_dockerfile_environment_installs_and_runs_its_entrypoint(tmp_path: Path) -> None:
    started = time.monotonic()
    assert one("FROM") == "python:3.11-slim"
    build = tmp_path / "build"
    build.mkdir()
    for keyword, rest in instructions():  # COPY src... dest (dest relative to WORKDIR /build)
        if keyword == "COPY":
            *sources, dest = rest.split()
            for source in sources:
                src, target = ROOT / source, build / dest / (Path(source).name if dest.endswith("/") else "")
                if src.is_dir():
                    shutil.copytree(src, build / dest, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(src, target)
    [run] = [rest for k, rest in instructions() if k == "RUN" and "pip install" in rest]
    install = shlex.split(run.split("&&")[0])
    assert install[:2] == ["pip", "install"] and install[-1] == "."

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    fresh = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (fresh / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [str(venv / "bin" / install[0]), *install[1:-1], "--no-deps", "."],
        cwd=build,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    installed_s = time.monotonic() - started

    # Run as in the image: its ENV, a HOME in /tmp, not from the sources, nothing written.
    home = tmp_path / "home"
    home.mkdir()
    run_env = {**env, **env_of_dockerfile(), "HOME": str(home), "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    before = files(venv)
    entrypoint = json.loads(one("ENTRYPOINT"))
    cmd = json.loads(one("CMD"))
    args = container()["args"]
    assert cmd[0] == args[0] == "controller"
    outputs = []
    for extra in (["--help"], [args[0], "--help"]):
        result = subprocess.run(
            [*entrypoint, *extra], cwd=home, env=run_env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert "controller" in outputs[0] and "--metrics-addr" in outputs[1] and "--leader-elect" in outputs[1]
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import mesh_canary, mesh_canary.core.policy as p; print(mesh_canary.__file__)",
        ],
        cwd=home,
        env=run_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(fresh)), f"mesh_canary imported from {where}, not the installed package"
    assert files(venv) == before, "running the entrypoint wrote into the installation"
    assert not list(home.rglob("*")), "running the entrypoint wrote into HOME"
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "check"], env=run_env, capture_output=True, text=True
    )
    assert "mesh-canary" not in check.stdout.lower(), check.stdout
    print(f"image environment: installed in {installed_s:.1f}s, whole test {time.monotonic() - started:.1f}s")


def test_the_image_runs_as_the_deployment_user_on_its_ports() -> None:
    c = container()
    pod, own = c["pod"]["securityContext"], c["securityContext"]
    uid, _, gid = one("USER").partition(":")
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])
    assert own["readOnlyRootFilesystem"] and own["runAsNonRoot"]
    [useradd] = [rest for k, rest in instructions() if k == "RUN" and "useradd" in rest]
    assert f"--uid {uid}" in useradd and f"--gid {gid}" in useradd
    exposed = sorted(int(p.split("/")[0]) for p in one("EXPOSE").split())
    assert exposed == sorted(p["containerPort"] for p in c["ports"])
    assert f":{exposed[0]}" in c["args"] and f":{exposed[0]}" in json.loads(one("CMD"))
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])  # the one writable place
    assert env_of_dockerfile()["HOME"] == "/tmp" and env_of_dockerfile()["PYTHONDONTWRITEBYTECODE"] == "1"


def test_the_manifests_name_the_documented_tag() -> None:
    tag = f"{REGISTRY}:{version()}"
    assert container()["image"] == tag
    doc = (ROOT / "docs" / "image.md").read_text()
    assert f"docker build -t {REGISTRY}:<version>" in doc or f"docker build -t {REGISTRY}:$VERSION" in doc
    assert tag in doc
    assert re.search(rf"ARG VERSION={re.escape(version())}\b", (ROOT / "Dockerfile").read_text())
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    copied = {w for k, rest in instructions() if k == "COPY" for w in rest.split()[:-1]}
    assert "*" in ignored and all(f"!{c}" in ignored or f"!{c}/" in ignored for c in copied)
