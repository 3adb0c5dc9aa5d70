"""``treegate gate`` end to end on real VMs: good candidates are promoted, bad ones rejected as
*failed* with the tested ref untouched.

Each test seeds its own tested ref, so tests do not depend on each other's promotions.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness.pytest_plugin import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]


def gate(harness: Harness, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``treegate gate`` as a user would; return its exit status, JSON verdict and output."""
    verdict = tmp_path / "verdict.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "gate",
            "--repo",
            str(harness.repo.path),
            "--state-dir",
            str(harness.state.root),
            "--json",
            str(verdict),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    data = json.loads(verdict.read_text()) if verdict.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


def seeded_tested_ref(harness: Harness, arch: str, good: Commit) -> str:
    """A fresh tested ref whose commit is ``good`` (as an earlier gate would have left it)."""
    ref = f"treegate-test/{arch}/tested-{uuid.uuid4().hex[:8]}"
    harness.repo.promote(
        good, ref, subject="seeded by the test", metadata={"treegate.candidate": good.checksum}
    )
    return ref


def assert_rejected_as_failed(code: int, verdict: dict[str, Any], output: str) -> None:
    assert code == 1, output
    assert verdict["decision"] == "rejected", output
    outcomes = {r["outcome"] for r in verdict["results"]}
    assert "failed" in outcomes and "error" not in outcomes, verdict["results"]
    assert verdict["promotion_commit"] is None
    failed = [r for r in verdict["results"] if r["outcome"] == "failed"]
    for r in failed:
        argv = shlex.split(r["reproduce"])
        assert argv[0] == "pytest" and argv[1] == r["nodeid"], r["reproduce"]
        assert "--repo" in argv and "--commit" in argv and "--arch" in argv


def test_good_candidate_is_promoted(harness: Harness, arch: str, tmp_path: Path) -> None:
    v2 = harness.fixture_commit("minimal-v2", arch)
    tested = f"treegate-test/{arch}/tested-{uuid.uuid4().hex[:8]}"
    assert v2.ref is not None
    # Default suites: the first commit of a stream is gated without upgrade and rollback.
    args = ["--ref", v2.ref, "--promote-to", tested, "--arch", arch]
    code, verdict, output = gate(harness, tmp_path, *args)
    assert code == 0, output
    assert verdict["decision"] == "promoted"
    assert "first commit of the stream" in " ".join(verdict["notes"])
    promoted = harness.repo.resolve(tested)
    assert promoted.checksum == verdict["promotion_commit"]
    assert promoted.metadata["treegate.candidate"] == v2.checksum
    assert json.loads(promoted.metadata["treegate.outcomes"])
    assert harness.repo.content_checksum(promoted.checksum) == harness.repo.content_checksum(
        v2.checksum
    )


@pytest.mark.parametrize(
    ("tree", "good", "suite"),
    [
        ("broken-init", "minimal", "smoke"),  # kernel panic at switch-root
        ("failing-unit", "minimal", "smoke"),  # system degraded
        ("sshd-broken", "minimal", "upgrade"),  # sshd dead only once upgraded
        ("docker-broken", "docker", "docker"),  # Docker broken in the docker tree
    ],
)
def test_broken_candidate_is_rejected_and_tested_ref_untouched(
    harness: Harness, arch: str, tmp_path: Path, tree: str, good: str, suite: str
) -> None:
    tested = seeded_tested_ref(harness, arch, harness.fixture_commit(good, arch))
    before = harness.repo.resolve(tested).checksum
    broken = harness.fixture_commit(tree, arch)
    assert broken.ref is not None
    code, verdict, output = gate(
        harness,
        tmp_path,
        "--ref",
        broken.ref,
        "--promote-to",
        tested,
        "--arch",
        arch,
        "--suite",
        suite,
    )
    assert_rejected_as_failed(code, verdict, output)
    assert harness.repo.resolve(tested).checksum == before
