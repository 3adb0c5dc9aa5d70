"""The console watcher catches a broken boot from the console, at once, as a tree failure."""

from __future__ import annotations

import pytest

from harness.errors import BootFailure
from harness.pytest_plugin import Harness

pytestmark = pytest.mark.vm


def test_broken_init_is_caught_from_the_console(harness: Harness, arch: str) -> None:
    """A tree whose init exits panics the kernel; the boot fails on that line, not at a timeout."""
    broken = harness.fixture_commit("broken-init", arch)
    image = harness.image(broken.checksum, arch)
    # A BootFailure (not the GuestTimeout of the SSH wait) proves the console watcher ended
    # the boot on the panic line; how fast is the benchmark's business, not this test's.
    with pytest.raises(BootFailure) as caught, harness.boot(image, name=f"{arch}-broken-init"):
        pass
    assert "Kernel panic" in str(caught.value)
    assert "Attempted to kill init" in caught.value.console_tail
