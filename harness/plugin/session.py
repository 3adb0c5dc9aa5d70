"""The session a test runs in: the state directory, the repository (the user's, or the fixture
trees composed on first use), the repo server guests pull from, images and machines.

:class:`Harness` is the one provider of commits, images and booted machines: the fixtures
and the collection ask it, and nothing else composes or resolves."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.arch import get_arch
from harness.boot import Target, accel_for, booted, derived_state, image_for
from harness.compose import compose
from harness.definition import load_definition
from harness.errors import (
    TreegateError,
    UserError,
)
from harness.guest import Guest
from harness.image import Image
from harness.plugin.options import DEFAULT_BASELINE, DEFAULT_CANDIDATE, FIXTURE_TREES, PluginOptions
from harness.repo import SCRATCH_ZLIB_LEVEL, Commit, Repo, serve
from harness.runspec import RunSpec
from harness.signing import SigningKey
from harness.state import State
from harness.suites import FEATURES, has_feature


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
        return self.run_dir / machine_name(nodeid)

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
            console_to=self.run_dir / "states" / f"{machine_name(what)}-{digest}.console.log",
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


def machine_name(nodeid: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in nodeid.split("::", 1)[-1])[:60]
