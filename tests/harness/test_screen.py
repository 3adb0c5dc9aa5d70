"""Screenshots show the machine's screen on every arch.

The firmware, the bootloader and the kernel's console (``console=tty0``) draw on each arch's
display device (VGA on x86_64, ramfb on aarch64, a virtio GPU on ARMv7), and the reports attach a screenshot at
the failure point and at the end of each boot.  This checks that a screenshot shows what was
just written to the console: it runs on every arch given with ``--arch``.
"""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest

from harness.guest import Guest

# Booted, not restored: QEMU 7.2 does not carry ramfb's set-up across a saved state, so a
# restored aarch64 machine shows QEMU's "Guest has not initialized the display" until it
# boots again.
pytestmark = [pytest.mark.vm, pytest.mark.cold_boot]

CLEAR = r"printf '\033[2J\033[H' > /dev/tty0"
KERNEL_BLOCK = "for i in 1 2 3 4 5 6; do printf '<3>%060d\\n' 0 | tr 0 '#' > /dev/kmsg; done"
BLOCK = "for i in 1 2 3 4 5 6; do printf '%060d\\n' 0 | tr 0 '#'; done > /dev/tty0"


def lit_pixels(png: bytes) -> int:
    """How many pixels of an 8-bit RGB or RGBA PNG are not black (the console's background)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    previous = bytearray(stride)
    lit = 0
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filter
            a = row[i - bpp] if i >= bpp else 0
            b, c = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                row[i] = (row[i] + a) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + b) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        lit += sum(1 for x in range(0, stride, bpp) if any(row[x : x + 3]))
        previous = row
    return lit


def assert_six_lines_appear(machine: Guest, tmp_path: Path, write: str) -> None:
    """Clear the console, run ``write`` in the guest (it should put six lines of sixty '#'
    on the screen) and wait up to 30 s for a screenshot to show them."""
    machine.succeed(CLEAR)
    # The console's framebuffer reaches the display a moment later on a virtio GPU.
    time.sleep(1)
    blank = lit_pixels(machine.screenshot(tmp_path / "blank.png").read_bytes())
    machine.succeed(write)
    deadline = time.monotonic() + 30
    while True:
        shot = machine.screenshot(tmp_path / "text.png")
        text = lit_pixels(shot.read_bytes())
        # Six lines of sixty '#': thousands of pixels, whatever the font.
        if text > blank + 3000 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert text > blank + 3000, f"{shot}: {text} lit pixels after {write!r}, {blank} before"


def test_a_screenshot_shows_what_the_console_just_showed(machine: Guest, tmp_path: Path) -> None:
    assert_six_lines_appear(machine, tmp_path, BLOCK)


def test_the_kernels_messages_reach_the_screen(machine: Guest, tmp_path: Path) -> None:
    # What a report's screenshot is for: a panic or an error the kernel printed.  Messages of
    # level err pass `quiet` and go to every console= the kernel was given.
    assert "console=tty0" in machine.succeed("cat /proc/cmdline").split()
    assert_six_lines_appear(machine, tmp_path, KERNEL_BLOCK)
