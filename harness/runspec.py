"""What one pytest run of the suites is about, and how it is run in a child process.

A :class:`RunSpec` is the contract between ``treegate gate`` (and ``bisect``), the pytest
plugin, and a person reproducing a failure: the gate builds it from commits it has already
resolved and checked, hands it to a pytest child as options (:meth:`RunSpec.options`), and
prints the same options in every ``reproduce:`` line (:meth:`RunSpec.reproduce`); the plugin
reads those options back, so a reproduction runs exactly what the gate ran.
:func:`run_pytest` is the child's protocol: its own process group, stopped cleanly on
Ctrl-C, SIGTERM or a deadline, its outcomes read from the results file it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.machine.base import Backend
from harness.signing import SigningKey
from harness.suites import PROJECT_ROOT


@dataclass(frozen=True)
class RunSpec:
    """The candidate, baseline and machine settings of one arch's pytest run."""

    repo: Path
    arch: str
    commit: str
    """The candidate's checksum."""
    origin_ref: str | None = None
    """The ref machines follow (the candidate's ref): what their deployments' origin names."""
    baseline: str | None = None
    """The last good commit's checksum (upgrade and rollback start from it)."""
    rebase_ref: str | None = None
    layout: str | None = None
    accel: str | None = None
    backend: Backend = field(default_factory=Backend)
    external_tests: Path | None = None
    installed_prefixes: tuple[str, ...] = ()
    signing: SigningKey | None = None

    def options(self) -> list[str]:
        """The pytest options that say all of this (the plugin's ``--repo``, ``--commit`` …)."""
        out = ["--repo", str(self.repo), "--commit", self.commit]
        if self.origin_ref is not None:
            out += ["--origin-ref", self.origin_ref]
        out += ["--arch", self.arch]
        if self.baseline is not None:
            out += ["--baseline", self.baseline]
        if self.rebase_ref is not None:
            out += ["--rebase-ref", self.rebase_ref]
        if self.layout:
            out += ["--layout", self.layout]
        if self.accel:
            out += ["--accel", self.accel]
        if self.backend != Backend():
            out += ["--backend", self.backend.kind, "--libvirt-uri", self.backend.uri]
        if self.external_tests is not None:
            out += ["--external-tests", str(self.external_tests.resolve())]
        for prefix in self.installed_prefixes:
            out += ["--installed-prefix", prefix]
        if self.signing is not None:
            out += ["--gpg-homedir", str(self.signing.homedir)]
            out += ["--gpg-key", self.signing.fingerprint]
        return out

    def reproduce(self, nodeid: str) -> str:
        """The command that runs test ``nodeid`` again as this run ran it."""
        return shlex.join(["pytest", nodeid, *self.options()])


TIMED_OUT = -1
"""What :func:`run_pytest` returns when the deadline passed."""


def run_pytest(
    tests: list[str],
    options: list[str],
    *,
    run_id: str,
    results: Path,
    deadline: float | None = None,
) -> tuple[int, list[dict[str, object]] | None]:
    """Run pytest on ``tests`` with ``options`` in a child process; return its exit status
    and the outcomes it wrote to ``results`` (``None`` when it wrote none).

    The child runs in its own process group: on Ctrl-C or SIGTERM here, or at ``deadline``
    (monotonic seconds; the status is then :data:`TIMED_OUT`), it is interrupted so that its
    fixtures destroy their machines, and killed if it does not end in 30 s.
    """
    argv = [sys.executable, "-m", "pytest", *tests, *options]
    argv += ["--treegate-results", str(results), "-p", "no:cacheprovider"]
    env = {**os.environ, "TREEGATE_RUN_ID": run_id}
    # In the project: its conftest.py registers the plugin, and node ids are relative to it.
    proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, start_new_session=True)
    try:
        try:
            code = proc.wait(
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            _stop(proc)
            return TIMED_OUT, None
    except BaseException:
        _stop(proc)
        raise
    try:
        rows = json.loads(results.read_text())
    except (OSError, ValueError):
        return code, None
    return code, rows if isinstance(rows, list) else None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    # pytest turns SIGINT into KeyboardInterrupt: fixtures destroy their machines.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
