"""U-Boot's environment, written into the flash bank where Debian's ``qemu_arm`` U-Boot looks.

That U-Boot keeps its environment in the virt machine's second flash bank.  With nothing
there it uses the default compiled into ``u-boot.bin``, whose ``bootdelay=2`` waits two
seconds for a key before every boot: under emulation, two seconds of every ARMv7 boot and
reboot.  Each machine therefore gets a flash image holding that same default environment,
read from the installed ``u-boot.bin`` (so it follows the package), with two changes:

* ``bootdelay=0``: U-Boot still looks for a key once, then boots at once;
* ``kernel_addr_r`` (where extlinux loads the kernel file) moved from 0x40400000 to
  :data:`KERNEL_ADDR_R`: treegate's ARMv7 kernels are uncompressed (:mod:`harness.uimage`,
  about 22 MiB) and copied by ``bootm`` to 0x40208000, so a file loaded at the default would
  overlap its own destination, which ``bootm`` refuses.  A zImage boots from there too.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

ENV_SIZE = 0x40000
"""``CONFIG_ENV_SIZE`` of ``qemu_arm``: the environment block at the start of the bank."""

KERNEL_ADDR_R = 0x42000000
"""Where U-Boot loads the kernel file: past the end of an uncompressed kernel copied to
0x40208000, and 32 MiB below ``ramdisk_addr_r`` (0x44000000), where the initramfs goes."""

FLASH_SIZE = 64 * 1024 * 1024
"""The size of each of the virt machine's flash banks: QEMU wants the image this size."""


def default_environment(u_boot: bytes) -> list[bytes]:
    """The ``name=value`` entries of the default environment compiled into ``u_boot``.

    It is stored as NUL-separated entries ending in two NULs and starting with ``bootcmd=``;
    an empty list when no such block is found (another U-Boot build).
    """
    start = u_boot.find(b"\0bootcmd=") + 1
    if start == 0:
        return []
    end = u_boot.find(b"\0\0", start)
    entries = u_boot[start:end].split(b"\0") if end > 0 else []
    if not any(e.startswith(b"bootdelay=") for e in entries):
        return []
    return entries


def write_flash(u_boot: Path, dest: Path) -> bool:
    """Write ``dest``: a flash bank holding ``u_boot``'s default environment with
    ``bootdelay=0`` and ``kernel_addr_r`` at :data:`KERNEL_ADDR_R`.  False (and nothing
    written) when its default environment is not found, so the machine boots with the
    countdown rather than not at all."""
    entries = default_environment(u_boot.read_bytes())
    if not entries:
        return False
    changed = {b"bootdelay": b"0", b"kernel_addr_r": b"%#x" % KERNEL_ADDR_R}
    entries = [
        k + b"=" + changed[k] if (k := e.split(b"=", 1)[0]) in changed else e for e in entries
    ]
    data = b"\0".join(entries) + b"\0\0"
    if len(data) > ENV_SIZE - 4:
        return False
    data = data.ljust(ENV_SIZE - 4, b"\0")
    with dest.open("wb") as f:
        # The block is a little-endian CRC-32 of the data, then the data: a bad CRC makes
        # U-Boot ignore it and fall back to its default.
        f.write(struct.pack("<I", zlib.crc32(data)) + data)
        f.truncate(FLASH_SIZE)  # sparse: the rest of the bank reads as zeros
    return True
