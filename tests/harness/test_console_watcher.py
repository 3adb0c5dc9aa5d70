"""The console watcher catches a broken boot from the console, at once, as a tree failure."""

from __future__ import annotations

import pytest

from harness.errors import BootFailure
from harness.guest import Guest
from harness.image import BOOT_LABEL
from harness.plugin.session import Harness

pytestmark = pytest.mark.vm


def test_broken_init_is_caught_from_the_console(harness: Harness, arch: str) -> None:
    """A tree whose init exits panics the kernel; the boot fails on that line, not at a timeout."""
    broken = harness.fixture_commit("broken-init", arch)
    image = harness.image(broken.checksum, arch)
    # A BootFailure (not the GuestTimeout of the SSH wait) proves the console watcher ended
    # the boot on the panic line; how fast is the benchmark's business, not this test's.
    with pytest.raises(BootFailure) as caught, harness.boot(image, name=f"{arch}-broken-init"):
        pass
    assert "Kernel panic" in str(caught.value)
    assert "Attempted to kill init" in caught.value.console_tail


# ci/nightly: the broken-init test above proves the console watcher in ci/test.
@pytest.mark.nightly
def test_failed_initramfs_is_caught_from_the_console(machine: Guest) -> None:
    """The next boot's root= names the /boot filesystem, which holds no OSTree sysroot:
    ostree-prepare-root fails in treegate's initramfs, which says so on the console, and the
    reboot fails on that line."""
    # The booted commit deployed again (ostree 2022.7 cannot rewrite the booted deployment's
    # arguments in place), its kernel arguments inherited but for root=.
    commit = machine.booted_commit()
    machine.succeed(f"ostree admin deploy --karg=root=LABEL={BOOT_LABEL} {commit}")
    with pytest.raises(BootFailure) as caught:
        machine.reboot()
    assert "ostree-prepare-root" in str(caught.value)  # the initramfs stage that failed


# ci/nightly: as above.
@pytest.mark.nightly
def test_emergency_shell_is_caught_from_the_console(machine: Guest) -> None:
    """A boot that ends in systemd's emergency shell fails on its message, not at the SSH
    timeout."""
    commit = machine.booted_commit()
    machine.succeed(f"ostree admin deploy --karg-append=systemd.unit=emergency.target {commit}")
    with pytest.raises(BootFailure) as caught:
        machine.reboot()
    assert "emergency" in str(caught.value).lower()
