"""``treegate gate`` end to end on real VMs: good candidates are promoted, bad ones rejected as
*failed* with the tested ref untouched.

Each test seeds its own tested ref, so tests do not depend on each other's promotions.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm


TreegateCli = Callable[..., subprocess.CompletedProcess[str]]
"""The ``treegate_cli`` fixture (tests/conftest.py)."""


def gate(
    cli: TreegateCli,
    harness: Harness,
    tmp_path: Path,
    *args: str,
) -> tuple[int, dict[str, Any], str]:
    """Run ``treegate gate`` as a user would; return its exit status, JSON verdict and output."""
    verdict = tmp_path / "verdict.json"
    verdict.unlink(missing_ok=True)  # an earlier gate's, in the same test
    proc = cli(
        "gate",
        "--repo",
        str(harness.repo.path),
        "--state-dir",
        str(harness.state.root),
        "--json",
        str(verdict),
        *args,
    )
    data = json.loads(verdict.read_text()) if verdict.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


@pytest.fixture
def scratch_refs(harness: Harness) -> Iterator[list[str]]:
    """Refs a test creates in the shared fixtures repo (append them): deleted afterwards."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        if harness.repo.try_resolve(ref) is not None:
            harness.repo.delete_ref(ref)


def seeded_tested_ref(harness: Harness, arch: str, good: Commit, refs: list[str]) -> str:
    """A fresh tested ref whose commit is ``good`` (as an earlier gate would have left it)."""
    ref = f"treegate-test/{arch}/tested-{uuid.uuid4().hex[:8]}"
    refs.append(ref)
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


def test_candidates_promote_in_compose_order_whatever_order_they_are_gated(
    treegate_cli: TreegateCli, harness: Harness, arch: str, tmp_path: Path, scratch_refs: list[str]
) -> None:
    """A build server composes A, then B while A is gated; A is promoted, then B is gated over
    A's promotion and promoted, its upgrade from A's promotion passing (a promotion commit
    stamped when it was made would be newer than B, and ``ostree admin upgrade`` refuses an
    older commit).  Gating A again over B is a downgrade: refused before anything boots."""
    a, b = (harness.fixture_commit(tree, arch) for tree in ("minimal", "minimal-v2"))
    assert a.timestamp < b.timestamp  # composed in this order, both before A's gate
    run = uuid.uuid4().hex[:8]
    tested = f"treegate-test/{arch}/tested-{run}"
    refs = {c: f"treegate-test/{arch}/cand-{c}-{run}" for c in ("a", "b")}
    scratch_refs += [tested, *refs.values()]
    harness.repo.set_ref(refs["a"], a.checksum)
    harness.repo.set_ref(refs["b"], b.checksum)

    # Default suites: the first commit of a stream is gated without upgrade and rollback.
    args = ["--promote-to", tested, "--arch", arch]
    code, verdict, output = gate(treegate_cli, harness, tmp_path, "--ref", refs["a"], *args)
    assert code == 0, output
    assert verdict["decision"] == "promoted"
    assert "first commit of the stream" in " ".join(verdict["notes"])
    promoted = harness.repo.resolve(tested)
    assert promoted.checksum == verdict["promotion_commit"]
    assert promoted.metadata["treegate.candidate"] == a.checksum
    assert json.loads(promoted.metadata["treegate.outcomes"])
    assert harness.repo.content_checksum(promoted.checksum) == harness.repo.content_checksum(
        a.checksum
    )

    args += ["--suite", "upgrade"]
    code, verdict, output = gate(treegate_cli, harness, tmp_path, "--ref", refs["b"], *args)
    assert code == 0, output
    assert [r["outcome"] for r in verdict["results"]] == ["passed"], output
    assert harness.repo.resolve(tested).metadata["treegate.candidate"] == b.checksum
    head = harness.repo.resolve(tested).checksum

    runs = set((harness.state.runs).iterdir())
    code, verdict, output = gate(treegate_cli, harness, tmp_path, "--ref", refs["a"], *args)
    assert code == 2, output
    assert verdict == {}
    [line] = output.strip().splitlines()
    assert line.startswith(f"treegate: error: candidate {a.short} ("), line
    assert f"older than {b.short}" in line and "--allow-downgrade" in line, line
    assert harness.repo.resolve(tested).checksum == head
    assert set(harness.state.runs.iterdir()) == runs  # nothing ran


@pytest.mark.parametrize(
    ("tree", "good", "suite"),
    [
        # A kernel panic at switch-root; the console watcher's own tests catch panics in CI.
        pytest.param("broken-init", "minimal", "smoke", marks=pytest.mark.nightly),
        ("failing-unit", "minimal", "smoke"),  # system degraded
        ("sshd-broken", "minimal", "upgrade"),  # sshd dead only once upgraded
        # A unit that fails only when upgraded: sshd-broken already proves the upgrade path.
        pytest.param("migration-broken", "minimal", "upgrade", marks=pytest.mark.nightly),
        # Docker broken in the docker tree: minutes of dockerd under TCG, so nightly; the
        # rejections above prove the same decision in ci/test.
        pytest.param("docker-broken", "docker", "docker", marks=pytest.mark.nightly),
    ],
)
def test_broken_candidate_is_rejected_and_tested_ref_untouched(
    treegate_cli: TreegateCli,
    harness: Harness,
    arch: str,
    tmp_path: Path,
    scratch_refs: list[str],
    tree: str,
    good: str,
    suite: str,
) -> None:
    tested = seeded_tested_ref(harness, arch, harness.fixture_commit(good, arch), scratch_refs)
    before = harness.repo.resolve(tested).checksum
    broken = harness.fixture_commit(tree, arch)
    assert broken.ref is not None
    code, verdict, output = gate(
        treegate_cli,
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


def test_every_arch_must_pass_before_any_is_promoted(
    treegate_cli: TreegateCli, harness: Harness, tmp_path: Path, scratch_refs: list[str]
) -> None:
    """One gate over two arches: a candidate broken on the second arch only is rejected and
    neither tested ref moves; once both are good, both are promoted in one run."""
    if len(harness.options.arches) < 2:
        pytest.skip("needs two arches (pass --arch twice, as ci/nightly does)")
    first, second = harness.options.arches[:2]
    good = {a: harness.fixture_commit("minimal", a) for a in (first, second)}
    broken = harness.fixture_commit("broken-init", second)
    run = uuid.uuid4().hex[:8]
    candidate, tested = f"treegate-test/{{arch}}/cand-{run}", f"treegate-test/{{arch}}/tested-{run}"
    for a in (first, second):
        scratch_refs += [candidate.format(arch=a), tested.format(arch=a)]
    harness.repo.set_ref(candidate.format(arch=first), good[first].checksum)
    harness.repo.set_ref(candidate.format(arch=second), broken.checksum)
    args = ["--ref", candidate, "--promote-to", tested, "--arch", first, "--arch", second]
    args += ["--suite", "smoke"]

    code, verdict, output = gate(treegate_cli, harness, tmp_path, *args)
    assert_rejected_as_failed(code, verdict, output)
    assert {r["arch"] for r in verdict["results"] if r["outcome"] == "failed"} == {second}
    assert all(r["outcome"] == "passed" for r in verdict["results"] if r["arch"] == first)
    for a in (first, second):
        assert harness.repo.try_resolve(tested.format(arch=a)) is None, output

    harness.repo.set_ref(candidate.format(arch=second), good[second].checksum)
    code, verdict, output = gate(treegate_cli, harness, tmp_path, *args)
    assert code == 0, output
    by_arch = {p["arch"]: p for p in verdict["per_arch"]}
    for a in (first, second):
        promoted = harness.repo.resolve(tested.format(arch=a))
        assert promoted.checksum == by_arch[a]["promotion_commit"]
        assert promoted.metadata["treegate.candidate"] == good[a].checksum
        assert promoted.metadata["treegate.arches"] == f"{first},{second}"


@pytest.mark.parametrize(
    "expires",
    [
        # ci/nightly: what a quarantine entry decides is in tests/unit/test_quarantine.py and
        # tests/unit/test_gate_decision.py; these are the real gates.
        pytest.param("2999-01-01", id="active", marks=pytest.mark.nightly),
        pytest.param("2000-01-01", id="expired", marks=pytest.mark.nightly),
    ],
)
def test_quarantined_failure_does_not_block_until_it_expires(
    treegate_cli: TreegateCli,
    harness: Harness,
    arch: str,
    tmp_path: Path,
    scratch_refs: list[str],
    expires: str,
) -> None:
    # failing-unit's system comes up degraded: test_system_is_running fails, the rest passes.
    tested = seeded_tested_ref(harness, arch, harness.fixture_commit("minimal", arch), scratch_refs)
    before = harness.repo.resolve(tested).checksum
    broken = harness.fixture_commit("failing-unit", arch)
    assert broken.ref is not None
    quarantine = tmp_path / "quarantine.toml"
    quarantine.write_text(
        "[[quarantine]]\n"
        'test = "tests/system/test_smoke.py::test_system_is_running"\n'
        f'arch = "{arch}"\n'
        'reason = "treegate-fail.service is known to fail"\n'
        f"expires = {expires}\n"
    )
    code, verdict, output = gate(
        treegate_cli,
        harness,
        tmp_path,
        "--ref",
        broken.ref,
        "--promote-to",
        tested,
        "--arch",
        arch,
        "--suite",
        "smoke",
        "--quarantine",
        str(quarantine),
    )
    outcome = next(
        r["outcome"] for r in verdict["results"] if "test_system_is_running" in r["nodeid"]
    )
    if expires == "2999-01-01":
        assert code == 0, output
        assert outcome == "quarantined"
        assert "1 quarantined" in verdict["reason"]
    else:
        assert_rejected_as_failed(code, verdict, output)
        assert outcome == "failed"
        assert harness.repo.resolve(tested).checksum == before
