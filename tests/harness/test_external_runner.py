"""The external-test runner on a real machine: a failing test fails with its output, exit 77
skips, and the environment is kola's (root, KOLA_TEST, AUTOPKGTEST_TMP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import TreeFailure
from harness.external import load_test, run_external
from harness.guest import Guest

pytestmark = pytest.mark.vm


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n## kola:\n##   timeoutMin: 2\n" + body)
    path.chmod(0o755)
    return path


def test_failing_skipping_and_passing_external_tests(machine: Guest, tmp_path: Path) -> None:
    env = script(
        tmp_path,
        "env-check",
        'test "$(id -u)" = 0 && test "$KOLA_TEST" = env-check && test -d "$AUTOPKGTEST_TMP"\n',
    )
    run_external(load_test(env), machine, tmp_path / "env.txt")

    failing = script(tmp_path, "fails", "echo 'the tree is missing something'\nexit 3\n")
    with pytest.raises(TreeFailure, match="exited 3") as info:
        run_external(load_test(failing), machine, tmp_path / "fails.txt")
    assert "the tree is missing something" in str(info.value)
    assert "exit 3" in (tmp_path / "fails.txt").read_text()

    skipping = script(tmp_path, "skips", "echo 'not applicable here'\nexit 77\n")
    with pytest.raises(pytest.skip.Exception, match="not applicable here"):
        run_external(load_test(skipping), machine, tmp_path / "skips.txt")
