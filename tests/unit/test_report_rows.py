"""The matrix's rows: one per test and parameter set, the arch being the column."""

from __future__ import annotations

import pytest

from harness.report import _node_id


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
