"""The fixtures a suite uses: the commits under test, and machines booted (or restored) for
each test, their console logs, journal and screen kept and attached to the report.

* ``machine`` -- a freshly booted candidate (a :class:`~harness.guest.Guest`), one per test;
* ``shared_machine`` -- one booted candidate shared by the tests of a module;
* ``baseline_machine`` -- a freshly booted baseline whose origin is the candidate's ref;
* ``candidate`` / ``baseline`` -- the :class:`~harness.repo.Commit` under test and the last good one;
* ``rebase_ref`` -- another tree's ref for the rebase suite;
* ``arch`` -- the arch name the test runs for (tests are parametrized over every ``--arch``);
* ``harness`` -- the session's :class:`~harness.plugin.session.Harness`.

A suite's own fixtures build on :func:`prepared_machine` (a machine prepared once, saved and
restored for every test that asks), as ``upgraded_machine`` in ``tests/system/conftest.py``
does."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import allure
import pytest

from harness.errors import (
    TreegateError,
    UserError,
)
from harness.guest import Guest
from harness.image import Image
from harness.plugin.session import Harness, machine_name
from harness.repo import Commit
from harness.suites import FEATURES
from harness.treediff import tree_diff


def _needed_feature(request: pytest.FixtureRequest) -> str | None:
    marker = request.node.get_closest_marker("needs")
    if marker is None:
        return None
    feature = str(marker.args[0])
    if feature not in FEATURES:
        raise UserError(f"{request.node.nodeid}: unknown feature {feature!r} in needs()")
    return feature


@pytest.fixture
def candidate(harness: Harness, arch: str, request: pytest.FixtureRequest) -> Commit:
    """The commit under test for ``arch``."""
    commit = harness.candidate(arch, _needed_feature(request))
    # Report parameters; the commit changes from run to run, so it is not part of the test's
    # identity in the report's history.
    allure.dynamic.parameter("tree", commit.metadata.get("treegate.definition", "?"))
    allure.dynamic.parameter("ref", commit.ref or "")
    allure.dynamic.parameter("commit", commit.checksum, excluded=True)
    allure.dynamic.parameter("backend", harness.options.backend.describe())
    return commit


@pytest.fixture
def baseline(harness: Harness, arch: str, request: pytest.FixtureRequest) -> Commit:
    """The last good commit (what an upgrade starts from); the test is skipped without one."""
    return harness.baseline(arch, _needed_feature(request))


@pytest.fixture
def rebase_ref(harness: Harness, arch: str) -> str:
    """The ref of another tree for the rebase suite; the test is skipped without one."""
    return harness.rebase_ref(arch)


@pytest.fixture
def baseline_machine(
    harness: Harness, baseline: Commit, candidate: Commit, arch: str, request: pytest.FixtureRequest
) -> Iterator[Guest]:
    """A freshly booted machine running the baseline, following the candidate's ref.

    ``machine.upgrade(to=candidate.checksum)`` then moves it to the candidate.
    """
    attach_tree_diff(harness, baseline, candidate, machine_name(request.node.nodeid))
    image = harness.image(baseline.checksum, arch, ref=candidate.ref)
    yield from _booted_for_test(harness, image, request)


def attach_tree_diff(harness: Harness, baseline: Commit, candidate: Commit, name: str) -> None:
    diff = tree_diff(harness.repo, baseline.checksum, candidate.checksum)
    text = diff.text(baseline.checksum, candidate.checksum)
    (harness.run_dir / name).mkdir(parents=True, exist_ok=True)
    (harness.run_dir / name / "tree-diff.txt").write_text(text)
    allure.attach(
        text, name="tree diff (baseline → candidate)", attachment_type=allure.attachment_type.TEXT
    )


def upgrade_past_timestamps(baseline: Commit, candidate: Commit) -> bool:
    """Whether upgrading ``baseline`` to ``candidate`` must pass ostree's timestamp check
    (``allow_downgrade``), as a machine following the tested ref would.

    Only when the baseline is the newer commit: a tested ref promoted by an older treegate
    (its promotion commit stamped when it was promoted), or a downgrade the gate was told to
    allow.  The gate then stamps the candidate's promotion commit with the time of the
    promotion, so every machine that follows the tested ref moves to it; in every other case
    the promotion commit carries the candidate's own timestamp and the upgrade runs ostree's
    check as it is (see :meth:`harness.repo.Repo.promote`).
    """
    return candidate.is_older_than(baseline)


def prepared_machine(
    harness: Harness,
    image: Image,
    request: pytest.FixtureRequest,
    *,
    what: str,
    key: object,
    prepare: Callable[[Guest], None],
) -> Iterator[Guest]:
    """A machine of ``image`` after ``prepare`` ran on it, for one test: prepared once per
    state directory (``what`` and ``key`` name the preparation: change ``key`` whenever
    ``prepare`` would do something else), saved, and restored on a fresh overlay for every
    test that asks.  With saved states off (``--cold-boot``, a ``cold_boot`` test, a remote
    libvirt) each test boots and prepares its own.  A tree failure while preparing fails the
    test, as it would in the test body.  Use it from a fixture, with ``yield from``."""
    if _cold(harness, request):
        for guest in _booted_for_test(harness, image, request):
            prepare(guest)
            yield guest
        return
    state = harness.derived(image, what=what, key=key, prepare=prepare)
    yield from _booted_for_test(harness, image, request, state=state)


@pytest.fixture
def machine(
    harness: Harness, candidate: Commit, arch: str, request: pytest.FixtureRequest
) -> Iterator[Guest]:
    """A freshly booted machine running the candidate, destroyed after the test."""
    image = harness.image(candidate.checksum, arch, ref=candidate.ref)
    yield from _booted_for_test(harness, image, request)


@pytest.fixture(scope="module")
def shared_machine(harness: Harness, arch: str, request: pytest.FixtureRequest) -> Iterator[Guest]:
    """One booted candidate shared by the tests of a module that only look at it.

    Like kola's non-exclusive tests: cheaper than a boot per test, for checks that leave the
    machine as they found it.  A test that changes the machine uses ``machine``.
    """
    candidate = harness.candidate(arch, _needed_feature(request))
    image = harness.image(candidate.checksum, arch, ref=candidate.ref)
    yield from _booted_for_test(harness, image, request)


def _booted_for_test(
    harness: Harness, image: Image, request: pytest.FixtureRequest, state: Path | None = None
) -> Iterator[Guest]:
    name = machine_name(request.node.nodeid)
    cold = _cold(harness, request)
    artifacts = harness.run_dir / name
    try:
        with harness.boot(image, name=name, restore=not cold, state=state) as guest:
            guest.artifacts = artifacts
            yield guest
            if guest.vm.is_running():
                _capture(guest, artifacts)
            report = getattr(request.node, "rep_call", None)
            failed = report is not None and report.failed
            if failed and harness.options.keep_vm and guest.vm.is_running():
                _keep(guest, request)
    finally:
        _attach_artifacts(artifacts)


def _cold(harness: Harness, request: pytest.FixtureRequest) -> bool:
    # --cold-boot, a test of the boot path itself, or a backend that keeps no saved states
    # (a remote libvirt): no machine starts from a saved state.
    return (
        harness.options.cold_boot
        or not harness.options.backend.can_save
        or request.node.get_closest_marker("cold_boot") is not None
    )


def _capture(guest: Guest, artifacts: Path) -> None:
    """Keep the state of a test's machine as the test left it (for a failed test, the
    failure point): its screen, the journal of the boot under test, ``ostree admin status``.
    Best effort: a machine that broke must not turn into a second error here."""
    with contextlib.suppress(TreegateError):
        guest.screenshot(artifacts / "screen.png")
    with contextlib.suppress(TreegateError):
        guest.journal(artifacts / "journal.txt")
    with contextlib.suppress(TreegateError):
        _, status = guest.execute("ostree admin status", timeout=60)
        (artifacts / "ostree-admin-status.txt").write_text(status)


_ATTACHMENT_TYPES = {
    ".log": allure.attachment_type.TEXT,
    ".txt": allure.attachment_type.TEXT,
    ".png": allure.attachment_type.PNG,
}


def _attach_artifacts(artifacts: Path) -> None:
    """Attach a machine's kept files (console logs of every boot, and what
    :func:`_capture` saved) to the test's allure result."""
    if not artifacts.is_dir():
        return
    for path in sorted(artifacts.iterdir()):
        kind = _ATTACHMENT_TYPES.get(path.suffix)
        if kind is not None and path.name != "tree-diff.txt":  # attached where it was made
            allure.attach(path.read_bytes(), name=path.name, attachment_type=kind)


def _keep(guest: Guest, request: pytest.FixtureRequest) -> None:
    vm = guest.vm
    guest.close()
    (vm.workdir / "hostkey.pub").write_text(guest.host_key_line + "\n")
    vm.detach()
    stop = json.loads((vm.workdir / "machine.json").read_text())["stop"]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"\nkept {vm.name} running: treegate ssh {vm.name}   (stop it: {stop})", yellow=True
        )
