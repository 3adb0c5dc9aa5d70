"""A gate that is interrupted or raced: the tested ref is never half-moved.

SIGTERM to a running gate destroys its VMs, records the run as interrupted and exits 130; a
second gate on the same tested ref refuses (``--no-wait``) while the first holds the lock.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.gate import gate_lock
from harness.plugin.session import Harness
from harness.repo import Repo

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]


def qemu_running(marker: str) -> bool:
    found = subprocess.run(["pgrep", "-f", f"qemu-system.*{marker}"], capture_output=True)
    return found.returncode == 0


# ci/nightly: the gate-timeout test below also ends a running gate and checks no VM is left.
@pytest.mark.nightly
def test_sigterm_to_a_running_gate(harness: Harness, arch: str, tmp_path: Path) -> None:
    candidate = harness.fixture_commit("minimal-v2", arch)
    good = harness.fixture_commit("minimal", arch)
    tested = f"treegate-test/{arch}/tested-{uuid.uuid4().hex[:8]}"
    seeded = harness.repo.promote(good, tested, subject="seeded by the test", metadata={})
    state = tmp_path / "state"  # its own state dir: its machines are the only ones in it
    try:
        gate = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.cli",
                "gate",
                "--repo",
                str(harness.repo.path),
                "--ref",
                str(candidate.ref),
                "--promote-to",
                tested,
                "--arch",
                arch,
                "--suite",
                "smoke",
                "--state-dir",
                str(state),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 600
        while not qemu_running(str(state)) and gate.poll() is None:
            assert time.monotonic() < deadline, "the gate never started a VM"
            time.sleep(0.5)
        assert gate.poll() is None, gate.communicate()[0]
        gate.send_signal(signal.SIGTERM)
        output, _ = gate.communicate(timeout=120)
        assert gate.returncode == 130, output
        assert "Traceback" not in output
        deadline = time.monotonic() + 30
        while qemu_running(str(state)):
            assert time.monotonic() < deadline, "a VM outlived the interrupted gate"
            time.sleep(0.5)
        assert harness.repo.resolve(tested).checksum == seeded  # untouched
        with sqlite3.connect(state / "treegate.db") as db:
            rows = db.execute("SELECT decision, finished FROM runs").fetchall()
        assert [r[0] for r in rows] == ["interrupted"] and rows[0][1] is not None
    finally:
        harness.repo.delete_ref(tested)


def test_second_gate_on_the_same_tested_ref_refuses(
    treegate_cli: Callable[..., subprocess.CompletedProcess[str]], harness: Harness
) -> None:
    repo = Repo(harness.repo.path)
    candidate = harness.fixture_commit("minimal", "x86_64")
    tested = f"treegate-test/x86_64/tested-{uuid.uuid4().hex[:8]}"
    with gate_lock(harness.state, repo, tested, wait=False):
        proc = treegate_cli(
            "gate",
            "--repo",
            str(repo.path),
            "--ref",
            str(candidate.ref),
            "--promote-to",
            tested,
            "--no-wait",
            "--state-dir",
            str(harness.state.root),
            timeout=120,
        )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"another gate is running on {tested}" in proc.stderr
    assert repo.try_resolve(tested) is None  # nothing was written


def test_gate_past_its_timeout_is_an_error_and_leaves_no_vm(
    harness: Harness,
    arch: str,
    tmp_path: Path,
    treegate_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    candidate = harness.fixture_commit("minimal-v2", arch)
    good = harness.fixture_commit("minimal", arch)
    tested = f"treegate-test/{arch}/tested-{uuid.uuid4().hex[:8]}"
    seeded = harness.repo.promote(good, tested, subject="seeded by the test", metadata={})
    state = tmp_path / "state"  # its own: the smoke suite cannot finish in 12 s from nothing
    try:
        proc = treegate_cli(
            "gate",
            "--repo",
            str(harness.repo.path),
            "--ref",
            str(candidate.ref),
            "--promote-to",
            tested,
            "--arch",
            arch,
            "--suite",
            "smoke",
            "--timeout-min",
            "0.2",
            "--state-dir",
            str(state),
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 3, out
        assert "timeout of 0.2 min expired" in out, out
        assert "Traceback" not in out
        assert not qemu_running(str(state)), "a VM outlived the timed-out gate"
        assert harness.repo.resolve(tested).checksum == seeded  # untouched
    finally:
        harness.repo.delete_ref(tested)
