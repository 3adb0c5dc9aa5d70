"""Disk layouts: partition planning and the sfdisk script."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.layout import BIOS_BOOT, ESP, MIB, SECTOR, Layout, load_layout

IMAGES = Path(__file__).resolve().parents[2] / "images"


def test_bios_layout_plan_is_aligned_and_contiguous() -> None:
    layout = load_layout("bios", IMAGES)
    parts = layout.plan()
    assert [p.name for p in parts] == ["bios", "boot", "root"]
    assert parts[0].type_guid == BIOS_BOOT
    assert parts[0].start * SECTOR == MIB
    for a, b in itertools.pairwise(parts):
        assert a.start + a.sectors == b.start
    for p in parts:
        assert p.offset % MIB == 0
    assert layout.disk_size() == parts[-1].offset + parts[-1].size + MIB


def partition_table(layout: Layout, tmp_path: Path) -> dict[str, Any]:
    """Write the layout's table with sfdisk onto a sparse file and read it back."""
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(layout.disk_size())
    subprocess.run(
        ["sfdisk", "--quiet", str(disk)], input=layout.sfdisk_script(), text=True, check=True
    )
    out = subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    )
    table: dict[str, Any] = json.loads(out.stdout)["partitiontable"]
    return table


def test_sfdisk_accepts_the_script(tmp_path: Path) -> None:
    layout = load_layout("bios", IMAGES)
    table = partition_table(layout, tmp_path)
    assert table["label"] == "gpt"
    written = [(p["start"], p["size"], p["type"], p["name"]) for p in table["partitions"]]
    planned = [(p.start, p.sectors, p.type_guid, p.name) for p in layout.plan()]
    assert written == planned


def test_unknown_layout_names_the_known_ones() -> None:
    with pytest.raises(UserError) as caught:
        load_layout("nope", IMAGES)
    assert "bios" in caught.value.one_line()


def test_layout_with_bad_sizes_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tiny.toml"
    bad.write_text('bootloader = "grub-bios"\nboot_mib = 1\nroot_mib = 4096\n')
    with pytest.raises(UserError, match="boot_mib"):
        load_layout(str(bad), IMAGES)


def test_uefi_layout_has_an_esp_first() -> None:
    layout = load_layout("uefi-aarch64", IMAGES)
    parts = layout.plan()
    assert [p.name for p in parts] == ["esp", "boot", "root"]
    assert parts[0].type_guid == ESP
    assert layout.index("boot") == 2


def test_uboot_layout_marks_boot_legacy_bootable(tmp_path: Path) -> None:
    layout = load_layout("uboot-armv7", IMAGES)
    assert [p.name for p in layout.plan()] == ["boot", "root"]
    assert layout.partition("boot").attrs == "LegacyBIOSBootable"
    boot = partition_table(layout, tmp_path)["partitions"][0]
    assert boot["attrs"] == "LegacyBIOSBootable"
