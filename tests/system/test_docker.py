"""docker: the tree's Docker works offline, and container data survives an upgrade."""

from __future__ import annotations

import pytest

from harness.guest import Guest
from harness.repo import Commit

pytestmark = [pytest.mark.vm, pytest.mark.needs("docker")]

IMAGE = "treegate/busybox:test"


def import_busybox_image(machine: Guest) -> None:
    """Build a one-binary container image from the tree's static busybox (no network needed)."""
    machine.succeed(
        "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/;"
        " for a in sh echo cat; do ln -s busybox $d/bin/$a; done;"
        f" tar -C $d -c . | docker import - {IMAGE}; rm -rf $d",
        timeout=300,
    )


def test_docker_runs_a_container_offline(machine: Guest) -> None:
    machine.wait_for_unit("docker.service", timeout=180)
    import_busybox_image(machine)
    out = machine.succeed(
        f"docker run --rm --network none {IMAGE} /bin/echo hello-from-container", timeout=300
    )
    assert "hello-from-container" in out


def test_container_data_survives_upgrade(baseline_machine: Guest, candidate: Commit) -> None:
    m = baseline_machine
    m.wait_for_unit("docker.service", timeout=180)
    import_busybox_image(m)
    m.succeed(
        f"docker run --rm --network none -v treegate-data:/data {IMAGE} sh -c 'echo kept > /data/file'",
        timeout=300,
    )
    m.upgrade(to=candidate.checksum)
    m.reboot()
    assert m.booted_commit() == candidate.checksum
    m.wait_for_unit("docker.service", timeout=180)
    out = m.succeed(
        f"docker run --rm --network none -v treegate-data:/data {IMAGE} cat /data/file", timeout=300
    )
    assert out.strip() == "kept"
