"""The store: every gate run and test result, in an embedded SQLite database.

It is what ``treegate`` reads back for reports, flake statistics and bisect.  A run is
written as *running* when it starts and completed when it ends, so an interrupted gate
leaves a run marked *interrupted*, never a half-written one.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    repo TEXT NOT NULL,
    candidate_ref TEXT,
    tested_ref TEXT,
    candidate TEXT NOT NULL,
    baseline TEXT,
    arches TEXT NOT NULL,
    suites TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT,
    promotion_commit TEXT,
    artifacts TEXT
);
CREATE TABLE IF NOT EXISTS results (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    nodeid TEXT NOT NULL,
    arch TEXT,
    suite TEXT,
    outcome TEXT NOT NULL,
    duration REAL,
    message TEXT,
    reproduce TEXT
);
CREATE INDEX IF NOT EXISTS results_by_node ON results(nodeid, arch);
CREATE TABLE IF NOT EXISTS watched (
    stream TEXT NOT NULL,
    arch TEXT NOT NULL,
    candidate TEXT NOT NULL,
    status TEXT NOT NULL,
    run_id INTEGER REFERENCES runs(id),
    seen REAL NOT NULL,
    PRIMARY KEY (stream, arch, candidate)
);
"""


@dataclass(frozen=True)
class ResultRow:
    """One test's outcome in one run."""

    nodeid: str
    arch: str | None
    suite: str | None
    outcome: str
    duration: float
    message: str
    reproduce: str


class Store:
    """An SQLite store at ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
            db.commit()
        finally:
            db.close()

    def start_run(
        self,
        *,
        kind: str,
        repo: str,
        candidate_ref: str | None,
        tested_ref: str | None,
        candidate: str,
        baseline: str | None,
        arches: Sequence[str],
        suites: Sequence[str],
        artifacts: str,
    ) -> int:
        """Record a run that has started; returns its id."""
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO runs (kind, started, repo, candidate_ref, tested_ref, candidate, baseline,"
                " arches, suites, decision, artifacts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    kind,
                    time.time(),
                    repo,
                    candidate_ref,
                    tested_ref,
                    candidate,
                    baseline,
                    json.dumps(list(arches)),
                    json.dumps(list(suites)),
                    "running",
                    artifacts,
                ),
            )
            return int(cur.lastrowid or 0)

    def finish_run(
        self,
        run_id: int,
        *,
        decision: str,
        reason: str,
        promotion_commit: str | None,
        results: Sequence[ResultRow],
    ) -> None:
        """Record the outcome of a run and its results, in one transaction."""
        with self._db() as db:
            db.execute(
                "UPDATE runs SET finished=?, decision=?, reason=?, promotion_commit=? WHERE id=?",
                (time.time(), decision, reason, promotion_commit, run_id),
            )
            db.executemany(
                "INSERT INTO results (run_id, nodeid, arch, suite, outcome, duration, message, reproduce)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        run_id,
                        r.nodeid,
                        r.arch,
                        r.suite,
                        r.outcome,
                        r.duration,
                        r.message,
                        r.reproduce,
                    )
                    for r in results
                ],
            )

    def runs(self, limit: int = 20) -> list[dict[str, object]]:
        """The most recent runs, newest first."""
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            return [dict(r) for r in rows]

    def results(self, run_id: int) -> list[ResultRow]:
        """The results recorded for one run."""
        with self._db() as db:
            rows = db.execute(
                "SELECT nodeid, arch, suite, outcome, duration, message, reproduce FROM results"
                " WHERE run_id=? ORDER BY rowid",
                (run_id,),
            ).fetchall()
            return [ResultRow(*r) for r in rows]

    def mark_watched(
        self, stream: str, arch: str, candidate: str, status: str, run_id: int | None = None
    ) -> None:
        """Record what ``treegate watch`` did with a candidate commit of a stream: *gated*
        (with its run), *superseded* (a newer commit came before it was gated)."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO watched (stream, arch, candidate, status, run_id, seen)"
                " VALUES (?,?,?,?,?,?)",
                (stream, arch, candidate, status, run_id, time.time()),
            )

    def watched(self, stream: str, arch: str) -> dict[str, str]:
        """The candidate commits ``treegate watch`` handled for a stream's arch, by status."""
        with self._db() as db:
            rows = db.execute(
                "SELECT candidate, status FROM watched WHERE stream = ? AND arch = ?",
                (stream, arch),
            ).fetchall()
        return {str(c): str(s) for c, s in rows}

    def flakes(self, limit: int = 20, last_runs: int = 100) -> list[Flake]:
        """The flakiest tests of the last ``last_runs`` gates: the most *flaky* outcomes
        first, then the most changes of outcome from one run to the next."""
        with self._db() as db:
            rows = db.execute(
                "SELECT r.nodeid, r.arch, r.outcome FROM results r JOIN runs u ON r.run_id = u.id"
                " WHERE u.kind = 'gate' AND u.id IN"
                " (SELECT id FROM runs WHERE kind = 'gate' ORDER BY id DESC LIMIT ?)"
                " ORDER BY r.run_id",
                (last_runs,),
            ).fetchall()
        seen: dict[tuple[str, str], list[str]] = {}
        for nodeid, arch, outcome in rows:
            seen.setdefault((str(nodeid), str(arch or "")), []).append(str(outcome))
        flakes = [
            Flake(
                nodeid=nodeid,
                arch=arch,
                runs=len(outcomes),
                flaky=outcomes.count("flaky"),
                changes=sum(1 for a, b in itertools.pairwise(outcomes) if a != b),
                last=outcomes[-1],
            )
            for (nodeid, arch), outcomes in seen.items()
        ]
        flakes = [f for f in flakes if f.flaky or f.changes]
        flakes.sort(key=lambda f: (-f.flaky, -f.changes, f.nodeid))
        return flakes[:limit]


@dataclass(frozen=True)
class Flake:
    """How unstable one test was across recent gates."""

    nodeid: str
    arch: str
    runs: int
    flaky: int
    """Times it ended *flaky* (error, then passed on a retry)."""
    changes: int
    """Times its outcome differed from the run before."""
    last: str
