"""Tree diffs: dpkg status parsing and ``ostree diff`` counts (the inputs are real formats)."""

from __future__ import annotations

from harness.treediff import TreeDiff, file_counts, installed_packages

STATUS = """\
Package: less
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 590-2.1~deb12u2
Description: pager program similar to more
 This package provides "less", a file pager.

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u13

Package: removed-but-configured
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""


def test_installed_packages_reads_versions_and_skips_leftover_config() -> None:
    assert installed_packages(STATUS) == {
        "less": "590-2.1~deb12u2",
        "libc6:amd64": "2.36-9+deb12u13",
    }


def test_file_counts_by_kind() -> None:
    out = "M    /usr/etc/treegate-release\nA    /usr/bin/less\nA    /usr/bin/lessecho\nD    /x\n"
    assert file_counts(out) == {"added": 2, "modified": 1, "deleted": 1}


def test_text_lists_every_package_change() -> None:
    diff = TreeDiff(
        added={"less": "590"},
        removed={"nano": "7.2"},
        changed={"ostree": ("2022.7-2", "2022.7-3")},
        files={"added": 15, "modified": 5, "deleted": 0},
    )
    text = diff.text("a" * 64, "b" * 64)
    assert "files: 15 added, 5 modified, 0 deleted" in text
    assert "  + less 590" in text and "  - nano 7.2" in text
    assert "  ~ ostree 2022.7-2 → 2022.7-3" in text
