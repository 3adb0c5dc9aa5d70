"""treegate's pytest plugin: options, fixtures and outcome rules for system suites.

Registered by the project's root ``conftest.py`` and as a ``pytest11`` entry point, so the
same ``pytest tests/system …`` command works from a clone, from an installed package, in CI
and on a laptop.  This module starts a run (signals, the run id, markers, the results file)
and registers the plugin's other modules, one per job (:mod:`harness.plugin`).

Without ``--repo`` the plugin composes the fixture trees in ``fixtures/trees/`` into a
repository in the state directory (cached by definition), so the suites run with nothing
prepared by hand.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from harness import log
from harness.plugin.options import DEFAULT_TEST_TIMEOUT
from harness.plugin.results import ResultsWriter
from harness.state import State

pytest_plugins = [
    "harness.plugin.options",
    "harness.plugin.session",
    "harness.plugin.collection",
    "harness.plugin.fixtures",
    "harness.plugin.outcomes",
]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _restore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        # A cancelled CI job gets SIGTERM: unwind as from Ctrl-C, so every fixture destroys
        # its machine, a compose cleans up its chroot, and pytest reports the run as
        # interrupted, instead of dying with QEMU work directories and half-made files left.
        signal.signal(signal.SIGTERM, _interrupt)
        config.add_cleanup(_restore_sigterm)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    ):
        # SIGINT is how `treegate gate` stops its pytest run (at its deadline, on Ctrl-C),
        # and it must unwind the run here too.  A shell without job control starts a
        # background job (`cmd &` in a script, `nohup … &`) with SIGINT ignored, and that
        # would reach pytest: the stop would wait 30 s and then kill every machine unclean.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not hasattr(config, "workerinput"):
        # One run id for the controller and every pytest-xdist worker it starts.
        os.environ.setdefault("TREEGATE_RUN_ID", time.strftime("%Y%m%d-%H%M%S-") + str(os.getpid()))
        # Every run writes JUnit XML and allure results into its run directory, beside the
        # tests' files, unless --junitxml / --alluredir say where; pytest's junitxml and
        # allure-pytest read these options in their own pytest_configure, after this one.
        run_dir = State.at(config.getoption("tg_state")).runs / os.environ["TREEGATE_RUN_ID"]
        if getattr(config.option, "allure_report_dir", "unset") is None:
            config.option.allure_report_dir = str(run_dir / "allure-results")
        if getattr(config.option, "xmlpath", "unset") is None:
            config.option.xmlpath = str(run_dir / "junit.xml")
        results = config.getoption("tg_results")
        if results:
            config.pluginmanager.register(ResultsWriter(Path(results)), "treegate-results")
    config.addinivalue_line(
        "markers", "vm: boots real virtual machines (deselect with -m 'not vm')"
    )
    config.addinivalue_line(
        "markers",
        f"timeout(seconds): bound the test's body (default {DEFAULT_TEST_TIMEOUT:.0f} s), "
        "scaled by the arch's timeout scale under emulation; a test past it fails",
    )
    config.addinivalue_line(
        "markers",
        "cold_boot: the test's machines boot through firmware and bootloader, never from a "
        "saved state (for tests of the boot path itself)",
    )
    config.addinivalue_line(
        "markers",
        "needs(feature): the test needs a tree with FEATURE (e.g. 'docker'): skipped with a reason "
        "when the candidate has none; run on the fixture tree that has it when composing",
    )
    log.setup()
