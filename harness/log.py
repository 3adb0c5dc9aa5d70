"""Nested log sections, so a failure shows the path of actions that led to it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

_depth = threading.local()
log = logging.getLogger("treegate")


@contextlib.contextmanager
def nested(message: str) -> Iterator[None]:
    """Log ``message`` as a section; inner log lines are indented, the duration logged at the end."""
    depth = getattr(_depth, "value", 0)
    log.info("%s%s", "  " * depth, message)
    _depth.value = depth + 1
    start = time.monotonic()
    try:
        yield
    finally:
        _depth.value = depth
        log.info("%s(%s: %.2f s)", "  " * depth, message, time.monotonic() - start)


def info(message: str) -> None:
    """Log one line at the current nesting depth."""
    log.info("%s%s", "  " * getattr(_depth, "value", 0), message)


def setup(verbosity: int = 1) -> None:
    """Configure logging for the CLI and the pytest plugin (call once, from the entry point).

    0: warnings only; 1: the nested action log; 2: also every host command.
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(message)s")
    # paramiko logs every refused connection while a guest boots, with a traceback; the
    # harness's own errors already say what went wrong.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
