"""rebase: a machine switches to another tree (ref) and back, each checked after a reboot."""

from __future__ import annotations

import pytest

from harness.guest import Guest
from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm


def test_rebase_to_another_tree_and_back(
    machine: Guest, candidate: Commit, rebase_ref: str, harness: Harness
) -> None:
    home = next(d.origin for d in machine.deployments() if d.booted)
    assert home.startswith("treegate:"), home
    home_ref = home.split(":", 1)[1]
    other = harness.repo.resolve(rebase_ref)

    machine.switch(rebase_ref)
    machine.reboot()
    booted = next(d for d in machine.deployments() if d.booted)
    assert booted.checksum == other.checksum
    assert booted.origin == f"treegate:{rebase_ref}"

    machine.switch(home_ref)
    machine.reboot()
    booted = next(d for d in machine.deployments() if d.booted)
    assert booted.checksum == harness.repo.resolve(home_ref).checksum
    assert booted.origin == home
