"""A small Chrome DevTools Protocol client: Debian's `chromium`, headless, driven over its
websocket (websocket-client, which the kubernetes client already depends on). Enough for
the dashboard's browser test: open a page, read its text, take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

import websocket

INSTALL = "install it with `apt-get install -y --no-install-recommends chromium` (.ci/run does)"


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError(f"the browser test needs Debian's chromium: {INSTALL}")
    return found


class Browser:
    """A headless chromium with one page open at ``url``."""

    def __init__(self, url: str, width: int = 1600, height: int = 1000) -> None:
        self.profile = tempfile.mkdtemp(prefix="mesh-canary-chromium-")
        self.proc = subprocess.Popen(
            [
                chromium_binary(),
                "--headless",
                "--no-sandbox",  # root in CI containers
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        port = self._devtools_port()
        self.ws = websocket.create_connection(self._page_socket(port, url), timeout=30)
        self.width = width

    def _devtools_port(self) -> int:
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:  # chromium prints the port once it listens
            seen.append(line)
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                threading.Thread(target=self._drain, daemon=True).start()
                return int(m.group(1))
        raise AssertionError(f"chromium exited without a DevTools port: {''.join(seen)[-2000:]}")

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    @staticmethod
    def _page_socket(port: int, url: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t.get("type") == "page")
        return str(page["webSocketDebuggerUrl"])

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events in between are skipped)."""
        with self._lock:
            cid = next(self._ids)
            self.ws.send(json.dumps({"id": cid, "method": method, "params": params}))
            while True:
                msg = json.loads(self.ws.recv())
                if msg.get("id") == cid:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    result: dict[str, Any] = msg.get("result", {})
                    return result

    def evaluate(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("value")

    def text(self) -> str:
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def screenshot(self, path: Path) -> Path:
        """The whole page (not only the window) as a PNG."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 1000)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)


def artifacts_dir() -> Path:
    """Where tests leave files for people ($PYTEST_ARTIFACTS, else tests/artifacts/)."""
    return Path(os.environ.get("PYTEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
