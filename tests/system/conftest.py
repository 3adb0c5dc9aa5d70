"""Fixtures and state of the gate's own suites (``upgrade``, ``rollback``, ``docker``).

``upgraded_machine`` is what the upgrade, rollback and Docker upgrade tests start from: the
baseline with local state, upgraded to the candidate once per state directory and restored
for each test (:func:`harness.plugin.fixtures.prepared_machine`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.guest import Guest
from harness.plugin.fixtures import attach_tree_diff, prepared_machine, upgrade_past_timestamps
from harness.plugin.session import Harness, machine_name
from harness.repo import Commit
from harness.suites import has_feature

UPGRADE_LOCAL_STATE = (
    "echo 'treegate local edit' >> /etc/issue",
    "echo kept > /etc/treegate-local.conf",
    "mkdir -p /var/lib/treegate && echo data > /var/lib/treegate/data",
)
"""What ``upgraded_machine`` changes on the baseline before upgrading it: an edit to a config
file the tree ships, a config file of the machine's own, and data in ``/var``."""


DOCKER_IMAGE = "treegate/busybox:test"
"""The container image ``DOCKER_IMPORT`` makes from the tree's static busybox."""


DOCKER_IMPORT = (
    "set -e; d=$(mktemp -d); mkdir -p $d/bin; cp /bin/busybox $d/bin/;"
    " for a in sh echo cat; do ln -s busybox $d/bin/$a; done;"
    f" tar -C $d -c . | docker import - {DOCKER_IMAGE}; rm -rf $d"
)
"""Builds a one-binary container image offline (guests have no network to pull from)."""


DOCKER_LOCAL_STATE = (
    DOCKER_IMPORT,
    f"docker run --rm --network none -v treegate-data:/data {DOCKER_IMAGE}"
    " sh -c 'echo kept > /data/file'",
)
"""On a baseline with Docker, ``upgraded_machine`` also leaves a container image and a named
volume ``treegate-data`` whose ``file`` holds ``kept``."""


@pytest.fixture
def upgraded_machine(
    harness: Harness, baseline: Commit, candidate: Commit, arch: str, request: pytest.FixtureRequest
) -> Iterator[Guest]:
    """A machine that ran the baseline, got local state, upgraded to the candidate and
    rebooted into it -- fresh for each test, restored from a state saved after the first
    upgrade in the state directory (an upgrade costs a pull, a deploy and a reboot).

    Before the upgrade the baseline got the :data:`UPGRADE_LOCAL_STATE`: a line
    ``treegate local edit`` appended to ``/etc/issue``, ``/etc/treegate-local.conf``
    containing ``kept``, and ``/var/lib/treegate/data`` containing ``data``; with Docker in
    the baseline, the :data:`DOCKER_LOCAL_STATE` as well (image :data:`DOCKER_IMAGE`, volume
    ``treegate-data`` with ``file`` containing ``kept``).  It was upgraded
    with ``machine.upgrade(to=candidate.checksum)`` (see :func:`upgrade_past_timestamps`)
    and rebooted through its bootloader.  A
    tree failure on the way (the candidate does not boot after the upgrade, say) fails the
    test, as it would in the test body.
    """
    name = machine_name(request.node.nodeid)
    attach_tree_diff(harness, baseline, candidate, name)
    image = harness.image(baseline.checksum, arch, ref=candidate.ref)

    docker = has_feature(harness.repo, baseline, "docker")

    def upgrade(m: Guest) -> None:
        for command in UPGRADE_LOCAL_STATE:
            m.succeed(command)
        if docker:
            m.wait_for_unit("docker.service", timeout=180)
            for command in DOCKER_LOCAL_STATE:
                m.succeed(command, timeout=300)
        m.upgrade(
            to=candidate.checksum, allow_downgrade=upgrade_past_timestamps(baseline, candidate)
        )
        m.reboot()

    yield from prepared_machine(
        harness,
        image,
        request,
        what="upgraded",
        key=[candidate.checksum, UPGRADE_LOCAL_STATE, docker and DOCKER_LOCAL_STATE],
        prepare=upgrade,
    )


@pytest.fixture
def docker_image() -> str:
    """The name of the container image ``docker_import`` makes (:data:`DOCKER_IMAGE`)."""
    return DOCKER_IMAGE


@pytest.fixture
def docker_import() -> str:
    """A command that builds ``docker_image`` offline from the tree's busybox
    (:data:`DOCKER_IMPORT`)."""
    return DOCKER_IMPORT
