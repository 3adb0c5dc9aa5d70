"""Outcomes, decisions and verdicts: what a gate found and what it decided.

Three outcomes of a test are kept apart from pytest all the way to the decision:

* **failed** -- a test showed the tree is bad: the candidate is *rejected* (exit 1);
* **error** -- the harness or host broke (QEMU died, a timeout of the infrastructure, pytest
  could not run): the gate ends in *error* (exit 3) and never promotes;
* **skipped** -- a test did not apply (no baseline yet, no Docker in the tree).  A *required*
  suite that ends with nothing but skips rejects the candidate: the tree lost what it had.

Beside them: **flaky** (an error, then a pass on a fresh machine), **quarantined** (a known-bad
test's blocking outcome, reported but not blocking) and **not run**.  Each is an
:class:`Outcome`; the gate's :class:`Decision` follows from them in :func:`decide`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    """One test's outcome, as the gate, the store and the report name it."""

    passed = "passed"
    failed = "failed"
    error = "error"
    skipped = "skipped"
    flaky = "flaky"
    quarantined = "quarantined"
    not_run = "not run"

    @property
    def proves_tree_bad(self) -> bool:
        """A failure: the candidate is rejected, whatever else happened."""
        return self is Outcome.failed

    @property
    def decides_against(self) -> bool:
        """The outcomes that decide a verdict against the candidate and so get a
        ``reproduce:`` line (a quarantined failure decides nothing)."""
        return self in (Outcome.failed, Outcome.error)

    @property
    def quarantinable(self) -> bool:
        """The outcomes a quarantine entry turns into :attr:`quarantined`."""
        return self in (Outcome.failed, Outcome.error, Outcome.flaky)

    def counts_as_pass(self, flaky_passes: bool) -> bool:
        """Whether this outcome shows a required suite ran on the candidate and held."""
        return self in (Outcome.passed, Outcome.quarantined) or (
            self is Outcome.flaky and flaky_passes
        )


class Decision(StrEnum):
    """What a gate decided, with the exit code ``treegate gate`` ends with."""

    promoted = "promoted"
    rejected = "rejected"
    error = "error"
    interrupted = "interrupted"

    @property
    def exit_code(self) -> int:
        return {"promoted": 0, "rejected": 1, "error": 3, "interrupted": 130}[self.value]


@dataclass(frozen=True)
class CaseResult:
    """One test's outcome on one arch, with the command that reproduces it."""

    nodeid: str
    arch: str
    outcome: Outcome
    duration: float
    message: str = ""
    reproduce: str = ""

    def __post_init__(self) -> None:
        # Results read back from JSON or the store carry the outcome as text.
        object.__setattr__(self, "outcome", Outcome(self.outcome))

    @property
    def suite(self) -> str:
        """The suite, named after the test's module (``tests/system/test_upgrade.py``)."""
        name = self.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        return name.removeprefix("test_").removesuffix(".py")

    @property
    def headline(self) -> str:
        """The message's first line: what failed (the lines after it say why)."""
        return self.message.split("\n", 1)[0]


@dataclass(frozen=True)
class ArchRefs:
    """What one arch of a gate was about: its refs (``{arch}`` expanded) and commits."""

    arch: str
    candidate_ref: str
    candidate: str
    tested_ref: str
    promotion_commit: str | None


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and everything that led to it.

    ``candidate`` and ``promotion_commit`` are the first arch's; ``per_arch`` has every arch's.
    """

    decision: Decision
    reason: str
    repo: str
    candidate_ref: str
    tested_ref: str
    candidate: str
    promotion_commit: str | None
    arches: tuple[str, ...]
    suites: tuple[str, ...]
    results: tuple[CaseResult, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    run_id: int = 0
    artifacts: str = ""
    per_arch: tuple[ArchRefs, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "decision", Decision(self.decision))

    @property
    def exit_code(self) -> int:
        return self.decision.exit_code

    def to_json(self) -> dict[str, object]:
        """The verdict as ``--json`` writes it."""
        return {
            "decision": str(self.decision),
            "reason": self.reason,
            "repo": self.repo,
            "candidate_ref": self.candidate_ref,
            "tested_ref": self.tested_ref,
            "candidate": self.candidate,
            "promotion_commit": self.promotion_commit,
            "arches": list(self.arches),
            "suites": list(self.suites),
            "notes": list(self.notes),
            "artifacts": self.artifacts,
            "per_arch": [asdict(a) for a in self.per_arch],
            "results": [
                {
                    "nodeid": r.nodeid,
                    "arch": r.arch,
                    "outcome": str(r.outcome),
                    "duration": r.duration,
                    "message": r.message,
                    "reproduce": r.reproduce,
                }
                for r in self.results
            ],
        }

    def table(self) -> str:
        """The verdict as the lines ``treegate gate`` prints."""
        heading = str(self.decision).upper()
        if len(self.per_arch) > 1:
            lines = [f"{heading}:"]
            lines += [
                f"  {a.arch:7} {a.candidate_ref} {a.candidate[:12]} → {a.tested_ref}"
                for a in self.per_arch
            ]
        elif self.per_arch:
            a = self.per_arch[0]  # its refs with {arch} expanded
            lines = [f"{heading}: {a.candidate_ref} {a.candidate[:12]} → {a.tested_ref}"]
        else:
            lines = [f"{heading}: {self.candidate_ref} {self.candidate[:12]} → {self.tested_ref}"]
        lines.append(f"  {self.reason}")
        lines += [f"  note: {n}" for n in self.notes]
        for r in self.results:
            lines.append(f"  {r.outcome:8} {r.duration:6.1f}s  {r.arch:7} {r.nodeid}")
            if r.outcome.decides_against and r.message:
                lines += [f"           {line}" for line in r.message.splitlines()]
        lines += _reproduce_lines(self.results)
        for a in self.per_arch:
            if a.promotion_commit:
                lines.append(f"  promotion commit ({a.arch}): {a.promotion_commit}")
        lines.append(f"  logs: {self.artifacts}")
        lines.append(
            f"  report: treegate report --results {self.artifacts}/allure-results --out REPORT_DIR"
        )
        return "\n".join(lines)


def _reproduce_lines(results: Sequence[CaseResult]) -> list[str]:
    """One ``reproduce:`` line per distinct cause among the results that decided against the
    candidate: tests that failed the same way on one arch (eight tests after one kernel
    panic) share one line."""
    causes: dict[tuple[str, str], list[CaseResult]] = {}
    for r in results:
        if r.outcome.decides_against and r.reproduce:
            # A kernel's timestamp differs from boot to boot; the cause does not.
            cause = re.sub(r"\[\s*\d+\.\d+\]", "", r.headline)
            causes.setdefault((r.arch, cause), []).append(r)
    lines = []
    for same in causes.values():
        more = f"   (and {len(same) - 1} more that failed the same way)" if len(same) > 1 else ""
        lines.append(f"  reproduce: {same[0].reproduce}{more}")
    return lines


def decide(
    results: Sequence[CaseResult],
    required: Sequence[str],
    arches: Sequence[str],
    flaky_passes: bool = False,
) -> tuple[Decision, str]:
    """The decision for ``results``, with its one-line reason.

    A failure anywhere rejects (the tree is proven bad); otherwise an error anywhere, a flaky
    test (unless ``flaky_passes``), or a required suite with no result on an arch, is an error
    (nothing is proven); otherwise a required suite that only skipped rejects; otherwise the
    candidate is promoted.  *quarantined* outcomes never block.
    """
    failed = [r for r in results if r.outcome.proves_tree_bad]
    if failed:
        names = ", ".join(f"{r.nodeid} ({r.arch})" for r in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        return Decision.rejected, f"{len(failed)} test(s) failed: {names}{more}"
    known = (Outcome.passed, Outcome.skipped, Outcome.flaky, Outcome.quarantined)
    broken = [r for r in results if r.outcome not in known]
    if broken:
        first = broken[0]
        return (
            Decision.error,
            f"{len(broken)} test(s) ended in {first.outcome}: {first.nodeid} ({first.arch}): "
            f"{first.headline}",
        )
    flaky = [r for r in results if r.outcome is Outcome.flaky]
    if flaky and not flaky_passes:
        names = ", ".join(f"{r.nodeid} ({r.arch})" for r in flaky[:3])
        return (
            Decision.error,
            f"{len(flaky)} test(s) flaky (error, then passed on a retry): {names}; "
            "flaky tests do not count as passes (--flaky-passes)",
        )
    for arch in arches:
        for suite in required:
            mine = [r for r in results if r.arch == arch and r.suite == suite]
            if not mine:
                return Decision.error, f"required suite {suite} produced no results on {arch}"
            if not any(r.outcome.counts_as_pass(flaky_passes=True) for r in mine):
                why = mine[0].headline or "skipped"
                return Decision.rejected, f"required suite {suite} was skipped on {arch}: {why}"
    if not results:
        return Decision.error, "no test ran"
    notes = []
    if flaky:
        notes.append(f"{len(flaky)} flaky")
    quarantined = [r for r in results if r.outcome is Outcome.quarantined]
    if quarantined:
        notes.append(f"{len(quarantined)} quarantined")
    extra = f" ({', '.join(notes)})" if notes else ""
    return (
        Decision.promoted,
        f"{len(results)} test(s) on {', '.join(arches)}: every required suite passed{extra}",
    )
