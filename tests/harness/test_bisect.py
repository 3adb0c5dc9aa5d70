"""``treegate bisect`` on real VMs: a generated history of 8 commits with one regression in
the middle is searched in at most log2(8)+1 test runs, and the first bad commit is named."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm

TreegateCli = Callable[..., subprocess.CompletedProcess[str]]
REF = "treegate/bisect/x86_64/minimal"

FAILING_UNIT = """[Unit]
Description=treegate bisect fixture: the regression
[Service]
Type=oneshot
ExecStart=/bin/false
[Install]
WantedBy=multi-user.target
"""


def make_history(repo: Path, base: Commit, count: int, regression: int) -> list[str]:
    """``count`` commits on :data:`REF` after ``base``; from number ``regression`` (1-based)
    on, each carries a unit that fails at boot.  Returns their checksums, oldest first."""
    subprocess.run(
        ["ostree", "refs", f"--repo={repo}", f"--create={REF}", base.checksum], check=True
    )
    out = []
    for n in range(1, count + 1):
        overlay = repo.parent / f"overlay-{n}"
        (overlay / "usr/share/treegate").mkdir(parents=True)
        (overlay / "usr/share/treegate/step").write_text(f"{n}\n")
        if n >= regression:
            units = overlay / "usr/etc/systemd/system"
            (units / "multi-user.target.wants").mkdir(parents=True)
            (units / "treegate-regression.service").write_text(FAILING_UNIT)
            (units / "multi-user.target.wants/treegate-regression.service").symlink_to(
                "../treegate-regression.service"
            )
        checksum = subprocess.run(
            [
                "ostree",
                "commit",
                f"--repo={repo}",
                f"--branch={REF}",
                f"--tree=ref={base.checksum}",
                f"--tree=dir={overlay}",
                f"--subject=step {n}",
                f"--add-metadata-string=version=bisect-{n}",
                "--add-metadata-string=treegate.arch=x86_64",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        out.append(checksum)
    return out


# Several gates or probes in a row: ci/nightly runs it, ci/test leaves it out.
@pytest.mark.nightly
def test_bisect_finds_the_first_bad_commit_in_log_n_runs(
    treegate_cli: TreegateCli, harness: Harness, candidate: Commit, arch: str, tmp_path: Path
) -> None:
    if arch != "x86_64":
        pytest.skip("the generated history is x86_64's")
    repo = tmp_path / "repo"
    subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=archive"], check=True)
    subprocess.run(
        ["ostree", "pull-local", f"--repo={repo}", str(harness.repo.path), candidate.checksum],
        check=True,
        capture_output=True,
    )
    count, regression = 8, 5
    history = make_history(repo, candidate, count, regression)
    proc = treegate_cli(
        "bisect",
        "--repo",
        str(repo),
        "--good",
        candidate.checksum,
        "--bad",
        REF,
        "--test",
        "tests/system/test_smoke.py::test_system_is_running[x86_64]",
        "--arch",
        arch,
        "--state-dir",
        str(harness.state.root),
        timeout=1800,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"first bad commit: {history[regression - 1]}" in proc.stdout, out
    assert f"version: bisect-{regression}" in proc.stdout
    runs = re.search(r"(\d+) test run\(s\) over (\d+) commit\(s\)", proc.stdout)
    assert runs is not None, out
    assert int(runs.group(2)) == count
    assert int(runs.group(1)) <= math.log2(count) + 1
    # The tree diff from its parent shows what the regression added.
    assert "files:" in proc.stdout and "added" in proc.stdout


@pytest.mark.nightly  # composes a history of its own: minutes under TCG
def test_bisect_with_a_good_commit_that_is_not_an_ancestor_is_one_line(
    treegate_cli: TreegateCli, harness: Harness, candidate: Commit, baseline: Commit
) -> None:
    # minimal v1 is v2's parent, never the other way round.
    proc = treegate_cli(
        "bisect",
        "--repo",
        str(harness.repo.path),
        "--good",
        candidate.checksum,
        "--bad",
        baseline.checksum,
        "--test",
        "tests/system/test_smoke.py::test_system_is_running[x86_64]",
        "--state-dir",
        str(harness.state.root),
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not an ancestor of" in lines[0], proc.stderr
