"""The collector's store: predictions joined to their labels by id, in sqlite (WAL mode).

Tables:

- ``predictions`` (id, version) -> predicted class, score, time, and the label once it came;
  the key makes a prediction idempotent (a retried event never counts twice) while a
  mirrored copy (same id, other version) is its own prediction, joined by the same label;
- ``labels``: labels whose prediction has not (yet) arrived; a prediction arriving later
  is joined to it; ``matched`` says whether one did;
- ``totals``: every counter of /metrics (the model metrics convention and the collector's
  own), updated in the same transaction as the rows they count. At start the in-memory
  counters are read back from it, so a restarted collector carries on from the values it
  had: Prometheus sees no reset, and deleting old rows (retention) never lowers a counter.

One lock serialises writers (sqlite allows one anyway); each call is one transaction.
``write`` takes several writes (the HTTP server's group commit: every request that arrived
while the previous commit ran) and does them in one transaction, each all-or-nothing: a
write over a limit is refused before it changes anything. ``synchronous=NORMAL`` in WAL mode: a committed batch survives the
process dying (a power cut may lose the last ones; a label is then unmatched, never wrong).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_canary.collector.events import Label, Malformed, Prediction
from mesh_canary.modelmetrics import LABEL_DELAY_BUCKETS, SCORE_BUCKETS

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT NOT NULL, version TEXT NOT NULL, predicted TEXT NOT NULL, score REAL, at REAL NOT NULL,
    label TEXT, labelled_at REAL, PRIMARY KEY (id, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS predictions_at ON predictions (at);
CREATE TABLE IF NOT EXISTS labels (
    id TEXT PRIMARY KEY, label TEXT NOT NULL, at REAL NOT NULL, matched INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_at ON labels (at);
CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
"""

# Counter keys: (family, *label values). Families of the convention:
PRED = "pred"  # (version, class)
FEEDBACK = "feedback"  # (version, predicted, actual)
SCORE = "score"  # (version, bucket index); index len(SCORE_BUCKETS) is +Inf
SCORE_SUM = "score_sum"  # (version,)
DELAY = "delay"  # (version, bucket index)
DELAY_SUM = "delay_sum"  # (version,)
# ... and the collector's own:
EVENTS = "events"  # (kind, outcome)
EXPIRED_UNLABELLED = "expired_unlabelled"  # (version,): predictions deleted without a label
EXPIRED_LABELS = "expired_labels"  # (): labels deleted without a prediction

Key = tuple[str, ...]

INSERT_PREDICTION = (
    "INSERT OR IGNORE INTO predictions (id, version, predicted, score, at) VALUES (?, ?, ?, ?, ?)"
)
_SCORE_INDEX = [str(i) for i in range(len(SCORE_BUCKETS) + 1)]  # a score's bucket index, as its key says


class Refused(Malformed):
    """Well-formed but over a limit (too many versions or classes): bounded memory."""


@dataclass(frozen=True)
class Limits:
    max_versions: int = 64
    max_classes: int = 256  # per version


@dataclass(frozen=True)
class Outcome:
    """What one call did, by outcome: for the HTTP answer and the events counter."""

    counts: dict[str, int]


@dataclass(frozen=True)
class Predictions:
    """A write: predictions (and how many request events came with them, acknowledged)."""

    items: Sequence[Prediction]
    requests: int = 0


@dataclass(frozen=True)
class Labels:
    """A write: labels."""

    items: Sequence[Label]


@dataclass(frozen=True)
class Rejected:
    """A write: one malformed request of this kind ("prediction" or "label"), counted."""

    kind: str


Write = Predictions | Labels | Rejected


@dataclass
class _InMemory:
    """The in-memory gauges' changes of a transaction: applied only once it committed."""

    unlabelled: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    unmatched_labels: int = 0
    early_labels: int = 0


def _only(results: list[Outcome | Refused]) -> Outcome:
    (result,) = results
    if isinstance(result, Refused):
        raise result
    return result


class Store:
    def __init__(self, path: str | Path, retention_s: float, limits: Limits = Limits()) -> None:
        self.path = str(path)
        self.retention_s = retention_s
        self.limits = limits
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.counters: dict[Key, float] = {}
        for key, value in self._db.execute("SELECT key, value FROM totals"):
            self.counters[tuple(json.loads(key))] = value
        self.unlabelled: dict[str, int] = defaultdict(int)
        for version, n in self._db.execute(
            "SELECT version, COUNT(*) FROM predictions WHERE label IS NULL GROUP BY version"
        ):
            self.unlabelled[version] = n
        self.unmatched_labels: int = self._db.execute(
            "SELECT COUNT(*) FROM labels WHERE matched = 0"
        ).fetchone()[0]
        self._classes: dict[str, set[str]] = defaultdict(set)
        self._label_values: set[str] = set()
        for key in self.counters:
            if key[0] == PRED:
                self._classes[key[1]].add(key[2])
            elif key[0] == FEEDBACK:
                self._label_values.add(key[3])
        # Labels still waiting for their prediction count towards the limit too.
        self._label_values |= {row[0] for row in self._db.execute("SELECT DISTINCT label FROM labels")}
        # Rows in ``labels`` (labels that came before their prediction): while there are none,
        # a new prediction has no early label to look up.
        self.early_labels: int = self._db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
        self._key_text: dict[Key, str] = {}  # a counter's key as stored in ``totals``

    # --- writes ---------------------------------------------------------------------------

    def write(self, writes: Sequence[Write]) -> list[Outcome | Refused]:
        """Do ``writes`` in order in ONE transaction (the server's group commit): the outcome
        of each, or ``Refused`` for one over a limit (nothing of it is kept; it is counted
        as rejected). A store error rolls the whole group back and is raised."""
        with self._lock:
            results: list[Outcome | Refused] = []
            memory = _InMemory()
            with self._transaction() as delta:
                for w in writes:
                    try:
                        if isinstance(w, Predictions):
                            results.append(self._add_predictions(w.items, w.requests, delta, memory))
                        elif isinstance(w, Labels):
                            results.append(self._add_labels(w.items, delta, memory))
                        else:
                            delta[(EVENTS, w.kind, "rejected")] += 1
                            results.append(Outcome({"rejected": 1}))
                    except Refused as exc:
                        delta[(EVENTS, "label" if isinstance(w, Labels) else "prediction", "rejected")] += 1
                        results.append(exc)
            for version, n in memory.unlabelled.items():
                self.unlabelled[version] += n
            self.unmatched_labels += memory.unmatched_labels
            self.early_labels += memory.early_labels
            return results

    def add_predictions(self, predictions: Sequence[Prediction], requests: int = 0) -> Outcome:
        """Store new predictions (a known (id, version) is a duplicate: ignored), join each to
        a label that came first; all in one transaction. Raises Refused over a limit."""
        return _only(self.write([Predictions(predictions, requests)]))

    def add_labels(self, labels: Iterable[Label]) -> Outcome:
        """Join each label to its predictions; keep the ones that came first. A label that
        came before counts once; a different label for a labelled id is a conflict (the
        first one stays). Raises Refused over a limit."""
        return _only(self.write([Labels(list(labels))]))

    def count_rejected(self, kind: str) -> None:
        """A malformed request: counted (persisted) so operators see senders in trouble."""
        self.write([Rejected(kind)])

    def _add_predictions(
        self, predictions: Sequence[Prediction], requests: int, delta: dict[Key, float], memory: _InMemory
    ) -> Outcome:
        self._check_limits(predictions)
        stored = duplicate = joined = 0
        execute = self._db.execute
        for p in predictions:
            version = p.version
            if not execute(INSERT_PREDICTION, (p.id, version, p.predicted, p.score, p.at)).rowcount:
                duplicate += 1
                continue
            stored += 1
            delta[(PRED, version, p.predicted)] += 1
            score = p.score
            if score is not None:
                delta[(SCORE, version, _SCORE_INDEX[bisect_left(SCORE_BUCKETS, score)])] += 1
                delta[(SCORE_SUM, version)] += score
            early = (
                execute("SELECT label, at, matched FROM labels WHERE id = ?", (p.id,)).fetchone()
                if self.early_labels + memory.early_labels
                else None
            )
            if early is None:
                memory.unlabelled[version] += 1
                continue
            label, label_at, was_matched = early
            execute(
                "UPDATE predictions SET label = ?, labelled_at = ? WHERE id = ? AND version = ?",
                (label, label_at, p.id, version),
            )
            if not was_matched:
                execute("UPDATE labels SET matched = 1 WHERE id = ?", (p.id,))
                memory.unmatched_labels -= 1
            _joined(delta, version, p.predicted, label, label_at - p.at)
            joined += 1
        outcome: dict[str, int] = {}
        for name, n in (("stored", stored), ("duplicate", duplicate), ("joined", joined)):
            if n:
                outcome[name] = n
                delta[(EVENTS, "prediction", name)] += n
        if requests:
            delta[(EVENTS, "request", "ignored")] += requests
            outcome["ignored"] = requests
        return Outcome(outcome)

    def _add_labels(self, labels: Sequence[Label], delta: dict[Key, float], memory: _InMemory) -> Outcome:
        self._check_label_values(labels)
        outcome: dict[str, int] = defaultdict(int)
        db = self._db
        for label in labels:
            rows = db.execute(
                "SELECT version, predicted, at, label FROM predictions WHERE id = ?", (label.id,)
            ).fetchall()
            if not rows:
                kept = db.execute("SELECT label FROM labels WHERE id = ?", (label.id,)).fetchone()
                if kept is None:
                    db.execute(
                        "INSERT INTO labels (id, label, at) VALUES (?, ?, ?)",
                        (label.id, label.label, label.at),
                    )
                    outcome["unmatched"] += 1
                    memory.unmatched_labels += 1
                    memory.early_labels += 1
                else:
                    outcome["duplicate" if kept[0] == label.label else "conflict"] += 1
                continue
            name = "duplicate"
            for version, predicted, at, old in rows:
                if old is None:
                    db.execute(
                        "UPDATE predictions SET label = ?, labelled_at = ? WHERE id = ? AND version = ?",
                        (label.label, label.at, label.id, version),
                    )
                    _joined(delta, version, predicted, label.label, label.at - at)
                    memory.unlabelled[version] -= 1
                    name = "joined"
                elif old != label.label and name == "duplicate":
                    name = "conflict"
            outcome[name] += 1
        for name, n in outcome.items():
            delta[(EVENTS, "label", name)] += n
        return Outcome(dict(outcome))

    def expire(self, now: float, batch: int = 10_000) -> int:
        """Delete predictions and early labels older than the retention window, counting the
        ones that never found their partner. Rows go in batches, so writers wait for one
        batch at most. Returns the number of rows deleted."""
        cutoff = now - self.retention_s
        deleted = 0
        while True:
            with self._lock:
                db = self._db
                with self._transaction() as delta:
                    rows = db.execute(
                        "SELECT id, version, label FROM predictions WHERE at < ? ORDER BY at LIMIT ?",
                        (cutoff, batch),
                    ).fetchall()
                    gone: dict[str, int] = defaultdict(int)
                    for pid, version, label in rows:
                        db.execute("DELETE FROM predictions WHERE id = ? AND version = ?", (pid, version))
                        if label is None:
                            gone[version] += 1
                            delta[(EXPIRED_UNLABELLED, version)] += 1
                    labels = db.execute(
                        "SELECT id, matched FROM labels WHERE at < ? ORDER BY at LIMIT ?", (cutoff, batch)
                    ).fetchall()
                    for lid, _ in labels:
                        db.execute("DELETE FROM labels WHERE id = ?", (lid,))
                    unmatched_gone = sum(1 for _, m in labels if not m)
                    if unmatched_gone:
                        delta[(EXPIRED_LABELS,)] += unmatched_gone
                for version, n in gone.items():
                    self.unlabelled[version] -= n
                self.unmatched_labels -= unmatched_gone
                self.early_labels -= len(labels)
            deleted += len(rows) + len(labels)
            if len(rows) < batch and len(labels) < batch:
                return deleted

    # --- reads ----------------------------------------------------------------------------

    def snapshot(self) -> tuple[dict[Key, float], dict[str, int], int]:
        """(counters, unlabelled predictions per version, unmatched labels), consistent."""
        with self._lock:
            return dict(self.counters), dict(self.unlabelled), self.unmatched_labels

    def report(self, limit: int = 20) -> dict[str, Any]:
        """Predictions still waiting for a label and labels with no prediction (oldest first)."""
        with self._lock:
            waiting = self._db.execute(
                "SELECT id, version, at FROM predictions WHERE label IS NULL ORDER BY at LIMIT ?", (limit,)
            ).fetchall()
            orphans = self._db.execute(
                "SELECT id, at FROM labels WHERE matched = 0 ORDER BY at LIMIT ?", (limit,)
            ).fetchall()
            counters = dict(self.counters)
            return {
                "unlabelledPredictions": {v: n for v, n in sorted(self.unlabelled.items()) if n},
                "unmatchedLabels": self.unmatched_labels,
                "expiredWithoutLabel": {
                    k[1]: int(v) for k, v in counters.items() if k[0] == EXPIRED_UNLABELLED
                },
                "expiredLabelsWithoutPrediction": int(counters.get((EXPIRED_LABELS,), 0)),
                "oldestUnlabelled": [{"id": i, "version": v, "at": at} for i, v, at in waiting],
                "oldestUnmatchedLabels": [{"id": i, "at": at} for i, at in orphans],
                "retentionSeconds": self.retention_s,
            }

    def healthy(self) -> bool:
        """Whether the store answers a query (for /healthz: a broken store should restart the pod)."""
        with self._lock:
            try:
                self._db.execute("SELECT 1").fetchone()
            except sqlite3.Error:
                return False
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- inside ---------------------------------------------------------------------------

    def _check_limits(self, predictions: Sequence[Prediction]) -> None:
        """Raise Refused (nothing counted) if these predictions bring too many versions or
        classes; else count their new ones."""
        known = self._classes
        if all(p.predicted in known.get(p.version, ()) for p in predictions):
            return
        new_versions = {p.version for p in predictions} - set(self._classes)
        if len(self._classes) + len(new_versions) > self.limits.max_versions:
            raise Refused(
                f"the collector already counts {len(self._classes)} versions (--max-versions "
                f"{self.limits.max_versions}): version {sorted(new_versions)[0]!r} refused"
            )
        added: dict[str, set[str]] = defaultdict(set)
        for p in predictions:
            classes = known.get(p.version, set())
            if p.predicted in classes or p.predicted in added[p.version]:
                continue
            if len(classes) + len(added[p.version]) >= self.limits.max_classes:
                raise Refused(
                    f"version {p.version!r} already has {len(classes) + len(added[p.version])} classes "
                    f"(--max-classes {self.limits.max_classes}): class {p.predicted!r} refused"
                )
            added[p.version].add(p.predicted)
        for version, classes in added.items():
            self._classes[version] |= classes

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[Key, float]]:
        """One transaction (the caller holds the lock): the counters' changes the body adds to
        the yielded dict are saved in it, and applied in memory only once it committed."""
        delta: dict[Key, float] = defaultdict(float)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield delta
            self._save(delta)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._apply(delta)

    def _check_label_values(self, labels: Sequence[Label]) -> None:
        new = {label.label for label in labels} - self._label_values
        if len(self._label_values) + len(new) > self.limits.max_classes:
            raise Refused(
                f"the collector already knows {len(self._label_values)} label values (--max-classes "
                f"{self.limits.max_classes}): label {sorted(new)[0]!r} refused"
            )
        self._label_values |= new

    def _save(self, delta: dict[Key, float]) -> None:
        texts = self._key_text  # as many as counters (bounded by the Limits)
        self._db.executemany(
            "INSERT INTO totals (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            [(texts.get(k) or texts.setdefault(k, json.dumps(k)), v) for k, v in delta.items() if v],
        )

    def _apply(self, delta: dict[Key, float]) -> None:
        for key, value in delta.items():
            self.counters[key] = self.counters.get(key, 0.0) + value


def _joined(delta: dict[Key, float], version: str, predicted: str, actual: str, delay_s: float) -> None:
    delay_s = max(delay_s, 0.0)  # a label posted before the prediction event arrived
    delta[(FEEDBACK, version, predicted, actual)] += 1
    delta[(DELAY, version, str(bisect_left(LABEL_DELAY_BUCKETS, delay_s)))] += 1
    delta[(DELAY_SUM, version)] += delay_s
