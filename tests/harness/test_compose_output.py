"""What treegate's compose writes into the trees it composes, read from the commits (nothing
boots).

These check compose's own choices.  The gate's suites never make them: a tree composed by
another tool is free to store its kernel, or anything else, as it likes, and is gated on what
the OS does.  Marked ``vm`` because a compose takes minutes (foreign arches run under
qemu-user), not because anything boots.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness import uimage
from harness.arch import get_arch
from harness.plugin.session import Harness

pytestmark = pytest.mark.vm


def test_the_kernel_is_stored_as_its_bootloader_boots_it_fastest(
    harness: Harness, arch: str, tmp_path: Path
) -> None:
    """On ARMv7 the kernel is the uncompressed U-Boot legacy image compose made of Debian's
    zImage (``harness.uimage``: its XZ payload cost about 2 s of every emulated boot), entered
    where the arch profile says, both CRCs as U-Boot checks them.  Elsewhere it is Debian's
    file unchanged: the MD5 in the kernel package's own list, read from the dpkg database
    compose keeps in the commit."""
    commit = harness.fixture_commit("minimal", arch).checksum
    kver = harness.repo.kernel_version(commit)
    md5sums = harness.repo.read_file(
        commit, f"/usr/share/dpkg/database/info/linux-image-{kver}.md5sums"
    )
    shipped = next(
        (line.split()[0] for line in md5sums.splitlines() if line.endswith(f"boot/vmlinuz-{kver}")),
        None,
    )
    assert shipped is not None, "the kernel package's md5sums list has no boot/vmlinuz entry"
    kernel = harness.repo.export_file(
        commit, f"/usr/lib/modules/{kver}/vmlinuz", tmp_path / "vmlinuz"
    ).read_bytes()
    stored = hashlib.md5(kernel).hexdigest()
    load = get_arch(arch).uimage_load
    if load is None:
        assert stored == shipped, "the kernel is not the file Debian's kernel package ships"
        return
    assert stored != shipped
    header = uimage.read_header(kernel)
    assert header is not None, "the kernel is no legacy uImage U-Boot would accept (CRCs)"
    assert (header.entry, header.compression) == (load, uimage.COMP_NONE)
    assert len(kernel) == uimage.HEADER.size + header.size
