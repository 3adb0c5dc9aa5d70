"""The installed suite on real VMs, on a tree whose installed tests end in every way one can:
what treegate reports for each (outcome, reason, output), one pytest item per test.

The tree is the ``installed-tests-faults`` fixture (``treegate-faults/`` beside the libostree
tests).  The suite runs as the gate runs it: pytest in a subprocess with ``--repo`` and
``--commit``, outcomes read from ``--treegate-results``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.boot import PROJECT_ROOT
from harness.plugin.session import Harness

pytestmark = pytest.mark.vm

TIMEOUT_S = 10
"""``--installed-timeout`` for this run: the hanging test is killed after it."""


@pytest.mark.nightly  # 2 min under TCG; ci/test keeps the comparison with the runner
def test_each_installed_test_is_an_item_with_its_own_outcome(
    harness: Harness, arch: str, tmp_path: Path
) -> None:
    commit = harness.fixture_commit("installed-tests-faults", arch)
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/system/test_installed.py",
            "--repo",
            str(harness.repo.path),
            "--commit",
            commit.checksum,
            "--arch",
            arch,
            "--installed-prefix",
            "treegate-faults/",
            "--installed-timeout",
            str(TIMEOUT_S),
            "--state-dir",
            str(harness.state.root),
            "--treegate-results",
            str(results),
            "-p",
            "no:cacheprovider",
            "-rA",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = proc.stdout + proc.stderr
    by_test = {
        r["nodeid"].split(f"[{arch}-", 1)[1].rstrip("]"): r for r in json.loads(results.read_text())
    }
    # Every test of the suite is its own item, and nothing else was collected.
    assert set(by_test) == {
        f"treegate-faults/{name}"
        for name in (
            "broken.test",
            "destructive/first.test",
            "destructive/second.test",
            "environment.test",
            "exclusive.test",
            "fails.test",
            "hangs.test",
            "runner-env.test",
            "skips.test",
        )
    }, out
    outcome = {name: r["outcome"] for name, r in by_test.items()}
    message = {name: r["message"] for name, r in by_test.items()}

    # Run as gnome-desktop-testing-runner runs them: its directory, environment, stdin.
    assert outcome["treegate-faults/runner-env.test"] == "passed", out
    assert outcome["treegate-faults/environment.test"] == "passed", out
    # Exit 77 skips, with the output's last line as the reason.
    assert outcome["treegate-faults/skips.test"] == "skipped", out
    assert "no frobnicator on this machine" in message["treegate-faults/skips.test"]
    # Any other exit status fails, with the status and the last output lines.
    assert outcome["treegate-faults/fails.test"] == "failed", out
    assert "exited 3" in message["treegate-faults/fails.test"]
    assert "expected 2 deployments, found 3" in out
    # A hanging test is killed at its timeout and fails with its last output.
    assert outcome["treegate-faults/hangs.test"] == "failed", out
    assert "killed at its timeout" in message["treegate-faults/hangs.test"]
    assert "waiting for a lock that never comes" in out
    assert by_test["treegate-faults/hangs.test"]["duration"] < TIMEOUT_S + 60
    # A key file the runner cannot read fails that test only.
    assert outcome["treegate-faults/broken.test"] == "failed", out
    assert "unknown test type 'sometimes'" in message["treegate-faults/broken.test"]
    # Destructive and session-exclusive tests each had a machine of their own: each fails if
    # another one marked its machine first.
    for name in ("destructive/first.test", "destructive/second.test", "exclusive.test"):
        assert outcome[f"treegate-faults/{name}"] == "passed", out
    assert proc.returncode == 1, out  # pytest: some tests failed
