"""The matrix's rows: one per test and parameter set, the arch being the column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.report import _node_id, cases


@pytest.mark.parametrize(
    ("name", "column", "row"),
    [
        ("test_boots[x86_64]", "x86_64", "tests/system/test_smoke.py::test_boots"),
        (
            "test_boots[aarch64-failing-unit-minimal-smoke]",
            "aarch64",
            "tests/system/test_smoke.py::test_boots[failing-unit-minimal-smoke]",
        ),
        ("test_boots[etc-armv7]", "armv7", "tests/system/test_smoke.py::test_boots[etc]"),
        # No arch parameter (a gate across two arches): the ids stay whole.
        ("test_boots[a-b]", "-", "tests/system/test_smoke.py::test_boots[a-b]"),
        ("test_boots", "-", "tests/system/test_smoke.py::test_boots"),
    ],
)
def test_the_arch_is_the_column_and_other_parameters_stay_in_the_row(
    name: str, column: str, row: str
) -> None:
    data = {"name": name, "fullName": "tests.system.test_smoke#test_boots"}
    assert _node_id(data, column) == row


def test_a_cells_message_is_what_failed_and_the_last_lines_of_why(tmp_path: Path) -> None:
    results = tmp_path / "data" / "test-results"
    results.mkdir(parents=True)
    output = "".join(f"progress {n}\n" for n in range(100)) + "error: the reason\n"
    message = f"GuestCommandFailed: command 'ostree admin upgrade' exited 1, expected 0; output:\n{output}"
    result = {
        "id": "r1",
        "name": "test_upgrade[x86_64]",
        "fullName": "tests.system.test_upgrade#test_upgrade",
        "status": "failed",
        "duration": 1500,
        "parameters": [{"name": "arch", "value": "'x86_64'"}],
        "error": {"message": message},
    }
    (results / "r1.json").write_text(json.dumps(result))
    (cell,) = cases(tmp_path)
    lines = cell.message.splitlines()
    assert lines[0].endswith("exited 1, expected 0; output:")
    assert lines[-1] == "error: the reason"
