"""The console watcher catches a broken boot from the console, at once, as a tree failure."""

from __future__ import annotations

import time

import pytest

from harness.errors import BootFailure
from harness.pytest_plugin import Harness

pytestmark = pytest.mark.vm


def test_broken_init_is_caught_from_the_console(harness: Harness, arch: str) -> None:
    """A tree whose init exits panics the kernel; the boot fails on that line, not at a timeout."""
    broken = harness.fixture_commit("broken-init", arch)
    image = harness.image(broken.checksum, arch)
    start = time.monotonic()
    with pytest.raises(BootFailure) as caught, harness.boot(image, name=f"{arch}-broken-init"):
        pass
    elapsed = time.monotonic() - start
    assert "Kernel panic" in str(caught.value)
    assert "Attempted to kill init" in caught.value.console_tail
    # The SSH wait allows 120 s; the panic must end it long before that.
    assert elapsed < 60, f"the panic was noticed only after {elapsed:.0f} s"
