"""Signed promotions on real VMs: with a signing key, only candidates it signed are gated,
promotion commits are signed with it, and guests verify every pull against it.

Each test works in a repository of its own that shares the fixture commits' objects (a local
pull hard-links them; signatures are new files), so the fixtures repo is never signed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.boot import Target, booted, image_for
from harness.plugin.session import Harness
from harness.repo import Commit, Repo
from harness.signing import SigningKey, check_signed, create_key

pytestmark = pytest.mark.vm

TreegateCli = Callable[..., subprocess.CompletedProcess[str]]
TESTED = "treegate-signing/tested"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return create_key(tmp_path_factory.mktemp("gpg") / "home")


@pytest.fixture(scope="module")
def wrong_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return create_key(tmp_path_factory.mktemp("gpg-wrong") / "home", "someone else <x@localhost>")


def own_repo(harness: Harness, tmp_path: Path, *commits: Commit) -> Repo:
    """A repository with ``commits`` on their refs, sharing the fixtures' objects."""
    repo = Repo(tmp_path / "repo")
    subprocess.run(["ostree", "init", f"--repo={repo.path}", "--mode=archive"], check=True)
    for commit in commits:
        assert commit.ref is not None
        subprocess.run(
            [
                "ostree",
                "pull-local",
                f"--repo={repo.path}",
                str(harness.repo.path),
                commit.checksum,
            ],
            check=True,
            capture_output=True,
        )
        repo.set_ref(commit.ref, commit.checksum)
    return repo


def gate(
    cli: TreegateCli,
    harness: Harness,
    repo: Repo,
    candidate: Commit,
    key: SigningKey,
    tmp_path: Path,
    *suites: str,
) -> tuple[int, dict[str, object], str]:
    verdict = tmp_path / "verdict.json"
    assert candidate.ref is not None
    args = ["gate", "--repo", str(repo.path), "--ref", candidate.ref, "--promote-to", TESTED]
    args += [f"--suite={s}" for s in suites]
    args += ["--gpg-homedir", str(key.homedir), "--state-dir", str(harness.state.root)]
    proc = cli(*args, "--json", str(verdict))
    data = json.loads(verdict.read_text()) if verdict.exists() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


# A signed compose and a whole gate: minutes under TCG, so ci/nightly; ci/test keeps the
# refusals below, which exercise the same verification.
@pytest.mark.nightly
def test_signed_candidate_is_gated_and_the_promotion_is_signed(
    treegate_cli: TreegateCli,
    harness: Harness,
    candidate: Commit,
    baseline: Commit,
    key: SigningKey,
    tmp_path: Path,
) -> None:
    repo = own_repo(harness, tmp_path, baseline, candidate)
    repo.set_ref(TESTED, baseline.checksum)
    repo.sign(baseline.checksum, key)
    repo.sign(candidate.checksum, key)
    # The upgrade suite pulls the candidate inside a guest whose remote verifies signatures.
    code, verdict, out = gate(
        treegate_cli, harness, repo, candidate, key, tmp_path, "smoke", "upgrade"
    )
    assert code == 0, out
    promotion = verdict["promotion_commit"]
    assert isinstance(promotion, str)
    assert repo.resolve(TESTED).checksum == promotion
    assert check_signed(repo.path, promotion, key) is None
    assert (repo.path / "summary.sig").is_file()


@pytest.mark.parametrize("signer", ["nobody", "wrong key"])
def test_candidate_not_signed_by_the_key_is_refused(
    treegate_cli: TreegateCli,
    harness: Harness,
    candidate: Commit,
    baseline: Commit,
    key: SigningKey,
    wrong_key: SigningKey,
    tmp_path: Path,
    signer: str,
) -> None:
    repo = own_repo(harness, tmp_path, baseline, candidate)
    repo.set_ref(TESTED, baseline.checksum)
    if signer == "wrong key":
        repo.sign(candidate.checksum, wrong_key)
    code, verdict, out = gate(treegate_cli, harness, repo, candidate, key, tmp_path, "smoke")
    assert code == 1, out
    assert verdict["decision"] == "rejected"
    expected = "is not signed" if signer == "nobody" else "not signed by the trusted key"
    assert expected in str(verdict["reason"]) + json.dumps(verdict["results"]), verdict
    assert repo.resolve(TESTED).checksum == baseline.checksum  # untouched
    assert "Traceback" not in out


def test_guests_refuse_an_unsigned_pull(
    harness: Harness, candidate: Commit, baseline: Commit, arch: str, key: SigningKey
) -> None:
    # A machine whose image trusts the key pulls a commit it does not have from the session's
    # repo server, which serves the (unsigned) fixtures repo.
    target = Target.create(
        harness.state, harness.repo, arch, repo_port=harness.repo_port, signing=key
    )
    image = image_for(target, candidate.checksum, ref=candidate.ref)
    with booted(target, image, name="signing-guest") as machine:
        assert (
            machine.succeed(
                "ostree config get 'remote \"treegate\".gpg-verify'", idempotent=True
            ).strip()
            == "true"
        )
        status, out = machine.execute(f"ostree pull treegate {baseline.checksum}", timeout=300)
        assert status != 0
        assert "GPG" in out or "signature" in out, out
