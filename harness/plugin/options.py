"""The plugin's command-line options (``pytest --help``, group *treegate*), read once into
:class:`PluginOptions`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.arch import ARCHES
from harness.boot import PROJECT_ROOT
from harness.compose import excluded_suites
from harness.installed import DEFAULT_TIMEOUT_S as DEFAULT_INSTALLED_TIMEOUT
from harness.machine.base import BACKENDS, Backend
from harness.signing import SigningKey, load_key

FIXTURE_TREES = PROJECT_ROOT / "fixtures" / "trees"


DEFAULT_CANDIDATE = "minimal-v2"


DEFAULT_BASELINE = "minimal"


DEFAULT_TEST_TIMEOUT = 900.0


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("treegate", "treegate: boot OSTree commits and test them")
    g.addoption(
        "--repo",
        help="OSTree repository with the commits under test "
        "(default: compose fixtures/trees into the state directory)",
    )
    g.addoption(
        "--commit",
        "--ref",
        dest="tg_commit",
        metavar="REV",
        help=f"candidate commit, a ref or checksum (default: the {DEFAULT_CANDIDATE} fixture tree)",
    )
    g.addoption(
        "--baseline",
        dest="tg_baseline",
        metavar="REV",
        help=f"last good commit (default: the {DEFAULT_BASELINE} fixture tree)",
    )
    g.addoption(
        "--origin-ref",
        dest="tg_origin_ref",
        metavar="REF",
        help="the ref machines follow (their deployment's origin); default: --commit when it is a ref",
    )
    g.addoption(
        "--keep-vm",
        dest="tg_keep_vm",
        action="store_true",
        help="leave the machine of a failed test running, and print how to treegate ssh into it",
    )
    g.addoption(
        "--cold-boot",
        dest="tg_cold_boot",
        action="store_true",
        help="boot every machine through firmware and bootloader instead of restoring the "
        "image's saved ready state",
    )
    g.addoption(
        "--exclude-suite",
        dest="tg_exclude_suite",
        action="append",
        metavar="[ARCH:]SUITE",
        help="when composing fixture trees, leave this apt suite out (for ARCH only, if given); "
        "e.g. armv7:bookworm-security when the mirror serves its index stale",
    )
    g.addoption(
        "--backend",
        dest="tg_backend",
        default="qemu",
        choices=list(BACKENDS),
        help="how machines run: qemu (a QEMU process driven over QMP; the default) or "
        "libvirt (transient domains of the libvirt daemon at --libvirt-uri)",
    )
    g.addoption(
        "--libvirt-uri",
        dest="tg_libvirt_uri",
        default="qemu:///system",
        metavar="URI",
        help="the libvirt daemon for --backend libvirt (default qemu:///system); another host "
        "(qemu+ssh://USER@HOST/system) gets images uploaded and boots every machine",
    )
    g.addoption(
        "--rebase-ref",
        dest="tg_rebase_ref",
        metavar="REF",
        help="another tree's ref for the rebase suite (default: the docker fixture tree)",
    )
    g.addoption(
        "--arch",
        dest="tg_arch",
        action="append",
        choices=list(ARCHES),
        help="arch to run on (repeatable; default x86_64)",
    )
    g.addoption(
        "--external-tests",
        dest="tg_external",
        metavar="DIR",
        help="a directory of external tests in kola's format: each becomes an item of "
        "tests/system/test_external.py",
    )
    g.addoption(
        "--installed-prefix",
        dest="tg_installed_prefix",
        action="append",
        metavar="PREFIX",
        help="run only the installed tests whose names start with PREFIX (repeatable), as "
        "gnome-desktop-testing-runner's PREFIX arguments: e.g. libostree/test-basic",
    )
    g.addoption(
        "--installed-timeout",
        dest="tg_installed_timeout",
        type=float,
        default=DEFAULT_INSTALLED_TIMEOUT,
        metavar="SECONDS",
        help="kill an installed test after SECONDS (scaled by the arch's timeout scale) and fail "
        f"it (default {DEFAULT_INSTALLED_TIMEOUT:.0f}, gnome-desktop-testing-runner's)",
    )
    g.addoption("--layout", dest="tg_layout", help="disk layout (default: the arch's)")
    g.addoption("--accel", dest="tg_accel", choices=["kvm", "tcg"], help="force an accelerator")
    g.addoption("--state-dir", dest="tg_state", help="state directory (default: .treegate)")
    g.addoption(
        "--gpg-homedir",
        dest="tg_gpg_homedir",
        metavar="DIR",
        help="GnuPG home of the signing key: images trust it, guests verify every pull",
    )
    g.addoption("--gpg-key", dest="tg_gpg_key", metavar="ID", help="the key in --gpg-homedir")
    g.addoption(
        "--treegate-results",
        dest="tg_results",
        metavar="FILE",
        help="write each test's treegate outcome (passed/failed/error/skipped) as JSON",
    )


@dataclass(frozen=True)
class PluginOptions:
    """The plugin's command-line options, read once."""

    repo: str | None
    commit: str | None
    baseline: str | None
    rebase_ref: str | None
    origin_ref: str | None
    keep_vm: bool
    cold_boot: bool
    exclude_suites: tuple[str, ...]
    arches: tuple[str, ...]
    layout: str | None
    accel: str | None
    state_dir: str | None
    gpg_homedir: str | None = None
    gpg_key: str | None = None
    backend: Backend = field(default_factory=Backend)

    def excluded_for(self, arch: str) -> tuple[str, ...]:
        """The apt suites to leave out of composes for ``arch``."""
        return excluded_suites(self.exclude_suites, arch)

    @classmethod
    def from_config(cls, config: pytest.Config) -> PluginOptions:
        return cls(
            repo=config.getoption("repo"),
            commit=config.getoption("tg_commit"),
            baseline=config.getoption("tg_baseline"),
            rebase_ref=config.getoption("tg_rebase_ref"),
            origin_ref=config.getoption("tg_origin_ref"),
            keep_vm=config.getoption("tg_keep_vm"),
            cold_boot=config.getoption("tg_cold_boot"),
            exclude_suites=tuple(config.getoption("tg_exclude_suite") or ()),
            arches=tuple(config.getoption("tg_arch") or ["x86_64"]),
            layout=config.getoption("tg_layout"),
            accel=config.getoption("tg_accel"),
            state_dir=config.getoption("tg_state"),
            gpg_homedir=config.getoption("tg_gpg_homedir"),
            gpg_key=config.getoption("tg_gpg_key"),
            backend=Backend(config.getoption("tg_backend"), config.getoption("tg_libvirt_uri")),
        )

    def signing(self) -> SigningKey | None:
        """The signing key images trust, if ``--gpg-homedir`` names one."""
        if not self.gpg_homedir:
            return None
        return load_key(Path(self.gpg_homedir), self.gpg_key)
