"""Disk layouts: the ``images/*.toml`` files that say how a bootable disk is partitioned.

A layout names its bootloader and partition sizes; :meth:`Layout.plan` turns it into exact
sector offsets, so that :mod:`harness.image` can write each filesystem at its place in the
disk file without loop devices.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

SECTOR = 512
MIB = 1024 * 1024
BOOTLOADERS = ("grub-bios", "grub-efi", "uboot-extlinux")
"""``grub-bios``: GRUB in a BIOS boot partition (PC firmware); ``grub-efi``: GRUB as the
removable-media loader on an EFI system partition (UEFI firmware); ``uboot-extlinux``: the
firmware's U-Boot reads ``/extlinux/extlinux.conf`` from the legacy-bootable ``/boot``."""

# GPT partition type GUIDs (the Discoverable Partitions Specification and GRUB's).
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
XBOOTLDR = "BC13C2FF-59E6-4262-A352-B275FD6F7172"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

_KEYS = {"description", "arches", "bootloader", "boot_mib", "root_mib", "esp_mib"}


@dataclass(frozen=True)
class Partition:
    """One planned partition: its name, GPT type, first sector and size in sectors."""

    name: str
    type_guid: str
    start: int
    sectors: int
    attrs: str = ""
    """GPT attribute names for sfdisk (``LegacyBIOSBootable`` marks U-Boot's boot partition)."""

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


@dataclass(frozen=True)
class Layout:
    """A disk layout read from ``images/<name>.toml``."""

    name: str
    description: str
    arches: tuple[str, ...]
    bootloader: str
    boot_mib: int
    root_mib: int
    digest: str
    """Digest of the layout file: part of the image cache key."""
    esp_mib: int = 32

    def plan(self) -> list[Partition]:
        """The partitions in disk order, 1 MiB aligned, after a 1 MiB GPT header area."""
        parts: list[tuple[str, str, int, str]] = []
        if self.bootloader == "grub-bios":
            parts.append(("bios", BIOS_BOOT, 1, ""))
        if self.bootloader == "grub-efi":
            parts.append(("esp", ESP, self.esp_mib, ""))
        boot_attrs = "LegacyBIOSBootable" if self.bootloader == "uboot-extlinux" else ""
        parts.append(("boot", XBOOTLDR, self.boot_mib, boot_attrs))
        parts.append(("root", LINUX_DATA, self.root_mib, ""))
        out = []
        start = MIB // SECTOR
        for name, guid, mib, attrs in parts:
            sectors = mib * MIB // SECTOR
            out.append(Partition(name, guid, start, sectors, attrs))
            start += sectors
        return out

    def index(self, name: str) -> int:
        """The 1-based partition number of ``name`` (what GRUB calls ``gptN``)."""
        return [p.name for p in self.plan()].index(name) + 1

    def disk_size(self) -> int:
        """Bytes: every partition plus 1 MiB at each end for the GPT and its backup."""
        last = self.plan()[-1]
        return last.offset + last.size + MIB

    def partition(self, name: str) -> Partition:
        return next(p for p in self.plan() if p.name == name)

    def sfdisk_script(self) -> str:
        """Input for ``sfdisk`` that writes exactly :meth:`plan`."""
        lines = ["label: gpt", "unit: sectors", "first-lba: 2048"]
        for p in self.plan():
            attrs = f', attrs="{p.attrs}"' if p.attrs else ""
            lines.append(
                f"start={p.start}, size={p.sectors}, type={p.type_guid}, name={p.name}{attrs}"
            )
        return "\n".join(lines) + "\n"


def load_layout(name_or_path: str, images_dir: Path) -> Layout:
    """Load a layout by name (``bios`` → ``images/bios.toml``) or by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = images_dir / f"{name_or_path}.toml"
    try:
        text = path.read_text()
        raw = tomllib.loads(text)
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in images_dir.glob("*.toml")))
        raise UserError(
            f"no disk layout {name_or_path!r}", hint=f"known layouts: {known}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}")
    bootloader = raw.get("bootloader")
    if bootloader not in BOOTLOADERS:
        raise UserError(f"{path}: bootloader must be one of {', '.join(BOOTLOADERS)}")
    for key in ("boot_mib", "root_mib"):
        if not isinstance(raw.get(key), int) or raw[key] < 64:
            raise UserError(f"{path}: {key} must be a whole number of MiB, at least 64")
    esp_mib = raw.get("esp_mib", 32)
    if not isinstance(esp_mib, int) or esp_mib < 16:
        raise UserError(f"{path}: esp_mib must be a whole number of MiB, at least 16")
    return Layout(
        name=path.stem,
        description=str(raw.get("description", "")),
        arches=tuple(raw.get("arches", ())),
        bootloader=bootloader,
        boot_mib=raw["boot_mib"],
        root_mib=raw["root_mib"],
        esp_mib=esp_mib,
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )
