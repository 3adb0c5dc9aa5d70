"""external: the tree owners' own tests in kola's format, one item per test.

Given ``--external-tests DIR`` (or ``treegate gate --external-tests DIR``), every executable
in DIR runs as root on a fresh machine of the candidate, following the autopkgtest reboot
protocol (see :mod:`harness.external`).  ``tests/external/`` is an example directory.
"""

from __future__ import annotations

import pytest

from harness.external import ExternalTest, run_external
from harness.guest import Guest
from harness.plugin.session import Harness

pytestmark = pytest.mark.vm


def test_external(
    external_test: ExternalTest, arch: str, harness: Harness, request: pytest.FixtureRequest
) -> None:
    reason = external_test.skip_reason(arch, harness.target(arch).memory_mib)
    if reason:
        pytest.skip(f"{external_test.name}: {reason}")
    # Only now the machine: a test that does not apply costs no boot.
    machine: Guest = request.getfixturevalue("machine")
    output = harness.artifacts(request.node.nodeid) / "external-output.txt"
    run_external(external_test, machine, output)
