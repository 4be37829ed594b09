"""Step hooks over HTTP: the calls behind ``protocols.HookCaller``.

Each call has a total deadline (its ``timeout``, every attempt included) and makes up to
``retries`` more attempts within it; only 2xx counts as yes. URLs and header values read
from the environment or a Secret are registered as secrets first, so no log line, state
file, status or audit record can hold them; what a call reports is its name, the host it
called, its status or the kind of error, never the URL's path or the answer's body.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mesh_canary.core.hooks import HookResult, render
from mesh_canary.core.model import HookCall, HookHeader, Hooks
from mesh_canary.protocols import HookCaller
from mesh_canary.redact import redact, register_secret

if TYPE_CHECKING:  # httpx is loaded by the first HttpHooks: `simulate` never calls hooks
    import httpx

log = logging.getLogger("mesh_canary.hooks")

# Reads one key of a Secret: (name, key) -> value, or None when it is not there.
SecretReader = Callable[[str, str], str | None]
# Between attempts: short, and never past the call's deadline.
_BACKOFF_S = 0.2


class HookError(Exception):
    """A call could not be made as written (a URL or header value that is not set)."""


class HttpHooks:
    """Calls a policy's hooks: in order, the first failure ending a deciding phase."""

    def __init__(
        self,
        hooks: Hooks,
        read_secret: SecretReader | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hooks = hooks
        self.read_secret = read_secret
        self._transport = transport
        # Made at the first call: an httpx client builds a TLS context (tens of ms of CPU),
        # and a controller starting a thousand rollouts without hooks should not pay for it.
        self._made: httpx.Client | None = None
        self._make_lock = threading.Lock()
        self._clock = clock

    @property
    def _client(self) -> httpx.Client:
        with self._make_lock:
            if self._made is None:
                import httpx

                self._made = httpx.Client(transport=self._transport, follow_redirects=False)
            return self._made

    def call(self, phase: str, fields: Mapping[str, Any], stop_at_failure: bool) -> HookResult:
        records: list[dict[str, Any]] = []
        failures: list[str] = []
        for hook in self.hooks.calls(phase):
            record = self._call_one(hook, {**fields, "hook": phase})
            records.append(record)
            if not record["ok"]:
                failures.append(f"{hook.name}: {record['error']}")
                if stop_at_failure:
                    break
        return HookResult(phase, not failures, "; ".join(failures), calls=tuple(records))

    def _call_one(self, hook: HookCall, fields: Mapping[str, Any]) -> dict[str, Any]:
        import httpx

        started = self._clock()
        deadline = started + hook.timeout_s
        record: dict[str, Any] = {"name": hook.name, "method": hook.method, "attempts": 0}
        try:
            url = self._value(hook.url, hook.url_from_env, hook.url_from_secret, "url")
            record["host"] = httpx.URL(url).host
            headers = {h.name: self._header(h) for h in hook.headers}
            body = render(hook.body, fields).encode()
        except (HookError, httpx.InvalidURL) as e:
            record.update(ok=False, error=redact(str(e)), seconds=0.0)
            log.warning("hook %s not called: %s", hook.name, record["error"])
            return record
        error = ""
        for attempt in range(hook.retries + 1):
            left = deadline - self._clock()
            if left <= 0:
                error = error or "no time left"
                break
            record["attempts"] = attempt + 1
            try:
                answer = self._client.request(
                    hook.method, url, content=body, headers=headers, timeout=httpx.Timeout(left)
                )
                record["status"] = answer.status_code
                if answer.is_success:
                    record.update(ok=True, seconds=round(self._clock() - started, 3))
                    return record
                error = f"answered HTTP {answer.status_code}"
            except httpx.TimeoutException:
                error = f"no answer within its {hook.timeout_s:g}s deadline"
            except httpx.HTTPError as e:
                error = type(e).__name__  # its text may hold the URL
            if attempt == hook.retries or self._clock() + _BACKOFF_S >= deadline:
                break
            time.sleep(_BACKOFF_S)
        record.update(ok=False, error=error, seconds=round(self._clock() - started, 3))
        log.warning("hook %s failed after %d attempt(s): %s", hook.name, record["attempts"], error)
        return record

    def _header(self, h: HookHeader) -> str:
        value = self._value(h.value, h.value_from_env, h.value_from_secret, f"header {h.name}")
        if h.value is None:
            register_secret(value)  # from a Secret or the environment: never shown
        return value

    def _value(self, value: str | None, env: str | None, secret: Mapping[str, str] | None, what: str) -> str:
        """A value as written, or read from the environment or a Secret (then registered
        as secret before anything can print it)."""
        if value is not None:
            return value
        if env is not None:
            found = os.environ.get(env)
            where = f"environment variable {env}"
        elif secret is not None:
            where = f"Secret {secret['name']} key {secret['key']}"
            if self.read_secret is None:
                raise HookError(f"the {what} is in {where}, which only the in-cluster controller can read")
            try:
                found = self.read_secret(secret["name"], secret["key"])
            except Exception as e:
                raise HookError(f"cannot read the {what} from {where}: {type(e).__name__}") from e
        else:
            raise HookError(f"the {what} is not set")
        if not found:
            raise HookError(f"the {what} is not set: {where} is empty or missing")
        found = found.strip()
        if what == "url":
            register_secret(found)
        return found

    def close(self) -> None:
        with self._make_lock:
            if self._made is not None:
                self._made.close()


class SkippedHooks:
    """For drivers that never call out (simulate): every phase answers yes, saying so."""

    synchronous = True

    def call(self, phase: str, fields: Mapping[str, Any], stop_at_failure: bool) -> HookResult:
        return HookResult(phase, True, "not called: this run does not call hooks")


class InFlight:
    """Hook calls in the background, one per phase at a time, so nothing the runner does
    (a rollback above all) ever waits for a hook; answers are collected at the next turn."""

    def __init__(self, caller: HookCaller) -> None:
        self.caller = caller
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._done: list[HookResult] = []

    def start(self, phase: str, fields: Mapping[str, Any], deciding: bool, at: float) -> bool:
        """Call ``phase`` in the background; False when a call of it is running or its
        answer waits to be read."""
        if getattr(self.caller, "synchronous", False):
            # Answers at once (no I/O): kept in order, so a virtual clock stays deterministic.
            self._done.append(dataclasses.replace(self.caller.call(phase, fields, deciding), at=at))
            return True
        with self._lock:
            if phase in self._running or any(r.phase == phase for r in self._done):
                return False  # still running, or answered and not read yet

            def work() -> None:
                try:
                    result = self.caller.call(phase, fields, deciding)
                except Exception as e:  # a caller must not raise; if one does, it is a failure
                    result = HookResult(phase, False, f"could not call: {type(e).__name__}")
                with self._lock:
                    self._done.append(dataclasses.replace(result, at=at))
                    del self._running[phase]

            thread = threading.Thread(target=work, name=f"hook-{phase}", daemon=True)
            self._running[phase] = thread
            thread.start()
            return True

    def answers(self) -> list[HookResult]:
        """The calls finished since the last look, in the order they finished."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def busy(self) -> bool:
        with self._lock:
            return bool(self._running)

    def wait(self, timeout_s: float) -> None:
        """Wait for the running calls (each bounded by its own deadline), at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._running.values())
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0.0))
