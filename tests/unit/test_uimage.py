"""ARMv7 kernels as U-Boot legacy images (harness.uimage, and compose's use of it): the header
U-Boot checks, and the kernel found inside Debian's zImage.  That U-Boot boots such a kernel
through ostree's extlinux.conf is shown by every ARMv7 boot (tests/system; the smoke suite
checks the deployed kernel's header and U-Boot's console)."""

from __future__ import annotations

import lzma
import os
import struct
from pathlib import Path

from harness import uimage
from harness.compose import _to_uimage

KERNEL = bytes(range(256)) * 512  # stands in for an uncompressed kernel Image


def zimage(payload: bytes, *, compress: bool = True) -> bytes:
    """A zImage as Debian's are laid out: the decompressor (which holds the XZ magic itself),
    then the kernel as an XZ stream with the ARM branch filter, then its size."""
    code = bytearray(b"\0" * 0x24 + uimage.ZIMAGE_MAGIC + b"\0" * 0x40)
    code += b"decoy " + uimage.XZ_MAGIC + b" in the decompressor's rodata" + b"\0" * 32
    filters = [{"id": lzma.FILTER_ARM}, {"id": lzma.FILTER_LZMA2}]
    stream = lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    return bytes(code) + (stream if compress else payload) + struct.pack("<I", len(payload))


def test_the_kernel_is_found_past_the_decompressors_own_xz_magic() -> None:
    assert uimage.decompress_zimage(zimage(KERNEL)) == KERNEL


def test_what_is_not_an_xz_zimage_is_left_alone() -> None:
    assert uimage.decompress_zimage(zimage(KERNEL, compress=False)) is None
    assert uimage.decompress_zimage(b"MZ" + KERNEL) is None  # no zImage magic at 0x24


def test_a_legacy_image_carries_what_u_boot_reads() -> None:
    image = uimage.legacy_image(KERNEL, load=0x40208000, time=1_700_000_000, name="Linux 6.1")
    header = uimage.read_header(image)
    assert header == uimage.Header(
        load=0x40208000,
        entry=0x40208000,
        size=len(KERNEL),
        time=1_700_000_000,
        name="Linux 6.1",
        os=uimage.OS_LINUX,
        arch=uimage.ARCH_ARM,
        type=uimage.TYPE_KERNEL,
        compression=uimage.COMP_NONE,
    )
    assert image[uimage.HEADER.size :] == KERNEL


def test_u_boot_would_reject_a_damaged_image() -> None:
    image = bytearray(uimage.legacy_image(KERNEL, load=0x40208000, time=0, name="Linux"))
    data_damaged = bytearray(image)
    data_damaged[-1] ^= 1
    header_damaged = bytearray(image)
    header_damaged[16] ^= 1  # the load address
    assert uimage.read_header(bytes(data_damaged)) is None
    assert uimage.read_header(bytes(header_damaged)) is None
    assert uimage.read_header(bytes(image[:-1])) is None  # truncated
    # The first 64 bytes alone (a kernel read in a guest) carry a header U-Boot checks too.
    assert uimage.read_header(bytes(image[: uimage.HEADER.size]), whole=False) is not None
    assert uimage.read_header(bytes(header_damaged[: uimage.HEADER.size]), whole=False) is None


def test_compose_stores_the_same_kernel_as_the_same_bytes(tmp_path: Path) -> None:
    kernels = []
    for compose in ("first", "second"):
        kernel = tmp_path / compose / "usr/lib/modules/6.1.0-test/vmlinuz"
        kernel.parent.mkdir(parents=True)
        kernel.write_bytes(zimage(KERNEL))
        os.utime(kernel, (1_600_000_000, 1_600_000_000))
        _to_uimage(kernel, 0x40208000)
        assert kernel.stat().st_mtime == 1_600_000_000
        kernels.append(kernel.read_bytes())
    assert kernels[0] == kernels[1], "ostree would store one kernel per compose"
    header = uimage.read_header(kernels[0])
    assert header is not None and header.time == 1_600_000_000 and header.load == 0x40208000
    assert header.name == "Linux 6.1.0-test"
