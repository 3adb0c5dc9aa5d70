"""``treegate boot`` and ``treegate ssh`` as a user runs them, and what is left behind when the
harness is stopped or killed: no QEMU process, and (after the next run) no work directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.boot import machines_dir
from harness.machine.backends import reap_stale
from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm

StartBoot = Callable[..., "subprocess.Popen[str]"]
"""The ``start_boot`` fixture (tests/conftest.py)."""
ROOT = Path(__file__).resolve().parents[2]


def qemu_running(name: str) -> bool:
    out = subprocess.run(
        ["pgrep", "-f", f"qemu-system-.* -name {name} "], capture_output=True, check=False
    )
    return out.returncode == 0


def test_boot_then_ssh_then_sigterm_leaves_nothing(
    start_boot: StartBoot, harness: Harness, candidate: Commit, arch: str
) -> None:
    name = f"cli-term-{os.getpid()}"
    proc = start_boot(harness.repo.path, candidate.checksum, harness.state.root, name)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "harness.cli",
                "ssh",
                "--state-dir",  # options before the name: what follows it is the remote command
                str(harness.state.root),
                name,
                "ostree",
                "admin",
                "status",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert candidate.checksum in out.stdout
        assert qemu_running(name)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 130
    assert not qemu_running(name)
    assert not list((harness.state.tmp / "machines").glob(f"{name}-*"))


# ci/nightly: the SIGTERM test above proves the CLI's clean-up in ci/test.
@pytest.mark.nightly
def test_killed_harness_takes_qemu_with_it(
    start_boot: StartBoot, harness: Harness, candidate: Commit, arch: str
) -> None:
    name = f"cli-kill-{os.getpid()}"
    proc = start_boot(harness.repo.path, candidate.checksum, harness.state.root, name)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while qemu_running(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not qemu_running(name), "QEMU outlived the harness that was killed"
    # The next machine treegate starts reaps the work directory the killed run left.
    assert list((harness.state.tmp / "machines").glob(f"{name}-*"))
    reap_stale(machines_dir(harness.state))
    assert not list((harness.state.tmp / "machines").glob(f"{name}-*"))
