"""SIGTERM, and SIGINT, to a pytest run of treegate's plugin unwind like Ctrl-C (no VM needed
to show it).

CI systems cancel a job with SIGTERM.  Without the plugin's handler pytest would die on the
spot and leave every fixture's machine work directory behind; with it, fixtures are torn
down (this is where machines are destroyed) and the run ends as interrupted.  SIGINT is how
``treegate gate`` stops its pytest run (a deadline, Ctrl-C); it must work even when pytest
was started with SIGINT ignored, as a shell without job control starts a background job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TEST = """
import time
import pytest

@pytest.fixture
def machine(tmp_path_factory):
    yield
    open({marker!r}, "w").write("torn down")

def test_long(machine):
    open({started!r}, "w").write("started")
    time.sleep(60)
"""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    "signum, inherited",
    [
        (signal.SIGTERM, None),
        # What `cmd &` in a script does to SIGINT (POSIX), and `nohup … &` from one.
        (signal.SIGINT, _ignore_sigint),
    ],
    ids=["sigterm", "sigint-while-ignored"],
)
def test_a_stop_signal_tears_fixtures_down_and_reports_interrupted(
    tmp_path: Path, signum: signal.Signals, inherited: Callable[[], None] | None
) -> None:
    marker, started = tmp_path / "torn-down", tmp_path / "started"
    test = tmp_path / "test_long.py"
    test.write_text(TEST.format(marker=str(marker), started=str(started)))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            str(test),
            "--state-dir",
            str(tmp_path / "state"),
            "--rootdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=inherited,
    )
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=60)
    assert marker.read_text() == "torn down"
    assert proc.returncode == 2, output  # pytest's "interrupted"
    assert "KeyboardInterrupt" in output
