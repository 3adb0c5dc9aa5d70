"""Outcomes as treegate's taxonomy says: a :class:`~harness.errors.TreeFailure` (a panic on
the console, a command that failed) is reported **failed** even when a fixture hit it while
booting; an :class:`~harness.errors.InfraError` (QEMU died, the host broke) is reported
**error** even in the test body.  Each test's body is bounded by its ``timeout`` marker, and
a failure's report starts with what failed, why, and how to reproduce it."""

from __future__ import annotations

import contextlib
import shlex
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from harness.arch import ARCHES
from harness.errors import (
    GuestTimeout,
    InfraError,
    TreeFailure,
    TreegateError,
    describe,
)
from harness.guest import Guest
from harness.plugin.options import DEFAULT_TEST_TIMEOUT
from harness.plugin.session import Harness
from harness.repo import Commit


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Bound each test's body by its ``timeout`` marker, scaled for emulated arches."""
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT
    callspec = getattr(item, "callspec", None)
    arch = callspec.params.get("arch") if callspec is not None else None
    limit = seconds * (ARCHES[arch].timeout_scale if arch in ARCHES else 1.0)

    def expired(signum: int, frame: object) -> None:
        raise GuestTimeout(f"{item.name} did not finish within its {limit:.0f} s timeout")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# trylast: the inner wrapper, so the report is rewritten before allure-pytest's wrapper reads
# it (the first lines of a failure in the allure report are the summary below).
@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, TreeFailure) and report.when == "setup":
        # The tree is bad even though a fixture noticed (a panic while booting): failed.
        report.when = "call"
    elif isinstance(exc, InfraError) and report.when == "call":
        # The harness or host broke under the test: error, never failed.
        report.when = "setup"
    setattr(item, f"rep_{call.when}", report)
    if exc is not None:
        # What went wrong and why (a failed command's last output lines), for the gate's
        # verdict and the store.
        message = ("treegate_message", describe(exc))
        item.user_properties.append(message)
        report.user_properties.append(message)  # the report holds a copy (xdist sends it)
    if exc is not None and isinstance(exc, TreegateError):
        report.longrepr = _short_repr(report, exc)
    if exc is not None and report.failed and report.when == "call":
        report.longrepr = f"{_failure_summary(item, exc)}\n\n{report.longrepr}"


_MACHINE_FIXTURES = ("machine", "baseline_machine", "upgraded_machine", "shared_machine")


def _failure_summary(item: pytest.Item, exc: BaseException) -> str:
    """The first lines a release engineer reads about a failed test (in pytest's output and
    the allure report): what failed, on which arch and commit, the command that reproduces it,
    and the last console lines (a machine restored from its saved state has printed none)."""
    funcargs = getattr(item, "funcargs", {})
    callspec = getattr(item, "callspec", None)
    arch = callspec.params.get("arch", "x86_64") if callspec is not None else "x86_64"
    candidate = funcargs.get("candidate")
    harness = funcargs.get("harness")
    what, *why = describe(exc).splitlines()
    if getattr(exc, "console_tail", ""):
        why = []  # the console's last lines follow below, whole
    lines = [f"{item.name} failed on {arch}: {what}", *(f"  {line}" for line in why)]
    nodeid = item.nodeid if not item.nodeid.startswith("::") else f"{item.path}::{item.name}"
    guest = next((funcargs[f] for f in _MACHINE_FIXTURES if f in funcargs), None)
    commit = candidate.checksum if isinstance(candidate, Commit) else ""
    if not commit and isinstance(guest, Guest):
        commit = guest.image_commit
    if commit:
        lines.append(f"commit: {commit}")
    if isinstance(harness, Harness) and harness.options.repo and commit:
        reproduce = harness.spec(item.config, arch, commit).reproduce(nodeid)
    else:
        # The session composed the fixture trees: the same command composes them again.
        reproduce = shlex.join(["pytest", nodeid, "--arch", arch])
    lines.append(f"reproduce: {reproduce}")
    tail = getattr(exc, "console_tail", "")
    if not tail and isinstance(guest, Guest):
        with contextlib.suppress(OSError):
            tail = guest.console.tail(15)
    if tail:
        lines += ["", "last console lines:", tail]
    return "\n".join(lines)


def _short_repr(report: pytest.TestReport, exc: TreegateError) -> str:
    # The traceback through the harness is noise to a test author; the message says it all.
    # Keep the test's own frames: they show which step of the test failed.
    full = str(report.longrepr)
    frames = [b for b in full.split("\n\n") if "tests/" in b and "harness/" not in b]
    head = "\n\n".join(frames[-1:])
    return f"{head}\n\n{type(exc).__name__}: {exc}" if head else f"{type(exc).__name__}: {exc}"
