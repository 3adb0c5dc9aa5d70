"""U-Boot legacy images ("uImage") of ARM kernels, made from Debian's self-decompressing zImage.

Debian's armhf kernels are zImages: a small decompressor with the kernel appended as an XZ
stream.  Under emulation that decompressor is slow: QEMU booting the ARMv7 kernel directly
reached the kernel's first line 2.1 s after start with the zImage and 0.1 s with the same
kernel uncompressed (medians of three), and through U-Boot the time before the kernel's
clock starts fell from 2.4-3.3 s to 1.0-1.3 s.  So compose stores ARMv7 kernels as the
uncompressed kernel in a legacy uImage, which U-Boot's ``bootm`` (run by its extlinux support
for any kernel with that header) copies to the load address and jumps to.

The format is U-Boot's ``legacy_img_hdr`` (include/image.h): 64 big-endian bytes holding a
magic number, CRC-32s of the header and of the data, the load and entry addresses, and
type codes, then the data.  U-Boot checks both CRCs before booting.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass

MAGIC = 0x27051956
"""``IH_MAGIC``."""
HEADER = struct.Struct(">IIIIIIIBBBB32s")
"""magic, header CRC, time, data size, load, entry, data CRC, os, arch, type, compression, name."""
OS_LINUX, ARCH_ARM, TYPE_KERNEL, COMP_NONE = 5, 2, 2, 0

ZIMAGE_MAGIC = struct.pack("<I", 0x016F2818)
"""At offset 0x24 of every ARM zImage."""
XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True)
class Header:
    """The fields of a legacy image header that treegate writes and checks."""

    load: int
    entry: int
    size: int
    time: int
    name: str
    os: int
    arch: int
    type: int
    compression: int


def decompress_zimage(zimage: bytes) -> bytes | None:
    """The kernel ``Image`` inside an ARM zImage whose payload is XZ-compressed (Debian's), or
    None for anything else (another compression, not a zImage).

    The decompressor's own code holds the XZ magic too, so every occurrence is tried until one
    is a whole, valid stream (XZ checks its own CRC).
    """
    if zimage[0x24:0x28] != ZIMAGE_MAGIC:
        return None
    start = zimage.find(XZ_MAGIC)
    while start >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            image = decompressor.decompress(zimage[start:])
        except lzma.LZMAError:
            image = b""
        if decompressor.eof and image:
            return image
        start = zimage.find(XZ_MAGIC, start + 1)
    return None


def legacy_image(data: bytes, *, load: int, time: int, name: str) -> bytes:
    """``data`` (an uncompressed Linux kernel) as a legacy uImage, entered at ``load``.

    ``time`` goes into the header as its creation time: pass something fixed by the input
    (the kernel file's own time), so the same kernel always makes the same bytes and ostree
    stores it once across commits.
    """
    tail = (OS_LINUX, ARCH_ARM, TYPE_KERNEL, COMP_NONE, name.encode()[:31])
    # The header's CRC is computed over the header with its own CRC field zero.
    crc = zlib.crc32(HEADER.pack(MAGIC, 0, time, len(data), load, load, zlib.crc32(data), *tail))
    return HEADER.pack(MAGIC, crc, time, len(data), load, load, zlib.crc32(data), *tail) + data


def read_header(image: bytes, *, whole: bool = True) -> Header | None:
    """The header of a legacy uImage whose CRCs U-Boot would accept, else None.

    With ``whole=False``, ``image`` may be just the first :data:`HEADER` bytes (a kernel read
    in a guest): only the magic and the header's own CRC are checked.
    """
    if len(image) < HEADER.size:
        return None
    magic, hcrc, time, size, load, entry, dcrc, os_, arch, typ, comp, name = HEADER.unpack_from(
        image
    )
    zeroed = image[:4] + b"\0\0\0\0" + image[8 : HEADER.size]
    if magic != MAGIC or hcrc != zlib.crc32(zeroed):
        return None
    data = image[HEADER.size : HEADER.size + size]
    if whole and (len(data) < size or dcrc != zlib.crc32(data)):
        return None
    return Header(load, entry, size, time, name.rstrip(b"\0").decode(), os_, arch, typ, comp)
