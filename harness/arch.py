"""One profile per guest architecture: how to compose for it and how to run it in QEMU.

A profile is data; the only behaviour here is deciding which accelerator to use, which needs
a real probe boot (see :mod:`harness.accel`).  Profiles are looked up by name with
:func:`get_arch`, which turns a typo into a one-line error.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class Firmware:
    """A firmware file: how QEMU loads it, and the Debian package that ships it."""

    path: str
    package: str
    kind: str
    """``pflash-code`` (read-only UEFI code), ``pflash-vars`` (copied per machine) or
    ``u-boot`` (the boot ROM, with its environment in flash: :mod:`harness.uboot`)."""


@dataclass(frozen=True)
class Arch:
    """What treegate needs to know about one guest architecture."""

    name: str
    """treegate's name, used in refs and on the command line: ``x86_64``, ``aarch64``, ``armv7``."""
    debian: str
    """Debian's architecture name, passed to mmdebstrap."""
    kernel_package: str
    """The Debian kernel package composed into trees for this arch."""
    qemu_binary: str
    qemu_package: str
    """The Debian package that ships :attr:`qemu_binary` (named in errors)."""
    machine: str
    cpu: str
    console: str
    """The guest's serial console device, passed as ``console=`` on the kernel command line."""
    host_machines: tuple[str, ...]
    """``platform.machine()`` values of hosts on which KVM can run this arch."""
    timeout_scale: float
    """Multiplier applied to every guest timeout when the guest is emulated (TCG)."""
    display: str
    """The QEMU display device: what the firmware, the bootloader and the kernel's console
    draw on, and what a screenshot shows."""
    memory_mib: int = 1024
    smp: int = 2
    boot_packages: tuple[str, ...] = ()
    """Packages composed into the tree for its bootloader (the image builder takes GRUB's
    modules for this arch from the tree itself: Debian ships them only for the native arch)."""
    firmware: tuple[Firmware, ...] = ()
    """Firmware files QEMU needs for this arch, beyond what the QEMU package brings."""
    layout: str = "bios"
    """The default disk layout (``images/<layout>.toml``)."""
    uimage_load: int | None = None
    """When set, compose stores the tree's kernel uncompressed in a U-Boot legacy image
    entered at this physical address, instead of the self-decompressing zImage Debian ships
    (:mod:`harness.uimage`: the decompression costs about 2 s of every emulated boot)."""

    def host_matches(self) -> bool:
        """True when this host could run the arch under KVM (same instruction set)."""
        return platform.machine() in self.host_machines


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            name="x86_64",
            debian="amd64",
            kernel_package="linux-image-cloud-amd64",
            qemu_binary="qemu-system-x86_64",
            qemu_package="qemu-system-x86",
            # q35 is what current distributions test on; -cpu max gives TCG every feature it
            # emulates, which the kernel uses for faster code paths.
            machine="q35",
            cpu="max",
            console="ttyS0",
            host_machines=("x86_64", "amd64"),
            timeout_scale=1.0,
            display="VGA",
        ),
        Arch(
            name="aarch64",
            debian="arm64",
            kernel_package="linux-image-cloud-arm64",
            qemu_binary="qemu-system-aarch64",
            qemu_package="qemu-system-arm",
            machine="virt",
            # Pointer authentication and SVE off: emulating them costs boot time and Debian's
            # arm64 userland runs without them (PAC instructions are NOPs then).  Measured
            # boot to SSH, medians of 3: architected pauth about 2.5x slower than
            # pauth-impdef=on (15.5 s), which sve=off brings to 15.2 s and pauth=off,sve=off
            # to 13.9 s.
            cpu="max,pauth=off,sve=off",
            console="ttyAMA0",
            host_machines=("aarch64", "arm64"),
            timeout_scale=1.5,
            # AAVMF draws on ramfb, and the kernel's EFI framebuffer keeps it after boot (the
            # cloud kernel has no virtio-gpu driver: a virtio GPU goes dark once Linux starts;
            # AAVMF has no driver for bochs-display).  QEMU 7.2 does not save ramfb's set-up
            # with a machine's state: a restored machine's screen stays blank until it boots.
            display="ramfb",
            boot_packages=("grub-efi-arm64-bin",),
            firmware=(
                Firmware("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64", "pflash-code"),
                Firmware("/usr/share/AAVMF/AAVMF_VARS.fd", "qemu-efi-aarch64", "pflash-vars"),
            ),
            layout="uefi-aarch64",
        ),
        Arch(
            name="armv7",
            debian="armhf",
            kernel_package="linux-image-armmp-lpae",
            qemu_binary="qemu-system-arm",
            qemu_package="qemu-system-arm",
            machine="virt",
            cpu="cortex-a15",
            console="ttyAMA0",
            host_machines=(),
            timeout_scale=2.0,
            display="virtio-gpu-pci",
            firmware=(Firmware("/usr/lib/u-boot/qemu_arm/u-boot.bin", "u-boot-qemu", "u-boot"),),
            layout="uboot-armv7",
            # The virt board's RAM starts at 0x40000000; this is where the zImage's own
            # decompressor puts this kernel (RAM + 2 MiB + TEXT_OFFSET, read from a booted
            # machine's memory).  Entered at RAM + TEXT_OFFSET instead, it hung at its first
            # timer interrupt, booted by U-Boot or by QEMU directly.
            uimage_load=0x40208000,
        ),
    )
}


def get_arch(name: str) -> Arch:
    """Return the profile called ``name``, or raise a one-line :class:`UserError`."""
    try:
        return ARCHES[name]
    except KeyError:
        raise UserError(
            f"unknown arch {name!r}", hint=f"choose one of {', '.join(ARCHES)}"
        ) from None
