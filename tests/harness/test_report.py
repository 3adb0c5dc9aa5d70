"""``treegate report`` end to end: a real run on a real VM, its report opened in Chromium.

A small suite (checks that pass and one that fails, on a booted candidate) runs in a
pytest session of its own and writes allure results; ``treegate report`` builds the HTML
report; headless Chromium loads it over HTTP from 127.0.0.1, and the matrix it renders must
show the outcomes the run produced.  A screenshot of the page is kept with the test's files.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.plugin.session import Harness

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import pytest

pytestmark = pytest.mark.vm


def test_root_is_root(shared_machine):
    assert shared_machine.succeed("id -u").strip() == "0"


# Two parameter sets of one test, one passing and one failing: two rows of the matrix.
@pytest.mark.parametrize("path", ["etc", "no-such-file"])
def test_a_path_exists(shared_machine, path):
    shared_machine.succeed(f"test -e /{path}")
"""


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (the allure report loads its data with fetch)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chromium(*args: str) -> str:
    """Run headless Chromium (Debian's) and return what it printed."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed (ci/setup installs it)"
    proc = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout


def test_report_matrix_shows_the_run_outcomes(
    treegate_cli: Callable[..., subprocess.CompletedProcess[str]], harness: Harness, tmp_path: Path
) -> None:
    suite = tmp_path / "test_report_subject.py"
    suite.write_text(SUITE)
    results = tmp_path / "allure-results"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(suite),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            "--state-dir",
            str(harness.state.root),
            "--alluredir",
            str(results),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr  # one test failed, as written
    produced = {}
    for path in results.glob("*-result.json"):
        data = json.loads(path.read_text())
        produced[data["name"]] = data["status"]
    assert produced == {
        "test_root_is_root[x86_64]": "passed",
        "test_a_path_exists[x86_64-etc]": "passed",
        "test_a_path_exists[x86_64-no-such-file]": "failed",
    }

    out = tmp_path / "report"
    report = treegate_cli(
        "report",
        "--results",
        str(results),
        "--out",
        str(out),
        # A store of its own: this report must not join the trend of the real nightlies.
        "--state-dir",
        str(tmp_path / "store"),
        timeout=300,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert (out / "index.html").is_file() and (out / "allure" / "index.html").is_file()

    with served(out) as base:
        dom = chromium("--dump-dom", f"{base}/index.html")
        cells = dict(re.findall(r"<tr><th>[^<]*::([^<]+)</th><td class=\"(\w+)\"", dom))
        assert cells == {
            "test_root_is_root": "passed",
            "test_a_path_exists[etc]": "passed",
            "test_a_path_exists[no-such-file]": "failed",
        }
        # The failed cell links to the test's page in the allure report, which opens on it
        # with the summary the plugin wrote: what failed, on which arch, how to reproduce.
        link = re.search(r'<td class="failed"[^>]*><a href="([^"]+)"', dom)
        assert link is not None
        page = chromium("--dump-dom", f"{base}/{link.group(1)}")
        text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S))
        assert "test_a_path_exists[x86_64-no-such-file]" in text
        assert "failed on x86_64" in text and "reproduce: pytest" in text
        shot = harness.run_dir / "report" / "matrix.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        chromium(f"--screenshot={shot}", "--window-size=1280,800", f"{base}/index.html")
        assert shot.stat().st_size > 0
