"""Starting the local mesh's processes so that they neither die too early nor outlive us.

Two promises, both about the rollback:

- **A terminal's Ctrl-C must not kill them before the rollback is written.** A terminal
  sends SIGINT to its whole foreground process group. Every child starts in its own
  session (``start_new_session``), so only `mesh-canary` itself gets the signal; it rolls
  back through Envoy and then stops its children itself.
- **A SIGKILLed `mesh-canary` must not leave them running.** Each child gets a
  parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set between fork and
  exec): the kernel kills it when the thread that started it ends. As a second net (no
  prctl elsewhere, or a parent that died in the instant between fork and prctl), every
  child is written down in a registry directory, one JSON file per child naming its owner
  and its own identity (pid, start time in /proc, command line); the next start of any
  mesh process reaps children whose owner is gone, after checking that the pid still is
  the same process (start time and command line), never a recycled pid.

The parent-death signal follows the *thread* that forked the child: start a mesh on a
thread that lives as long as the mesh (the main thread, as the CLI and the tests do).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
import stat as stat_module
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("mesh_canary.localmesh")

PR_SET_PDEATHSIG = 1
REGISTRY_ENV = "MESH_CANARY_CHILDREN_DIR"  # where the registry lives (tests use their own)
WORKDIR_PREFIX = "mesh-canary-"  # only temp dirs named so are ever removed by the reaper


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Loaded once in the parent: the child, between fork and exec, must not import anything.
_PRCTL = _load_prctl()


def _die_with(parent_pid: int) -> Callable[[], None]:
    """The preexec_fn: SIGKILL this child when its parent goes; and if the parent already
    went (between fork and here), die now rather than run unowned."""

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


# --------------------------------------------------------------------------- /proc


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None
    if there is no such process (or it is a zombie: it runs nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan's zombie may linger
    when nothing reaps it)."""
    return start_time(pid) is not None


# --------------------------------------------------------------------------- the registry


def registry_dir() -> Path | None:
    """This user's registry directory (created 0700), or None if it cannot be trusted."""
    path = Path(
        os.environ.get(REGISTRY_ENV) or Path(tempfile.gettempdir()) / f"mesh-canary-children-{os.getuid()}"
    )
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError:
        return None
    # Someone else's directory (or a symlink planted in /tmp) is not ours to read or write.
    if not stat_module.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return None
    return path


def _record_path(directory: Path, pid: int) -> Path:
    return directory / f"{pid}.json"


def _register(process: subprocess.Popen[bytes], args: Sequence[str], workdir: Path | None) -> None:
    directory = registry_dir()
    started = start_time(process.pid)
    if directory is None or started is None:
        return
    record = {
        "owner": os.getpid(),
        "ownerStart": start_time(os.getpid()),
        "pid": process.pid,
        "start": started,
        "cmdline": [str(a) for a in args],
        "workdir": str(workdir) if workdir else None,
    }
    tmp = directory / f".{process.pid}.tmp"
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(record))
        os.replace(tmp, _record_path(directory, process.pid))


def forget(pid: int) -> None:
    """Drop a child's record once it has been stopped."""
    directory = registry_dir()
    if directory is not None:
        _record_path(directory, pid).unlink(missing_ok=True)


def _owner_gone(record: dict[str, Any]) -> bool:
    """The owner is dead, or its pid now names another process (a different start time)."""
    return start_time(int(record["owner"])) != record.get("ownerStart")


def _is_same_process(record: dict[str, Any]) -> bool:
    """The pid still names the child we started: same start time, same command line."""
    pid = int(record["pid"])
    return start_time(pid) == record["start"] and cmdline(pid) == list(record["cmdline"])


def reap_orphans() -> list[int]:
    """Kill children left behind by a mesh owner that died; remove their temp dirs and
    records. Returns the pids killed. Never touches a pid that is now another process."""
    directory = registry_dir()
    if directory is None or not Path("/proc/self/stat").exists():
        return []  # without /proc nothing can be verified, so nothing is touched
    killed: list[int] = []
    for path in directory.glob("*.json"):
        try:
            record = json.loads(path.read_text())
            if not _owner_gone(record):
                continue
            if _is_same_process(record):
                os.kill(int(record["pid"]), signal.SIGKILL)
                killed.append(int(record["pid"]))
                log.warning(
                    "stopped pid %s (%s) left running by mesh-canary pid %s, which is gone",
                    record["pid"], Path(record["cmdline"][0]).name, record["owner"],
                )  # fmt: skip
            _remove_workdir(record.get("workdir"))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.debug("skipping child record %s: %s", path, exc)
            continue
        path.unlink(missing_ok=True)
    return killed


def _remove_workdir(workdir: object) -> None:
    if not isinstance(workdir, str):
        return
    path = Path(workdir)
    # Only our own temp dirs: a damaged record must not point the reaper at anything else.
    if path.parent == Path(tempfile.gettempdir()) and path.name.startswith(WORKDIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- starting


def spawn(
    args: Sequence[str],
    *,
    log_file: IO[bytes],
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """Start one mesh process: its own session (a terminal's Ctrl-C does not reach it), a
    parent-death signal, and a registry record (``workdir``: its temp dir, removed if it is
    ever reaped). Reaps orphans of earlier, dead owners first."""
    reap_orphans()
    process = subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with(os.getpid()) if die_with_parent else None,
    )
    _register(process, args, workdir)
    return process


def stop(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; forget its record. Idempotent."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    forget(process.pid)
