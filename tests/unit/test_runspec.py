"""A RunSpec written as pytest options reads back, in a real pytest child, as the same run:
what the gate hands its pytest run and what a reproduce line says are one thing."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from harness.machine.base import Backend
from harness.runspec import RunSpec

PROBE = """
import json, os
from harness.plugin.options import PluginOptions

def test_probe(request):
    o = PluginOptions.from_config(request.config)
    seen = {k: getattr(o, k) for k in ("repo", "commit", "origin_ref", "baseline", "rebase_ref",
                                       "arches", "layout", "accel", "gpg_homedir", "gpg_key")}
    seen["backend"] = [o.backend.kind, o.backend.uri]
    seen["external"] = request.config.getoption("tg_external")
    seen["prefixes"] = request.config.getoption("tg_installed_prefix")
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump(seen, f)
"""


def test_a_spec_reads_back_as_the_same_run(tmp_path: Path) -> None:
    spec = RunSpec(
        repo=tmp_path / "repo",
        arch="aarch64",
        commit="a" * 64,
        origin_ref="os/{arch}/x",
        baseline="b" * 64,
        rebase_ref="os/aarch64/y",
        layout="uefi-aarch64",
        accel="tcg",
        backend=Backend("libvirt", "qemu+tcp://127.0.0.1/system"),
        external_tests=tmp_path / "external",
        installed_prefixes=("libostree/test-basic", "glib/"),
    )
    (tmp_path / "test_probe.py").write_text(PROBE)
    out = tmp_path / "seen.json"
    # The reproduce line is what a person pastes: run exactly that, from another directory.
    argv = shlex.split(spec.reproduce(str(tmp_path / "test_probe.py")))
    assert argv[0] == "pytest"
    done = subprocess.run(
        [sys.executable, "-m", *argv, "-p", "no:cacheprovider", "-q", "--state-dir", str(tmp_path)],
        cwd=tmp_path,
        env={"PROBE_OUT": str(out), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(out.read_text()) == {
        "repo": str(tmp_path / "repo"),
        "commit": "a" * 64,
        "origin_ref": "os/{arch}/x",
        "baseline": "b" * 64,
        "rebase_ref": "os/aarch64/y",
        "arches": ["aarch64"],
        "layout": "uefi-aarch64",
        "accel": "tcg",
        "gpg_homedir": None,
        "gpg_key": None,
        "backend": ["libvirt", "qemu+tcp://127.0.0.1/system"],
        "external": str(tmp_path / "external"),
        "prefixes": ["libostree/test-basic", "glib/"],
    }
