"""A missing firmware file is a one-line error that names the package, before QEMU starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.accel import Accel
from harness.arch import Firmware, get_arch
from harness.errors import UserError
from harness.machine.base import MachineConfig
from harness.machine.qemu import QemuVM


def test_missing_firmware_names_the_file_and_the_package(tmp_path: Path) -> None:
    arch = get_arch("aarch64")
    missing = Firmware(str(tmp_path / "AAVMF_CODE.fd"), "qemu-efi-aarch64", "pflash-code")
    arch = dataclasses.replace(arch, firmware=(missing,))
    config = MachineConfig(arch=arch, accel=Accel.tcg, workdir=tmp_path / "vm")
    vm = QemuVM(tmp_path / "disk.raw", config)
    with pytest.raises(UserError) as info:
        vm.start()
    line = info.value.one_line()
    assert "\n" not in line
    assert f"aarch64 firmware {missing.path} is missing" in line
    assert "apt-get install qemu-efi-aarch64" in line
    assert not (tmp_path / "vm" / "overlay.qcow2").exists()  # nothing was started
