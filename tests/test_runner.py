"""The runner carries out the engine's decisions: order, retries, resume, notifications.

Fakes of the adapter Protocols only (unit tier); the real adapters have their own tests.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from mesh_canary.core.engine import Command, Phase
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.notify import BackgroundNotifier
from mesh_canary.protocols import Announcement
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner, RouterWriteError
from mesh_canary.run.stores import FileStateStore, MemoryStateStore
from tests.test_engine import ScriptedJudge, make_policy


class Journal:
    """One ordered record of every side effect, to check what happened first."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, object]] = []


class FakeRouter:
    def __init__(self, journal: Journal, fail_times: int = 0) -> None:
        self.journal = journal
        self.weights = ALL_STABLE
        self.fail_times = fail_times

    def set_weights(self, weights: Weights) -> None:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise ConnectionError("api server unreachable")
        self.weights = weights
        self.journal.entries.append(("weights", weights))

    def get_weights(self) -> Weights:
        return self.weights


class FakeMetrics:
    def __init__(self, errors_at: float | None = None) -> None:
        self.errors_at = errors_at
        self.reads: list[tuple[float, float]] = []

    def read(self, since: float, now: float) -> Observation:
        self.reads.append((since, now))
        errors = 5.0 if self.errors_at is not None and now >= self.errors_at else 0.0
        return Observation(
            since=since,
            at=now,
            stable=VersionCounts(requests=100),
            candidate=VersionCounts(requests=100, errors=errors),
        )


class JournalStore(MemoryStateStore):
    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.journal = journal

    def save(self, state: dict[str, object]) -> None:  # type: ignore[override]
        super().save(state)  # type: ignore[arg-type]
        self.journal.entries.append(("save", state["phase"]))


class JournalNotifier:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.kinds: list[str] = []

    def notify(self, announcement: Announcement) -> None:
        self.kinds.append(announcement.kind)
        self.journal.entries.append(("notify", announcement.kind))


def make_runner(
    journal: Journal, **kw: object
) -> tuple[RolloutRunner, FakeRouter, FakeMetrics, JournalNotifier]:
    router = FakeRouter(journal, fail_times=kw.pop("fail_times", 0))  # type: ignore[arg-type]
    metrics = FakeMetrics(errors_at=kw.pop("errors_at", None))  # type: ignore[arg-type]
    notifier = JournalNotifier(journal)
    store = kw.pop("store", None) or JournalStore(journal)
    runner = RolloutRunner(
        make_policy(),
        router,
        metrics,
        store,
        notifier,
        VirtualClock(),
        judge=ScriptedJudge(),
        **kw,  # type: ignore[arg-type]
    )
    return runner, router, metrics, notifier


def tick_after(runner: RolloutRunner, seconds: float = 30.0) -> object:
    runner.clock.sleep(seconds)
    return runner.tick_once()


def test_healthy_run_promotes_and_router_ends_at_100() -> None:
    j = Journal()
    runner, router, metrics, notifier = make_runner(j)
    result = runner.run()
    assert result.outcome == "promoted" and result.exit_code == 0
    assert router.weights == Weights(0, 100)
    assert notifier.kinds[0] == "Started" and notifier.kinds[-1] == "Promoted"
    # Reads cover the current step's window, every interval.
    assert metrics.reads[0] == (0.0, 30.0) and metrics.reads[2] == (60.0, 90.0)


def test_rollback_writes_stable_before_saving_or_notifying() -> None:
    j = Journal()
    runner, _router, _, _ = make_runner(j, errors_at=90.0)
    result = runner.run()
    assert result.outcome == "rolled_back" and result.exit_code == 3
    i = j.entries.index(("weights", ALL_STABLE))
    assert j.entries[i + 1] == ("save", "RolledBack")
    assert j.entries[i + 2] == ("notify", "RolledBack")
    assert not any(e[0] == "notify" and e[1] == "RolledBack" for e in j.entries[:i])


def test_a_failing_rollback_write_is_announced_at_once_kept_pending_and_retried() -> None:
    """Item 7: announced before any retry, the turn returns bounded with the rollback
    pending (not finished), and later turns retry until it goes through."""
    j = Journal()
    runner, router, _, notifier = make_runner(j, errors_at=30.0)
    runner.start_or_resume()
    router.fail_times = 1000  # the API server is down for a long while
    t0 = runner.clock.now() + 30
    state = tick_after(runner)
    assert runner.clock.now() - t0 <= runner.rollback_turn_s + runner.max_backoff_s  # bounded turn
    assert state.phase is Phase.ROLLED_BACK and state.rollback_pending and not state.terminal
    assert notifier.kinds[-1] == "RollbackFailing" and "RolledBack" not in notifier.kinds
    assert j.entries[-1] == ("save", "RolledBack")  # saved as pending: a restart retries it
    assert runner.store.load()["rollbackPending"] is True  # type: ignore[attr-defined,index]
    first_failure = j.entries.index(("notify", "RollbackFailing"))
    assert not any(e[0] in ("save", "weights") for e in j.entries[first_failure - 1 : first_failure])
    # Turns keep retrying with backoff; an abort or a metrics read never gets in the way.
    runner.request("abort")
    state = tick_after(runner, 0)
    assert state.rollback_pending and notifier.kinds.count("RollbackFailing") == 1
    router.fail_times = 0  # the server recovers
    result = runner.run()
    assert result.outcome == "rolled_back" and result.exit_code == 3
    assert router.weights == ALL_STABLE and notifier.kinds[-1] == "RolledBack"
    assert not result.state.rollback_pending


def test_a_pending_rollback_survives_a_timeout() -> None:
    j = Journal()
    runner, router, _, _ = make_runner(j, errors_at=30.0)
    runner.start_or_resume()
    router.fail_times = 20
    result = runner.run(timeout_s=35)
    assert result.outcome == "rolled_back" and router.weights == ALL_STABLE


def test_a_step_write_the_runner_gives_up_on_rolls_back_and_says_why() -> None:
    """Item 6: not 'exit 1 at 80/20': restore 100% stable first, then announce."""
    j = Journal()
    runner, router, _, notifier = make_runner(j)
    runner.start_or_resume()
    router.fail_times = 1000
    tick_after(runner)
    state = tick_after(runner, 60)  # ready to advance to 50%: that write fails
    assert state.phase is Phase.ROLLED_BACK and state.rollback_pending  # still down
    assert "could not write 50% to the candidate" in state.reason
    assert state.failed_checks == ("writeFailed",)
    router.fail_times = 0
    result = runner.run()
    assert result.outcome == "rolled_back" and router.weights == ALL_STABLE
    assert notifier.kinds[-1] == "RolledBack"


def test_a_first_write_that_fails_rolls_back_too() -> None:
    j = Journal()
    runner, router, _, _ = make_runner(j, fail_times=300)
    state = runner.start_or_resume()
    assert state.phase is Phase.ROLLED_BACK and "could not write 10%" in state.reason
    router.fail_times = 0
    assert runner.run().outcome == "rolled_back"


def test_resume_from_saved_state_continues_without_rewriting_weights(tmp_path: object) -> None:
    path = tmp_path / "state.json"  # type: ignore[operator]
    j1 = Journal()
    first, _router1, _, _ = make_runner(j1, store=FileStateStore(path))
    first.start_or_resume()
    for _ in range(3):  # into step 2 (50%) at t=60
        tick_after(first)
    assert first.state is not None and first.state.step_index == 1
    # A new process: same policy, same state file; the router already holds 50%.
    j2 = Journal()
    second, router2, _, _ = make_runner(j2, store=FileStateStore(path))
    router2.weights = Weights(50, 50)
    second.clock.sleep(90)
    state = second.start_or_resume()
    assert state.step_index == 1 and state.to_dict() == first.state.to_dict()
    assert not any(e[0] == "weights" for e in j2.entries)
    result = second.run()
    assert result.outcome == "promoted"
    assert [e[1] for e in j2.entries if e[0] == "weights"] == [Weights(0, 100)]


def test_changed_policy_starts_over(tmp_path: object) -> None:
    path = tmp_path / "state.json"  # type: ignore[operator]
    runner, _, _, _ = make_runner(Journal(), store=FileStateStore(path))
    runner.start_or_resume()
    tick_after(runner)
    tick_after(runner)
    other = make_runner(Journal(), store=FileStateStore(path))[0]
    other.policy = replace(other.policy, candidate=replace(other.policy.candidate, version="9.9"))
    assert other.start_or_resume().step_index == 0


def test_abort_request_rolls_back_on_the_next_turn() -> None:
    j = Journal()
    runner, router, _, _notifier = make_runner(j)
    runner.start_or_resume()
    runner.request(Command.ABORT)
    result = runner.run()
    assert result.outcome == "rolled_back" and result.state.failed_checks == ("manual",)
    assert router.weights == ALL_STABLE


def test_timeout_leaves_the_rollout_unfinished_with_exit_4() -> None:
    runner, _, _, _ = make_runner(Journal())
    result = runner.run(timeout_s=45)
    assert result.outcome == "timed_out" and result.exit_code == 4


def test_external_weight_change_away_from_stable_is_announced_not_fought() -> None:
    j = Journal()
    runner, router, _, notifier = make_runner(j)
    runner.start_or_resume()
    router.weights = Weights(70, 30)  # someone else's edit, not towards stable
    tick_after(runner)
    tick_after(runner)  # ready to advance: the compare-and-swap holds instead
    assert notifier.kinds.count("ExternalChange") == 1
    assert runner.external_change is not None and "live 70/30" in runner.external_change
    assert [e for e in j.entries if e[0] == "weights"] == [("weights", Weights(90, 10))]
    assert runner.state is not None and runner.state.step_index == 0 and not runner.state.terminal


def test_a_move_towards_stable_between_ticks_stops_the_rollout_without_writing() -> None:
    """Item 3: a person's manual rollback is never overwritten: the rollout ends Aborted."""
    j = Journal()
    runner, router, _, notifier = make_runner(j)
    runner.start_or_resume()
    router.weights = ALL_STABLE  # a person, by hand
    result = runner.run()
    assert result.outcome == "aborted" and result.exit_code == 4
    assert result.state.phase is Phase.ABORTED and result.state.weights == ALL_STABLE
    assert (
        "moved to 100/0 outside mesh-canary" in result.state.reason
        and "nothing written" in result.state.reason
    )
    assert notifier.kinds[-1] == "Aborted"
    assert [e for e in j.entries if e[0] == "weights"] == [("weights", Weights(90, 10))]


def test_a_move_towards_stable_during_a_tick_fails_the_compare_and_swap() -> None:
    """The race of item 3: the person's edit lands after the check, before the write."""
    j = Journal()
    runner, router, metrics, notifier = make_runner(j)
    runner.start_or_resume()
    tick_after(runner)
    original = metrics.read

    def read_then_person_moves(since: float, now: float) -> Observation:
        router.weights = Weights(100, 0)
        return original(since, now)

    metrics.read = read_then_person_moves  # type: ignore[method-assign]
    state = tick_after(runner)  # judged ready to advance to 50%
    assert state.phase is Phase.ABORTED and router.weights == ALL_STABLE
    assert [e[1] for e in j.entries if e[0] == "weights"] == [Weights(90, 10)]
    assert "ExternalChange" not in notifier.kinds and notifier.kinds[-1] == "Aborted"


def test_resume_trusts_live_weights_that_moved_towards_stable(tmp_path: object) -> None:
    """Item 4: the state file says 50% but the route says 100/0: never re-advance."""
    path = tmp_path / "state.json"  # type: ignore[operator]
    first, _, _, _ = make_runner(Journal(), store=FileStateStore(path))
    first.start_or_resume()
    for _ in range(3):
        tick_after(first)
    assert first.state is not None and first.state.weights == Weights(50, 50)
    j2 = Journal()
    second, router2, _, notifier = make_runner(j2, store=FileStateStore(path))
    router2.weights = ALL_STABLE
    state = second.start_or_resume()
    assert state.phase is Phase.ABORTED and state.terminal
    assert second.run().outcome == "aborted"
    assert not any(e[0] == "weights" for e in j2.entries)
    assert notifier.kinds == ["Aborted"]


def test_a_second_ctrl_c_during_a_write_quits_right_after_its_save() -> None:
    j = Journal()
    runner, router, _, _ = make_runner(j)
    runner.start_or_resume()
    original = router.set_weights

    def interrupted_write(weights: Weights) -> None:
        assert runner.request_quit() is True  # the signal arrives mid-write: deferred
        original(weights)

    router.set_weights = interrupted_write  # type: ignore[method-assign]
    runner.request("abort")
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert router.weights == ALL_STABLE
    assert j.entries[-2:] == [("save", "RolledBack"), ("notify", "RolledBack")]


def test_background_notifier_never_delays_the_caller() -> None:
    release = threading.Event()
    delivered: list[str] = []

    class SlowWebhook:
        def notify(self, a: Announcement) -> None:
            release.wait(5)
            delivered.append(a.kind)

    bg = BackgroundNotifier(SlowWebhook())
    t0 = time.perf_counter()
    for k in ("RolledBack", "Other"):
        bg.notify(Announcement("r", k, "m"))
    assert time.perf_counter() - t0 < 1.0  # a blocking call would take the full 5 s
    release.set()
    bg.close()
    assert delivered == ["RolledBack", "Other"]


def test_no_api_read_comes_before_a_rollback_write() -> None:
    """Checking for outside weight changes is a read of the router: it comes after the
    decision, so a slow API can never delay the write of 100% stable."""
    j = Journal()
    runner, router, _, _ = make_runner(j, errors_at=30.0)
    runner.start_or_resume()
    reads: list[int] = []
    original = router.get_weights

    def counted() -> Weights:
        reads.append(len(j.entries))
        return original()

    router.get_weights = counted  # type: ignore[method-assign]
    tick_after(runner)
    rollback_at = j.entries.index(("weights", ALL_STABLE))
    assert all(at > rollback_at for at in reads)


def test_a_second_ctrl_c_before_the_rollback_started_waits_for_it() -> None:
    """Quitting between the two would leave traffic on the candidate and a state a rerun
    carries forward: the rollback asked for first is written and saved, then it quits."""
    j = Journal()
    runner, router, _, _ = make_runner(j)
    runner.start_or_resume()
    runner.request("abort")
    assert runner.request_quit() is True
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert router.weights == ALL_STABLE
    assert ("save", "RolledBack") in j.entries


def test_a_first_write_refused_for_the_configuration_starts_nothing() -> None:
    """No such route: nothing was written, nothing is saved, the error says why (exit 1)."""
    j = Journal()
    runner, router, _, _ = make_runner(j)

    def refuse(weights: Weights) -> None:
        raise ValueError("VirtualService models/fraud-scorer has no http route named 'primary'")

    router.set_weights = refuse  # type: ignore[method-assign]
    with pytest.raises(RouterWriteError, match=r"could not start the rollout: .*no http route named"):
        runner.start_or_resume()
    assert not any(e[0] == "save" for e in j.entries)
