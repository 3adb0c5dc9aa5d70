"""The quarantine file: known-bad tests that are reported but do not block, until they expire.

::

    [[quarantine]]
    test = "tests/system/test_docker.py::test_docker_runs_a_container_offline"
    arch = "armv7"              # optional: every arch when left out
    reason = "dockerd times out under TCG on armhf, #123"
    expires = 2026-12-31        # a TOML date: from that day on, the test blocks again

``test`` matches a node id exactly, or without its parameters (``test_x`` matches
``test_x[armv7]``).  A quarantined test that failed, errored or was flaky is reported as
*quarantined* (its outcome and the reason in the message) and does not block promotion; an
expired entry is ignored, so the test blocks again.
"""

from __future__ import annotations

import dataclasses
import datetime
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.outcome import CaseResult, Outcome


@dataclass(frozen=True)
class Entry:
    """One quarantined test."""

    test: str
    reason: str
    expires: datetime.date
    arch: str | None = None

    def matches(self, nodeid: str, arch: str) -> bool:
        if self.arch is not None and self.arch != arch:
            return False
        return nodeid == self.test or nodeid.split("[", 1)[0] == self.test

    def active(self, today: datetime.date) -> bool:
        return today < self.expires


def load_quarantine(path: Path) -> tuple[Entry, ...]:
    """Read ``path``; one-line errors for a missing file or a malformed entry."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"quarantine file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - {"quarantine"}
    if unknown:
        raise UserError(f"{path}: unknown key {sorted(unknown)[0]} (entries are [[quarantine]])")
    entries = []
    for n, raw in enumerate(data.get("quarantine", []), start=1):
        where = f"{path}: quarantine entry {n}"
        if not isinstance(raw, dict):
            raise UserError(f"{where} must be a table")
        extra = set(raw) - {"test", "arch", "reason", "expires"}
        if extra:
            raise UserError(f"{where}: unknown key {sorted(extra)[0]}")
        for key in ("test", "reason", "expires"):
            if key not in raw:
                raise UserError(f"{where}: {key} is missing")
        if not isinstance(raw["test"], str) or not isinstance(raw["reason"], str):
            raise UserError(f"{where}: test and reason must be strings")
        if not isinstance(raw["expires"], datetime.date) or isinstance(
            raw["expires"], datetime.datetime
        ):
            raise UserError(f"{where}: expires must be a date (expires = 2026-12-31)")
        arch = raw.get("arch")
        if arch is not None and not isinstance(arch, str):
            raise UserError(f"{where}: arch must be a string")
        entries.append(Entry(raw["test"], raw["reason"], raw["expires"], arch))
    return tuple(entries)


def apply_quarantine(
    results: Sequence[CaseResult], entries: Sequence[Entry], today: datetime.date
) -> list[CaseResult]:
    """``results`` with every blocking outcome of an actively quarantined test turned into
    *quarantined*; expired entries change nothing."""
    out = []
    for r in results:
        entry = next((e for e in entries if e.matches(r.nodeid, r.arch) and e.active(today)), None)
        if entry is not None and r.outcome.quarantinable:
            r = dataclasses.replace(
                r,
                outcome=Outcome.quarantined,
                message=f"{r.outcome}, quarantined until {entry.expires}: {entry.reason}"
                + (f" ({r.message})" if r.message else ""),
            )
        out.append(r)
    return out
