"""Collection: tests parametrized over every ``--arch``, external and installed tests turned
into items, and how many pytest-xdist workers the host holds."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from harness.arch import ARCHES
from harness.errors import (
    TreegateError,
)
from harness.external import discover
from harness.installed import list_in_commit, select
from harness.plugin.options import PluginOptions
from harness.plugin.session import Harness
from harness.repo import SCRATCH_ZLIB_LEVEL, Repo
from harness.state import State
from harness.suites import FEATURES

MACHINE_FOOTPRINT_MIB = 1536
"""Host memory one test's VM takes: the guest's 1 GiB and QEMU's own (TCG code cache, devices)."""


def auto_workers(cores: int, available_mib: int, vcpus: int) -> int:
    """How many VMs may run side by side: as many as the host's cores hold their ``vcpus``
    (under TCG each vCPU is a busy host thread) and its memory holds them."""
    return max(1, min(cores // vcpus, available_mib // MACHINE_FOOTPRINT_MIB))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``pytest -n auto``: workers bounded by the host's cores, the guests' vCPUs and the
    available memory.  Two 2-vCPU guests on a 2-core host run no faster than one after the
    other (measured: the x86_64 part of ``ci/test`` took 32 min on two workers against 29 on
    one, and a reboot outran its 120 s)."""
    available = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) // 1024
    arches = config.getoption("tg_arch") or ["x86_64"]
    vcpus = max((ARCHES[a].smp for a in arches if a in ARCHES), default=1)
    return auto_workers(os.cpu_count() or 1, available, vcpus)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch" in metafunc.fixturenames:
        arches = metafunc.config.getoption("tg_arch") or ["x86_64"]
        metafunc.parametrize("arch", arches, scope="session")
    if "external_test" in metafunc.fixturenames:
        metafunc.parametrize("external_test", _external_params(metafunc.config))
    if "installed_test" in metafunc.fixturenames:
        metafunc.parametrize("installed_test", _installed_params(metafunc.config))


def _external_params(config: pytest.Config) -> list[Any]:
    """One parameter per external test (``--external-tests DIR``), with its own timeout."""
    directory = config.getoption("tg_external")
    if not directory:
        skip = pytest.mark.skip(reason="no external tests given (--external-tests DIR)")
        return [pytest.param(None, id="none", marks=skip)]
    try:
        tests = discover(Path(directory))
    except TreegateError as exc:
        raise pytest.UsageError(f"treegate: {exc.one_line()}") from None
    # The body's bound: the test's own timeout for each run, and slack for its reboots.
    return [
        pytest.param(t, id=t.name, marks=pytest.mark.timeout(t.timeout_min * 60 * 2 + 300))
        for t in tests
    ]


def _installed_params(config: pytest.Config) -> list[Any]:
    """One parameter per installed test of the candidate (the names of every ``--arch``'s
    candidate, read from the commits on the host: nothing boots), narrowed by
    ``--installed-prefix``.  Without ``--commit``, the installed-tests fixture tree is
    composed first.  A ``-m`` that deselects VM tests lists nothing (no compose)."""
    if not _selects_vm_tests(config):
        skip = pytest.mark.skip(reason="-m deselects VM tests: installed tests not listed")
        return [pytest.param(None, id="not-listed", marks=skip)]
    options = PluginOptions.from_config(config)
    prefixes = tuple(config.getoption("tg_installed_prefix") or ())
    names: set[str] = set()
    try:
        harness = _collection_harness(options)
        for arch in options.arches:
            if options.commit:
                commit = harness.repo.resolve(options.commit).checksum
            else:
                feature = FEATURES["installed-tests"]
                commit = harness.fixture_commit(feature.fixture, arch).checksum
            names |= {t.name for t in select(list_in_commit(harness.repo, commit), prefixes)}
    except TreegateError as exc:
        raise pytest.UsageError(f"treegate: {exc.one_line()}") from None
    if not names:
        what = f"whose names start with {', '.join(prefixes)}" if prefixes else ""
        skip = pytest.mark.skip(reason=f"the candidate has no installed tests {what}".strip())
        return [pytest.param(None, id="none", marks=skip)]
    # The body's bound: the test's own timeout, and slack for starting its machine.
    timeout = pytest.mark.timeout(config.getoption("tg_installed_timeout") + 300)
    return [pytest.param(name, id=name, marks=timeout) for name in sorted(names)]


def _selects_vm_tests(config: pytest.Config) -> bool:
    """False when ``-m`` deselects every test marked ``vm`` (``-m "not vm"``: seconds, no VM,
    no compose)."""
    markexpr = config.getoption("markexpr", "")
    if not markexpr:
        return True
    try:
        from _pytest.mark.expression import Expression

        def only_vm(name: str, /, **kwargs: str | int | bool | None) -> bool:
            return name == "vm"

        return Expression.compile(markexpr).evaluate(only_vm)
    except Exception:  # an expression pytest itself will reject, or a changed private API
        return True


def _collection_harness(options: PluginOptions) -> Harness:
    """A :class:`Harness` for collection time: its repo and fixture-tree composes, no repo
    server and nothing booted."""
    state = State.at(options.state_dir)
    repo = Repo(options.repo) if options.repo else Repo(state.root / "fixtures-repo")
    if options.repo:
        repo.check()
    else:
        repo.init(zlib_level=SCRATCH_ZLIB_LEVEL)
    run_dir = state.runs / os.environ.get("TREEGATE_RUN_ID", "collection")
    return Harness(options, state, repo, composed=not options.repo, run_dir=run_dir, repo_port=0)
