"""External tests in kola's format: metadata parsing and discovery (no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.external import discover, load_test, parse_metadata

ROOT = Path(__file__).resolve().parents[2]


def test_block_metadata_kola_yaml_subset() -> None:
    text = """#!/bin/bash
## kola:
##   # a comment inside the block
##   timeoutMin: 15
##   architectures: "!s390x"
##   tags: reboot needs-internet
##   exclusive: false
set -e
"""
    assert parse_metadata(text) == {
        "timeoutMin": 15,
        "architectures": "!s390x",
        "tags": "reboot needs-internet",
        "exclusive": False,
    }


def test_one_line_json_metadata() -> None:
    assert parse_metadata('#!/bin/sh\n# kola: {"timeoutMin": 2, "exclusive": false}\n') == {
        "timeoutMin": 2,
        "exclusive": False,
    }


def test_no_metadata_means_defaults(tmp_path: Path) -> None:
    script = tmp_path / "t"
    script.write_text("#!/bin/sh\ntrue\n")
    test = load_test(script)
    assert test.timeout_min == 10 and test.architectures == () and test.exclusive


def test_architectures_include_and_exclude(tmp_path: Path) -> None:
    script = tmp_path / "t"
    script.write_text("#!/bin/sh\n## kola:\n##   architectures: x86_64 aarch64\n")
    only = load_test(script)
    assert only.skip_reason("x86_64", 1024) == ""
    assert "exclude armv7" in only.skip_reason("armv7", 1024)
    script.write_text("#!/bin/sh\n## kola:\n##   architectures: '!armv7'\n")
    not_arm = load_test(script)
    assert not_arm.skip_reason("aarch64", 1024) == ""
    assert not_arm.skip_reason("armv7", 1024) != ""


def test_what_treegate_cannot_give_is_refused_with_the_reason(tmp_path: Path) -> None:
    script = tmp_path / "t"
    script.write_text('#!/bin/sh\n## kola:\n##   additionalDisks: ["5G"]\n##   minMemory: 4096\n')
    test = load_test(script)
    assert "additionalDisks: extra disks are not supported" in test.skip_reason("x86_64", 1024)
    script.write_text("#!/bin/sh\n## kola:\n##   minMemory: 4096\n")
    assert "needs 4096 MiB" in load_test(script).skip_reason("x86_64", 1024)


def test_bad_metadata_is_a_one_line_error(tmp_path: Path) -> None:
    script = tmp_path / "t"
    script.write_text("#!/bin/sh\n## kola:\n##   this line has no colon\n")
    with pytest.raises(UserError, match="want 'key: value'"):
        load_test(script)


def test_discover_takes_executables_only(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not a test\n")
    (tmp_path / "b-test").write_text("#!/bin/sh\n")
    (tmp_path / "b-test").chmod(0o755)
    (tmp_path / "a-test").write_text("#!/bin/sh\n")
    (tmp_path / "a-test").chmod(0o755)
    assert [t.name for t in discover(tmp_path)] == ["a-test", "b-test"]
    with pytest.raises(UserError, match="does not exist"):
        discover(tmp_path / "missing")


def test_the_example_directory() -> None:
    tests = {t.name: t for t in discover(ROOT / "tests" / "external")}
    assert set(tests) == {"ostree-booted", "var-survives-reboots"}
    assert tests["var-survives-reboots"].tags == ("reboot",)
    assert not tests["ostree-booted"].exclusive
