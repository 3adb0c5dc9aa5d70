"""The single wait primitive: every wait in treegate is a :func:`retry`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry(
    fn: Callable[[bool], T | None],
    timeout: float,
    *,
    interval: float = 0.25,
    max_interval: float = 1.0,
    what: str = "condition",
    on_timeout: Callable[[str], Exception] | None = None,
) -> T:
    """Call ``fn(last_try)`` until it returns something other than ``None`` or ``False``.

    ``fn`` receives ``True`` on its final call so it can log or raise with full diagnostics.
    The pause between tries grows from ``interval`` to ``max_interval``.  When ``timeout``
    seconds pass, the error made by ``on_timeout(message)`` is raised (``TimeoutError`` by
    default).  Exceptions raised by ``fn`` propagate at once: a console watcher that sees a
    kernel panic should not wait for the timeout.
    """
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        last_try = time.monotonic() + pause >= deadline
        result = fn(last_try)
        if result is not None and result is not False:
            return result
        if last_try:
            message = f"timed out after {timeout:.0f} s waiting for {what}"
            raise on_timeout(message) if on_timeout else TimeoutError(message)
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, max_interval)
