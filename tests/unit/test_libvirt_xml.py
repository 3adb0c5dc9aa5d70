"""The libvirt backend's decisions that need no daemon: the domain XML it generates for each
arch, which URIs count as remote, the missing-firmware error, and PPM → PNG screenshots.
(Booting those domains is tests/harness/test_libvirt.py.)"""

from __future__ import annotations

import dataclasses
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from harness.accel import Accel
from harness.arch import Firmware, get_arch
from harness.errors import UserError
from harness.machine.base import Backend, MachineConfig, u_boot_environment
from harness.machine.libvirt import QEMU_NS, LibvirtVM
from harness.machine.screen import ppm_to_png


def vm_for(arch: str, tmp_path: Path, **config: object) -> LibvirtVM:
    cfg = MachineConfig(
        arch=get_arch(arch),
        accel=Accel.tcg,
        workdir=tmp_path / "vm",
        name="smoke",
        run="R1",
        repo_port=4242,
        **config,  # type: ignore[arg-type]
    )
    vm = LibvirtVM(tmp_path / "disk.raw", cfg, backend=Backend("libvirt"), image_key="k")
    vm.ssh_port = vm.forward_port = 2222
    return vm


def qemu_args(dom: ET.Element) -> list[str]:
    return [a.get("value", "") for a in dom.iter(f"{{{QEMU_NS}}}arg")]


def test_x86_64_domain(tmp_path: Path) -> None:
    dom = ET.fromstring(vm_for("x86_64", tmp_path).domain_xml("/o.qcow2"))
    assert dom.get("type") == "qemu"
    assert dom.findtext("name") == "treegate-R1-smoke"
    assert dom.find("os/type").get("machine") == "q35"  # type: ignore[union-attr]
    assert dom.find("os/loader") is None  # SeaBIOS, then GRUB from the disk
    assert dom.find("devices/disk/source").get("file") == "/o.qcow2"  # type: ignore[union-attr]
    assert dom.find("devices/disk/driver").get("cache") == "unsafe"  # type: ignore[union-attr]
    assert dom.find("devices/video/model").get("type") == "vga"  # type: ignore[union-attr]
    assert dom.find("seclabel/label").text == "+0:+0"  # type: ignore[union-attr]
    args = qemu_args(dom)
    assert args[args.index("-cpu") + 1] == "max"
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev
    assert "guestfwd=tcp:10.0.2.100:8080-cmd:socat - TCP:127.0.0.1:4242" in netdev


def test_aarch64_boots_through_uefi_with_its_own_variable_store(tmp_path: Path) -> None:
    dom = ET.fromstring(vm_for("aarch64", tmp_path).domain_xml("/o.qcow2"))
    loader = dom.find("os/loader")
    assert loader is not None and loader.get("type") == "pflash"
    assert loader.text == "/usr/share/AAVMF/AAVMF_CODE.fd"
    nvram = dom.find("os/nvram")
    assert nvram is not None and nvram.get("template") == "/usr/share/AAVMF/AAVMF_VARS.fd"
    assert nvram.text == str(tmp_path / "vm" / "efivars.fd")
    # UEFI's boot manager does not wait for a key (libvirt: -boot menu=on,splash-time=0).
    bootmenu = dom.find("os/bootmenu")
    assert bootmenu is not None and bootmenu.attrib == {"enable": "yes", "timeout": "0"}
    # The firmware, GRUB and the kernel's console draw on ramfb: screenshots show them.
    assert dom.find("devices/video/model").get("type") == "ramfb"  # type: ignore[union-attr]
    args = qemu_args(dom)
    assert args[args.index("-cpu") + 1] == "max,pauth=off,sve=off"


def test_armv7_boots_u_boot_as_its_rom(tmp_path: Path) -> None:
    dom = ET.fromstring(vm_for("armv7", tmp_path).domain_xml("/o.qcow2"))
    assert dom.find("os/type").get("arch") == "armv7l"  # type: ignore[union-attr]
    loader = dom.find("os/loader")
    assert loader is not None and loader.get("type") == "rom"
    assert loader.text == "/usr/lib/u-boot/qemu_arm/u-boot.bin"
    assert dom.find("devices/video/model").get("type") == "virtio"  # type: ignore[union-attr]


def test_armv7_gets_u_boot_environment_in_its_second_flash_bank(tmp_path: Path) -> None:
    vm = vm_for("armv7", tmp_path)
    vm.workdir.mkdir(parents=True)
    uboot = tmp_path / "u-boot.bin"
    uboot.write_bytes(b"code\0bootcmd=run distro_bootcmd\0bootdelay=2\0\0more")
    arch = dataclasses.replace(
        get_arch("armv7"), firmware=(Firmware(str(uboot), "u-boot-qemu", "u-boot"),)
    )
    u_boot_environment(arch, vm.workdir)
    args = qemu_args(ET.fromstring(vm.domain_xml("/o.qcow2")))
    drive = args[args.index("-drive") + 1]
    assert drive == f"if=pflash,format=raw,unit=1,readonly=on,file={vm.workdir}/u-boot-env.fd"


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("qemu:///system", False),
        ("qemu:///session", False),
        ("qemu+tcp://127.0.0.1:16509/system", True),
        ("qemu+ssh://root@127.0.0.1/system", True),
    ],
)
def test_which_uris_are_remote(uri: str, remote: bool) -> None:
    assert Backend("libvirt", uri).remote is remote
    assert Backend("libvirt", uri).can_save is not remote
    assert not Backend("qemu", uri).remote


def test_missing_firmware_is_one_line_before_libvirt_is_asked(tmp_path: Path) -> None:
    missing = Firmware(str(tmp_path / "u-boot.bin"), "u-boot-qemu", "u-boot")
    arch = dataclasses.replace(get_arch("armv7"), firmware=(missing,))
    cfg = MachineConfig(arch=arch, accel=Accel.tcg, workdir=tmp_path / "vm")
    vm = LibvirtVM(
        tmp_path / "disk.raw",
        cfg,
        # A URI nothing answers at: the firmware check must come first.
        backend=Backend("libvirt", "qemu:///system?socket=/nonexistent"),
        image_key="k",
    )
    with pytest.raises(UserError) as info:
        vm.start()
    assert info.value.one_line() == (
        f"armv7 firmware {missing.path} is missing (apt-get install u-boot-qemu)"
    )


def test_ppm_screenshot_becomes_a_png_with_the_same_pixels() -> None:
    width, height = 3, 2
    pixels = bytes(range(width * height * 3))
    png = ppm_to_png(b"P6\n# a comment\n3 2\n255\n" + pixels)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (width, height)
    idat_len = struct.unpack(">I", png[33:37])[0]
    assert png[37:41] == b"IDAT"
    raw = zlib.decompress(png[41 : 41 + idat_len])
    assert raw == b"\0" + pixels[:9] + b"\0" + pixels[9:]
