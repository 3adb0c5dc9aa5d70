"""Compose logic that needs no mmdebstrap: apt sources, tree paths, unit links, layering."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import compose
from harness.arch import get_arch
from harness.compose import (
    _parse_deb822,
    _parse_one_line,
    _recipe,
    _tree_path,
    _wanted_by,
    mounts_below,
)
from harness.definition import load_definition
from harness.errors import UserError

TREES = Path(__file__).resolve().parents[2] / "fixtures" / "trees"

DEB822 = """\
Types: deb
# a comment
URIs: http://127.0.0.1:3142/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://127.0.0.1:3142/debian
Suites: bookworm
Components: main
"""


def test_deb822_stanzas_are_read() -> None:
    stanzas = _parse_deb822(DEB822)
    assert len(stanzas) == 2
    assert stanzas[0]["Suites"] == "bookworm bookworm-updates"
    assert stanzas[0]["Signed-By"].endswith("debian-archive-keyring.gpg")


def test_one_line_sources_with_options() -> None:
    text = "deb [arch=amd64 signed-by=/k.gpg] http://127.0.0.1:3142/debian bookworm main contrib\n# deb x y\n"
    (stanza,) = _parse_one_line(text)
    assert stanza["URIs"] == "http://127.0.0.1:3142/debian"
    assert stanza["Suites"] == "bookworm" and stanza["Components"] == "main contrib"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/hostname", "usr/etc/hostname"),
        ("/etc", "usr/etc"),
        ("/usr/lib/x", "usr/lib/x"),
        ("/etcetera/x", "etcetera/x"),
    ],
)
def test_etc_lives_in_usr_etc(path: str, expected: str) -> None:
    assert _tree_path(path) == expected


def test_wanted_by_reads_the_install_section() -> None:
    unit = (
        "[Unit]\nWantedBy=not-this.target\n[Install]\nWantedBy=multi-user.target sockets.target\n"
    )
    assert _wanted_by(unit) == ["multi-user.target", "sockets.target"]
    with pytest.raises(UserError):
        _wanted_by("[Unit]\nDescription=x\n")


def test_which_fixtures_are_layers() -> None:
    layered = {p.stem for p in TREES.glob("*.toml") if load_definition(p).layers_on_parent()}
    # Only files and units added: composed in seconds on top of the parent's commit.
    layers = {
        "minimal-v2",
        "docker-v2",
        "broken-init",
        "failing-unit",
        "sshd-broken",
        "docker-broken",
    }
    assert layers <= layered
    # New packages need a full compose.
    assert "docker" not in layered and "minimal" not in layered


MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
90 22 0:5 / /work/.treegate/tmp/compose-ab/root/proc ro,relatime - proc proc ro
91 22 0:20 / /work/.treegate/tmp/compose-ab/root/sys ro - sysfs sys ro
92 22 0:21 / /work/.treegate/tmp/compose-ab/root/dev/pts rw - devpts none rw
93 22 0:22 / /work/.treegate/tmp/compose-abc/root/proc ro - proc proc ro
94 22 0:23 / /work/my\\040dir/compose-x/root/proc ro - proc proc ro
"""


def test_mounts_left_in_a_workspace_are_found_deepest_first() -> None:
    found = mounts_below(Path("/work/.treegate/tmp/compose-ab"), MOUNTINFO)
    assert found[0] == "/work/.treegate/tmp/compose-ab/root/dev/pts"
    # A sibling whose name merely starts the same (compose-abc) is not below it.
    assert sorted(found) == [
        "/work/.treegate/tmp/compose-ab/root/dev/pts",
        "/work/.treegate/tmp/compose-ab/root/proc",
        "/work/.treegate/tmp/compose-ab/root/sys",
    ]
    assert mounts_below(Path("/work/my dir/compose-x"), MOUNTINFO) == [
        "/work/my dir/compose-x/root/proc"
    ]
    assert mounts_below(Path("/elsewhere"), MOUNTINFO) == []


def test_editing_the_initramfs_module_changes_every_compose_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "initramfs"
    module.mkdir()
    for path in compose.INITRAMFS_MODULE.iterdir():
        (module / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(compose, "INITRAMFS_MODULE", module)
    arch = get_arch("armv7")
    before = _recipe(arch)
    assert _recipe(arch) == before  # the same files, the same key
    init = module / "init.sh"
    init.write_text(init.read_text() + "# one more line\n")
    assert _recipe(arch) != before
    assert _recipe(get_arch("aarch64")) != _recipe(arch)
