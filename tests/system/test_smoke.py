"""smoke: the candidate boots through its real bootloader and is a healthy OSTree system.

The tests share one machine (they leave it as they found it), restored from the state saved
after the image's first boot -- a cold boot through firmware and GRUB, in this run or an
earlier one of the same image.  The reboot comes last and goes through firmware and GRUB
again, in this run.
"""

from __future__ import annotations

import pytest

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


# ci/nightly, and every gate's smoke suite: ci/test reboots through the bootloader in the
# rollback, rebase, upgrade and external tests already.
@pytest.mark.nightly
def test_reboot_changes_boot_id(shared_machine: Guest, candidate: Commit) -> None:
    """A reboot through systemd and the bootloader comes back as a new boot of the same commit."""
    before = shared_machine.boot_id()
    shared_machine.reboot()
    assert shared_machine.boot_id() != before
    assert shared_machine.booted_commit() == candidate.checksum
