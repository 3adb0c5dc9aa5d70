"""What changed between two commits: packages (from the dpkg databases inside them) and files.

A release engineer triaging a failed upgrade first asks what the candidate changed.  The
package list is part of every commit treegate composes (the dpkg database lives in
``/usr/share/dpkg/database``, see :mod:`harness.compose`); file counts come from
``ostree diff``.  The report attaches :func:`tree_diff`'s text to every upgrade-style test.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.repo import Repo
from harness.run import run

DPKG_STATUS = "/usr/share/dpkg/database/status"


@dataclass(frozen=True)
class TreeDiff:
    """Packages added, removed and changed (name → version or (old, new)) and file counts."""

    added: dict[str, str]
    removed: dict[str, str]
    changed: dict[str, tuple[str, str]]
    files: dict[str, int]
    """``ostree diff`` counts by kind: ``added``, ``modified``, ``deleted``."""

    def text(self, old: str, new: str) -> str:
        """The diff as the few lines a report shows."""
        lines = [
            f"tree diff {old[:12]} → {new[:12]}",
            f"files: {self.files['added']} added, {self.files['modified']} modified, "
            f"{self.files['deleted']} deleted",
            f"packages: {len(self.added)} added, {len(self.removed)} removed, "
            f"{len(self.changed)} changed",
        ]
        lines += [f"  + {name} {version}" for name, version in sorted(self.added.items())]
        lines += [f"  - {name} {version}" for name, version in sorted(self.removed.items())]
        lines += [f"  ~ {name} {a} → {b}" for name, (a, b) in sorted(self.changed.items())]
        return "\n".join(lines) + "\n"


def installed_packages(status: str) -> dict[str, str]:
    """Installed packages and versions from the text of a dpkg ``status`` file."""
    packages: dict[str, str] = {}
    for stanza in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name, version = fields.get("Package"), fields.get("Version")
        if name and version and fields.get("Status", "").endswith(" installed"):
            arch = fields.get("Architecture", "")
            multi = fields.get("Multi-Arch") == "same"
            packages[f"{name}:{arch}" if multi and arch else name] = version
    return packages


def file_counts(diff_output: str) -> dict[str, int]:
    """Counts of ``ostree diff`` lines by kind (``A``, ``M``, ``D`` prefixes)."""
    counts = {"added": 0, "modified": 0, "deleted": 0}
    kinds = {"A": "added", "M": "modified", "D": "deleted"}
    for line in diff_output.splitlines():
        kind = kinds.get(line[:1])
        if kind is not None:
            counts[kind] += 1
    return counts


def tree_diff(repo: Repo, old: str, new: str) -> TreeDiff:
    """Packages and file counts that changed from commit ``old`` to commit ``new``."""
    before = _packages(repo, old)
    after = _packages(repo, new)
    diff = run(["ostree", "diff", f"--repo={repo.path}", old, new]).stdout
    return TreeDiff(
        added={n: v for n, v in after.items() if n not in before},
        removed={n: v for n, v in before.items() if n not in after},
        changed={n: (before[n], v) for n, v in after.items() if n in before and before[n] != v},
        files=file_counts(diff),
    )


def _packages(repo: Repo, commit: str) -> dict[str, str]:
    if not repo.has_path(commit, DPKG_STATUS):
        return {}  # a tree composed some other way: no package list to compare
    return installed_packages(repo.read_file(commit, DPKG_STATUS))
