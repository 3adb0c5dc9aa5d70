"""rollback: after an upgrade, the bootloader boots the previous commit again, and forward again.

ostree 2022.7 has no ``admin rollback``; :meth:`harness.guest.Guest.rollback` redeploys the
previous commit with its own origin, and GRUB -- reading what the guest's ostree wrote --
decides what boots.
"""

from __future__ import annotations

import pytest

from harness.guest import Guest
from harness.plugin.fixtures import upgrade_past_timestamps
from harness.repo import Commit

pytestmark = pytest.mark.vm


def test_rollback_boots_previous_commit_then_rolls_forward(
    upgraded_machine: Guest, baseline: Commit, candidate: Commit
) -> None:
    m = upgraded_machine  # the baseline, with local edits, upgraded to the candidate
    assert m.booted_commit() == candidate.checksum

    m.rollback()
    m.reboot()
    assert m.booted_commit() == baseline.checksum
    # Local edits stay; config files nobody touched are the baseline's own again.
    assert "treegate local edit" in m.succeed("cat /etc/issue")
    m.succeed(
        "test ! -e /usr/etc/treegate-release || cmp /usr/etc/treegate-release /etc/treegate-release"
    )
    origin = next(d.origin for d in m.deployments() if d.booted)
    assert origin.startswith("treegate:"), origin

    m.upgrade(to=candidate.checksum, allow_downgrade=upgrade_past_timestamps(baseline, candidate))
    m.reboot()
    assert m.booted_commit() == candidate.checksum
