"""The gate's suites and the tree features they need: the one table both the gate and the
pytest plugin read.

A suite is one module under ``tests/system/``.  Whether it applies to a commit is decided by
looking into the commit (does it have ``/usr/sbin/dockerd``?) and at the run (is there a
baseline to upgrade from, a tree to rebase to?), so a suite that does not apply is skipped
with a reason, never failed and never silently passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.repo import Commit, Repo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUITES_DIR = PROJECT_ROOT / "tests" / "system"


@dataclass(frozen=True)
class Feature:
    """Something a tree may have, recognised by a path inside its commit."""

    name: str
    path: str
    fixture: str
    """Fixture tree used as the candidate when the plugin composes its own trees."""
    fixture_baseline: str
    """Fixture tree used as the baseline in that case."""


FEATURES: dict[str, Feature] = {
    "docker": Feature(
        "docker", "/usr/sbin/dockerd", fixture="docker-v2", fixture_baseline="docker"
    ),
    # Key files of GNOME's installed-tests format (harness/installed.py); a tree without any
    # has no installed suite to run.
    "installed-tests": Feature(
        "installed-tests",
        "/usr/share/installed-tests",
        fixture="installed-tests",
        fixture_baseline="installed-tests",
    ),
}


@dataclass(frozen=True)
class Suite:
    """One gate suite: a test module and what it needs to apply."""

    name: str
    feature: str | None = None
    needs_baseline: bool = False
    needs_rebase_ref: bool = False
    needs_external: bool = False
    """Applies only when the gate is given external tests (``--external-tests DIR``)."""

    @property
    def path(self) -> Path:
        return SUITES_DIR / f"test_{self.name}.py"

    def applies_to(self, repo: Repo, commit: Commit) -> bool:
        """True when ``commit`` has the feature this suite tests (if any)."""
        return self.feature is None or has_feature(repo, commit, self.feature)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("smoke"),
        Suite("upgrade", needs_baseline=True),
        Suite("rollback", needs_baseline=True),
        Suite("rebase", needs_rebase_ref=True),
        Suite("docker", feature="docker"),
        Suite("external", needs_external=True),
        Suite("installed", feature="installed-tests"),
    )
}


def get_suite(name: str) -> Suite:
    """The suite called ``name``, or a one-line error listing the known ones."""
    try:
        return SUITES[name]
    except KeyError:
        raise UserError(
            f"unknown suite {name!r}", hint=f"choose from {', '.join(SUITES)}"
        ) from None


def has_feature(repo: Repo, commit: Commit, feature: str) -> bool:
    """True when ``commit`` contains the path that marks ``feature``."""
    return repo.has_path(commit.checksum, FEATURES[feature].path)
