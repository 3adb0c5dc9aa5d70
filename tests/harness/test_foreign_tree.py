"""A tree treegate did not compose, gated end to end.

``fixtures/distro/compose.sh`` adapts Debian the way the OSTree documentation tells a
distributor to (Debian's stock dracut with ostree's module, the generic kernel, ``/var``
empty, none of treegate's boot tuning), with no treegate code.  The tree meets the contract,
its first commit is promoted, and a second commit over it is promoted with its upgrade and
rollback passing: a good tree from elsewhere is not rejected.
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


def test_a_tree_composed_elsewhere_is_checked_gated_and_upgraded(
    treegate_cli: TreegateCli, harness: Harness, distro: tuple[Repo, Commit], tmp_path: Path
) -> None:
    repo, first = distro
    run = uuid.uuid4().hex[:8]
    candidate, tested = f"{REF}/candidate-{run}", f"{REF}/tested-{run}"
    repo.set_ref(candidate, first.checksum)

    check = treegate_cli("check", "--repo", str(repo.path), "--commit", candidate)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "FAIL" not in check.stdout

    def gate(*suites: str) -> dict[str, object]:
        verdict = tmp_path / "verdict.json"
        verdict.unlink(missing_ok=True)
        proc = treegate_cli(
            *("gate", "--repo", str(repo.path), "--ref", candidate, "--promote-to", tested),
            *("--state-dir", str(harness.state.root), "--json", str(verdict)),
            *(a for s in suites for a in ("--suite", s)),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data: dict[str, object] = json.loads(verdict.read_text())
        return data

    verdict = gate()  # the first commit of the stream: the smoke suite
    assert verdict["decision"] == "promoted"
    assert repo.resolve(tested).metadata["treegate.candidate"] == first.checksum

    # The distributor's next commit: a changed file in /usr, composed a second later.
    update = tmp_path / "update"
    (update / "usr/share/distro").mkdir(parents=True)
    (update / "usr/share/distro/release").write_text("2\n")
    time.sleep(1)
    second = repo.commit(
        update, candidate, subject="2", metadata={"version": "2"}, base=first.checksum
    )
    verdict = gate("upgrade", "rollback")
    results = verdict["results"]
    assert isinstance(results, list)
    assert {(r["nodeid"].split("::")[0], r["outcome"]) for r in results} == {
        ("tests/system/test_upgrade.py", "passed"),
        ("tests/system/test_rollback.py", "passed"),
    }
    assert repo.resolve(tested).metadata["treegate.candidate"] == second
