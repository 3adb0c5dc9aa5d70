"""``--treegate-results``: the outcome file the gate decides on, with and without pytest-xdist.

The gate reads nothing else, so a run with ``-n 2`` must write every worker's outcomes once,
in treegate's taxonomy.  The suite here needs no machine: it exercises the plugin's reporting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import pytest

from harness.errors import InfraError, TreeFailure


@pytest.fixture
def broken_host():
    raise InfraError("QEMU died")


def test_passes():
    pass


def test_fails():
    assert 1 == 2


def test_tree_failure():
    raise TreeFailure("sshd is not running")


def test_host_broke_in_setup(broken_host):
    pass


def test_host_broke_in_body():
    raise InfraError("the host ran out of disk")


@pytest.mark.skip(reason="no docker in this tree")
def test_skipped():
    pass
"""

EXPECTED = {
    "test_passes": ("passed", ""),
    "test_fails": ("failed", ""),
    "test_tree_failure": ("failed", "TreeFailure: sshd is not running"),
    "test_host_broke_in_setup": ("error", "InfraError: QEMU died"),
    "test_host_broke_in_body": ("error", "InfraError: the host ran out of disk"),
    "test_skipped": ("skipped", "no docker in this tree"),
}


@pytest.mark.parametrize("workers", [0, 2], ids=["plain", "xdist"])
def test_results_file_has_every_outcome_once(tmp_path: Path, workers: int) -> None:
    suite = tmp_path / "test_outcomes.py"
    suite.write_text(SUITE)
    results = tmp_path / "results.json"
    argv = [sys.executable, "-m", "pytest", str(suite), "-p", "no:cacheprovider", "-q"]
    argv += ["--rootdir", str(ROOT), "--state-dir", str(tmp_path / "state")]
    argv += ["--treegate-results", str(results)]
    if workers:
        argv += ["-n", str(workers)]
    subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    got = {r["nodeid"].rsplit("::", 1)[1]: r for r in json.loads(results.read_text())}
    assert sorted(got) == sorted(EXPECTED)
    for name, (outcome, message) in EXPECTED.items():
        assert got[name]["outcome"] == outcome, (name, got[name])
        if message:
            assert message in got[name]["message"], (name, got[name])
