"""Installed tests: key file parsing, discovery and the runner's TAP report (no VM)."""

from __future__ import annotations

import shlex
from pathlib import Path

from harness.installed import (
    InstalledResult,
    InstalledTest,
    discover_tree,
    keyfile_list,
    list_in_commit,
    parse_keyfile,
    parse_runner_tap,
    parse_test,
    select,
)
from harness.repo import Repo

LIBDIR = "/usr/libexec/installed-tests/libostree"
LIBOSTREE = f"""[Test]
Type=session
Exec=env G_TEST_SRCDIR={LIBDIR} G_TEST_BUILDDIR={LIBDIR} {LIBDIR}/test-basic.sh
"""


def test_a_libostree_key_file() -> None:
    test = parse_test("libostree/test-basic.sh.test", LIBOSTREE)
    assert test.problem == ""
    assert test.type == "session" and not test.destructive
    assert test.argv == (
        "env",
        "G_TEST_SRCDIR=/usr/libexec/installed-tests/libostree",
        "G_TEST_BUILDDIR=/usr/libexec/installed-tests/libostree",
        "/usr/libexec/installed-tests/libostree/test-basic.sh",
    )
    assert test.squashed == "libostree_test-basic.sh.test"


def test_keyfile_syntax_comments_groups_locales_and_escapes() -> None:
    text = """# a comment
[Other]
Exec=not this one

[Test]
Description[de]=Ein Test
Description = A test
Exec=sh -c 'echo "a b"; exit 0'
Type=session
TestEnvironment=A=1;B=x\\;y;C=with\\sspace;
"""
    groups = parse_keyfile(text)
    assert set(groups) == {"Other", "Test"}
    assert groups["Test"]["Description"] == "A test"
    assert "Description[de]" not in groups["Test"]
    test = parse_test("x/t.test", text)
    assert test.argv == ("sh", "-c", 'echo "a b"; exit 0')
    assert test.environment == ("A=1", "B=x;y", "C=with space")
    assert keyfile_list("a;b") == ("a", "b")


def test_destructive_tests_need_a_fresh_machine() -> None:
    exclusive = parse_test("x/t.test", "[Test]\nType=session-exclusive\nExec=true\n")
    assert exclusive.destructive
    in_dir = parse_test("x/destructive/t.test", "[Test]\nType=session\nExec=true\n")
    assert in_dir.destructive
    # Only a directory called destructive counts, not a test that is called so.
    assert not parse_test("x/destructive.test", "[Test]\nType=session\nExec=true\n").destructive


def test_a_bad_key_file_is_a_problem_of_that_test_not_an_exception() -> None:
    assert "no Exec key" in parse_test("x/t.test", "[Test]\nType=session\n").problem
    assert "no [Test] group" in parse_test("x/t.test", "[Other]\nExec=true\n").problem
    assert (
        "unknown test type 'bogus'"
        in parse_test("x/t.test", "[Test]\nType=bogus\nExec=true\n").problem
    )
    assert "unknown test type ''" in parse_test("x/t.test", "[Test]\nExec=true\n").problem
    assert "not a key file line" in parse_test("x/t.test", "[Test]\nthis is not a key\n").problem
    assert (
        "cannot split Exec"
        in parse_test("x/t.test", "[Test]\nType=session\nExec=sh -c 'unterminated\n").problem
    )


def test_discover_recurses_and_names_tests_as_the_runner_does(tmp_path: Path) -> None:
    (tmp_path / "libostree" / "destructive").mkdir(parents=True)
    (tmp_path / "libostree" / "b.test").write_text(LIBOSTREE)
    (tmp_path / "libostree" / "a.test").write_text(LIBOSTREE)
    (tmp_path / "libostree" / "destructive" / "c.test").write_text(LIBOSTREE)
    (tmp_path / "libostree" / "README").write_text("not a test\n")
    tests = discover_tree(tmp_path)
    assert [t.name for t in tests] == [
        "libostree/a.test",
        "libostree/b.test",
        "libostree/destructive/c.test",
    ]
    assert [t.destructive for t in tests] == [False, False, True]
    assert [t.name for t in select(tests, ("libostree/a", "libostree/destructive/"))] == [
        "libostree/a.test",
        "libostree/destructive/c.test",
    ]
    assert select(tests, ()) == tests


def test_the_guest_command_runs_exec_without_a_shell_and_replaces_the_environment() -> None:
    test = InstalledTest("x/t.test", ("printf", "%s\\n", "a b"), environment=("FOO=bar",))
    argv = shlex.split(test.command(300))
    assert argv[:2] == ["bash", "-c"]
    assert argv[3:] == [
        "run-one",
        "x_t.test",
        "300",
        "env",
        "-i",
        "FOO=bar",
        "printf",
        "%s\\n",
        "a b",
    ]
    assert "timeout --kill-after=" in argv[2] and ".testtmp" in argv[2]


def test_result_tail_and_skip_reason() -> None:
    result = InstalledResult("skipped", 77, 1.5, False, "one\ntwo\n1..0 # SKIP no xattrs\n\n")
    assert result.skip_reason == "1..0 # SKIP no xattrs"
    assert result.tail(2) == "two\n1..0 # SKIP no xattrs"


def test_runner_tap_outcomes() -> None:
    tap = """1..4
# Running test: libostree/a.test
ok - libostree/a.test
# Running test: libostree/b.test
ok # SKIP - libostree/b.test
# Running test: libostree/c.test
# FAIL: libostree/c.test (Child process exited with code 1)
not ok - libostree/c.test
# Running test: libostree/d.test
not ok - Test timed out after 300 seconds
# FAIL: libostree/d.test (Child process killed by signal 9)
not ok - libostree/d.test
# SUMMARY: total=4; passed=1; skipped=1; failed=2
"""
    names = {"libostree/a.test", "libostree/b.test", "libostree/c.test", "libostree/d.test"}
    assert parse_runner_tap(tap, names) == {
        "libostree/a.test": "passed",
        "libostree/b.test": "skipped",
        "libostree/c.test": "failed",
        "libostree/d.test": "failed",
    }


def test_listed_from_a_commit_on_the_host_without_booting(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.init()
    tree = tmp_path / "tree"
    suite = tree / "usr/share/installed-tests/libostree"
    (suite / "destructive").mkdir(parents=True)
    (suite / "test-basic.sh.test").write_text(LIBOSTREE)
    (suite / "destructive" / "reboots.test").write_text("[Test]\nType=session\nExec=true\n")
    with_tests = repo.commit(tree, "t/with", subject="with", metadata={})
    assert [(t.name, t.destructive) for t in list_in_commit(repo, with_tests)] == [
        ("libostree/destructive/reboots.test", True),
        ("libostree/test-basic.sh.test", False),
    ]
    bare = tmp_path / "bare"
    (bare / "usr/bin").mkdir(parents=True)
    without = repo.commit(bare, "t/without", subject="without", metadata={})
    assert list_in_commit(repo, without) == []
