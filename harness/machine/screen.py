"""Screenshots: libvirt hands them over as PPM; reports and allure want PNG."""

from __future__ import annotations

import struct
import zlib

from harness.errors import InfraError


def ppm_to_png(ppm: bytes) -> bytes:
    """A binary PPM (``P6``, 8 bits per channel) as a PNG, with no library beyond zlib."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:  # magic, width, height, maxval; comments start with '#'
        while pos < len(ppm) and ppm[pos : pos + 1].isspace():
            pos += 1
        if ppm[pos : pos + 1] == b"#":
            pos = ppm.index(b"\n", pos)
            continue
        end = pos
        while end < len(ppm) and not ppm[end : end + 1].isspace():
            end += 1
        fields.append(ppm[pos:end])
        pos = end
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic != b"P6" or maxval != 255:
        raise InfraError(f"screenshot is not an 8-bit PPM ({magic!r}, maxval {maxval})")
    pixels = ppm[pos + 1 :]
    stride = width * 3
    if len(pixels) < stride * height:
        raise InfraError("screenshot is truncated")
    raw = b"".join(b"\0" + pixels[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
