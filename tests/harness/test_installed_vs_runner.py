"""The installed suite reports what gnome-desktop-testing-runner reports: in one machine of the
installed-tests tree, every installed test (narrowed by ``--installed-prefix``) is run the way
``tests/system/test_installed.py`` runs each item, then ``gnome-desktop-testing-runner`` runs
the same tests by hand with the same timeout, and each test's outcome must match.

With every libostree test this takes about an hour under TCG (each test runs twice, 33 min
a side): ci/nightly, beside the whole installed suite.  (``--installed-prefix`` narrows both,
e.g. to a few fast tests by hand.)
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from harness.guest import Guest
from harness.installed import list_in_commit, parse_runner_tap, run_installed, select
from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = [pytest.mark.vm, pytest.mark.needs("installed-tests"), pytest.mark.nightly]

RUNNER_DIR = "/var/tmp/treegate-gdtr"


@pytest.mark.timeout(8 * 3600)
def test_outcomes_match_gnome_desktop_testing_runner(
    machine: Guest,
    candidate: Commit,
    harness: Harness,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    prefixes = tuple(request.config.getoption("tg_installed_prefix") or ())
    timeout = float(request.config.getoption("tg_installed_timeout"))
    tests = select(list_in_commit(harness.repo, candidate.checksum), prefixes)
    assert tests, f"the candidate has no installed tests starting with {prefixes}"
    assert not [t.problem for t in tests if t.problem]  # the runner would refuse the whole run

    ours: dict[str, str] = {}
    for test in tests:
        ours[test.name] = run_installed(
            test, machine, timeout, tmp_path / f"{test.squashed}.txt"
        ).outcome

    # The runner sees the same tests (its PREFIX arguments select as --installed-prefix does).
    args = shlex.join(prefixes)
    listed = machine.succeed(f"gnome-desktop-testing-runner --list {args}", idempotent=True)
    assert {line.split(" (", 1)[0] for line in listed.splitlines() if line.strip()} == set(ours)
    limit = timeout * machine.timeout_scale
    _, tap = machine.execute(
        f"mkdir -p {RUNNER_DIR} && cd {RUNNER_DIR} && gnome-desktop-testing-runner --tap "
        f"--status=no --timeout={limit:.0f} --log-directory={RUNNER_DIR} {args} "
        f"> {RUNNER_DIR}/tap.txt; cat {RUNNER_DIR}/tap.txt",
        timeout=len(tests) * (timeout + 60) + 300,
    )
    (tmp_path / "runner-tap.txt").write_text(tap)
    theirs = parse_runner_tap(tap, set(ours))

    differ = {
        name: f"treegate {ours[name]}, gnome-desktop-testing-runner {theirs.get(name, 'nothing')}"
        for name in sorted(ours)
        if theirs.get(name) != ours[name]
    }
    assert not differ, "\n".join(f"{n}: {why}" for n, why in differ.items()) + f"\n{tap[-3000:]}"
    counts = {o: list(ours.values()).count(o) for o in ("passed", "skipped", "failed")}
    print(f"{len(ours)} installed tests, the same outcomes from both: {counts}")
