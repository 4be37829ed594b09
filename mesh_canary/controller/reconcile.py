"""One rollout's turn: read its resource, (re)start or resume its runner, apply orders, tick, write status.

A changed spec restarts the rollout (traffic goes back to stable first); an invalid spec
touches nothing and says why in the ``PolicyValid`` condition, and an invalid edit of a
running rollout keeps it running under its last valid spec (its checks keep protecting the
traffic). People's orders arrive as annotations (`mesh_canary.kube.status.COMMAND_ANNOTATIONS`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import kubernetes.client

from mesh_canary.controller.admission import Admission
from mesh_canary.controller.finalizer import Finalizer
from mesh_canary.controller.handler import (
    RedactingNotifier,
    RolloutHandler,
    analysis_instant,
    command_values,
    due_at,
    involved_object,
    meta,
    next_due,
    policy_from_spec,
)
from mesh_canary.controller.metrics import ControllerMetrics, TimedJudge, TimedSource
from mesh_canary.controller.registry import ControllerRegistry
from mesh_canary.core import engine
from mesh_canary.core.engine import Command, Phase, RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import PolicyError, resource_document
from mesh_canary.core.verdicts import Judge
from mesh_canary.kube.events import KubeEventNotifier
from mesh_canary.kube.rollouts import read_secret_key
from mesh_canary.kube.status import (
    COMMAND_ANNOTATIONS,
    KubeStatusStore,
    history_entry,
    saved_state,
)
from mesh_canary.notify import notifier_for_policy
from mesh_canary.protocols import Clock, MetricsSource, TrafficRouter
from mesh_canary.redact import redact, register_secret
from mesh_canary.run.hooks import HttpHooks
from mesh_canary.run.policy_loading import load_checked_policy
from mesh_canary.run.runner import RolloutRunner, default_judge

log = logging.getLogger("mesh_canary.controller")

BackendFactory = Callable[[Policy], tuple[TrafficRouter, MetricsSource]]
# Orders in the order they are applied: safety before anything else.
COMMAND_ORDER = (Command.ABORT, Command.PAUSE, Command.RESUME, Command.APPROVE, Command.PROMOTE_FULL)


def register_url_secrets(url: str) -> None:
    """A webhook URL read from a Secret: the whole URL, its password, path and query values are secret."""
    register_secret(url)
    try:
        parts = urlsplit(url)
        register_secret(parts.password)
        register_secret(parts.path.rstrip("/"))
        for _, value in parse_qsl(parts.query):
            register_secret(value)
    except ValueError:
        pass


def read_secret_url(client: Any, namespace: str, name: str, key: str) -> str | None:
    """A webhook URL from a Secret, registered as secret before anything can print it."""
    value = read_secret_key(client, namespace, name, key)
    if value:
        register_url_secrets(value)
    return value


class Reconciler:
    """Runs one turn of one rollout (`reconcile`); the work queue makes sure never two at once."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        backend: BackendFactory,
        admission: Admission,
        finalizer: Finalizer,
        metrics: ControllerMetrics,
        clock: Clock,
        judge: Judge | None,
        lock: threading.Condition,
        request_timeout_s: float,
        registry: ControllerRegistry,
        overdue: Callable[[float, float], list[RolloutHandler]] = lambda at, interval_s: [],
    ) -> None:
        """``overdue(at, interval_s)``: the waiting rollouts that will read at the grid instant
        ``at`` because they run late (`WorkQueue.overdue`)."""
        self.api = api_client
        self.backend = backend
        self.admission = admission
        self.finalizer = finalizer
        self.metrics = metrics
        self.clock = clock
        self.judge = judge
        self._lock = lock
        self._timeout = request_timeout_s
        self.registry = registry
        self.overdue = overdue

    def reconcile(self, h: RolloutHandler) -> float | None:
        """One turn for one rollout; returns when it is next due (None: only on a change)."""
        with self._lock:
            current, deleted = h.obj, h.deleted
        # Copied outside the lock every turn waits on: h.obj is replaced, never changed in place.
        obj = copy.deepcopy(current)
        m = meta(obj)
        if h.uid is not None and m.get("uid") != h.uid:
            # Deleted and created again between two looks: the old rollout is over.
            self.finalizer.finish_deleted(h, None)
            h.reset()
            self.metrics.forget(h.key)
        if deleted or m.get("deletionTimestamp"):
            self.finalizer.finish_deleted(h, obj)
            self.registry.forget(h.key)
            return None
        h.uid = m.get("uid")
        store = self._store_for(h, obj)
        policy = self._valid_policy(h, obj)
        # An invalid edit of a running rollout keeps it running under its last valid spec:
        # its checks keep protecting the traffic.
        target = policy or self._last_valid(h, obj, store)
        if target is None:
            return None
        # The same policy object as the runner's is the same rollout (the check is remembered).
        if h.runner is None or (
            target is not h.runner.policy and h.fingerprint != engine.policy_fingerprint(target)
        ):
            waiting = self._switch(h, obj, target, store, spec_valid=policy is not None)
            if waiting is not None:
                return waiting  # the model registry could not resolve: nothing was started
        return self._tick(h, obj, target, store)

    def _valid_policy(self, h: RolloutHandler, obj: Mapping[str, Any]) -> Policy | None:
        """The spec's policy, or None when it is invalid (said in the facts and, once, an Event)."""
        generation = meta(obj).get("generation")
        document = resource_document(obj)
        # Checking a policy is a pure function of its document (and this controller's fixed
        # settings): a turn whose document is unchanged reuses the last answer.
        key = json.dumps(document, sort_keys=True, default=str)
        if h.checked is None or h.checked[0] != key:
            h.checked = (key, self._check(obj, document))
        answer = h.checked[1]
        if not isinstance(answer, Policy):
            problems = answer
            h.facts = dataclasses.replace(h.facts, generation=generation, problems=problems)
            if h.invalid_reported != generation:
                h.invalid_reported = generation
                h.announce(
                    "InvalidPolicy",
                    "the policy is invalid; nothing was changed: " + "; ".join(problems),
                    "warning",
                )
            return None
        h.facts = dataclasses.replace(h.facts, generation=generation, problems=())
        return answer

    def _check(self, obj: Mapping[str, Any], document: dict[str, Any]) -> Policy | tuple[str, ...]:
        """The policy of a resource's document, or the problems that make it invalid."""
        try:
            # Every check `validate` makes, so a query that cannot be built is PolicyValid=False.
            policy = load_checked_policy(document)
            self.admission.admit(obj, policy)
        except PolicyError as e:
            return tuple(redact(str(p)) for p in e.problems)
        return policy

    def _last_valid(self, h: RolloutHandler, obj: Mapping[str, Any], store: KubeStatusStore) -> Policy | None:
        """The policy a rollout still in progress runs under; None (status written) when there is none."""
        target = h.runner.policy if h.runner else policy_from_spec(obj, store.status.get("appliedSpec"))
        if target is not None and not self.admission.routes_allowed(h.key[0], target):
            target = None  # saved by an older, laxer controller: not ours to run on
        state = h.runner.state if h.runner else saved_state(store.status)
        if target is None or state is None or state.terminal:
            h.phase = str(state.phase.value if state else "Invalid")
            self.metrics.show_rollout(h.key, h.phase, state, target)
            store.write(state)
            return None
        return target

    def _tick(
        self, h: RolloutHandler, obj: Mapping[str, Any], target: Policy, store: KubeStatusStore
    ) -> float | None:
        runner = h.runner
        assert runner is not None and runner.state is not None
        before = runner.state
        retry = self._new_order(h, obj, store, "retry")
        if retry is not None:
            before = self._retry(h, runner, before)
        if self._new_order(h, obj, store, "restore") is not None:
            before = self._restore_stable(h, runner, before)
        commands = self._new_commands(h, obj, store)
        for cmd in commands:
            runner.request(cmd)
        state = before
        now, due = self.clock.now(), due_at(before, target)
        if h.announced is not None and h.announced > due and not before.rollback_pending:
            due = h.announced  # moved to a later instant after a late analysis (`next_due`)
        if not before.terminal and (commands or now >= due):
            if now >= due:
                self.metrics.tick_lateness.observe(now - due)
            h.stopwatch.reset()
            # A due analysis reads at its grid instant (shared queries); orders are applied now.
            at = None if commands else analysis_instant(now, due, target.analysis.interval_s)
            if at is not None and at > due + 1e-6:
                # More than an interval late: this reads at a later grid instant than it
                # announced, and so will every analysis as late as it. Announce them all there,
                # so the first to read sends one shared query for them (a controller behind its
                # schedule keeps its query load flat instead of one query per late rollout).
                for other in (h, *self.overdue(at, target.analysis.interval_s)):
                    other.expect_at(at)
            state = runner.tick_once(at=at)
            self.metrics.ticks.inc(max(state.ticks - before.ticks, 0))
            if h.stopwatch.reads:
                self.metrics.analysed(h.key, h.stopwatch.seconds)
            if state.phase is Phase.ROLLED_BACK and before.phase is not Phase.ROLLED_BACK:
                self.metrics.rolled_back(h.key, state.failed_checks)
        store.write(state)  # a no-op unless something shown changed (generation, commands, drift)
        h.phase = state.phase.value
        self.metrics.show_rollout(h.key, h.phase, state, target)
        self.finalizer.ensure(h, present=not state.terminal)
        return None if state.terminal else next_due(state, target, self.clock.now())

    def _store_for(self, h: RolloutHandler, obj: Mapping[str, Any]) -> KubeStatusStore:
        if h.store is None:
            namespace, name = h.key
            h.store = KubeStatusStore(
                self.api,
                namespace,
                name,
                facts=lambda: h.facts,
                drift=lambda: h.runner.external_change if h.runner else None,
                status=obj.get("status") or {},
                clock=self.clock.now,
                request_timeout_s=self._timeout,
            )
        if h.events is None or h.events.involved.get("uid") != meta(obj).get("uid"):
            h.events = KubeEventNotifier(self.api, involved_object(obj), clock=self.clock.now)
        return h.store

    def _switch(
        self,
        h: RolloutHandler,
        obj: Mapping[str, Any],
        target: Policy,
        store: KubeStatusStore,
        spec_valid: bool,
    ) -> float | None:
        """Start (or resume) the rollout of ``target``; a different one in progress goes back to stable first.

        Returns when to try again when the model registry could not resolve the versions the
        spec names (nothing was written but the status; see controller/registry.py)."""
        fingerprint = engine.policy_fingerprint(target)
        if h.runner is None:
            store.read()  # the freshest status: what a previous leader or process saved
        old_state = h.runner.state if h.runner else saved_state(store.status)
        old_policy = h.runner.policy if h.runner else policy_from_spec(obj, store.status.get("appliedSpec"))
        if old_state is not None and old_state.policy_fingerprint != fingerprint and not old_state.terminal:
            self._supersede(h, old_state, old_policy, target, store)
        h.drop_runner()
        resuming = old_state is not None and old_state.policy_fingerprint == fingerprint
        announcer = self.registry.start(h, target, store.status, resuming=resuming)
        if isinstance(announcer, float):
            # Before any weight: the status says why (RegistryResolved), the rollout has not started.
            store.write(None)
            h.phase = str(store.status.get("phase") or "Pending")
            return announcer
        router, source = self.backend(target)
        # Read and judge through a stopwatch: the analysis duration per rollout (metrics.py).
        metrics = TimedSource(source, h.stopwatch)
        judge = TimedJudge(self.judge or default_judge(), h.stopwatch)
        h.notifier = notifier_for_policy(
            target.notifications,
            extra=[n for n in (h.events, announcer) if n is not None],
            read_secret=functools.partial(read_secret_url, self.api, target.namespace),
            namespace=target.namespace,
            on_outcome=self.metrics.notification,
        )
        applied = copy.deepcopy(dict(obj.get("spec") or {})) if spec_valid else h.facts.applied_spec
        h.facts = dataclasses.replace(h.facts, policy=target, applied_spec=applied)
        # Hook URLs and header values from Secrets are registered as secret when read.
        hooks = HttpHooks(
            target.hooks, read_secret=functools.partial(read_secret_url, self.api, target.namespace)
        )
        runner = RolloutRunner(
            target,
            router,
            metrics,
            store,
            RedactingNotifier(h.notifier),
            self.clock,
            judge=judge,
            hooks=hooks,
        )
        try:
            state = runner.start_or_resume()
        except BaseException:
            # Nothing half-made stays behind: the next reconcile starts (or resumes) afresh.
            h.drop_runner()
            close = getattr(source, "close", None)
            if callable(close):
                close()
            raise
        h.runner, h.fingerprint = runner, fingerprint
        if announcer is not None:
            self.registry.resume(h, announcer, state, store.status)
        log.info(
            "running %s: %s at step %d",
            h.ref,
            state.phase.value,
            state.step_index + 1,
            extra={**h.log_extra, "candidate": target.candidate.version},
        )
        return None

    def _supersede(
        self,
        h: RolloutHandler,
        old_state: RolloutState,
        old_policy: Policy | None,
        target: Policy,
        store: KubeStatusStore,
    ) -> None:
        now = self.clock.now()
        restored = self.finalizer.restore_stable(h, old_policy, old_state.run_id)
        old_stable = old_policy.stable.version if old_policy else str(store.status.get("stableVersion") or "")
        old_candidate = (
            old_policy.candidate.version if old_policy else str(store.status.get("candidateVersion") or "")
        )
        why = f"the spec changed (candidate {target.candidate.version}); the rollout was restarted"
        store.record_history(
            history_entry(
                old_state, old_stable, old_candidate, outcome="superseded", reason=why, finished_at=now
            )
        )
        if restored:
            self.metrics.rolled_back(h.key, ("superseded",))
        h.announce(
            "Restarted",
            f"the spec changed while {old_candidate} was at {old_state.weights.candidate}%: "
            f"traffic back on stable, restarting with {target.candidate.version}",
            "warning",
        )

    def _new_commands(
        self, h: RolloutHandler, obj: Mapping[str, Any], store: KubeStatusStore
    ) -> list[Command]:
        """Orders in annotations not handled yet (abort first: safety before anything else)."""
        found: list[Command] = []
        for word, value in command_values(obj).items():
            if word in ("retry", "restore") or store.handled(word) == value:
                continue  # a retry (`_retry`) and a restore (`_restore_stable`) are handled before the others
            store.mark_handled(word, value)  # saved with the status write that follows
            if word == "promote":
                found.append(Command.PROMOTE_FULL)  # "full@<id>": the only promotion order
                continue
            if word != "pause":
                found.append(Command(word))
                continue
            flag = value.split("@", 1)[0].strip().lower()
            if flag in ("true", "yes", "1"):
                found.append(Command.PAUSE)
            elif flag in ("false", "no", "0"):
                found.append(Command.RESUME)
            else:
                h.announce(
                    "InvalidCommand",
                    f"annotation {COMMAND_ANNOTATIONS['pause']}={value!r} is neither true nor false; ignored",
                    "warning",
                )
        return sorted(found, key=COMMAND_ORDER.index)

    def _new_order(
        self, h: RolloutHandler, obj: Mapping[str, Any], store: KubeStatusStore, word: str
    ) -> str | None:
        """The value of an order ``word`` not handled yet (marked handled now), else None."""
        value = command_values(obj).get(word)
        if value is None or store.handled(word) == value:
            return None
        store.mark_handled(word, value)  # saved with the status write that follows
        return value

    def _restore_stable(self, h: RolloutHandler, runner: RolloutRunner, before: RolloutState) -> RolloutState:
        """`rollout restore-stable`: traffic from the fallback back to 100% stable (the runner
        writes it and announces RestoredStable); ignored, and said so, when not on the fallback."""
        from mesh_canary.core.fallback import on_fallback

        if not on_fallback(before) and before.watch_until is None:
            h.announce("InvalidCommand", "restore-stable ignored: traffic is not on the fallback", "warning")
            return before
        return runner.restore_stable()

    def _retry(self, h: RolloutHandler, runner: RolloutRunner, before: RolloutState) -> RolloutState:
        """`rollout retry`: a RolledBack or Aborted rollout starts again from step 0 (its first
        write is the runner's); in any other phase the order is ignored and said so."""
        if before.phase not in (Phase.ROLLED_BACK, Phase.ABORTED) or not before.terminal:
            h.announce(
                "InvalidCommand",
                f"retry ignored: the rollout is {before.phase.value}; only a RolledBack or Aborted one restarts",
                "warning",
            )
            return before
        state = runner.restart()
        h.announce(
            "Retried",
            f"retried by a person: restarted from step 1 ({state.weights.candidate}% to the candidate)",
        )
        return state
