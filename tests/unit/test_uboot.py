"""U-Boot's environment flash (harness.uboot): read from the installed u-boot.bin, written so
that U-Boot accepts it (its CRC) with no boot countdown and room to load an uncompressed
kernel.  That U-Boot then boots from it at
once is checked by every ARMv7 boot (tests/system)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from harness import uboot

DEBIAN_U_BOOT = Path("/usr/lib/u-boot/qemu_arm/u-boot.bin")


def entries_of(flash: Path) -> list[bytes]:
    block = flash.read_bytes()[: uboot.ENV_SIZE]
    (crc,) = struct.unpack("<I", block[:4])
    assert crc == zlib.crc32(block[4:]), "U-Boot would reject the block and use its default"
    return block[4:].split(b"\0\0")[0].split(b"\0")


def test_the_default_environment_with_no_countdown(tmp_path: Path) -> None:
    binary = tmp_path / "u-boot.bin"
    binary.write_bytes(
        b"\x7fcode\0%s\0bootcmd=run distro_bootcmd\0bootdelay=2\0kernel_addr_r=0x40400000\0"
        b"arch=arm\0\0tail"
    )
    flash = tmp_path / "env.fd"
    assert uboot.write_flash(binary, flash)
    assert flash.stat().st_size == uboot.FLASH_SIZE
    assert entries_of(flash) == [
        b"bootcmd=run distro_bootcmd",
        b"bootdelay=0",
        b"kernel_addr_r=0x42000000",
        b"arch=arm",
    ]


def test_a_u_boot_without_a_recognisable_default_gets_no_flash(tmp_path: Path) -> None:
    binary = tmp_path / "u-boot.bin"
    binary.write_bytes(b"\x7fcode\0baudrate=115200\0\0")
    flash = tmp_path / "env.fd"
    assert not uboot.write_flash(binary, flash)
    assert not flash.exists()


@pytest.mark.skipif(not DEBIAN_U_BOOT.is_file(), reason="u-boot-qemu is not installed")
def test_debians_qemu_arm_u_boot(tmp_path: Path) -> None:
    flash = tmp_path / "env.fd"
    assert uboot.write_flash(DEBIAN_U_BOOT, flash)
    entries = entries_of(flash)
    assert b"bootdelay=0" in entries
    assert b"kernel_addr_r=0x42000000" in entries
    assert b"ramdisk_addr_r=0x44000000" in entries  # what KERNEL_ADDR_R leaves 32 MiB below
    assert b"bootcmd=run distro_bootcmd" in entries
    assert any(e.startswith(b"boot_syslinux_conf=") for e in entries)  # how it finds ostree's
