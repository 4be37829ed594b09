"""The live dashboard in a real headless browser (Debian's chromium over the DevTools
protocol), following a real rollout: `mesh-canary run --backend local` with a degraded
candidate (real model servers behind a real Envoy) writes its --state file, a real
`mesh-canary dashboard` serves that file, and the page, updating itself, shows the
candidate's weight and then the rollback. A screenshot is left in the artifacts folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cdp import Browser, artifacts_dir
from tests.waiting import wait_for

ROOT = Path(__file__).parents[2]
POLICY = ROOT / "policies" / "local-demo.yaml"
RUN_ARGS = ("--rps", "50", "-o", "json", "--state")
CLI = [str(Path(sys.executable).parent / "mesh-canary")]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _showing(browser: Browser, *words: str) -> str | None:
    """The page's text when it shows every one of ``words``."""
    text = browser.text()
    return text if all(w in text for w in words) else None


def _when_saved(path: Path, phase: str) -> dict[str, float]:
    """Watches ``path`` (every 20 ms) for the first save in ``phase``; its monotonic time."""
    found: dict[str, float] = {}

    def watch() -> None:
        deadline = time.monotonic() + 300
        while "at" not in found and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text()).get("phase") == phase:
                    found["at"] = time.monotonic()
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    return found


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A dashboard serving a state file that does not exist yet; its URL and the file."""
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [*CLI, "dashboard", "--state", str(state), "-f", str(POLICY), "--address", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
    assert m, f"the dashboard did not say where it serves: {line!r}"
    try:
        yield m.group(1), state
    finally:
        _stop(proc)


def test_the_page_follows_a_local_rollout_to_its_rollback(
    dashboard: tuple[str, Path], tmp_path: Path
) -> None:
    url, state = dashboard
    started = time.monotonic()
    browser = Browser(url + "r/file/0")
    run: subprocess.Popen[str] | None = None
    try:
        # Before the run writes its state the page says so, and keeps asking.
        live = "document.getElementById('live').dataset.ok"
        wait_for("the page to update itself", lambda: browser.evaluate(live) == "1", timeout_s=60)
        assert "no state in" in browser.text()
        run = subprocess.Popen(
            [
                *CLI,
                "run",
                "-f",
                str(POLICY),
                "--backend",
                "local",
                "--candidate",
                "degraded",
                *RUN_ARGS,
                str(state),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "run.err", "w"),  # noqa: SIM115 (closed with the process)
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        # The candidate takes its first share of traffic: the page shows the weight move.
        text = wait_for(
            "the page to show the candidate at 10%",
            lambda: _showing(browser, "candidate at 10%", "Progressing"),
            timeout_s=120,
        )
        assert "Per-version metrics at every analysis" in text or "No completed step window" in text
        # Then the degraded candidate is rolled back, and the page follows without a reload.
        saved = _when_saved(state, "RolledBack")
        text = wait_for(
            "the page to show the rollback",
            lambda: _showing(browser, "rolled back", "candidate at 0%"),
            timeout_s=180,
            every_s=0.05,
        )
        latency = time.monotonic() - wait_for("the file's rollback", lambda: saved.get("at"), timeout_s=10)
        assert run.wait(timeout=60) == 3  # exit 3: rolled back
        shot = browser.screenshot(artifacts_dir() / "dashboard-rollback.png")
        shot.with_suffix(".txt").write_text(text)  # what the page said, beside its picture
    finally:
        browser.close()
        if run is not None:
            _stop(run)
    print(f"\nscreenshot: {shot}\nthe page showed the rollback {latency:.2f}s after the state file held it")
    assert latency < 30  # bounded: the poller's second, the page's second, a render
    print(f"test time: {time.monotonic() - started:.1f}s")

    # What the page says: the rollout, its plan and phase, the rollback's reason, per tick
    # charts, readable numbers, every check; nothing cut with "...".
    assert "Rollout local-demo: v1 → v2" in text
    assert "10% → 25% → 50% → 100%" in text
    assert "phase RolledBack" in text and re.search(r"weights now\s+stable 100% / candidate 0%", text)
    assert "failed:" in text
    assert "Every check at every analysis" in text
    assert re.search(r"stable v1: \d+(\.\d+)?%", text)  # the error-rate legend, in percent
    assert re.search(r"\d+(\.\d+)? ms", text)  # latencies in milliseconds
    assert "..." not in text
    assert shot.stat().st_size > 20_000
    # The page is served read-only: no buttons, and an order is refused.
    assert "approve" not in [b.lower() for b in re.findall(r"\n(pause|resume|approve|abort)\n", text)]
