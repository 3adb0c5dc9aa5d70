"""A tree treegate did not compose, gated end to end.

``fixtures/distro/compose.sh`` adapts Debian the way the OSTree documentation tells a
distributor to (Debian's stock dracut with ostree's module, the generic kernel, ``/var``
empty, none of treegate's boot tuning), with no treegate code.  The tree meets the contract,
its first commit is promoted, and a second commit over it is promoted with its upgrade
passing, and its rollback (both in ci/nightly): a good tree from elsewhere is not rejected.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.plugin.session import Harness
from harness.repo import Commit, Repo

pytestmark = pytest.mark.vm

SCRIPT = Path(__file__).resolve().parents[2] / "fixtures" / "distro" / "compose.sh"
REF = "os/bookworm/x86_64/distro"
TreegateCli = Callable[..., subprocess.CompletedProcess[str]]
"""The ``treegate_cli`` fixture (tests/conftest.py)."""


@pytest.fixture(scope="module")
def distro(harness: Harness) -> Iterator[tuple[Repo, Commit]]:
    """The distributor's repository and its first commit, composed once per state directory
    (again whenever the script changes)."""
    repo = Repo(harness.state.root / "distro-repo")
    repo.init()
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:16]
    head = repo.try_resolve(f"{REF}-{digest}")
    if head is None:
        subprocess.run(
            [str(SCRIPT), str(repo.path), f"{REF}-{digest}", "1"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        head = repo.resolve(f"{REF}-{digest}")
    yield repo, head


Stream = tuple[Repo, Commit, str, str]
"""The ``stream`` fixture: the repository, the first commit, the candidate and tested refs."""


@pytest.fixture
def stream(distro: tuple[Repo, Commit]) -> Stream:
    """A stream of the distributor's tree of its own: a candidate ref at the first commit,
    and a tested ref nothing was promoted to yet."""
    repo, first = distro
    run = uuid.uuid4().hex[:8]
    candidate, tested = f"{REF}/candidate-{run}", f"{REF}/tested-{run}"
    repo.set_ref(candidate, first.checksum)
    return repo, first, candidate, tested


def gate(
    cli: TreegateCli,
    harness: Harness,
    repo: Repo,
    candidate: str,
    tested: str,
    tmp_path: Path,
    *suites: str,
) -> dict[str, object]:
    """``treegate gate`` as a user runs it, from a directory outside the checkout; the
    verdict, which must be a promotion."""
    verdict = tmp_path / "verdict.json"
    verdict.unlink(missing_ok=True)
    proc = cli(
        *("gate", "--repo", str(repo.path), "--ref", candidate, "--promote-to", tested),
        *("--state-dir", str(harness.state.root), "--json", str(verdict)),
        *(a for s in suites for a in ("--suite", s)),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, object] = json.loads(verdict.read_text())
    assert data["decision"] == "promoted"
    return data


def next_commit(repo: Repo, ref: str, first: Commit, tmp_path: Path) -> str:
    """The distributor's next commit on ``ref``: a changed file in /usr, a second later."""
    update = tmp_path / "update"
    (update / "usr/share/distro").mkdir(parents=True)
    (update / "usr/share/distro/release").write_text("2\n")
    time.sleep(1)
    return repo.commit(update, ref, subject="2", metadata={"version": "2"}, base=first.checksum)


def outcomes(verdict: dict[str, object]) -> set[tuple[str, str]]:
    results = verdict["results"]
    assert isinstance(results, list)
    return {(r["nodeid"].split("::")[0], r["outcome"]) for r in results}


# ci/nightly: a stock compose and stock boots under TCG cost about ten minutes, more than
# ci/test's budget holds; ci/test checks the contract on hand-made trees
# (tests/unit/test_contract.py).
@pytest.mark.nightly
def test_a_tree_composed_elsewhere_is_checked_gated_and_upgraded(
    treegate_cli: TreegateCli, harness: Harness, stream: Stream, tmp_path: Path
) -> None:
    repo, first, candidate, tested = stream

    check = treegate_cli("check", "--repo", str(repo.path), "--commit", candidate, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "FAIL" not in check.stdout

    # The first commit of the stream: the smoke suite.
    gate(treegate_cli, harness, repo, candidate, tested, tmp_path)
    assert repo.resolve(tested).metadata["treegate.candidate"] == first.checksum

    second = next_commit(repo, candidate, first, tmp_path)
    verdict = gate(treegate_cli, harness, repo, candidate, tested, tmp_path, "upgrade")
    assert outcomes(verdict) == {("tests/system/test_upgrade.py", "passed")}
    assert repo.resolve(tested).metadata["treegate.candidate"] == second


# ci/nightly: every reboot of this tree costs a stock boot under TCG (about a minute and a
# half here); ci/test proves its upgrade above.
@pytest.mark.nightly
def test_a_tree_composed_elsewhere_rolls_back(
    treegate_cli: TreegateCli, harness: Harness, stream: Stream, tmp_path: Path
) -> None:
    repo, first, candidate, tested = stream
    # The tested ref as the first gate leaves it (the test above gates it for real).
    repo.promote(first, tested, subject="seeded", metadata={"treegate.candidate": first.checksum})
    second = next_commit(repo, candidate, first, tmp_path)
    verdict = gate(treegate_cli, harness, repo, candidate, tested, tmp_path, "rollback")
    assert outcomes(verdict) == {("tests/system/test_rollback.py", "passed")}
    assert repo.resolve(tested).metadata["treegate.candidate"] == second
