"""Step hooks: the engine's rules (pure, as data) and the runner calling a real HTTP server
on 127.0.0.1 (stdlib http.server in a thread) as the hook receiver.

The runner tests use fakes of the router and metrics Protocols (tests/test_runner.py) and
the real HttpHooks; they wait for conditions, never for durations.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from mesh_canary.core import engine
from mesh_canary.core.engine import Phase, RolloutState, RunHooks, SetWeights
from mesh_canary.core.hooks import HookResult, render
from mesh_canary.core.model import CanarySpec, HookCall, HookHeader, Hooks, Policy
from mesh_canary.core.policy import PolicyError, load_policy_text
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.hooks import HttpHooks
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import FileStateStore
from tests.conftest import minimal_rollout
from tests.output_schema import check_output
from tests.test_engine import ScriptedJudge, make_policy, obs
from tests.test_runner import FakeMetrics, FakeRouter, Journal, JournalNotifier, JournalStore
from tests.waiting import wait_for

OK = HookResult("x", True)


def hooked(**phases: tuple[HookCall, ...]) -> Policy:
    return make_policy(hooks=Hooks(**phases))  # type: ignore[arg-type]


CALL = (HookCall(name="h", url="http://127.0.0.1:9/unused"),)


def ready_ticks(policy: Policy, state: RolloutState, until: float) -> engine.Decision:
    """Healthy ticks until a decision asks for a hook (or ``until``)."""
    t = state.last_tick_at or state.started_at
    d = engine.Decision(state)
    while t < until:
        t += policy.analysis.interval_s
        d = engine.tick(policy, d.state, obs(d.state.window_start, t), t, ScriptedJudge())
        if d.weight_writes or any(isinstance(a, RunHooks) and a.phase != "duringStep" for a in d.actions):
            return d
    return d


def answer(policy: Policy, state: RolloutState, phase: str, ok: bool, now: float) -> engine.Decision:
    return engine.hook_answered(policy, state, HookResult(phase, ok, "" if ok else "answered HTTP 500"), now)


# ---- the engine: hooks as data -----------------------------------------------------------


def test_a_pre_rollout_hook_is_asked_before_the_first_write_and_its_failure_writes_nothing() -> None:
    p = hooked(pre_rollout=CALL)
    d = engine.start(p, 0.0)
    assert d.actions == (RunHooks("preRollout"),) and d.state.weights == ALL_STABLE
    assert engine.waiting_to_start(d.state)
    failed = answer(p, d.state, "preRollout", False, 3.0)
    assert failed.weight_writes == [] and failed.state.terminal
    assert failed.state.phase is Phase.ROLLED_BACK and failed.state.failed_checks == ("preRollout",)
    assert "nothing was written" in failed.state.reason
    assert engine.after_hooks(p, failed.state) == ()  # nothing moved: nothing to clean up after
    started = answer(p, d.state, "preRollout", True, 3.0)
    assert started.weight_writes == [SetWeights(Weights(90, 10), "start")]
    assert started.state.hook_results["preRollout@0"]["ok"] is True
    # The first step (its window, its minimum duration) starts with the write, not the asking.
    assert started.state.step_started_at == 3.0 and started.state.steps[0].start_s == 3.0


def test_without_hooks_nothing_changes() -> None:
    p = make_policy()
    d = engine.start(p, 0.0)
    assert [type(a).__name__ for a in d.actions] == ["SetWeights", "Announce"]
    assert RolloutState.from_dict(json.loads(json.dumps(d.state.to_dict()))) == d.state


def test_a_pre_step_hook_gates_each_later_step_and_its_failure_rolls_back_first() -> None:
    p = hooked(pre_step=CALL)
    asked = ready_ticks(p, engine.start(p, 0.0).state, 600.0)
    assert asked.actions == (RunHooks("preStep"),) and asked.weight_writes == []
    assert asked.state.step_index == 0 and asked.state.awaiting_hook == "preStep"
    # While it has not answered, the checks keep running: a failure still rolls back.
    t = asked.state.last_tick_at or 0.0
    failing = engine.tick(p, asked.state, obs(0, t + 30, errors=5), t + 30, ScriptedJudge())
    assert failing.state.phase is Phase.ROLLED_BACK and failing.actions[0] == SetWeights(
        ALL_STABLE, failing.state.reason, rollback=True
    )
    # A "no": roll back, the write of 100% stable first of all.
    no = answer(p, asked.state, "preStep", False, t + 1)
    assert no.actions[0] == SetWeights(ALL_STABLE, no.state.reason, rollback=True)
    assert no.state.failed_checks == ("preStep",) and "preStep hook failed" in no.state.reason
    # A yes: the step moves, and the answer is kept (a restart does not ask again).
    yes = answer(p, asked.state, "preStep", True, t + 1)
    assert yes.weight_writes == [SetWeights(Weights(50, 50), "step 2")]
    assert yes.state.step_index == 1 and yes.state.hook_results["preStep@0"]["ok"] is True
    again = RolloutState.from_dict(json.loads(json.dumps(yes.state.to_dict())))
    assert again == yes.state


def test_confirm_promotion_holds_until_yes_and_past_the_deadline_on_timeout_decides() -> None:
    p = hooked(confirm_promotion=CALL)
    state = engine.start(p, 0.0).state
    step2 = ready_ticks(p, state, 600.0)  # no gate before step 2: it is not a promotion
    assert step2.state.step_index == 1 and step2.weight_writes
    asked = ready_ticks(p, step2.state, 1200.0)
    assert asked.actions == (RunHooks("confirmPromotion"),) and asked.state.phase is Phase.PROGRESSING
    t = asked.state.last_tick_at or 0.0
    held = answer(p, asked.state, "confirmPromotion", False, t + 1)
    assert held.actions == () and held.state.awaiting_hook == "" and held.state.step_index == 1
    assert "waiting for the confirmPromotion hook" in held.state.reason
    # The next analysis asks again.
    again = engine.tick(p, held.state, obs(held.state.window_start, t + 30), t + 30, ScriptedJudge())
    assert again.actions == (RunHooks("confirmPromotion"),)
    yes = answer(p, again.state, "confirmPromotion", True, t + 31)
    assert yes.state.phase is Phase.SUCCEEDED and yes.weight_writes == [
        SetWeights(Weights(0, 100), "promote")
    ]
    # Never a yes past maxStepDuration (300s): onTimeout (rollback by default) decides.
    late = engine.hook_answered(
        p,
        replace(again.state, awaiting_hook="confirmPromotion"),
        HookResult("confirmPromotion", False, "HTTP 409"),
        again.state.step_started_at + 301,
    )
    assert late.state.phase is Phase.ROLLED_BACK and late.state.failed_checks == ("stepTimeout",)
    # onTimeout promote: promotes without the gate (the policy's choice), after preStep.
    both = make_policy(
        hooks=Hooks(confirm_promotion=CALL, pre_step=CALL), analysis=replace(p.analysis, on_timeout="promote")
    )
    pending = replace(again.state, reason="", awaiting_hook="", held_window=None)
    t_out = pending.step_started_at + 301
    timed = engine.tick(both, pending, obs(pending.window_start, t_out), t_out, ScriptedJudge(lean=True))
    assert timed.actions == (RunHooks("preStep"),)
    promoted = answer(both, timed.state, "preStep", True, t_out + 1)
    assert promoted.state.phase is Phase.SUCCEEDED


def test_a_gate_hook_that_never_answers_holds_no_longer_than_max_step_duration() -> None:
    p = hooked(pre_step=CALL)
    asked = ready_ticks(p, engine.start(p, 0.0).state, 600.0)
    assert asked.state.awaiting_hook == "preStep"
    t = asked.state.step_started_at + 299
    still = engine.tick(p, asked.state, obs(asked.state.window_start, t), t, ScriptedJudge())
    assert still.actions == (RunHooks("preStep"),)  # asked again (the driver runs one call at a time)
    late = asked.state.step_started_at + 301
    timed = engine.tick(p, still.state, obs(still.state.window_start, late), late, ScriptedJudge())
    assert timed.state.phase is Phase.ROLLED_BACK and timed.state.failed_checks == ("stepTimeout",)
    assert timed.actions[0] == SetWeights(ALL_STABLE, timed.state.reason, rollback=True)


def test_during_step_is_asked_at_every_analysis_and_never_judged() -> None:
    p = hooked(during_step=CALL)
    d = engine.start(p, 0.0)
    t1 = engine.tick(p, d.state, obs(0, 30), 30.0, ScriptedJudge())
    assert t1.actions[-1] == RunHooks("duringStep")
    rolled = engine.tick(p, t1.state, obs(0, 60, errors=5), 60.0, ScriptedJudge())
    assert RunHooks("duringStep") not in rolled.actions  # a rollback asks for none


def test_an_answer_nobody_waits_for_is_ignored() -> None:
    p = hooked(pre_step=CALL)
    state = engine.start(p, 0.0).state
    assert engine.hook_answered(p, state, HookResult("preStep", False, "late"), 10.0).state == state


def test_after_hooks_follow_the_end() -> None:
    p = hooked(post_rollout=CALL, on_rollback=CALL)
    rolled = engine.command(p, engine.start(p, 0.0).state, "abort", 5.0).state
    assert engine.after_hooks(p, rolled) == (RunHooks("onRollback"), RunHooks("postRollout"))
    assert engine.after_hooks(p, engine.start(p, 0.0).state) == ()  # not finished


def test_the_body_template_fills_the_rollouts_fields() -> None:
    fields = {"name": "fraud", "weight": 10, "step": 2}
    assert render('{"n": "{{ name }}", "w": {{weight}}, "x": "{{ nope }}"}', fields) == (
        '{"n": "fraud", "w": 10, "x": "{{ nope }}"}'
    )
    assert json.loads(render(None, fields)) == fields


def test_the_policy_reads_hooks_with_their_defaults_and_names_bad_ones() -> None:
    doc = minimal_rollout()
    doc["spec"]["hooks"] = {
        "preRollout": [
            {
                "url": "http://tests.ci/run",
                "headers": [{"name": "Authorization", "valueFrom": {"env": "CI_TOKEN"}}],
                "timeout": "2m",
            }
        ],
        "confirmPromotion": [{"name": "gate", "urlFrom": {"env": "GATE_URL"}, "method": "GET", "retries": 2}],
    }
    p = load_policy_text(yaml.safe_dump(doc))
    (pre,) = p.hooks.pre_rollout
    assert pre == HookCall(
        name="preRollout-1",
        url="http://tests.ci/run",
        headers=(HookHeader("Authorization", value_from_env="CI_TOKEN"),),
        timeout_s=120.0,
    )
    assert p.hooks.confirm_promotion[0].url_from_env == "GATE_URL"
    assert p.hooks.calls("confirmPromotion")[0].retries == 2
    # A policy without hooks keeps its fingerprint (a saved rollout resumes across the upgrade).
    plain = load_policy_text(yaml.safe_dump(minimal_rollout()))
    assert "hooks" not in plain.document["spec"]
    doc["spec"]["hooks"] = {"preStep": [{"url": "http://a/", "urlFrom": {"env": "X"}, "method": "FETCH"}]}
    with pytest.raises(PolicyError) as e:
        load_policy_text(yaml.safe_dump(doc))
    text = str(e.value)
    assert "spec.hooks.preStep[0]" in text and "method" in text


# ---- the runner with a real HTTP receiver ---------------------------------------------


@dataclass
class Receiver:
    """A hook receiver on 127.0.0.1: records every call (into the shared journal too) and
    answers per path: ``/ok`` 200, ``/fail`` 500, ``/hang`` waits for ``release``,
    ``/gate`` 409 until ``gate_open`` is set."""

    journal: Journal
    url: str = ""
    calls: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    gate_open: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate_after: int = 1_000_000  # /gate opens by itself at this call

    def paths(self) -> list[str]:
        with self.lock:
            return [c[1] for c in self.calls]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(Journal())

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with rec.lock:
                rec.calls.append((self.command, self.path, dict(self.headers), body))
                rec.journal.entries.append(("hook", self.path))
            if self.path == "/hang":
                rec.release.wait(30)
            status = {"/ok": 200, "/fail": 500, "/hang": 200}.get(self.path, 404)
            if self.path == "/gate":
                if rec.paths().count("/gate") >= rec.gate_after:
                    rec.gate_open.set()
                status = 200 if rec.gate_open.is_set() else 409
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()


def fast_policy(rec: Receiver, min_step_s: float = 0.2, **phases: tuple[HookCall, ...]) -> Policy:
    """Short steps on a real clock: a decision every 0.1 s."""
    p = hooked(**phases)
    return replace(
        p,
        canary=CanarySpec(steps=(10, 50, 100), min_step_duration_s=min_step_s, max_step_duration_s=60),
        analysis=replace(p.analysis, interval_s=0.1, no_data_timeout_s=60),
    )


def call(rec: Receiver, path: str, name: str = "", **kw: Any) -> tuple[HookCall, ...]:
    return (HookCall(name=name or path.strip("/"), url=rec.url + path, **kw),)


def runner_for(
    policy: Policy, rec: Receiver, errors_at: float | None = None, store: Any = None
) -> tuple[RolloutRunner, FakeRouter, JournalNotifier]:
    router = FakeRouter(rec.journal)
    notifier = JournalNotifier(rec.journal)
    runner = RolloutRunner(
        policy,
        router,
        FakeMetrics(errors_at=errors_at),
        store or JournalStore(rec.journal),
        notifier,
        SystemClock(),
        judge=ScriptedJudge(),
        hooks=HttpHooks(policy.hooks),
    )
    return runner, router, notifier


def test_a_failing_pre_rollout_hook_leaves_traffic_untouched(receiver: Receiver) -> None:
    p = fast_policy(receiver, pre_rollout=call(receiver, "/fail"), post_rollout=call(receiver, "/ok"))
    runner, router, notifier = runner_for(p, receiver)
    result = runner.run(timeout_s=60)
    assert result.outcome == "rolled_back" and result.exit_code == 3
    assert result.state.failed_checks == ("preRollout",)
    assert "HTTP 500" in result.state.reason
    assert router.weights == ALL_STABLE
    assert [e for e in receiver.journal.entries if e[0] == "weights"] == []  # not one write
    assert receiver.paths() == ["/fail"]  # and no postRollout: nothing rolled out
    assert notifier.kinds == ["HookFailed"]


def test_a_passing_pre_rollout_hook_gets_the_rollouts_fields_then_traffic_moves(receiver: Receiver) -> None:
    body = '{"rollout": "{{ name }}", "to": "{{ candidate }}", "hook": "{{ hook }}"}'
    p = fast_policy(receiver, pre_rollout=call(receiver, "/ok", body=body))
    runner, _, _ = runner_for(p, receiver)
    assert runner.run(timeout_s=60).outcome == "promoted"
    method, _, _, sent = receiver.calls[0]
    assert method == "POST" and json.loads(sent) == {
        "rollout": "fraud-scorer",
        "to": "2.0",
        "hook": "preRollout",
    }
    writes = [e for e in receiver.journal.entries if e[0] in ("hook", "weights")]
    assert writes[0] == ("hook", "/ok") and writes[1] == ("weights", Weights(90, 10))


def test_confirm_promotion_holds_the_last_step_until_the_hook_answers(receiver: Receiver) -> None:
    p = fast_policy(receiver, confirm_promotion=call(receiver, "/gate", method="GET"))
    runner, router, _ = runner_for(p, receiver)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(runner.run(timeout_s=120).outcome), daemon=True)
    worker.start()
    # Asked again and again while it says 409; the last step holds at 50%.
    wait_for("three confirmPromotion calls", lambda: receiver.paths().count("/gate") >= 3)
    assert router.weights == Weights(50, 50) and not outcome
    assert runner.state is not None and runner.state.phase is Phase.PROGRESSING
    receiver.gate_open.set()
    wait_for("the promotion", lambda: outcome == ["promoted"])
    assert router.weights == Weights(0, 100)
    worker.join(10)


def test_a_rollback_is_written_before_any_hook_is_called_and_a_hanging_hook_never_delays_it(
    receiver: Receiver,
) -> None:
    p = fast_policy(
        receiver,
        min_step_s=30.0,  # the errors come in the first step
        # A load generator that hangs (up to its 20 s deadline) at every analysis.
        during_step=call(receiver, "/hang", name="loadgen", timeout_s=20.0),
        on_rollback=call(receiver, "/ok", name="page"),
        post_rollout=call(receiver, "/ok", name="cleanup"),
    )
    runner, router, _ = runner_for(p, receiver, errors_at=SystemClock().now() + 0.5)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(runner.run(timeout_s=60).outcome), daemon=True)
    worker.start()
    wait_for("the load generator called", lambda: "/hang" in receiver.paths())
    # The rollback is written while the load generator's call still hangs: it waits for nothing.
    wait_for("the rollback", lambda: router.weights == ALL_STABLE)
    assert not receiver.release.is_set()
    wait_for("onRollback and postRollout", lambda: receiver.paths().count("/ok") == 2)
    receiver.release.set()
    wait_for("the run's end", lambda: outcome == ["rolled_back"])
    entries = receiver.journal.entries
    first_ok = entries.index(("hook", "/ok"))
    assert entries.index(("weights", ALL_STABLE)) < first_ok
    assert entries.index(("save", "RolledBack")) < first_ok  # saved before, too
    worker.join(10)


def test_a_restart_does_not_ask_again_what_was_answered(receiver: Receiver, tmp_path: Any) -> None:
    p = fast_policy(receiver, pre_rollout=call(receiver, "/ok"))
    store = FileStateStore(tmp_path / "state.json")
    runner, _, _ = runner_for(p, receiver, store=store)
    runner.start_or_resume()
    wait_for("the preRollout answer", lambda: runner.tick_once().weights == Weights(90, 10))
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["hookResults"]["preRollout@0"]["ok"] is True and saved["awaitingHook"] == ""
    again, router, _ = runner_for(p, receiver, store=store)
    router.weights = Weights(90, 10)
    state = again.start_or_resume()
    assert state.step_index == 0 and state.weights == Weights(90, 10)
    assert receiver.paths() == ["/ok"]  # asked once only


def test_a_restart_asks_again_what_was_asked_but_not_answered(receiver: Receiver, tmp_path: Any) -> None:
    p = fast_policy(receiver, pre_rollout=call(receiver, "/ok"))
    store = FileStateStore(tmp_path / "state.json")
    store.save(engine.start(p, SystemClock().now()).state.to_dict())  # stopped before the answer
    runner, router, _ = runner_for(p, receiver, store=store)
    runner.start_or_resume()
    wait_for("the hook asked again", lambda: receiver.paths() == ["/ok"])
    wait_for("the first write", lambda: runner.tick_once().weights == Weights(90, 10))
    assert router.weights == Weights(90, 10)


def test_header_values_from_the_environment_are_sent_and_never_logged(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "Bearer s3cret-hook-token-123")
    headers = (HookHeader("Authorization", value_from_env="HOOK_TOKEN"),)
    p = fast_policy(receiver, pre_rollout=call(receiver, "/fail", headers=headers))
    store = FileStateStore(tmp_path / "state.json")
    runner, _, _ = runner_for(p, receiver, store=store)
    with caplog.at_level(logging.DEBUG):
        runner.run(timeout_s=60)
    assert receiver.calls[0][2]["Authorization"] == "Bearer s3cret-hook-token-123"
    assert "s3cret-hook-token-123" not in caplog.text
    assert "s3cret-hook-token-123" not in (tmp_path / "state.json").read_text()


def test_every_call_has_a_total_deadline(receiver: Receiver) -> None:
    hooks = HttpHooks(Hooks(pre_step=call(receiver, "/hang", timeout_s=0.5, retries=3)))
    result = hooks.call("preStep", {}, True)
    assert not result.ok and "deadline" in result.reason
    # Bounded, not forever: a 0.5 s deadline with 3 retries ends long before the server's 30 s.
    assert result.calls[0]["seconds"] < 20
    missing = HttpHooks(Hooks(pre_step=(HookCall(name="m", url_from_env="NO_SUCH_HOOK_URL_VAR"),)))
    assert "NO_SUCH_HOOK_URL_VAR" in missing.call("preStep", {}, True).reason


# ---- end to end: `mesh-canary run --backend local` (a real Envoy) and the audit record --


def mesh_canary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_canary", *args], capture_output=True, text=True, timeout=300
    )


def local_policy(tmp_path: Any, hooks: dict[str, Any]) -> str:
    doc = minimal_rollout()
    doc["spec"].update(
        canary={"steps": [20, 100], "minStepDuration": "2s", "maxStepDuration": "2m"},
        analysis={"interval": "1s", "minRequests": 20, "checks": [{"metric": "errorRate", "max": 0.05}]},
        hooks=hooks,
    )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def audit_lines(state: Any) -> list[dict[str, Any]]:
    """`rollout history STATE --audit -o json` (and -o yaml: the same documents), each checked
    against the one output schema."""
    done = mesh_canary("rollout", "history", str(state), "--audit", "-o", "json")
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    as_yaml = mesh_canary("rollout", "history", str(state), "--audit", "-o", "yaml")
    assert yaml.safe_load(as_yaml.stdout) == entries
    for report in entries:
        check_output(report, "auditEntry")
    return entries


def test_local_run_a_failing_pre_rollout_hook_leaves_envoy_untouched(
    receiver: Receiver, tmp_path: Any
) -> None:
    policy = local_policy(tmp_path, {"preRollout": [{"name": "tests", "url": receiver.url + "/fail"}]})
    state = tmp_path / "state.json"
    done = mesh_canary("run", "-f", policy, "--backend", "local", "--state", str(state))
    assert done.returncode == 3, done.stderr
    assert "Envoy held 100/0 (stable/candidate) to the end" in done.stderr
    assert "preRollout hook failed: tests: answered HTTP 500" in done.stdout + done.stderr
    entries = audit_lines(state)
    assert [e["kind"] for e in entries if e["kind"] != "notification"] == ["hook"]  # not one write
    assert entries[0]["calls"][0]["status"] == 500 and entries[0]["time"].endswith("Z")


def test_local_run_with_hooks_end_to_end_and_its_audit_record(receiver: Receiver, tmp_path: Any) -> None:
    receiver.gate_after = 3  # the promotion gate says 409 twice, then yes
    policy = local_policy(
        tmp_path,
        {
            "preRollout": [{"url": receiver.url + "/ok"}],
            "duringStep": [{"name": "loadgen", "url": receiver.url + "/ok", "body": "{{ weight }}"}],
            "confirmPromotion": [{"name": "gate", "url": receiver.url + "/gate", "method": "GET"}],
            "postRollout": [{"name": "cleanup", "url": receiver.url + "/ok"}],
        },
    )
    state = tmp_path / "state.json"
    done = mesh_canary("run", "-f", policy, "--backend", "local", "--state", str(state))
    assert done.returncode == 0, done.stderr
    assert receiver.paths().count("/gate") == 3  # held until it said yes
    bodies = [c[3] for c in receiver.calls if c[1] == "/ok"]
    assert bodies[1:3] == [b"20", b"20"]  # duringStep, with the step's weight
    entries = audit_lines(state)
    kinds = [e["kind"] for e in entries]
    assert {"verdict", "write", "hook", "notification"} <= set(kinds)
    writes = [e for e in entries if e["kind"] == "write"]
    assert [w["weights"]["candidate"] for w in writes] == [20, 100]
    assert all(w["who"].startswith("mesh-canary (run ") and w["why"] for w in writes)
    verdict = next(
        e for e in entries if e["kind"] == "verdict" and e["checks"][0].get("estimate") is not None
    )
    assert {"lower", "upper", "bound"} <= set(verdict["checks"][0])
    gate = [e for e in entries if e["kind"] == "hook" and e["phase"] == "confirmPromotion"]
    assert [g["ok"] for g in gate] == [False, False, True]
    assert entries[-1]["kind"] == "hook" and entries[-1]["phase"] == "postRollout"
    text = mesh_canary("rollout", "history", str(state), "--audit")
    assert "confirmPromotion hooks: yes" in text.stdout and "wrote 0/100 by mesh-canary" in text.stdout


def test_history_audit_bad_input_is_one_sentence_and_exit_2(tmp_path: Any) -> None:
    no_name = mesh_canary("rollout", "history", "--audit")
    assert no_name.returncode == 2 and "--audit needs NAME" in no_name.stderr
    missing = mesh_canary("rollout", "history", str(tmp_path / "nope.json"), "--audit")
    assert missing.returncode == 2 and "no state file" in missing.stderr
    assert "Traceback" not in no_name.stderr + missing.stderr


def test_the_audit_record_is_bounded() -> None:
    from mesh_canary.core.audit import AUDIT_LIMIT

    p = make_policy()
    state = engine.start(p, 0.0).state
    for i in range(AUDIT_LIMIT + 25):
        state = state.audited({"at": float(i), "kind": "x"})
    assert len(state.audit) == AUDIT_LIMIT and state.audit_dropped == 25
    assert state.audit[0]["at"] == 25.0
    assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_peoples_orders_are_in_the_audit_record_with_their_effect() -> None:
    from mesh_canary.present.audit import audit_text

    p = make_policy()
    state = engine.start(p, 0.0).state
    early = engine.command(p, state, "approve", 5.0).state  # not at the gate: changes nothing
    aborted = engine.command(p, early, "abort", 6.0).state
    orders = [(e["command"], e["changed"], e["phase"]) for e in aborted.audit if e["kind"] == "command"]
    assert orders == [("approve", False, "Progressing"), ("abort", True, "RolledBack")]
    assert engine.command(p, aborted, "resume", 7.0).state.audit == aborted.audit  # closed when finished
    text = audit_text([dict(e) for e in aborted.audit], 0)
    assert "approve by a person (changed nothing)" in text and "abort by a person -> RolledBack" in text


def test_a_persons_abort_comes_before_a_hooks_yes(receiver: Receiver) -> None:
    p = fast_policy(receiver, pre_rollout=call(receiver, "/ok"))
    runner, router, _ = runner_for(p, receiver)
    runner.start_or_resume()
    wait_for("the preRollout answer", lambda: runner.hooks._done)  # answered, not read yet
    runner.request("abort")
    state = runner.tick_once()
    assert state.phase is Phase.ROLLED_BACK and "aborted by a person" in state.reason
    assert [e for e in receiver.journal.entries if e[0] == "weights"] == [("weights", ALL_STABLE)]
    assert router.weights == ALL_STABLE
