"""Faults of the local backend (issue 8, items 12, 13, 14, 15), with real processes: a real
`mesh-canary run --backend local` subprocess, its real Envoy, model servers and Prometheus.

Each test prints ``measured:`` lines (time from the fault to a safe state); run with -s to
see them. No test asserts a duration except generous "bounded, not forever" limits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from mesh_canary.cli import main
from mesh_canary.core import engine
from mesh_canary.core.policy import load_policy_text
from mesh_canary.core.weights import Weights
from mesh_canary.localmesh import children
from mesh_canary.localmesh.mesh import LocalMesh
from mesh_canary.localmesh.prometheus import find_binary
from mesh_canary.run.stores import FileStateStore
from tests.waiting import wait_for

MESH_CANARY = str(Path(sys.executable).parent / "mesh-canary")  # the installed console script


def policy_text(
    name: str = "local-faults", min_step: str = "3s", stable: str = "v1", candidate: str = "v2"
) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: mesh-canary.io/v1alpha1
        kind: ModelRollout
        metadata: {{name: {name}}}
        spec:
          virtualService: {{name: local}}
          stable: {{destination: {{host: {stable}}}, version: "{stable}"}}
          candidate: {{destination: {{host: {candidate}}}, version: "{candidate}"}}
          canary: {{steps: [20, 50, 100], minStepDuration: {min_step}, maxStepDuration: 30m}}
          analysis:
            interval: 1s
            minRequests: 30
            noDataTimeout: 20s
            checks:
              - {{metric: errorRate, maxIncrease: 0.05, max: 0.2}}
          metrics: {{provider: local, profile: envoy}}
        """
    )


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private child registry for this test (and the subprocesses it starts)."""
    directory = tmp_path / "children"
    monkeypatch.setenv(children.REGISTRY_ENV, str(directory))
    yield directory


def start_run(tmp_path: Path, *args: str, policy: str | None = None) -> subprocess.Popen[str]:
    """`mesh-canary run --backend local` in its own process group, as a terminal's job is."""
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy or policy_text())
    return subprocess.Popen(
        [MESH_CANARY, "run", "-f", str(policy_path), "--backend", "local", "-o", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def finish(proc: subprocess.Popen[str], timeout_s: float = 120.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"mesh-canary did not end within {timeout_s}s:\n{err[-3000:]}") from None
    return proc.returncode, out, err


def child_pids(pid: int) -> dict[int, list[str]]:
    """The live children of ``pid`` with their command lines (from /proc)."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found[int(entry.name)] = children.cmdline(int(entry.name)) or []
    return found


def mesh_kinds(cmdlines: dict[int, list[str]]) -> set[str]:
    kinds = set()
    for cmd in cmdlines.values():
        text = " ".join(cmd)
        if "mesh_canary.localmesh.model_server" in text:
            kinds.add("model server")
        elif Path(cmd[0]).name == "envoy":
            kinds.add("envoy")
        elif Path(cmd[0]).name == "prometheus":
            kinds.add("prometheus")
    return kinds


def saved(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(state.read_text())
    return data


def at_step(proc: subprocess.Popen[str], state: Path, index: int) -> bool:
    if proc.poll() is not None:  # ended early: fail now with its words, not after a timeout
        pytest.fail(f"mesh-canary exited {proc.returncode}: {proc.communicate()[1][-3000:]}")
    return state.exists() and saved(state)["stepIndex"] >= index


# --------------------------------------------------------------------------- item 14


@pytest.mark.fault(item=14)
def test_ctrl_c_to_the_whole_process_group_rolls_back_through_the_live_envoy(
    tmp_path: Path, registry: Path
) -> None:
    """A terminal's Ctrl-C reaches every process of the foreground group. Before: Envoy and
    the model servers died with it and the rollback write failed for minutes ("ROLLBACK to
    100% stable failed", exit 1). Now they are in their own session and the rollback goes
    through the live Envoy, read back from its runtime as the mesh stops."""
    state = tmp_path / "state.json"
    proc = start_run(
        tmp_path, "--state", str(state), "--metrics", "direct", policy=policy_text(min_step="10m")
    )
    try:
        wait_for(
            "the run to hold 20% on the candidate",
            lambda: at_step(proc, state, 0) and saved(state)["ticks"] > 2,
            90,
        )
        assert {"envoy", "model server"} <= mesh_kinds(child_pids(proc.pid))
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        # The state is saved only after the write went through: this is when traffic was safe.
        wait_for("the rollback", lambda: saved(state)["phase"] == "RolledBack", 60, every_s=0.01)
        safe = time.monotonic() - sent
        code, out, err = finish(proc, timeout_s=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(
        f"measured: Ctrl-C to the process group -> 100% stable written in {safe:.2f}s, "
        f"exit {code} in {time.monotonic() - sent:.2f}s"
    )
    assert code == 3, err[-3000:]
    assert "failed" not in err, err[-3000:]
    # Read back from the live Envoy by the product itself just before it stopped the mesh.
    assert "Envoy held 100/0 (stable/candidate) to the end" in err
    final = saved(state)
    assert final["phase"] == "RolledBack" and final["weights"]["stable"] == 100
    assert json.loads(out)["outcome"] == "rolled_back"


@pytest.mark.fault(item=14)
def test_a_sigkilled_run_leaves_no_envoy_model_server_or_prometheus(tmp_path: Path, registry: Path) -> None:
    """Before: SIGKILL on `run --backend local` left Envoy, both model servers and
    Prometheus running for ever. Now each child has a parent-death signal."""
    find_binary("prometheus")  # fails with how to install it
    state = tmp_path / "state.json"
    proc = start_run(
        tmp_path, "--state", str(state), "--metrics", "prometheus", policy=policy_text(min_step="10m")
    )
    try:
        wait_for("the rollout to start", lambda: at_step(proc, state, 0), 90)
        mesh = wait_for(
            "every mesh process to run",
            lambda: (
                (c := child_pids(proc.pid)) and mesh_kinds(c) == {"envoy", "model server", "prometheus"} and c
            ),
            30,
        )
        killed = time.monotonic()
        proc.kill()  # SIGKILL: no handler, no atexit, no finally
        proc.wait()
        wait_for(
            "no process of the killed run to be left",
            lambda: not [p for p in mesh if children.start_time(p) is not None],
            30,
        )
        print(f"measured: SIGKILL -> {len(mesh)} mesh processes gone in {time.monotonic() - killed:.2f}s")
    finally:
        for pid in child_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.stdout.close() if proc.stdout else None
        proc.stderr.close() if proc.stderr else None


SLEEPER = textwrap.dedent(
    """\
    import sys, time
    from mesh_canary.localmesh import children
    log = open(sys.argv[1], "wb")
    child = children.spawn([sys.executable, "-c", "import time; time.sleep(600)"], log_file=log,
                           die_with_parent=False)
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.fault(item=14)
def test_the_next_start_reaps_children_of_a_dead_owner_but_never_a_recycled_pid(
    tmp_path: Path, registry: Path
) -> None:
    """The second net (no parent-death signal: another OS, or a parent gone in the instant
    between fork and prctl): the registry lets the next start stop what a dead owner left,
    after checking that the pid is still that process (start time and command line)."""
    owner = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, str(tmp_path / "child.log")], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    orphan = int(owner.stdout.readline())
    # A process that is not ours, under a record with a dead owner and a different command line.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        record = {
            "owner": owner.pid, "ownerStart": children.start_time(owner.pid), "pid": bystander.pid,
            "start": children.start_time(bystander.pid), "cmdline": ["envoy", "-c", "x"], "workdir": None,
        }  # fmt: skip
        (registry / f"{bystander.pid}.json").write_text(json.dumps(record))
        owner.kill()
        owner.wait()
        assert children.alive(orphan), "without the parent-death signal the child outlives its owner"
        killed = time.monotonic()
        assert children.reap_orphans() == [orphan]
        wait_for("the orphan to be gone", lambda: not children.alive(orphan), 30)
        print(f"measured: orphan reaped on the next start in {time.monotonic() - killed:.2f}s")
        assert bystander.poll() is None, "a pid whose command line differs is never killed"
        assert not list(registry.glob("*.json")), "the records of a dead owner are cleared"
    finally:
        bystander.kill()
        bystander.wait()
        if children.alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        if owner.stdout:
            owner.stdout.close()


# --------------------------------------------------------------------------- item 15


@pytest.mark.fault(item=15)
def test_resuming_a_sigkilled_local_run_restores_its_weights_on_a_new_mesh(
    tmp_path: Path, registry: Path
) -> None:
    """Before: the rerun started a fresh mesh at 100/0, saw "weights changed outside" and
    rolled a healthy model back with a misleading "no data". Now it says it resumes on a new
    mesh, puts the saved weights in the new Envoy before the runner resumes, restarts the
    step's window, and the healthy candidate is promoted. Then a rerun of the finished state
    says what it was and starts nothing."""
    state = tmp_path / "state.json"
    first = start_run(tmp_path, "--state", str(state), "--metrics", "direct")
    try:
        wait_for("the run to reach 50%", lambda: at_step(first, state, 1), 90)
    finally:
        first.kill()
        finish(first)
    assert saved(state)["weights"]["candidate"] == 50 and saved(state)["phase"] == "Progressing"
    began = time.monotonic()
    rerun = start_run(tmp_path, "--state", str(state), "--metrics", "direct")
    code, out, err = finish(rerun)
    print(f"measured: resumed on a new mesh at 50/50, promoted in {time.monotonic() - began:.2f}s")
    assert "resuming on a new local mesh: restoring 50/50 and restarting step 2's window" in err, err[-3000:]
    assert "outside" not in err and "no data" not in err, err[-3000:]
    assert code == 0, err[-3000:]
    assert json.loads(out)["outcome"] == "promoted"

    before = state.read_bytes()
    again = start_run(tmp_path, "--state", str(state), "--metrics", "direct")
    code, out, err = finish(again, timeout_s=60)
    assert code == 0, err
    assert "rollout local-faults already finished: promoted at " in err
    assert "local mesh stopped" not in err  # no mesh was started
    assert state.read_bytes() == before


@pytest.mark.fault(item=15)
def test_rerunning_a_rolled_back_state_file_says_so_and_starts_nothing(
    tmp_path: Path, registry: Path
) -> None:
    """Before: the rerun silently started the whole mesh and exited 3 with no word."""
    policy = load_policy_text(policy_text())
    started = engine.start(policy, 1_790_000_000.0).state
    rolled_back = engine.command(policy, started, engine.Command.ABORT, 1_790_000_030.0).state
    state = tmp_path / "state.json"
    FileStateStore(state).save(rolled_back.to_dict())
    before = state.read_bytes()
    began = time.monotonic()
    code, _, err = finish(start_run(tmp_path, "--state", str(state), "--metrics", "direct"), timeout_s=60)
    print(
        f"measured: rerun of a finished state answered in {time.monotonic() - began:.2f}s, mesh not started"
    )
    assert code == 3, err
    assert "rollout local-faults already finished: rolled back at 2026-09-21 " in err, err
    assert f"({rolled_back.reason})" in err
    assert "local mesh stopped" not in err
    assert not list(registry.glob("*.json")), "no mesh process was started"
    assert state.read_bytes() == before


# --------------------------------------------------------------------------- item 12


@pytest.mark.fault(item=12)
def test_report_never_writes_outside_the_directory_it_was_asked_to_write_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a state file whose rollout is named ``../../evil`` (or has slashes) put
    ``../../evil-report.html`` two directories up. Now the default is a plain file name in
    the working directory; an explicit ``-o`` is honoured as given."""
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    policy = load_policy_text(policy_text())
    for name in ("../../evil", "x/../../../y", "/etc/passwd", "--help", "..", "\x00"):
        doc = engine.start(policy, 1_790_000_000.0).state.to_dict() | {"name": name}
        state_file = tmp_path / "a" / "evil"  # reached from work/ as ../../evil
        state_file.write_text(json.dumps(doc))
        result = CliRunner().invoke(main, ["report", "../../evil"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        written = Path(result.output.strip())
        assert written.parent == Path("."), written
        assert (work / written).is_file()
        (work / written).unlink()
    assert sorted(p.name for p in tmp_path.rglob("*report*")) == []
    assert not Path("/etc/passwd-report.html").exists()
    result = CliRunner().invoke(
        main, ["report", "../../evil", "-o", "../chosen.html"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "b" / "chosen.html").is_file()


# --------------------------------------------------------------------------- item 13


@pytest.mark.fault(item=13)
def test_a_version_label_like_an_option_stays_a_value_of_the_model_server(registry: Path) -> None:
    """Before: ``metricsVersion: "--seed"`` became ``--version --seed --seed 1`` on the model
    server's command line (it would not start, or took another option's place). Now every
    value is glued to its option (``--version=--seed``) and the label is just a label."""
    with LocalMesh("v1", "--seed", seed=3) as mesh:
        for cmd in child_pids(os.getpid()).values():
            if "mesh_canary.localmesh.model_server" in " ".join(cmd):
                assert all(not a.startswith("--") or "=" in a for a in cmd[3:]), cmd
        health = httpx.get(f"{mesh.model_urls['--seed']}/healthz", timeout=5).json()
        assert health == {"status": "ok", "version": "--seed"}
        assert mesh.servers["--seed"].process.args[3:5] == ["--version=--seed", "--seed=4"]
        mesh.router.set_weights(Weights.candidate_at(100))
        response = httpx.post(f"{mesh.envoy_url}/predict", json={"id": "r", "features": [0.0] * 4}, timeout=5)
        assert response.status_code == 200 and response.json()["version"] == "--seed"


@pytest.mark.fault(item=13)
def test_run_local_with_an_option_like_label_promotes_and_a_dotted_label_is_bad_input(
    tmp_path: Path, registry: Path
) -> None:
    """The whole `run --backend local` with ``metricsVersion: "--seed"``: the label is only
    a label, and the healthy candidate is promoted. A label the local mesh cannot use (a
    dot would split Envoy's stat names) is bad input: exit 2, one sentence, nothing started."""
    text = policy_text(name="option-like", min_step="2s").replace(
        'version: "v2"}', 'version: "v2", metricsVersion: "--seed"}'
    )
    assert 'metricsVersion: "--seed"' in text
    code, out, err = finish(start_run(tmp_path, "--metrics", "direct", policy=text))
    assert code == 0, err[-3000:]
    assert json.loads(out)["outcome"] == "promoted"

    dotted = policy_text(name="dotted", stable="1.4.2")
    code, out, err = finish(start_run(tmp_path, "--metrics", "direct", policy=dotted), timeout_s=60)
    assert code == 2, err
    assert err.strip() == (
        "error: --backend local cannot use this policy: version label '1.4.2' must be letters, "
        "digits, '-' or '_' (no dots)"
    )
    assert not list(registry.glob("*.json")) and out == ""
