"""Bad input on the command line: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def treegate(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) ostree repository with one ref."""
    base = tmp_path_factory.mktemp("repo")
    repo = base / "repo"
    tree = base / "tree"
    (tree / "usr").mkdir(parents=True)
    (tree / "usr" / "hello").write_text("hi\n")
    subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=archive"], check=True)
    subprocess.run(
        [
            "ostree",
            "commit",
            f"--repo={repo}",
            "--branch=treegate/bookworm/x86_64/minimal",
            f"--tree=dir={tree}",
        ],
        check=True,
        capture_output=True,
    )
    return repo


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *needles: str
) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("treegate: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_repo(tmp_path: Path) -> None:
    r = treegate("image", "--repo", str(tmp_path / "nope"), "--commit", "x", state=tmp_path / "s")
    assert_one_line_error(r, 2, "does not exist")


def test_not_a_repo(tmp_path: Path) -> None:
    r = treegate("image", "--repo", str(tmp_path), "--commit", "x", state=tmp_path / "s")
    assert_one_line_error(r, 2, "is not an OSTree repository")


def test_missing_ref_suggests_a_close_one(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "image",
        "--repo",
        str(repo),
        "--commit",
        "treegate/bookworm/x86_64/minimall",
        state=tmp_path / "s",
    )
    assert_one_line_error(
        r, 2, "is not in repository", "did you mean 'treegate/bookworm/x86_64/minimal'"
    )


def test_missing_commit(tmp_path: Path, repo: Path) -> None:
    r = treegate("image", "--repo", str(repo), "--commit", "ab" * 32, state=tmp_path / "s")
    assert_one_line_error(r, 2, "commit")


def test_unknown_arch(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "image",
        "--repo",
        str(repo),
        "--commit",
        "treegate/bookworm/x86_64/minimal",
        "--arch",
        "sparc",
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "unknown arch 'sparc'", "x86_64")


def test_unwritable_output(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "image",
        "--repo",
        str(repo),
        "--commit",
        "treegate/bookworm/x86_64/minimal",
        "-o",
        "/proc/treegate.qcow2",
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "cannot write")


def test_output_in_missing_directory(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "image",
        "--repo",
        str(repo),
        "--commit",
        "treegate/bookworm/x86_64/minimal",
        "-o",
        str(tmp_path / "no" / "such" / "dir" / "x.qcow2"),
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "is not a directory")


def test_commit_without_a_kernel_is_refused(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "boot",
        "--repo",
        str(repo),
        "--commit",
        "treegate/bookworm/x86_64/minimal",
        state=tmp_path / "s",
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("treegate: error: ")


def test_definition_with_a_typo(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('suite = "bookworm"\npackage = ["vim"]\n')
    r = treegate("compose", str(bad), "--repo", str(tmp_path / "repo"), state=tmp_path / "s")
    assert_one_line_error(r, 2, "unknown key 'package'")


def test_missing_definition(tmp_path: Path) -> None:
    r = treegate(
        "compose",
        str(tmp_path / "nope.toml"),
        "--repo",
        str(tmp_path / "repo"),
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "does not exist")


def test_unknown_layout(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "image",
        "--repo",
        str(repo),
        "--commit",
        "treegate/bookworm/x86_64/minimal",
        "--layout",
        "floppy",
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "no disk layout 'floppy'")


@pytest.mark.parametrize(
    "command", ["compose", "image", "boot", "ssh", "gate", "demo", "cache", "report"]
)
def test_every_command_has_help(command: str, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "usage: treegate" in r.stdout


def test_bad_suite_name_is_one_line(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "gate",
        "--repo",
        str(repo),
        "--ref",
        "treegate/bookworm/x86_64/minimal",
        "--promote-to",
        "x/tested",
        "--suite",
        "smok",
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "unknown suite 'smok'")


def test_gate_on_a_missing_ref_is_one_line(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "gate",
        "--repo",
        str(repo),
        "--ref",
        "nope/ref",
        "--promote-to",
        "x/tested",
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "ref 'nope/ref' is not in repository")


def test_report_on_a_missing_results_dir(tmp_path: Path) -> None:
    r = treegate(
        "report",
        "--results",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "o"),
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "does not exist")


def test_report_on_an_empty_results_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = treegate(
        "report",
        "--results",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "o"),
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "no allure results")


def test_gate_on_a_ref_built_for_another_arch_is_one_line(tmp_path: Path, repo: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    subprocess.run(
        [
            "ostree",
            "commit",
            f"--repo={repo}",
            "--branch=treegate/bookworm/aarch64/minimal",
            f"--tree=dir={tree}",
            "--add-metadata-string=treegate.arch=aarch64",
        ],
        check=True,
        capture_output=True,
    )
    r = treegate(
        "gate",
        "--repo",
        str(repo),
        "--ref",
        "treegate/bookworm/aarch64/minimal",
        "--promote-to",
        "tested",
        "--arch",
        "x86_64",
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "holds a commit built for aarch64, not x86_64")


def test_gate_with_a_missing_gpg_homedir_is_one_line(tmp_path: Path, repo: Path) -> None:
    r = treegate(
        "gate",
        "--repo",
        str(repo),
        "--ref",
        "treegate/bookworm/x86_64/minimal",
        "--promote-to",
        "tested",
        "--gpg-homedir",
        str(tmp_path / "no-such-gpg"),
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "GnuPG home directory", "does not exist")


def test_gate_with_a_gpg_homedir_without_a_secret_key_is_one_line(
    tmp_path: Path, repo: Path
) -> None:
    home = tmp_path / "gpg"
    home.mkdir(mode=0o700)
    r = treegate(
        "gate",
        "--repo",
        str(repo),
        "--ref",
        "treegate/bookworm/x86_64/minimal",
        "--promote-to",
        "tested",
        "--gpg-homedir",
        str(home),
        state=tmp_path / "s",
    )
    assert_one_line_error(r, 2, "no secret key in")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["gate", "--workers", "many"], "argument --workers: invalid int value: 'many'"),
        (["imag"], "invalid choice: 'imag'"),
        (["image", "--arch", "x86_64"], "the following arguments are required: --repo"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    r = treegate(*args, state=tmp_path / "s")
    assert_one_line_error(r, 2, needle, "--help)")
    assert "usage:" not in r.stderr
