"""``treegate bisect``: the first commit between a good and a bad one where a test fails.

Walks the first-parent history from the bad commit back to the good one and binary-searches
it, running the one test (a pytest node id of the suites) on each probe as
``pytest NODEID --repo R --commit C --arch A`` -- the gate's own path, so images and saved
states are cached per commit and a repeated bisect costs little.  Like ``git bisect``, it
trusts the two ends: ``good`` passes, ``bad`` fails; with n commits after ``good`` it runs
the test at most ⌈log2 n⌉ times.  A probe that ends in anything but passed or failed (an
error, a skip) stops the search with that outcome: a bisect must not guess.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import log
from harness.errors import InfraError, UserError
from harness.repo import Commit, Repo
from harness.runspec import RunSpec, run_pytest
from harness.state import State
from harness.treediff import tree_diff


@dataclass(frozen=True)
class Probe:
    """One test run of the search: which commit, what came out, how long it took."""

    commit: str
    outcome: str
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class BisectResult:
    """The first bad commit, its parent in the range, and the runs that found it."""

    first_bad: Commit
    parent: str
    commits: int
    """How many commits came after ``good`` (the search space)."""
    probes: tuple[Probe, ...] = field(default_factory=tuple)
    diff: str = ""


def commits_between(repo: Repo, good: str, bad: str) -> list[Commit]:
    """The commits after ``good`` up to ``bad``, oldest first; ``good`` must be an ancestor."""
    good_commit = repo.resolve(good)
    bad_commit = repo.resolve(bad)
    history = repo.history(bad_commit.checksum, limit=10_000)
    checksums = [c.checksum for c in history]
    if good_commit.checksum not in checksums:
        raise UserError(
            f"{good} ({good_commit.short}) is not an ancestor of {bad} ({bad_commit.short})"
        )
    if good_commit.checksum == bad_commit.checksum:
        raise UserError(f"{good} and {bad} are the same commit")
    between = history[: checksums.index(good_commit.checksum)]
    return list(reversed(between))


def bisect(
    repo: Repo,
    good: str,
    bad: str,
    run_test: Callable[[Commit], Probe],
) -> BisectResult:
    """Binary-search the commits after ``good`` up to ``bad`` with ``run_test``."""
    commits = commits_between(repo, good, bad)
    good_checksum = repo.resolve(good).checksum
    lo, hi = -1, len(commits) - 1  # commits[lo] passes (-1: good itself), commits[hi] fails
    probes: list[Probe] = []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe = run_test(commits[mid])
        probes.append(probe)
        log.info(f"{commits[mid].short} ({commits[mid].version or 'no version'}): {probe.outcome}")
        if probe.outcome == "passed":
            lo = mid
        elif probe.outcome == "failed":
            hi = mid
        else:
            raise InfraError(
                f"the test ended in {probe.outcome} on {commits[mid].short}: cannot bisect"
                + (f" ({probe.message})" if probe.message else "")
            )
    first_bad = commits[hi]
    parent = commits[hi - 1].checksum if hi > 0 else good_checksum
    diff = tree_diff(repo, parent, first_bad.checksum).text(parent, first_bad.checksum)
    return BisectResult(first_bad, parent, len(commits), tuple(probes), diff)


def pytest_runner(
    repo: Repo, test: str, arch: str, state: State, extra: list[str]
) -> Callable[[Commit], Probe]:
    """Runs ``test`` on a commit through pytest, as the gate does; returns its outcome."""

    def run_test(commit: Commit) -> Probe:
        spec = RunSpec(repo=repo.path, arch=arch, commit=commit.checksum)
        options = [*spec.options(), "--state-dir", str(state.root), "-q", *extra]
        with tempfile.TemporaryDirectory(dir=state.tmp) as tmp:
            start = time.monotonic()
            with log.nested(f"testing {commit.short} ({commit.version or 'no version'})"):
                _, rows = run_pytest(
                    [test],
                    options,
                    run_id=f"bisect-{time.strftime('%Y%m%d-%H%M%S')}",
                    results=Path(tmp) / "results.json",
                )
            seconds = time.monotonic() - start
        if rows is None:
            return Probe(commit.checksum, "error", seconds, "pytest wrote no results")
        if not rows:
            raise UserError(f"{test} selects no test", hint="pass a node id of tests/system")
        if len(rows) > 1:
            raise UserError(f"{test} selects {len(rows)} tests", hint="pass a single node id")
        return Probe(commit.checksum, str(rows[0]["outcome"]), seconds, str(rows[0]["message"]))

    return run_test
