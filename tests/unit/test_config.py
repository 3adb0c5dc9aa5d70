"""``treegate.toml``: a good file configures the gate; a bad one is one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import load_config
from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
repo = "repo"
[signing]
gpg_homedir = "gpg"
[streams.minimal]
candidate = "treegate/bookworm/{arch}/minimal"
tested = "treegate/bookworm/{arch}/minimal-tested"
arches = ["x86_64", "aarch64"]
suites = ["smoke", "upgrade"]
rebase = "treegate/bookworm/{arch}/docker"
timeout_min = 45
[streams.docker]
candidate = "treegate/bookworm/{arch}/docker"
tested = "treegate/bookworm/{arch}/docker-tested"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "treegate.toml"
    path.write_text(text)
    return path


def test_a_good_config_reads_as_written(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.repo == tmp_path / "repo"  # relative to the file
    assert config.signing is not None and config.signing.gpg_homedir == tmp_path / "gpg"
    minimal = config.stream("minimal")
    assert minimal.arches == ("x86_64", "aarch64")
    assert minimal.suites == ("smoke", "upgrade")
    assert minimal.timeout_min == 45.0
    assert config.stream("docker").arches == ("x86_64",)  # the default


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("arches = [", 'arches = "x86_64"\nx = ['), "arches must be a list, not a string"),
        (("timeout_min = 45", 'timeout_min = "45"'), "timeout_min must be a number, not a string"),
        (("timeout_min = 45", "timeout_min = true"), "timeout_min must be a number, not a boolean"),
        (('repo = "repo"', "repo = 3"), "repo must be a string, not a number"),
        (("rebase =", "rebsae ="), "unknown key streams.minimal.rebsae (did you mean 'rebase'?)"),
        (('"smoke", "upgrade"', '"smoke", "upgrad"'), "unknown suite 'upgrad'"),
        (('"x86_64", "aarch64"', '"x86_64", "arm64"'), "unknown arch 'arm64'"),
        (
            ('tested = "treegate/bookworm/{arch}/docker-tested"', ""),
            "streams.docker.tested is missing",
        ),
        (("timeout_min = 45", "timeout_min = -1"), "timeout_min must be positive"),
        (("[streams.docker]", "[streams.docker"), "not valid TOML"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(UserError) as info:
        load_config(path)
    line = info.value.one_line()
    assert "\n" not in line
    assert message in line, line
    assert str(path) in line


def treegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_gate_reads_the_stream_from_the_config(tmp_path: Path) -> None:
    subprocess.run(["ostree", "init", f"--repo={tmp_path / 'repo'}", "--mode=archive"], check=True)
    path = write(tmp_path, GOOD.replace('[signing]\ngpg_homedir = "gpg"\n', ""))
    # The stream's candidate ref is not in the (empty) repo: the error proves it was read.
    r = treegate("gate", "--config", str(path), "--stream", "docker", "--state-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert "treegate/bookworm/x86_64/docker" in r.stderr and "not in repository" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_gate_with_a_wrongly_typed_config_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("timeout_min = 45", 'timeout_min = "soon"'))
    r = treegate("gate", "--config", str(path), "--stream", "minimal")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("treegate: error: "), r.stderr
    assert "streams.minimal.timeout_min must be a number" in lines[0]
    assert "Traceback" not in r.stderr


def test_several_streams_need_a_name(tmp_path: Path) -> None:
    r = treegate("gate", "--config", str(write(tmp_path, GOOD)))
    assert r.returncode == 2
    assert "several streams (minimal, docker)" in r.stderr
