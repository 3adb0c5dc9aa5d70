"""Flakes on real VMs: a test whose QEMU is killed once ends in error, is retried on a fresh
machine, passes, and is recorded as *flaky*, which blocks promotion unless policy says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm

TreegateCli = Callable[..., subprocess.CompletedProcess[str]]


def kill_once(pattern: str, stop: threading.Event) -> list[int]:
    """Kill the first QEMU whose command line contains ``pattern`` (in a thread)."""
    killed: list[int] = []

    def hunt() -> None:
        while not stop.is_set() and not killed:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if (
                    cmdline
                    and b"qemu-system" in cmdline[0]
                    and pattern.encode() in b" ".join(cmdline)
                ):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
            time.sleep(0.1)

    threading.Thread(target=hunt, daemon=True).start()
    return killed


@pytest.mark.parametrize(
    "policy", ["default", pytest.param("flaky-passes", marks=pytest.mark.nightly)]
)
def test_killed_vm_is_retried_and_recorded_flaky(
    treegate_cli: TreegateCli,
    harness: Harness,
    candidate: Commit,
    tmp_path: Path,
    policy: str,
) -> None:
    assert candidate.ref is not None
    tested = f"treegate-test/flaky-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    killed = kill_once("test_smoke", stop)  # the smoke suite's shared machine, first attempt
    verdict_file = tmp_path / "verdict.json"
    args = ["gate", "--repo", str(harness.repo.path), "--ref", candidate.ref]
    args += ["--promote-to", tested, "--suite", "smoke", "--state-dir", str(harness.state.root)]
    args += ["--json", str(verdict_file)]
    if policy == "flaky-passes":
        args.append("--flaky-passes")
    try:
        proc = treegate_cli(*args)
    finally:
        stop.set()
        if harness.repo.try_resolve(tested) is not None:
            harness.repo.delete_ref(tested)
    out = proc.stdout + proc.stderr
    assert killed, out
    verdict = json.loads(verdict_file.read_text())
    outcomes = {r["outcome"] for r in verdict["results"]}
    assert outcomes == {"flaky"}, verdict["results"]
    assert all("error, then passed on a fresh machine" in r["message"] for r in verdict["results"])
    if policy == "default":
        assert proc.returncode == 3, out
        assert verdict["decision"] == "error" and "flaky" in verdict["reason"]
        assert verdict["promotion_commit"] is None
        # The report's matrix says flaky too (allure keeps the errored attempt as a retry).
        report = treegate_cli(
            "report",
            "--results",
            f"{verdict['artifacts']}/allure-results",
            "--out",
            str(tmp_path / "report"),
            "--state-dir",
            str(harness.state.root),
        )
        assert report.returncode == 0, report.stdout + report.stderr
        page = (tmp_path / "report" / "index.html").read_text()
        row = next(line for line in page.splitlines() if "test_boots_the_candidate" in line)
        assert 'class="flaky"' in row, row
    else:
        assert proc.returncode == 0, out
        assert verdict["decision"] == "promoted" and "flaky" in verdict["reason"]
    flakes = treegate_cli("flakes", "--state-dir", str(harness.state.root))
    assert "tests/system/test_smoke.py::test_boots_the_candidate" in flakes.stdout, flakes.stdout
