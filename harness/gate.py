"""The gate: run the required suites on every required arch, decide, and promote only on a clean pass.

What the outcomes mean and how they decide is :mod:`harness.outcome`.  Only when every
required suite passed on every arch is the tested ref moved, by one promotion commit per arch
that carries the candidate's exact tree and, in its metadata, the candidate checksum, arches,
suites and outcomes.

Refs for several arches: ``--ref`` and ``--promote-to`` may contain ``{arch}``, expanded per
arch (``treegate/bookworm/{arch}/minimal``); without it the same ref is used for every arch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.arch import get_arch
from harness.config import Config, Stream
from harness.contract import check_tree
from harness.errors import UserError
from harness.external import discover
from harness.layout import load_layout
from harness.machine.base import Backend
from harness.outcome import ArchRefs, CaseResult, Decision, Outcome, Verdict, decide
from harness.quarantine import Entry, apply_quarantine, load_quarantine
from harness.repo import Commit, Repo
from harness.runspec import TIMED_OUT, RunSpec, run_pytest
from harness.signing import SigningKey, check_signed
from harness.state import State
from harness.store import ResultRow, Store
from harness.suites import PROJECT_ROOT, SUITES, Suite, get_suite


@dataclass(frozen=True)
class GateConfig:
    """Everything one gate run needs, from the command line or a config file."""

    repo: Path
    candidate_ref: str
    tested_ref: str
    arches: tuple[str, ...] = ("x86_64",)
    suites: tuple[str, ...] = ()
    """Required suites; empty means every suite that applied to the baseline."""
    rebase_ref: str | None = None
    state_dir: Path | None = None
    workers: int = 1
    layout: str | None = None
    accel: str | None = None
    wait_for_lock: bool = True
    external_tests: Path | None = None
    installed_prefixes: tuple[str, ...] = ()
    """The ``installed`` suite runs only the installed tests whose names start with one of
    these (``--installed-prefix``; default: every installed test of the candidate)."""
    """A directory of external tests in kola's format, run as the ``external`` suite."""
    timeout_min: float | None = None
    """Bound on the whole gate's tests: past it, pytest is stopped and the gate is an error."""
    flaky_passes: bool = False
    """Policy: a flaky test (error, then passed when retried on a fresh machine) counts as a
    pass.  By default it does not, and the gate ends in error (nothing proven)."""
    quarantine: tuple[Entry, ...] = ()
    """Known-bad tests that are reported but do not block (see :mod:`harness.quarantine`)."""
    backend: Backend = field(default_factory=Backend)
    """What runs the machines (``--backend``, ``--libvirt-uri``)."""
    signing: SigningKey | None = None
    """With a key: candidates (and the rebase target) must be signed by it, guests verify
    every pull against it, and promotion commits and the summary are signed with it."""
    allow_downgrade: bool = False
    """Gate (and promote) a candidate older than the one the tested ref holds
    (``--allow-downgrade``); refused before anything boots otherwise."""


def config_for_stream(
    config: Config,
    stream: Stream,
    *,
    signing: SigningKey | None = None,
    state_dir: Path | None = None,
) -> GateConfig:
    """The gate of one stream of a ``treegate.toml`` (the CLI's flags may override it)."""
    return GateConfig(
        repo=config.repo,
        candidate_ref=stream.candidate,
        tested_ref=stream.tested,
        arches=stream.arches,
        suites=stream.suites,
        rebase_ref=stream.rebase,
        state_dir=state_dir or config.state_dir,
        timeout_min=stream.timeout_min,
        backend=config.backend,
        signing=signing,
        flaky_passes=config.flaky_passes,
        quarantine=load_quarantine(config.quarantine) if config.quarantine else (),
    )


def required_suites(
    config: GateConfig, repo: Repo, baseline: Commit | None, candidate: Commit
) -> tuple[list[Suite], list[str]]:
    """The suites the gate requires, and notes on what it left out and why."""
    notes: list[str] = []
    if config.suites:
        chosen = [get_suite(name) for name in config.suites]
    else:
        reference = baseline or candidate
        chosen = [s for s in SUITES.values() if s.applies_to(repo, reference)]
        left = [s.name for s in SUITES.values() if s not in chosen]
        if left:
            notes.append(
                f"not required ({'baseline' if baseline else 'candidate'} lacks their feature): "
                + ", ".join(left)
            )
    if baseline is None:
        dropped = [s.name for s in chosen if s.needs_baseline]
        if dropped:
            notes.append(
                f"first commit of the stream (no tested ref yet): gated without {', '.join(dropped)}"
            )
        chosen = [s for s in chosen if not s.needs_baseline]
    if config.rebase_ref is None:
        dropped = [s.name for s in chosen if s.needs_rebase_ref]
        if dropped:
            notes.append(f"no --rebase-ref: gated without {', '.join(dropped)}")
        chosen = [s for s in chosen if not s.needs_rebase_ref]
    if config.external_tests is None:
        if "external" in config.suites:
            notes.append("no --external-tests: gated without external")
        chosen = [s for s in chosen if not s.needs_external]
    return chosen, notes


def expand(ref: str, arch: str) -> str:
    """``ref`` with ``{arch}`` replaced."""
    return ref.replace("{arch}", arch)


@contextlib.contextmanager
def gate_lock(state: State, repo: Repo, tested_ref: str, wait: bool) -> Iterator[None]:
    """Hold the lock of ``tested_ref`` in ``repo``: one gate at a time may move it."""
    key = hashlib.sha256(f"{repo.path}\0{tested_ref}".encode()).hexdigest()[:16]
    locks = state.root / "locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{key}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise UserError(
                    f"another gate is running on {tested_ref}", hint="try again later"
                ) from None
            print(f"waiting for another gate on {tested_ref} …", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_gate(config: GateConfig) -> Verdict:
    """Gate the candidate: run, decide, promote on a clean pass, record, and return the verdict."""
    state = State.at(config.state_dir)
    repo = Repo(config.repo)
    repo.check()
    for arch in config.arches:
        get_arch(arch)
    for name in config.suites:
        get_suite(name)
    if len(config.arches) > 1 and "{arch}" not in config.candidate_ref:
        raise UserError(
            "gating several arches needs per-arch refs", hint="put {arch} in --ref and --promote-to"
        )
    candidates = {a: repo.resolve(expand(config.candidate_ref, a)) for a in config.arches}
    for arch, commit in candidates.items():
        built_for = commit.metadata.get("treegate.arch")
        if built_for and built_for != arch:
            raise UserError(
                f"{expand(config.candidate_ref, arch)} holds a commit built for {built_for}, "
                f"not {arch}",
                hint="put {arch} in --ref, or pass the arch it was built for",
            )
    if config.rebase_ref is not None:
        for arch in config.arches:
            repo.resolve(expand(config.rebase_ref, arch))
    if config.external_tests is not None:
        discover(config.external_tests)  # a missing or empty directory is a one-line error now
    first_arch = config.arches[0]
    tested_refs = {a: expand(config.tested_ref, a) for a in config.arches}
    with gate_lock(state, repo, config.tested_ref, config.wait_for_lock):
        baselines = {a: repo.try_resolve(tested_refs[a]) for a in config.arches}
        if not config.allow_downgrade:
            for arch in config.arches:
                _refuse_downgrade(repo, candidates[arch], baselines[arch], tested_refs[arch])
        suites, notes = required_suites(config, repo, baselines[first_arch], candidates[first_arch])
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        store = Store(state.root / "treegate.db")
        run_dir = state.runs / f"gate-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        run_id = store.start_run(
            kind="gate",
            repo=str(repo.path),
            candidate_ref=config.candidate_ref,
            tested_ref=config.tested_ref,
            candidate=candidates[first_arch].checksum,
            baseline=_checksum(baselines[first_arch]),
            arches=config.arches,
            suites=[s.name for s in suites],
            artifacts=str(run_dir),
        )
        results: list[CaseResult] = []
        promotions: dict[str, str] = {}
        decision, reason = Decision.interrupted, "interrupted"
        try:
            # Nothing boots for a candidate that is refused before its tests.
            refused = _unsigned(config, repo, candidates) or _unreachable(config, repo, candidates)
            if refused:
                results = refused
                decision, reason = decide(results, [s.name for s in suites], config.arches)
            elif not suites:
                decision, reason = Decision.error, "no suite applies to this candidate"
            else:
                deadline = (
                    time.monotonic() + config.timeout_min * 60 if config.timeout_min else None
                )
                for arch in config.arches:
                    run = _ArchRun(
                        config, state, repo, arch, candidates[arch], baselines[arch], tuple(suites)
                    )
                    first = _run_suites(run, run_dir / arch, deadline)
                    results += _retry_errors(first, run, run_dir / f"{arch}-retry", deadline)
                results = apply_quarantine(results, config.quarantine, datetime.date.today())
                decision, reason = decide(
                    results, [s.name for s in suites], config.arches, config.flaky_passes
                )
            if decision is Decision.promoted:
                promotions = _promote(
                    repo, config, candidates, baselines, tested_refs, suites, results
                )
        finally:
            store.finish_run(
                run_id,
                decision=decision,
                reason=reason,
                promotion_commit=promotions.get(first_arch),
                results=[
                    ResultRow(
                        r.nodeid, r.arch, r.suite, r.outcome, r.duration, r.message, r.reproduce
                    )
                    for r in results
                ],
            )
    return Verdict(
        decision=decision,
        reason=reason,
        repo=str(repo.path),
        candidate_ref=config.candidate_ref,
        tested_ref=config.tested_ref,
        candidate=candidates[first_arch].checksum,
        promotion_commit=promotions.get(first_arch),
        arches=config.arches,
        suites=tuple(s.name for s in suites),
        results=tuple(results),
        notes=tuple(notes),
        run_id=run_id,
        artifacts=str(run_dir),
        per_arch=tuple(
            ArchRefs(
                arch=a,
                candidate_ref=expand(config.candidate_ref, a),
                candidate=candidates[a].checksum,
                tested_ref=tested_refs[a],
                promotion_commit=promotions.get(a),
            )
            for a in config.arches
        ),
    )


def _refuse_downgrade(
    repo: Repo, candidate: Commit, baseline: Commit | None, tested_ref: str
) -> None:
    """A one-line :class:`UserError` when ``candidate`` is older than the candidate the
    tested ref already holds: every machine that follows the ref would be moved back."""
    if baseline is None:
        return
    # The promoted candidate itself, not the promotion commit: an older treegate stamped
    # promotion commits with the time they were made, later than candidates composed
    # while they were gated.
    named = baseline.metadata.get("treegate.candidate")
    promoted = (repo.try_resolve(named) if named else None) or baseline
    if candidate.is_older_than(promoted):
        raise UserError(
            f"candidate {candidate.short} ({candidate.date}) is older than {promoted.short} "
            f"({promoted.date}), which {tested_ref} already holds: promoting it would downgrade "
            "every machine that follows the ref",
            hint="gate a newer commit, or pass --allow-downgrade to gate this one anyway",
        )


def _promotion_timestamp(candidate: Commit, baseline: Commit | None) -> int:
    """The promotion commit's timestamp: the candidate's own, so the tested ref's history
    keeps compose order whatever order the gates ran in; but never older than the tested
    ref's head (an allowed downgrade, or a head an older treegate stamped when it promoted),
    since ``ostree admin upgrade`` on every machine that follows the ref would refuse it:
    then the time of the promotion."""
    if baseline is None or not candidate.is_older_than(baseline):
        return candidate.timestamp
    return max(int(time.time()), baseline.timestamp)


def _unreachable(config: GateConfig, repo: Repo, candidates: dict[str, Commit]) -> list[CaseResult]:
    """A failed "tree contract" result for each requirement a candidate does not meet
    (:mod:`harness.contract`): such a tree can never be booted and reached."""
    out = []
    for arch_name, commit in candidates.items():
        arch = get_arch(arch_name)
        layout = load_layout(config.layout or arch.layout, PROJECT_ROOT / "images")
        for r in check_tree(repo, commit, arch, layout):
            if not r.met:
                out.append(
                    CaseResult(f"tree contract: {r.name}", arch_name, Outcome.failed, 0.0, r.line())
                )
    return out


def _unsigned(config: GateConfig, repo: Repo, candidates: dict[str, Commit]) -> list[CaseResult]:
    """With a signing key, a failed "signature" result for each candidate or rebase target
    not signed by it (nothing is booted for such a candidate: it is refused)."""
    if config.signing is None:
        return []
    out = []
    for arch, commit in candidates.items():
        checks = [("candidate", commit.checksum)]
        if config.rebase_ref is not None:
            rebase = repo.resolve(expand(config.rebase_ref, arch))
            checks.append(("rebase target", rebase.checksum))
        for what, checksum in checks:
            why = check_signed(repo.path, checksum, config.signing)
            if why is not None:
                out.append(
                    CaseResult(
                        nodeid=f"signature of the {what}",
                        arch=arch,
                        outcome=Outcome.failed,
                        duration=0.0,
                        message=f"{why}: refused",
                    )
                )
    return out


def _promote(
    repo: Repo,
    config: GateConfig,
    candidates: dict[str, Commit],
    baselines: dict[str, Commit | None],
    tested_refs: dict[str, str],
    suites: Sequence[Suite],
    results: Sequence[CaseResult],
) -> dict[str, str]:
    """Promote every arch's candidate to its tested ref; the promotion commits by arch."""
    promotions: dict[str, str] = {}
    for arch in config.arches:
        candidate = candidates[arch]
        outcomes = {r.nodeid: r.outcome for r in results if r.arch == arch}
        promotions[arch] = repo.promote(
            candidate,
            tested_refs[arch],
            subject=f"Promote {candidate.short} ({candidate.version or 'no version'}) from "
            f"{expand(config.candidate_ref, arch)}",
            metadata={
                "treegate.candidate": candidate.checksum,
                "treegate.candidate-ref": expand(config.candidate_ref, arch),
                "treegate.arches": ",".join(config.arches),
                "treegate.suites": ",".join(s.name for s in suites),
                "treegate.outcomes": json.dumps(outcomes, sort_keys=True),
            },
            timestamp=_promotion_timestamp(candidate, baselines[arch]),
            sign=config.signing,
        )
    return promotions


@dataclass(frozen=True)
class _ArchRun:
    """One arch's share of a gate: what each of its pytest runs needs."""

    config: GateConfig
    state: State
    repo: Repo
    arch: str
    candidate: Commit
    baseline: Commit | None
    suites: tuple[Suite, ...]


def _retry_errors(
    first: list[CaseResult], run: _ArchRun, run_dir: Path, deadline: float | None
) -> list[CaseResult]:
    """Run each test that ended in error once more, on fresh machines: one that passes then
    is *flaky*; otherwise the second outcome stands (a failure then rejects)."""
    errored = [r.nodeid for r in first if r.outcome is Outcome.error and "::" in r.nodeid]
    if not errored:
        return first
    retried = {r.nodeid: r for r in _run_suites(run, run_dir, deadline, errored)}
    out = []
    for r in first:
        again = retried.get(r.nodeid) if r.outcome is Outcome.error else None
        if again is None:
            out.append(r)
        elif again.outcome is Outcome.passed:
            out.append(
                dataclasses.replace(
                    r,
                    outcome=Outcome.flaky,
                    duration=r.duration + again.duration,
                    message=f"error, then passed on a fresh machine (first: {r.headline})",
                    reproduce="",
                )
            )
        else:
            out.append(
                dataclasses.replace(again, message=f"the retry of an error: {again.message}")
            )
    return out


def _run_suites(
    run: _ArchRun, run_dir: Path, deadline: float | None = None, tests: Sequence[str] = ()
) -> list[CaseResult]:
    """Run the suites (or only the node ids ``tests``) in a pytest subprocess for one arch."""
    config, arch, suites = run.config, run.arch, run.suites
    spec = RunSpec(
        repo=run.repo.path,
        arch=arch,
        commit=run.candidate.checksum,
        origin_ref=expand(config.candidate_ref, arch),
        baseline=_checksum(run.baseline),
        rebase_ref=expand(config.rebase_ref, arch) if config.rebase_ref is not None else None,
        layout=config.layout,
        accel=config.accel,
        backend=config.backend,
        external_tests=config.external_tests,
        installed_prefixes=config.installed_prefixes,
        signing=config.signing,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    options = [*spec.options(), "--state-dir", str(run.state.root)]
    options += [
        f"--junitxml={run_dir / 'junit.xml'}",
        # Every arch's results in one allure directory: one report for the whole gate.
        f"--alluredir={run_dir.parent / 'allure-results'}",
        *("-q", "-rfE"),
    ]
    if config.workers > 1:
        options += ["-n", str(config.workers), "--dist", "loadfile"]
    code, rows = run_pytest(
        list(tests) or [str(s.path.relative_to(PROJECT_ROOT)) for s in suites],
        options,
        run_id=str(run_dir.relative_to(run.state.runs)),
        results=run_dir / "results.json",
        deadline=deadline,
    )
    what = f"pytest ({', '.join(s.name for s in suites)})"
    if code == TIMED_OUT:
        why = f"the gate's timeout of {config.timeout_min:g} min expired; its machines were stopped"
        return [CaseResult(what, arch, Outcome.error, 0.0, why)]
    if rows is None:
        return [CaseResult(what, arch, Outcome.error, 0.0, f"pytest exited {code} without results")]
    out = []
    if code not in (0, 1):
        # Interrupted, internal error or usage error: whatever results exist prove nothing.
        out.append(CaseResult("pytest", arch, Outcome.error, 0.0, f"pytest exited {code}"))
    for r in rows:
        outcome = Outcome(str(r["outcome"]))
        nodeid = str(r["nodeid"])
        out.append(
            CaseResult(
                nodeid=nodeid,
                arch=arch,
                outcome=outcome,
                duration=float(str(r["duration"])),
                message=str(r["message"]),
                reproduce=spec.reproduce(nodeid) if outcome.decides_against else "",
            )
        )
    return out


def _checksum(commit: Commit | None) -> str | None:
    return commit.checksum if commit is not None else None
