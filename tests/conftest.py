"""Fixtures shared by treegate's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TreegateCli = Callable[..., subprocess.CompletedProcess[str]]
StartBoot = Callable[..., "subprocess.Popen[str]"]


def _run_treegate(
    *args: str, timeout: float = 1800, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def treegate_cli() -> TreegateCli:
    """Run the ``treegate`` command as a user would, from the project root (or ``cwd=``);
    returns the completed process (never raises on a non-zero exit: tests assert on it)."""
    return _run_treegate


def _start_boot(
    repo: Path, commit: str, state: Path, name: str, *extra: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "harness.cli", "boot", "--repo", str(repo)),
            *("--commit", commit, "--name", name, "--state-dir", str(state), *extra),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if " up in " in line:
            return proc
        assert time.monotonic() < deadline, "treegate boot did not come up"
    raise AssertionError(f"treegate boot exited {proc.wait()} before the machine was up")


@pytest.fixture
def start_boot() -> StartBoot:
    """Start ``treegate boot --repo REPO --commit C --state-dir S --name NAME [EXTRA…]`` as a
    user would, and return the process once it says the machine is up (its output stays on
    the process's stdout)."""
    return _start_boot


def _ours_or_orphaned(pid: int) -> bool:
    """True when ``pid`` descends from this pytest, or was left to init by a dead parent.

    Another test run on the same machine (a developer's, a second checkout's) owns its own
    machines: they are neither, so they are not this run's leftovers.
    """
    me = os.getpid()
    first = True
    while pid > 1:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        ppid = int(next(li.split()[1] for li in status.splitlines() if li.startswith("PPid:")))
        if ppid == me:
            return True
        if ppid <= 1:
            return first
        pid, first = ppid, False
    return False


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Nothing a run of treegate's own tests started may outlive it: no QEMU process, no
    machine work directory, no half-built image or saved state.  Leftovers fail the run.

    Only for runs that include ``tests/harness`` or ``tests/unit`` (not the gate's runs of
    the suites, which may share a state directory with another gate's live machines), and
    without pytest-xdist (its controller collects no items).
    """
    own = ("tests/harness/", "tests/unit/")
    if not any(item.nodeid.startswith(own) for item in session.items):
        return
    from harness.state import State

    state = State.at(session.config.getoption("tg_state"))
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        line = b" ".join(argv).decode(errors="replace")
        if (
            argv
            and b"qemu-system" in argv[0]
            and (str(state.root) in line or "/pytest-of-" in line)
            and _ours_or_orphaned(int(pid))
        ):
            leftovers.append(f"QEMU process {pid}: {line[:120]}")
    machines = state.tmp / "machines"
    if machines.is_dir():
        leftovers += [f"machine work directory {p}" for p in machines.iterdir()]
    for cache in (state.images, state.root / "snapshots"):
        if cache.is_dir():
            leftovers += [f"half-built {p}" for p in cache.rglob(".build-*")]
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "treegate: the run left things behind:\n  " + "\n  ".join(leftovers)
        if reporter is not None:
            reporter.write_line(text, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
