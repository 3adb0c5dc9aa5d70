"""``--treegate-results FILE``: each test's treegate outcome, as the gate reads it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.arch import ARCHES
from harness.outcome import Outcome


@dataclass
class _Outcome:
    """One test's treegate outcome, folded from its setup, call and teardown reports."""

    arch: str | None
    outcome: Outcome = Outcome.not_run
    duration: float = 0.0
    message: str = ""


def _arch_of(nodeid: str) -> str | None:
    # Tests are parametrized over the arch first: ``test_x[aarch64]``, ``test_x[x86_64-foo]``.
    if "[" not in nodeid:
        return None
    first = nodeid.rsplit("[", 1)[1].rstrip("]").split("-", 1)[0]
    return first if first in ARCHES else None


class ResultsWriter:
    """Writes each test's treegate outcome for ``--treegate-results`` (what the gate reads).

    Outcomes are folded from the test reports, which the pytest-xdist controller receives from
    every worker, so a run with ``-n`` writes one complete file; workers write nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, _Outcome] = {}

    def _get(self, nodeid: str) -> _Outcome:
        return self.results.setdefault(nodeid, _Outcome(_arch_of(nodeid)))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # Without pytest-xdist the items are collected here; each starts as "not run".
        for item in session.items:
            self._get(item.nodeid)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Under pytest-xdist the controller collects nothing itself: the workers' ids say it.
        for nodeid in ids:
            self._get(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self._get(report.nodeid)
        result.duration += report.duration
        if result.outcome in (Outcome.skipped, Outcome.failed, Outcome.error):
            return  # the first thing that went wrong is the outcome
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            result.outcome, result.message = Outcome.skipped, str(reason)
        elif report.failed:
            result.outcome = Outcome.failed if report.when == "call" else Outcome.error
            messages = [v for k, v in report.user_properties if k == "treegate_message"]
            fallback = str(report.longrepr).strip().splitlines()[-1] if report.longrepr else ""
            result.message = str(messages[0]) if messages else fallback
        elif report.when == "call":
            result.outcome = Outcome.passed

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        results = [
            {
                "nodeid": nodeid,
                "arch": r.arch,
                "outcome": str(r.outcome),
                "duration": round(r.duration, 3),
                "message": r.message,
            }
            for nodeid, r in self.results.items()
        ]
        self.path.write_text(json.dumps(results, indent=1))
