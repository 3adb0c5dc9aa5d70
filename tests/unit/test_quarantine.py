"""The quarantine file: entries hide a known-bad test's failure until they expire."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.outcome import CaseResult, decide
from harness.quarantine import apply_quarantine, load_quarantine

NODE = "tests/system/test_docker.py::test_docker_runs_a_container_offline[armv7]"

FILE = """
[[quarantine]]
test = "tests/system/test_docker.py::test_docker_runs_a_container_offline"
arch = "armv7"
reason = "dockerd times out under TCG on armhf"
expires = 2026-12-31
"""


def results(outcome: str) -> list[CaseResult]:
    return [
        CaseResult(NODE, "armv7", outcome, 1.0, "unit docker.service is failed"),
        CaseResult("tests/system/test_docker.py::test_other[armv7]", "armv7", "passed", 1.0),
    ]


def test_an_active_entry_turns_a_failure_into_quarantined(tmp_path: Path) -> None:
    (tmp_path / "q.toml").write_text(FILE)
    entries = load_quarantine(tmp_path / "q.toml")
    out = apply_quarantine(results("failed"), entries, datetime.date(2026, 12, 1))
    assert out[0].outcome == "quarantined"
    assert "failed, quarantined until 2026-12-31: dockerd times out" in out[0].message
    assert decide(out, ["docker"], ["armv7"])[0] == "promoted"


def test_an_expired_entry_blocks_again(tmp_path: Path) -> None:
    (tmp_path / "q.toml").write_text(FILE)
    entries = load_quarantine(tmp_path / "q.toml")
    out = apply_quarantine(results("failed"), entries, datetime.date(2026, 12, 31))
    assert out[0].outcome == "failed"
    assert decide(out, ["docker"], ["armv7"])[0] == "rejected"


def test_an_entry_for_another_arch_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "q.toml").write_text(FILE.replace('"armv7"', '"aarch64"'))
    entries = load_quarantine(tmp_path / "q.toml")
    assert apply_quarantine(results("error"), entries, datetime.date(2026, 12, 1))[0].outcome == (
        "error"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (FILE.replace("expires = 2026-12-31", 'expires = "soon"'), "expires must be a date"),
        (
            FILE.replace('reason = "dockerd times out under TCG on armhf"\n', ""),
            "reason is missing",
        ),
        (FILE.replace("arch =", "arc ="), "unknown key arc"),
        ("[quarantine\n", "not valid TOML"),
    ],
)
def test_a_bad_quarantine_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "q.toml").write_text(text)
    with pytest.raises(UserError) as info:
        load_quarantine(tmp_path / "q.toml")
    assert message in info.value.one_line() and "\n" not in info.value.one_line()
