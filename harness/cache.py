"""The state directory's caches: images and saved machine states, listed and trimmed.

Every use of a cached image or snapshot touches its metadata file, so "last used" is the
file's modification time.  Composes live in the repository (one commit per definition) and
are not trimmed here.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness.state import State


@dataclass(frozen=True)
class CacheEntry:
    """One cached image or saved machine state."""

    kind: str
    path: Path
    commit: str
    size: int
    """Bytes actually used on disk (images are sparse)."""
    last_used: float


def _disk_usage(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def entries(state: State) -> list[CacheEntry]:
    """Every cached image and snapshot, least recently used first."""
    out = []
    for kind, root, meta_name in (
        ("image", state.images, "image.json"),
        ("snapshot", state.root / "snapshots", "snapshot.json"),
    ):
        for meta in root.glob(f"*/{meta_name}") if root.is_dir() else []:
            try:
                commit = str(json.loads(meta.read_text()).get("commit", "?"))
            except (OSError, ValueError):
                commit = "?"
            out.append(
                CacheEntry(
                    kind, meta.parent, commit, _disk_usage(meta.parent), meta.stat().st_mtime
                )
            )
    return sorted(out, key=lambda e: e.last_used)


def gc(state: State, *, older_than_days: float) -> list[CacheEntry]:
    """Remove entries not used for ``older_than_days`` days (0: everything); return them."""
    cutoff = time.time() - older_than_days * 86400
    removed = []
    for entry in entries(state):
        if entry.last_used <= cutoff:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry)
    return removed


def touch(meta: Path) -> None:
    """Record a use of the cache entry whose metadata file is ``meta``."""
    meta.touch()
