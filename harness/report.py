"""``treegate report``: the HTML report a release engineer reads every morning.

From a directory of allure results (every pytest run writes one, see
:mod:`harness.pytest_plugin`) it builds, under ``--out``:

* ``allure/``: the full allure report, made by the allure report generator installed from
  npm into the project by ``ci/setup`` (``node_modules/.bin/allure``; nothing is downloaded
  when the report is made);
* ``index.html``: one page with the cross-arch matrix (a row per test, a column per arch, each
  cell the outcome and duration, linking to the test's page in the allure report) and the
  trend of the last nightlies from the store: pass rate, duration and the tests whose outcome
  changed between runs (flaky).

Each report run is recorded in the store (kind ``report``), which is what the trend reads.
Outcomes use treegate's words: allure's *broken* (the harness or the host broke) is *error*.
"""

from __future__ import annotations

import dataclasses
import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError, summarize
from harness.run import run
from harness.store import ResultRow, Store

OUTCOMES = {"passed": "passed", "failed": "failed", "broken": "error", "skipped": "skipped"}
"""allure status → treegate outcome."""


@dataclass(frozen=True)
class Case:
    """One test on one arch, as the allure report shows it."""

    test: str
    """The test's pytest node id without its ``[arch]`` parameter."""
    arch: str
    outcome: str
    duration: float
    report_id: str
    """The test's id in the generated allure report (what its page's address is made of)."""
    message: str


def check_results(results: Path) -> None:
    """Raise a one-line error unless ``results`` holds allure results."""
    if not results.is_dir():
        raise UserError(f"results directory {results} does not exist")
    if not any(results.glob("*-result.json")):
        raise UserError(f"{results} holds no allure results (*-result.json)")


def generate_allure(allure: Path, results: Path, out: Path) -> None:
    """Run the allure report generator on ``results`` into ``out``."""
    if not allure.exists():
        raise UserError(
            f"the allure report generator is not installed ({allure})",
            hint="run ci/setup, which installs it from npm into the project",
        )
    run([str(allure), "generate", str(results), "--output", str(out)])


def cases(allure_report: Path) -> list[Case]:
    """The tests of a generated allure report, one per test (parameter set) and arch.

    A test run again by the gate after an error has two results (allure may or may not
    group them as retries: their parameters can differ when the first attempt broke before
    every fixture ran); the last one counts, and a pass after a non-pass is *flaky*.
    """
    directory = allure_report / "data" / "test-results"
    attempts: dict[tuple[str, str], list[tuple[float, Case]]] = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("isRetry"):
            continue  # an earlier attempt: shown through the last one's retries
        params = {p.get("name"): str(p.get("value", "")) for p in data.get("parameters", [])}
        arch = params.get("arch", "-").strip("'\"")
        outcome = OUTCOMES.get(data.get("status", ""), "error")
        if outcome == "passed" and any(
            _status(r, directory) != "passed" for r in data.get("retries") or []
        ):
            outcome = "flaky"
        case = Case(
            test=_node_id(data, arch),
            arch=arch,
            outcome=outcome,
            duration=float(data.get("duration") or 0) / 1000,
            report_id=str(data["id"]),
            # What failed and why: a failed command's last output lines, not its first.
            message=summarize(str((data.get("error") or {}).get("message", ""))),
        )
        when = float(data.get("stop") or data.get("start") or 0)
        attempts.setdefault((case.test, arch), []).append((when, case))
    found = []
    for runs in attempts.values():
        runs.sort(key=lambda pair: pair[0])
        last = runs[-1][1]
        if last.outcome == "passed" and any(c.outcome != "passed" for _, c in runs[:-1]):
            # The gate ran it again after an error and it passed: flaky, as in the verdict.
            last = dataclasses.replace(last, outcome="flaky")
        found.append(last)
    return found


def _status(retry: object, directory: Path) -> str:
    """A retry's status: allure lists retries inline or by id."""
    if isinstance(retry, dict):
        return str(retry.get("status", ""))
    path = directory / f"{retry}.json"
    return str(json.loads(path.read_text()).get("status", "")) if path.is_file() else ""


def _node_id(data: dict[str, object], arch: str) -> str:
    """The matrix row of a result: ``tests/system/test_smoke.py::test_x`` from allure's
    ``tests.system.test_smoke#test_x``, with the test's parameters other than the arch
    (``test_gate.py::test_rejected[failing-unit-minimal-smoke]``): each parameter set is a
    row of its own, so one that fails is never hidden behind another that passed."""
    full = str(data.get("fullName") or data.get("name") or "?")
    module, _, function = full.partition("#")
    node = f"{module.replace('.', '/')}.py::{function}" if function else full
    _, bracket, ids = str(data.get("name") or "").partition("[")
    if not bracket:
        return node
    # pytest joins the ids of a test's parameters with "-"; no arch name has one in it.
    ids = ids.removesuffix("]")
    parts = ids.split("-")
    rest = "-".join(part for part in parts if part != arch) if arch in parts else ids
    return f"{node}[{rest}]" if rest else node


def record(store: Store, results: Path, found: Sequence[Case]) -> None:
    """Record this report's run in the store (once per results directory)."""
    if any(
        r.get("kind") == "report" and r.get("artifacts") == str(results) for r in store.runs(200)
    ):
        return
    arches = sorted({c.arch for c in found})
    run_id = store.start_run(
        kind="report",
        repo="",
        candidate_ref=None,
        tested_ref=None,
        candidate="",
        baseline=None,
        arches=arches,
        suites=[],
        artifacts=str(results),
    )
    failed = sum(c.outcome in ("failed", "error") for c in found)
    store.finish_run(
        run_id,
        decision="failed" if failed else "passed",
        reason=f"{failed} of {len(found)} tests failed or errored",
        promotion_commit=None,
        results=[
            ResultRow(c.test, c.arch, None, c.outcome, c.duration, c.message, "") for c in found
        ],
    )


@dataclass(frozen=True)
class TrendPoint:
    """One earlier report run: when, how many passed, how long its tests took."""

    when: float
    passed: int
    total: int
    duration: float


def trend(store: Store, limit: int) -> tuple[list[TrendPoint], list[str]]:
    """The last ``limit`` report runs (oldest first) and the tests whose outcome changed
    between them (passed in one run, failed or errored in another: flaky)."""
    runs = [r for r in store.runs(500) if r.get("kind") == "report"][:limit]
    points = []
    seen: dict[tuple[str, str | None], set[str]] = {}
    for r in reversed(runs):
        results = store.results(int(str(r["id"])))
        for res in results:
            seen.setdefault((res.nodeid, res.arch), set()).add(res.outcome)
        points.append(
            TrendPoint(
                when=float(str(r["started"])),
                passed=sum(res.outcome == "passed" for res in results),
                total=sum(res.outcome != "skipped" for res in results),
                duration=sum(res.duration for res in results),
            )
        )
    flaky = sorted(
        f"{node} [{arch}]"
        for (node, arch), outcomes in seen.items()
        if "passed" in outcomes and outcomes & {"failed", "error"}
    )
    return points, flaky


def matrix_page(found: Sequence[Case], points: Sequence[TrendPoint], flaky: Sequence[str]) -> str:
    """The one-page cross-arch matrix and trend, as HTML."""
    arches = sorted({c.arch for c in found}, key=_arch_order)
    by_cell = {(c.test, c.arch): c for c in found}
    tests = sorted({c.test for c in found})
    counts = {
        o: sum(c.outcome == o for c in found)
        for o in ("passed", "failed", "error", "skipped", "flaky")
    }
    rows = []
    for test in tests:
        cells = []
        for arch in arches:
            c = by_cell.get((test, arch))
            if c is None:
                cells.append('<td class="none">—</td>')
                continue
            title = html.escape(c.message, quote=True)
            cells.append(
                f'<td class="{c.outcome}" title="{title}"><a href="allure/index.html#{c.report_id}">'
                f"{c.outcome} {c.duration:.1f}s</a></td>"
            )
        rows.append(f"<tr><th>{html.escape(test)}</th>{''.join(cells)}</tr>")
    trend_rows = "".join(
        f"<tr><td>{time.strftime('%Y-%m-%d %H:%M', time.localtime(p.when))}</td>"
        f"<td>{p.passed}/{p.total} ({100 * p.passed / max(p.total, 1):.0f}%)</td>"
        f"<td>{p.duration / 60:.1f} min</td></tr>"
        for p in points
    )
    flaky_items = "".join(f"<li>{html.escape(f)}</li>" for f in flaky) or "<li>none</li>"
    # "-": tests without an arch parameter (say, one gate across two arches).
    head = "".join(f"<th>{html.escape(a if a != '-' else 'no arch')}</th>" for a in arches)
    summary = ", ".join(f'<span class="{o}">{n} {o}</span>' for o, n in counts.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>treegate report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
td a {{ color: inherit; }}
.passed {{ background: #d4f4d4; }} .failed {{ background: #f8c8c8; }}
.error {{ background: #f8e0a8; }} .skipped {{ background: #e8e8e8; }} .flaky {{ background: #f0d8f8; }}
</style></head><body>
<h1>treegate: cross-arch matrix</h1>
<p id="summary">{summary} — <a href="allure/index.html">full allure report</a></p>
<table id="matrix"><tr><th>test</th>{head}</tr>
{chr(10).join(rows)}
</table>
<h2>Trend (last {len(points)} reports)</h2>
<table id="trend"><tr><th>run</th><th>passed</th><th>test time</th></tr>{trend_rows}</table>
<h2>Flaky (outcome changed between those runs)</h2>
<ul id="flaky">{flaky_items}</ul>
</body></html>
"""


def _arch_order(arch: str) -> tuple[int, str]:
    order = ["x86_64", "aarch64", "armv7"]
    return (order.index(arch) if arch in order else len(order), arch)


def build(results: Path, out: Path, *, store: Store, allure: Path, history: int = 10) -> Path:
    """Build the report of ``results`` under ``out``; return the path of its index page."""
    check_results(results)
    out.mkdir(parents=True, exist_ok=True)
    generate_allure(allure, results, out / "allure")
    found = cases(out / "allure")
    record(store, results.resolve(), found)
    points, flaky = trend(store, history)
    index = out / "index.html"
    index.write_text(matrix_page(found, points, flaky))
    return index
