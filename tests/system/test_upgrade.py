"""upgrade: the last good commit upgrades to the candidate over ostree, keeping local state.

``upgraded_machine`` is the baseline after it got local edits in /etc and data in /var,
pulled the candidate from the harness's repo server with ``ostree admin upgrade`` and
rebooted through its bootloader (see the fixture for the exact local state).
"""

from __future__ import annotations

import pytest

from harness.guest import Guest
from harness.repo import Commit

pytestmark = pytest.mark.vm


def test_upgrade_boots_candidate_and_keeps_local_state(
    upgraded_machine: Guest, baseline: Commit, candidate: Commit
) -> None:
    m = upgraded_machine
    assert m.booted_commit() == candidate.checksum
    # The three-way merge kept the local edits...
    assert "treegate local edit" in m.succeed("cat /etc/issue")
    assert m.succeed("cat /etc/treegate-local.conf").strip() == "kept"
    # ...and took the candidate's version of every config file left alone.
    m.succeed(
        "test ! -e /usr/etc/treegate-release || cmp /usr/etc/treegate-release /etc/treegate-release"
    )
    assert m.succeed("cat /var/lib/treegate/data").strip() == "data"
    deployments = m.deployments()
    assert [d.checksum for d in deployments] == [candidate.checksum, baseline.checksum]
    assert deployments[0].booted
    # The upgraded system came up clean: no unit failed on the machine's own state.
    state = m.execute("systemctl is-system-running --wait", timeout=120, idempotent=True)[1]
    failed = m.succeed("systemctl --failed --no-legend --plain", idempotent=True)
    assert state.strip() == "running", f"upgraded system is {state.strip()}; failed:\n{failed}"
