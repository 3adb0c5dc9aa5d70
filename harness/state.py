"""The state directory: the harness's key, its caches, its store and its scratch space.

One state directory (default ``.treegate/`` in the current directory, or
``$TREEGATE_STATE_DIR``) holds everything treegate keeps between runs.  It is passed around
explicitly as a :class:`State`; nothing reads a global.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError


@dataclass(frozen=True)
class State:
    """Paths inside one state directory."""

    root: Path

    @classmethod
    def at(cls, path: str | Path | None) -> State:
        """The state directory at ``path`` (or the default), created if needed."""
        chosen = Path(path or os.environ.get("TREEGATE_STATE_DIR") or ".treegate").resolve()
        try:
            chosen.mkdir(parents=True, exist_ok=True)
            for sub in ("images", "tmp", "runs"):
                (chosen / sub).mkdir(exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot use state directory {chosen}: {exc.strerror}") from None
        if not os.access(chosen, os.W_OK):
            raise UserError(f"state directory {chosen} is not writable")
        return cls(chosen)

    @property
    def images(self) -> Path:
        """Content-addressed image cache: ``images/<key>/disk.qcow2``."""
        return self.root / "images"

    @property
    def tmp(self) -> Path:
        """Scratch space for builds and running machines (cleaned up by whoever made it)."""
        return self.root / "tmp"

    @property
    def runs(self) -> Path:
        """Per-run artifacts: console logs, journals, screenshots."""
        return self.root / "runs"

    @property
    def key(self) -> Path:
        """The harness's private ed25519 key (``key.pub`` beside it)."""
        return self.root / "id_ed25519"
