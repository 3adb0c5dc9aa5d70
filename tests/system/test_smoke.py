"""smoke: the candidate boots through its real bootloader and is a healthy OSTree system.

The tests share one machine (they leave it as they found it), restored from the state saved
after the image's first boot -- a cold boot through firmware and GRUB, in this run or an
earlier one of the same image.  The reboot comes last and goes through firmware and GRUB
again, in this run.
"""

from __future__ import annotations

import pytest

from harness import uimage
from harness.arch import get_arch
from harness.guest import Guest
from harness.repo import Commit

pytestmark = pytest.mark.vm


def test_boots_the_candidate(shared_machine: Guest, candidate: Commit) -> None:
    """The bootloader booted the candidate's deployment, and it is the only one."""
    assert shared_machine.booted_commit() == candidate.checksum
    deployments = shared_machine.deployments()
    assert [d.checksum for d in deployments] == [candidate.checksum]
    shared_machine.succeed("grep -q ' ostree=/ostree/boot' /proc/cmdline")


def test_system_is_running(shared_machine: Guest) -> None:
    """systemd finished booting and no unit failed."""
    state = shared_machine.execute("systemctl is-system-running --wait", timeout=120)[1].strip()
    failed = shared_machine.succeed("systemctl --failed --no-legend --plain")
    assert state == "running", f"system is {state}; failed units:\n{failed}"


def test_usr_is_read_only_and_state_is_writable(shared_machine: Guest) -> None:
    """/usr is the immutable tree; /etc and /var belong to the machine."""
    out = shared_machine.fail("touch /usr/treegate-probe")
    assert "Read-only file system" in out
    shared_machine.succeed(
        "touch /etc/treegate-probe /var/treegate-probe && rm /etc/treegate-probe /var/treegate-probe"
    )


def test_kernel_is_stored_as_its_bootloader_boots_it_fastest(
    shared_machine: Guest, arch: str
) -> None:
    """The booted kernel is stored in the form the arch profile chose.  On ARMv7 that is the
    uncompressed U-Boot legacy image compose made of Debian's zImage (``harness.uimage``),
    entered where the profile says; U-Boot checked both its CRCs before starting it, as at every
    boot.  Elsewhere it is Debian's file unchanged: the same MD5 as the package's own list."""
    kernel = "/usr/lib/modules/$(uname -r)/vmlinuz"
    shipped = shared_machine.succeed(
        "sed -n 's|  boot/vmlinuz-'\"$(uname -r)\"'$||p' "
        '/var/lib/dpkg/info/linux-image-"$(uname -r)".md5sums'
    ).strip()
    assert len(shipped) == 32, "the kernel package's md5sums list has no boot/vmlinuz entry"
    stored = shared_machine.succeed(f"md5sum {kernel}").split()[0]
    load = get_arch(arch).uimage_load
    if load is None:
        assert stored == shipped, f"{kernel} is not the file Debian's kernel package ships"
        return
    assert stored != shipped
    head = shared_machine.succeed(f"od -An -v -tx1 -N{uimage.HEADER.size} {kernel} | tr -d ' \\n'")
    header = uimage.read_header(bytes.fromhex(head), whole=False)
    assert header is not None, f"{kernel} has no valid U-Boot legacy header"
    assert (header.entry, header.compression) == (load, uimage.COMP_NONE)
    assert int(shared_machine.succeed(f"stat -c %s {kernel}")) == uimage.HEADER.size + header.size


# ci/nightly, and every gate's smoke suite: ci/test reboots through the bootloader in the
# rollback, rebase, upgrade and external tests already.
@pytest.mark.nightly
def test_reboot_changes_boot_id(shared_machine: Guest, candidate: Commit) -> None:
    """A reboot through systemd and the bootloader comes back as a new boot of the same commit."""
    before = shared_machine.boot_id()
    shared_machine.reboot()
    assert shared_machine.boot_id() != before
    assert shared_machine.booted_commit() == candidate.checksum
