"""Fixtures shared by treegate's own tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TreegateCli = Callable[..., subprocess.CompletedProcess[str]]


def _run_treegate(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def treegate_cli() -> TreegateCli:
    """Run the ``treegate`` command as a user would, from the project root; returns the
    completed process (never raises on a non-zero exit: tests assert on it)."""
    return _run_treegate
