"""treegate's pytest plugin: options, fixtures and outcome rules for system suites.

Registered by the project's root ``conftest.py`` and as a ``pytest11`` entry point, so the
same ``pytest tests/system …`` command works from a clone, from an installed package, in CI
and on a laptop.

Options (``pytest --help``, group *treegate*): ``--repo``, ``--commit``/``--ref``,
``--baseline``, ``--arch`` (repeatable), ``--layout``, ``--accel``, ``--state-dir``,
``--treegate-results``.  Without ``--repo`` the plugin composes the fixture trees in
``fixtures/trees/`` into a repository in the state directory (cached by definition), so
the suites run with nothing prepared by hand.

Fixtures a suite uses:

* ``machine`` -- a freshly booted candidate (a :class:`~harness.guest.Guest`), one per test;
* ``baseline_machine`` -- a freshly booted baseline whose origin is the candidate's ref;
* ``rebase_ref`` -- another tree's ref for the rebase suite;
* ``candidate`` / ``baseline`` -- the :class:`~harness.repo.Commit` under test and the last good one;
* ``arch`` -- the arch name the test runs for (tests are parametrized over every ``--arch``);
* ``harness`` -- the session's :class:`Harness`, to build images and boot other commits.

Outcomes follow treegate's taxonomy: a :class:`~harness.errors.TreeFailure` (a panic on the
console, a command that failed) is reported **failed** even when it happens while a fixture
boots the machine; an :class:`~harness.errors.InfraError` (QEMU died, the host broke) is
reported **error** even when it happens in the test body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import allure
import pytest

from harness import log
from harness.arch import ARCHES, get_arch
from harness.boot import PROJECT_ROOT, Target, accel_for, booted, derived_state, image_for
from harness.compose import compose, excluded_suites
from harness.definition import load_definition
from harness.errors import (
    GuestTimeout,
    InfraError,
    TreeFailure,
    TreegateError,
    UserError,
    describe,
)
from harness.external import discover
from harness.guest import Guest
from harness.image import Image
from harness.installed import DEFAULT_TIMEOUT_S as DEFAULT_INSTALLED_TIMEOUT
from harness.installed import list_in_commit, select
from harness.machine.base import BACKENDS, Backend
from harness.outcome import Outcome
from harness.repo import SCRATCH_ZLIB_LEVEL, Commit, Repo, serve
from harness.runspec import RunSpec
from harness.signing import SigningKey, load_key
from harness.state import State
from harness.suites import FEATURES, has_feature
from harness.treediff import tree_diff

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


@dataclass
class Harness:
    """What one test session shares: the state directory, the repo, targets and images."""

    options: PluginOptions
    state: State
    repo: Repo
    composed: bool
    """True when the repo is the plugin's own compose of the fixture trees."""
    run_dir: Path
    repo_port: int
    """Port of the session's read-only repo server (what guests pull upgrades from)."""
    signing: SigningKey | None = None
    """The key images trust (``--gpg-homedir``): guests verify signatures on every pull."""
    _targets: dict[str, Target] = field(default_factory=dict)
    _boots: dict[str, int] = field(default_factory=dict)
    _background: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="compose")
    )
    """Composes of the other arches' fixture trees, one at a time (see :meth:`fixture_commit`)."""

    def close(self) -> None:
        """Drop the background composes nobody has waited for yet (one running goes on)."""
        self._background.shutdown(wait=False, cancel_futures=True)

    def target(self, arch: str) -> Target:
        """The target for ``arch`` (built once per session)."""
        if arch not in self._targets:
            self._targets[arch] = Target.create(
                self.state,
                self.repo,
                arch,
                layout=self.options.layout,
                force_accel=self.options.accel,
                repo_port=self.repo_port,
                keep_vm=self.options.keep_vm,
                signing=self.signing,
                backend=self.options.backend,
                run=os.environ["TREEGATE_RUN_ID"],
            )
        return self._targets[arch]

    def fixture_commit(self, name: str, arch: str) -> Commit:
        """The commit of fixture tree ``name`` for ``arch``, composed on first use.

        Earlier versions of the same stream are composed first, so that commit order (and
        timestamps, which ``ostree admin upgrade`` checks) follows version order.  Asking for
        a tree also queues its compose for the session's other ``--arch``, composed one at a
        time in the background: a foreign compose is minutes of emulated dpkg, which then
        overlaps with this arch's tests instead of following them (one at a time: two
        composes beside a booting guest would starve it of CPU).  Only available when the
        session composes its own repo (no ``--repo``).
        """
        if not self.composed:
            raise UserError(f"fixture tree {name!r} is only composed when --repo is not given")
        for other in self.options.arches:
            if other != arch:
                # Its failure, if any, is raised when that arch's own tests ask for the tree.
                self._background.submit(self._compose_stream, name, other)
        return self._compose_stream(name, arch)

    def _compose_stream(self, name: str, arch: str) -> Commit:
        """Compose fixture tree ``name`` for ``arch``, after the earlier versions of its stream."""
        wanted = load_definition(FIXTURE_TREES / f"{name}.toml")
        stream = sorted(
            (
                d
                for d in map(load_definition, sorted(FIXTURE_TREES.glob("*.toml")))
                if d.stream == wanted.stream
            ),
            key=lambda d: (d.version, d.name),
        )
        # One lock per arch: a background compose and a test's own never compose twice, nor
        # do pytest-xdist workers.
        with _locked(self.state.root / f"compose-{arch}.lock"):
            for definition in stream[: stream.index(wanted) + 1]:
                result = compose(
                    definition,
                    get_arch(arch),
                    self.repo,
                    workdir=self.state.tmp,
                    exclude_suites=self.options.excluded_for(arch),
                )
        return dataclasses.replace(self.repo.resolve(result.commit), ref=result.ref)

    def candidate(self, arch: str, feature: str | None = None) -> Commit:
        """The commit under test: ``--commit``, or the fixture tree (with ``feature``)."""
        if self.options.commit:
            commit = self.repo.resolve(self.options.commit)
            if self.options.origin_ref:
                commit = dataclasses.replace(commit, ref=self.options.origin_ref)
            if feature is not None and not has_feature(self.repo, commit, feature):
                pytest.skip(f"candidate {commit.short} has no {feature} ({FEATURES[feature].path})")
            return commit
        return self.fixture_commit(
            FEATURES[feature].fixture if feature else DEFAULT_CANDIDATE, arch
        )

    def baseline(self, arch: str, feature: str | None = None) -> Commit:
        """The last good commit: ``--baseline``, or the fixture tree; skips the test if none."""
        if self.options.baseline:
            return self.repo.resolve(self.options.baseline)
        if self.options.commit:
            pytest.skip("no baseline: the first commit of a stream has nothing to upgrade from")
        return self.fixture_commit(
            FEATURES[feature].fixture_baseline if feature else DEFAULT_BASELINE, arch
        )

    def spec(self, config: pytest.Config, arch: str, commit: str) -> RunSpec:
        """What this session runs on ``arch`` for the candidate ``commit``, as the gate would
        hand it over (only when the session was given ``--repo``)."""
        external = config.getoption("tg_external")
        return RunSpec(
            repo=self.repo.path,
            arch=arch,
            commit=commit,
            origin_ref=self.options.origin_ref,
            baseline=self.options.baseline,
            rebase_ref=self.options.rebase_ref,
            layout=self.options.layout,
            accel=self.options.accel,
            backend=self.options.backend,
            external_tests=Path(external) if external else None,
            installed_prefixes=tuple(config.getoption("tg_installed_prefix") or ()),
            signing=self.signing,
        )

    def artifacts(self, nodeid: str) -> Path:
        """Where the files of test ``nodeid`` are kept (and attached to its report)."""
        return self.run_dir / _machine_name(nodeid)

    def rebase_ref(self, arch: str) -> str:
        """The ref of another tree to rebase onto; skips the test if there is none."""
        if self.options.rebase_ref:
            self.repo.resolve(self.options.rebase_ref)
            return self.options.rebase_ref
        if self.options.commit:
            pytest.skip("no rebase target: pass --rebase-ref")
        commit = self.fixture_commit(FEATURES["docker"].fixture_baseline, arch)
        assert commit.ref is not None
        return commit.ref

    def image(self, rev: str, arch: str, *, ref: str | None = None) -> Image:
        """The cached (or freshly built) image of ``rev`` for ``arch``."""
        with _locked(self.state.root / "image.lock"):
            return image_for(self.target(arch), rev, ref=ref)

    def derived(
        self, image: Image, *, what: str, key: object, prepare: Callable[[Guest], None]
    ) -> Path:
        """A machine state made once from ``image`` by ``prepare`` and saved (see
        :func:`harness.boot.derived_state`); restore it with ``boot(image, state=...)``.
        A tree failure while preparing it fails, for the rest of the run, every test that
        asks for it again, without preparing it again."""
        target = self.target(image.arch)
        accel, _ = accel_for(target, image)
        digest = hashlib.sha256(json.dumps([image.key, what, key]).encode()).hexdigest()[:16]
        return derived_state(
            target,
            image,
            accel,
            what=what,
            key=key,
            prepare=prepare,
            console_to=self.run_dir / "states" / f"{_machine_name(what)}-{digest}.console.log",
            failure_memo=self.run_dir / "states" / f"{digest}.failed",
        )

    @contextlib.contextmanager
    def boot(
        self, image: Image, *, name: str, restore: bool = False, state: Path | None = None
    ) -> Iterator[Guest]:
        """Run a machine of ``image`` for a ``with`` block (restored from its saved ready state
        when ``restore``, or from ``state``); its console log is kept under the run's
        directory."""
        target = self.target(image.arch)
        self._boots[name] = self._boots.get(name, 0) + 1
        console = self.run_dir / name / f"console-{self._boots[name]}.log"
        with booted(
            target, image, name=name, restore=restore, state=state, console_to=console
        ) as guest:
            yield guest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Serialises composes and image builds across pytest-xdist workers sharing a state dir.
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """The session's :class:`Harness`, with the repo served to guests while it lives."""
    options = PluginOptions.from_config(request.config)
    try:
        state = State.at(options.state_dir)
        if options.repo:
            repo = Repo(options.repo)
            repo.check()
        else:
            repo = Repo(state.root / "fixtures-repo")
            repo.init(zlib_level=SCRATCH_ZLIB_LEVEL)
        signing = options.signing()
    except TreegateError as exc:
        pytest.exit(f"treegate: {exc.one_line()}", returncode=2)
    run_dir = state.runs / os.environ["TREEGATE_RUN_ID"]
    with serve(repo) as port:
        harness = Harness(
            options,
            state,
            repo,
            composed=not options.repo,
            run_dir=run_dir,
            repo_port=port,
            signing=signing,
        )
        yield harness
        harness.close()


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
    _attach_tree_diff(harness, baseline, candidate, _machine_name(request.node.nodeid))
    image = harness.image(baseline.checksum, arch, ref=candidate.ref)
    yield from _booted_for_test(harness, image, request)


def _attach_tree_diff(harness: Harness, baseline: Commit, candidate: Commit, name: str) -> None:
    diff = tree_diff(harness.repo, baseline.checksum, candidate.checksum)
    text = diff.text(baseline.checksum, candidate.checksum)
    (harness.run_dir / name).mkdir(parents=True, exist_ok=True)
    (harness.run_dir / name / "tree-diff.txt").write_text(text)
    allure.attach(
        text, name="tree diff (baseline → candidate)", attachment_type=allure.attachment_type.TEXT
    )


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
    name = _machine_name(request.node.nodeid)
    _attach_tree_diff(harness, baseline, candidate, name)
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

    if _cold(harness, request):
        # No saved states at all: boot the baseline and upgrade it here.
        for guest in _booted_for_test(harness, image, request):
            upgrade(guest)
            yield guest
        return
    state = harness.derived(
        image,
        what="upgraded",
        key=[candidate.checksum, UPGRADE_LOCAL_STATE, docker and DOCKER_LOCAL_STATE],
        prepare=upgrade,
    )
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
    name = _machine_name(request.node.nodeid)
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


def _machine_name(nodeid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in nodeid.split("::", 1)[-1])[:60]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Bound each test's body by its ``timeout`` marker, scaled for emulated arches."""
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT
    callspec = getattr(item, "callspec", None)
    arch = callspec.params.get("arch") if callspec is not None else None
    limit = seconds * (ARCHES[arch].timeout_scale if arch in ARCHES else 1.0)

    def expired(signum: int, frame: object) -> None:
        raise GuestTimeout(f"{item.name} did not finish within its {limit:.0f} s timeout")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# trylast: the inner wrapper, so the report is rewritten before allure-pytest's wrapper reads
# it (the first lines of a failure in the allure report are the summary below).
@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, TreeFailure) and report.when == "setup":
        # The tree is bad even though a fixture noticed (a panic while booting): failed.
        report.when = "call"
    elif isinstance(exc, InfraError) and report.when == "call":
        # The harness or host broke under the test: error, never failed.
        report.when = "setup"
    setattr(item, f"rep_{call.when}", report)
    if exc is not None:
        # What went wrong and why (a failed command's last output lines), for the gate's
        # verdict and the store.
        message = ("treegate_message", describe(exc))
        item.user_properties.append(message)
        report.user_properties.append(message)  # the report holds a copy (xdist sends it)
    if exc is not None and isinstance(exc, TreegateError):
        report.longrepr = _short_repr(report, exc)
    if exc is not None and report.failed and report.when == "call":
        report.longrepr = f"{_failure_summary(item, exc)}\n\n{report.longrepr}"


_MACHINE_FIXTURES = ("machine", "baseline_machine", "upgraded_machine", "shared_machine")


def _failure_summary(item: pytest.Item, exc: BaseException) -> str:
    """The first lines a release engineer reads about a failed test (in pytest's output and
    the allure report): what failed, on which arch and commit, the command that reproduces it,
    and the last console lines (a machine restored from its saved state has printed none)."""
    funcargs = getattr(item, "funcargs", {})
    callspec = getattr(item, "callspec", None)
    arch = callspec.params.get("arch", "x86_64") if callspec is not None else "x86_64"
    candidate = funcargs.get("candidate")
    harness = funcargs.get("harness")
    what, *why = describe(exc).splitlines()
    if getattr(exc, "console_tail", ""):
        why = []  # the console's last lines follow below, whole
    lines = [f"{item.name} failed on {arch}: {what}", *(f"  {line}" for line in why)]
    nodeid = item.nodeid if not item.nodeid.startswith("::") else f"{item.path}::{item.name}"
    guest = next((funcargs[f] for f in _MACHINE_FIXTURES if f in funcargs), None)
    commit = candidate.checksum if isinstance(candidate, Commit) else ""
    if not commit and isinstance(guest, Guest):
        commit = guest.image_commit
    if commit:
        lines.append(f"commit: {commit}")
    if isinstance(harness, Harness) and harness.options.repo and commit:
        reproduce = harness.spec(item.config, arch, commit).reproduce(nodeid)
    else:
        # The session composed the fixture trees: the same command composes them again.
        reproduce = shlex.join(["pytest", nodeid, "--arch", arch])
    lines.append(f"reproduce: {reproduce}")
    tail = getattr(exc, "console_tail", "")
    if not tail and isinstance(guest, Guest):
        with contextlib.suppress(OSError):
            tail = guest.console.tail(15)
    if tail:
        lines += ["", "last console lines:", tail]
    return "\n".join(lines)


def _short_repr(report: pytest.TestReport, exc: TreegateError) -> str:
    # The traceback through the harness is noise to a test author; the message says it all.
    # Keep the test's own frames: they show which step of the test failed.
    full = str(report.longrepr)
    frames = [b for b in full.split("\n\n") if "tests/" in b and "harness/" not in b]
    head = "\n\n".join(frames[-1:])
    return f"{head}\n\n{type(exc).__name__}: {exc}" if head else f"{type(exc).__name__}: {exc}"


@dataclass
class _Outcome:
    """One test's treegate outcome, folded from its setup, call and teardown reports."""

    arch: str | None
    outcome: Outcome = Outcome.not_run
    duration: float = 0.0
    message: str = ""


def _arch_of(nodeid: str) -> str | None:
    # Tests are parametrized over the arch first: ``test_x[aarch64]``, ``test_x[x86_64-foo]``.
    if "[" not in nodeid:
        return None
    first = nodeid.rsplit("[", 1)[1].rstrip("]").split("-", 1)[0]
    return first if first in ARCHES else None


class ResultsWriter:
    """Writes each test's treegate outcome for ``--treegate-results`` (what the gate reads).

    Outcomes are folded from the test reports, which the pytest-xdist controller receives from
    every worker, so a run with ``-n`` writes one complete file; workers write nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, _Outcome] = {}

    def _get(self, nodeid: str) -> _Outcome:
        return self.results.setdefault(nodeid, _Outcome(_arch_of(nodeid)))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # Without pytest-xdist the items are collected here; each starts as "not run".
        for item in session.items:
            self._get(item.nodeid)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Under pytest-xdist the controller collects nothing itself: the workers' ids say it.
        for nodeid in ids:
            self._get(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        result = self._get(report.nodeid)
        result.duration += report.duration
        if result.outcome in (Outcome.skipped, Outcome.failed, Outcome.error):
            return  # the first thing that went wrong is the outcome
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            result.outcome, result.message = Outcome.skipped, str(reason)
        elif report.failed:
            result.outcome = Outcome.failed if report.when == "call" else Outcome.error
            messages = [v for k, v in report.user_properties if k == "treegate_message"]
            fallback = str(report.longrepr).strip().splitlines()[-1] if report.longrepr else ""
            result.message = str(messages[0]) if messages else fallback
        elif report.when == "call":
            result.outcome = Outcome.passed

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        results = [
            {
                "nodeid": nodeid,
                "arch": r.arch,
                "outcome": str(r.outcome),
                "duration": round(r.duration, 3),
                "message": r.message,
            }
            for nodeid, r in self.results.items()
        ]
        self.path.write_text(json.dumps(results, indent=1))
