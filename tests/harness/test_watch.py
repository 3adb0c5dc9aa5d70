"""``treegate watch`` on real VMs: commits land on a stream's candidate ref while watch runs;
each ends promoted or rejected as it should, one pushed while a gate ran is recorded as
superseded, SIGTERM stops watch cleanly, and a restarted watch gates nothing twice."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.plugin.session import Harness
from harness.repo import Commit, Repo

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]


def wait_for(log: Path, text: str, count: int = 1, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = log.read_text() if log.exists() else ""
        if out.count(text) >= count:
            return out
        time.sleep(0.5)
    raise AssertionError(f"watch never printed {text!r} {count} time(s):\n{log.read_text()}")


def commit_on(repo: Repo, ref: str, tree: str, subject: str) -> str:
    """A new commit on ``ref`` (its parent: the ref's head) with the tree of commit ``tree``."""
    return subprocess.run(
        [
            "ostree",
            "commit",
            f"--repo={repo.path}",
            f"--branch={ref}",
            f"--tree=ref={tree}",
            f"--subject={subject}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# Several gates or probes in a row: ci/nightly runs it, ci/test leaves it out.
@pytest.mark.nightly
def test_watch_gates_each_new_commit_once(
    harness: Harness, baseline: Commit, candidate: Commit, arch: str, tmp_path: Path
) -> None:
    broken = harness.fixture_commit("broken-init", arch)
    repo = Repo(tmp_path / "repo")
    subprocess.run(["ostree", "init", f"--repo={repo.path}", "--mode=archive"], check=True)
    for c in (baseline, candidate, broken):
        subprocess.run(
            ["ostree", "pull-local", f"--repo={repo.path}", str(harness.repo.path), c.checksum],
            check=True,
            capture_output=True,
        )
    ref, tested = f"watch/{arch}/minimal", f"watch/{arch}/minimal-tested"
    config = tmp_path / "treegate.toml"
    config.write_text(
        f'repo = "repo"\n[streams.minimal]\ncandidate = "watch/{{arch}}/minimal"\n'
        f'tested = "watch/{{arch}}/minimal-tested"\narches = ["{arch}"]\nsuites = ["smoke"]\n'
    )
    first = commit_on(repo, ref, baseline.checksum, "v1")
    argv = [sys.executable, "-m", "harness.cli", "watch", "--config", str(config)]
    argv += ["--interval", "1", "--state-dir", str(harness.state.root)]
    log = tmp_path / "watch.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(log, "minimal: gating")
        # Two commits land while the first gate runs: only the newest is gated.
        skipped = commit_on(repo, ref, candidate.checksum, "v2")
        bad = commit_on(repo, ref, broken.checksum, "broken")
        text = wait_for(log, "REJECTED")
        assert f"PROMOTED: {ref} {first[:12]}" in text, text
        assert f"REJECTED: {ref} {bad[:12]}" in text, text
        assert repo.resolve(tested).metadata["treegate.candidate"] == first  # not moved by bad
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(harness.state.root / "treegate.db") as db:
        rows = dict(
            db.execute(
                "SELECT candidate, status FROM watched WHERE stream = ? AND arch = ?",
                (f"{repo.path}#minimal", arch),
            ).fetchall()
        )
    assert {first: "gated", skipped: "superseded", bad: "gated"}.items() <= rows.items(), rows
    # A restarted watch finds nothing new.
    again = subprocess.run([*argv, "--once"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "gating" not in again.stdout, again.stdout
