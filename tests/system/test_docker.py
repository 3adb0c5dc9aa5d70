"""docker: the tree's Docker works offline, and container data survives an upgrade."""

from __future__ import annotations

import pytest

from harness.guest import Guest
from harness.repo import Commit

pytestmark = [pytest.mark.vm, pytest.mark.needs("docker")]


def test_docker_runs_a_container_offline(
    machine: Guest, docker_image: str, docker_import: str
) -> None:
    machine.wait_for_unit("docker.service", timeout=180)
    machine.succeed(docker_import, timeout=300)
    out = machine.succeed(
        f"docker run --rm --network none {docker_image} "
        "/bin/sh -c 'echo hello-from-container; cat /proc/self/attr/current'",
        timeout=300,
    )
    assert "hello-from-container" in out
    # Confined by the profile dockerd loads itself (the fixture tree masks apparmor.service).
    assert "docker-default (enforce)" in out, out


# An upgrade of the Docker tree costs minutes of dockerd under TCG: ci/nightly runs it on
# every arch; ci/test keeps the Docker suite's first test and the minimal tree's upgrade.
@pytest.mark.nightly
def test_container_data_survives_upgrade(
    upgraded_machine: Guest, candidate: Commit, docker_image: str
) -> None:
    # Before the upgrade, a container wrote "kept" into the volume treegate-data (the
    # fixture's DOCKER_LOCAL_STATE).
    m = upgraded_machine
    assert m.booted_commit() == candidate.checksum
    m.wait_for_unit("docker.service", timeout=180)
    out = m.succeed(
        f"docker run --rm --network none -v treegate-data:/data {docker_image} cat /data/file",
        timeout=300,
    )
    assert out.strip() == "kept"
