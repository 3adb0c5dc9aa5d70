"""installed: the tree's own installed tests (``/usr/share/installed-tests/**/*.test``), one
item per test.

The tests are listed from the candidate commit on the host when pytest collects (nothing
boots for that), so ``-k``, pytest-xdist, the report and the gate see each one:
``test_installed[x86_64-libostree/test-basic.sh.test]``.  ``--installed-prefix PREFIX`` narrows
them as ``gnome-desktop-testing-runner PREFIX`` does; ``--installed-timeout SECONDS`` is each
test's limit (default 300 s, the runner's).  Each runs as the runner runs it (see
:mod:`harness.installed`): exit 0 passes, 77 skips with the output's last line as the reason,
anything else fails with the last output lines, and a test still running at its timeout is
killed and fails.  Tests share one machine restored from the candidate's ready state, as they
share one under the runner; a ``destructive/`` or ``Type=session-exclusive`` test gets a fresh
machine of its own.  Each test's whole output is kept beside its report
(``NAME.txt``, ``/`` in the name as ``_``).  Skipped on trees without installed tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import allure
import pytest

from harness.errors import TreeFailure
from harness.guest import Guest
from harness.installed import InstalledTest, describe_failure, list_in_commit, run_installed
from harness.plugin.session import Harness

pytestmark = [pytest.mark.vm, pytest.mark.needs("installed-tests")]


@pytest.fixture(scope="module")
def installed_tests(harness: Harness, arch: str) -> Iterator[dict[str, InstalledTest]]:
    """The installed tests of ``arch``'s candidate, by name (read once per module)."""
    candidate = harness.candidate(arch, "installed-tests")
    yield {t.name: t for t in list_in_commit(harness.repo, candidate.checksum)}


def test_installed(
    installed_test: str,
    arch: str,
    harness: Harness,
    installed_tests: dict[str, InstalledTest],
    request: pytest.FixtureRequest,
) -> None:
    test = installed_tests.get(installed_test)
    if test is None:
        pytest.skip(f"{installed_test} is not among the {arch} candidate's installed tests")
    if test.problem:
        raise TreeFailure(f"installed test {test.problem}")
    # Only now the machine: a fresh one for a test that may break it, else the shared one.
    fixture = "machine" if test.destructive else "shared_machine"
    machine: Guest = request.getfixturevalue(fixture)
    output = harness.artifacts(request.node.nodeid) / f"{test.squashed}.txt"
    result = run_installed(test, machine, request.config.getoption("tg_installed_timeout"), output)
    allure.attach(
        output.read_bytes(), name=output.name, attachment_type=allure.attachment_type.TEXT
    )
    # The time the test itself took in the guest, beside pytest's for the whole item (JUnit
    # XML properties with -o junit_family=xunit1; ci/bench.py reads them).
    request.node.user_properties.append(("installed_seconds", f"{result.seconds:.3f}"))
    request.node.user_properties.append(("installed_status", str(result.status)))
    if result.outcome == "skipped":
        pytest.skip(f"{test.name} exited 77 (skip): {result.skip_reason}")
    if result.outcome == "failed":
        raise TreeFailure(describe_failure(test, result))
