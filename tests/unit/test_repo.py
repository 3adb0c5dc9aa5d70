"""The repository layer against real (tiny) ostree repositories: no VM needed."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.repo import SCRATCH_ZLIB_LEVEL, Repo, _parse_timestamp, serve
from harness.signing import create_key


def commit_tree(repo: Repo, tmp: Path, ref: str, content: str, version: str) -> str:
    tree = tmp / f"tree-{version}"
    (tree / "usr").mkdir(parents=True)
    (tree / "usr" / "content").write_text(content)
    return repo.commit(
        tree,
        ref,
        subject=f"v{version}",
        metadata={"version": version, "k": "it's", "j": '{"a": "b"}'},
    )


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path / "repo")
    r.init()
    return r


def test_metadata_history_and_resolve(repo: Repo, tmp_path: Path) -> None:
    a = commit_tree(repo, tmp_path, "x/y", "a", "1")
    b = commit_tree(repo, tmp_path, "x/y", "b", "2")
    head = repo.resolve("x/y")
    assert head.checksum == b and head.ref == "x/y" and head.version == "2"
    assert head.metadata["k"] == "it's"
    assert head.metadata["j"] == '{"a": "b"}'
    assert [c.checksum for c in repo.history("x/y")] == [b, a]
    assert repo.parent(a) is None
    assert repo.resolve(a[:10]).checksum == a and repo.resolve(a[:10]).ref is None
    assert repo.ref_containing(a) == "x/y"


def test_summary_follows_every_commit(repo: Repo, tmp_path: Path) -> None:
    """A stale summary would make guests pull an old head (found by the demo's rebase)."""
    commit_tree(repo, tmp_path, "x/y", "a", "1")
    b = commit_tree(repo, tmp_path, "x/y", "b", "2")
    view = subprocess.run(
        ["ostree", "summary", "--view", f"--repo={repo.path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert b in view


def test_promotion_keeps_the_tree_and_records_why(repo: Repo, tmp_path: Path) -> None:
    a = commit_tree(repo, tmp_path, "x/y", "a", "1")
    promoted = repo.promote(
        repo.resolve(a), "x/y-tested", subject="ok", metadata={"treegate.candidate": a}
    )
    assert repo.content_checksum(promoted) == repo.content_checksum(a)
    assert repo.resolve("x/y-tested").metadata["treegate.candidate"] == a
    assert repo.resolve("x/y-tested").version == "1"


def test_missing_things_are_user_errors(repo: Repo, tmp_path: Path) -> None:
    commit_tree(repo, tmp_path, "x/y", "a", "1")
    with pytest.raises(UserError) as caught:
        repo.resolve("x/z")
    assert "did you mean 'x/y'" in caught.value.one_line()
    with pytest.raises(UserError, match="is not in repository"):
        repo.resolve("0" * 64)
    with pytest.raises(UserError, match="is not an OSTree repository"):
        Repo(tmp_path).check()


def test_server_is_read_only_and_lists_nothing(repo: Repo, tmp_path: Path) -> None:
    commit_tree(repo, tmp_path, "x/y", "a", "1")
    with serve(repo) as port:
        base = f"http://127.0.0.1:{port}"
        assert urllib.request.urlopen(f"{base}/config").status == 200
        for method, path in (
            ("GET", "/"),
            ("GET", "/refs/"),
            ("PUT", "/config"),
            ("POST", "/config"),
            ("DELETE", "/config"),
        ):
            request = urllib.request.Request(
                f"{base}{path}", method=method, data=b"x" if method != "GET" else None
            )
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request)
            assert caught.value.code in (404, 501), (method, path)
    assert (repo.path / "config").read_text().startswith("[core]")


def test_scratch_repo_compresses_less_and_still_reads_back(tmp_path: Path) -> None:
    scratch = Repo(tmp_path / "scratch")
    scratch.init(zlib_level=SCRATCH_ZLIB_LEVEL)
    level = subprocess.run(
        ["ostree", "config", f"--repo={scratch.path}", "get", "archive.zlib-level"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert level.stdout.strip() == str(SCRATCH_ZLIB_LEVEL)
    checksum = commit_tree(scratch, tmp_path, "x/y", "content " * 1000, "1")
    assert scratch.read_file(checksum, "/usr/content") == "content " * 1000


def commit_at(repo: Repo, tmp: Path, ref: str, content: str, timestamp: int) -> str:
    """A commit on ``ref`` composed at ``timestamp`` (as a build server's clock said)."""
    tree = tmp / f"tree-{content}"
    (tree / "usr").mkdir(parents=True)
    (tree / "usr" / "content").write_text(content)
    out = subprocess.run(
        [
            *("ostree", "commit", f"--repo={repo.path}", f"--branch={ref}", f"--tree=dir={tree}"),
            *("--subject=s", f"--timestamp=@{timestamp}", "--add-metadata-string=version=1"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_a_commit_reads_back_with_the_timestamp_ostree_shows(repo: Repo, tmp_path: Path) -> None:
    a = commit_at(repo, tmp_path, "x/y", "a", 1_700_000_000)
    commit = repo.resolve(a)
    assert commit.timestamp == 1_700_000_000
    assert commit.date == "2023-11-14 22:13:20 UTC"
    shown = subprocess.run(
        ["ostree", "show", f"--repo={repo.path}", a], capture_output=True, text=True, check=True
    ).stdout
    assert "Date:  2023-11-14 22:13:20 +0000" in shown
    assert [c.timestamp for c in repo.history("x/y")] == [1_700_000_000]


def test_a_promotion_keeps_the_candidates_timestamp_unless_told(repo: Repo, tmp_path: Path) -> None:
    """Composed at 10:00 and promoted much later, the promotion commit still says 10:00: a
    candidate composed at 11:00, while the first was gated, stays newer than it."""
    first = repo.resolve(commit_at(repo, tmp_path, "x/y", "a", 1_700_000_000))
    promoted = repo.promote(first, "x/y-tested", subject="ok", metadata={})
    assert repo.resolve(promoted).timestamp == first.timestamp
    second = repo.resolve(commit_at(repo, tmp_path, "x/y", "b", 1_700_003_600))
    assert not second.is_older_than(repo.resolve("x/y-tested"))
    again = repo.promote(second, "x/y-tested", subject="ok", metadata={}, timestamp=1_800_000_000)
    assert repo.resolve(again).timestamp == 1_800_000_000


def test_a_signed_commit_reads_back_with_its_timestamp(repo: Repo, tmp_path: Path) -> None:
    """ostree prints a signed commit's signatures after the commit: the timestamp is still
    the commit's (a gate with a signing key read none, and ended in exit 2)."""
    checksum = commit_at(repo, tmp_path, "x/y", "a", 1_700_000_000)
    repo.sign(checksum, create_key(tmp_path / "gpg"))
    assert repo.resolve(checksum).timestamp == 1_700_000_000


def test_a_timestamp_reads_whatever_form_glib_prints_the_checksums_in() -> None:
    """GLib prints a byte array as b'…' when it takes it for a string: a checksum may be."""
    raw = (
        "commit 5f0c\n"
        "({'version': <'1'>, 'ostree.sizes': <[byte 0x01, 0x02]>, 'n': <uint64 7>}, "
        "[byte 0x4e, 0x29], @a(say) [], 'docker 1 (x86_64)', '', uint64 1796662365, "
        "b'\\330\\237\\v\\027', [byte 0x44, 0x6a])\n"
        "Found 1 signature:\n  uint64 9, [byte 0x1], [byte 0x2])\n"
    )
    assert _parse_timestamp(raw) == 1796662365
