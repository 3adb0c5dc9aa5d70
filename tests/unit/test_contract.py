"""The tree contract on small trees committed by hand (no compose, nothing boots): what
``treegate check`` says of each, and the gate refusing an unreachable tree before booting."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.arch import get_arch
from harness.contract import check_tree
from harness.layout import load_layout
from harness.repo import Repo

ROOT = Path(__file__).resolve().parents[2]
TreegateCli = Callable[..., subprocess.CompletedProcess[str]]
"""The ``treegate_cli`` fixture (tests/conftest.py)."""
X86_64_ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (62).to_bytes(2, "little") + b"\0" * 40
AARCH64_ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 11 + (183).to_bytes(2, "little") + b"\0" * 40


def cpio(*names: str) -> bytes:
    """A newc cpio archive of empty files."""
    out = b""
    for n, name in enumerate([*names, "TRAILER!!!"], start=1):
        data = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}" for v in (n, 0o100755, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(data), 0)
        )
        entry = header.encode() + data
        out += entry + b"\0" * (-len(entry) % 4)
    return out


def good_tree(root: Path) -> Path:
    """What a distributor's tree holds, laid out as the OSTree documentation says."""
    kver = "6.1.0-1-amd64"
    files = {
        f"usr/lib/modules/{kver}/vmlinuz": b"kernel",
        f"usr/lib/modules/{kver}/initramfs.img": gzip.compress(
            cpio("init", "usr/lib/ostree/ostree-prepare-root")
        ),
        "usr/sbin/sshd": X86_64_ELF,
        "usr/lib/systemd/systemd-networkd": X86_64_ELF,
        "usr/etc/systemd/network/20-wired.network": b"[Match]\nName=e*\n[Network]\nDHCP=yes\n",
        "usr/etc/os-release": b"ID=debian\n",
    }
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / "var/roothome").mkdir(parents=True)
    (root / "root").symlink_to("var/roothome")
    return root


def commit(repo: Repo, tree: Path, ref: str) -> str:
    return repo.commit(tree, ref, subject="by hand", metadata={})


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path / "repo")
    r.init()
    return r


def failures(repo: Repo, ref: str, arch: str = "x86_64") -> dict[str, str]:
    a = get_arch(arch)
    found = check_tree(repo, repo.resolve(ref), a, load_layout(a.layout, ROOT / "images"))
    return {r.name: r.line() for r in found if not r.met}


def test_a_tree_adapted_as_ostree_documents_meets_the_contract(repo: Repo, tmp_path: Path) -> None:
    commit(repo, good_tree(tmp_path / "good"), "os/good")
    assert failures(repo, "os/good") == {}


@pytest.mark.parametrize(
    ("breakage", "requirement", "says"),
    [
        ("rm usr/lib/modules/*/vmlinuz", "kernel", "no /usr/lib/modules/*/vmlinuz"),
        ("rm usr/lib/modules/*/initramfs.img", "initramfs", "no /usr/lib/modules/"),
        (
            "python3 -c \"import gzip,sys; open(sys.argv[1],'wb').write(gzip.compress(b'070701'))\" "
            "usr/lib/modules/*/initramfs.img",
            "ostree-prepare-root",
            "not in the initramfs",
        ),
        ("rm usr/sbin/sshd", "ssh server", "install openssh-server"),
        ("rm usr/etc/systemd/network/20-wired.network", "network", "DHCP"),
        ("rm root && mkdir root", "root's home", "symlink to var/roothome"),
        ("mv usr/etc etc", "/usr/etc", "commit the tree's /etc as /usr/etc"),
        ("mkdir etc", "/usr/etc", "both /etc and /usr/etc"),
    ],
)
def test_each_missing_requirement_is_one_line_with_its_fix(
    repo: Repo, tmp_path: Path, breakage: str, requirement: str, says: str
) -> None:
    tree = good_tree(tmp_path / "tree")
    subprocess.run(breakage, shell=True, cwd=tree, check=True)
    commit(repo, tree, "os/broken")
    found = failures(repo, "os/broken")
    assert requirement in found, found
    assert says in found[requirement]
    assert found[requirement].startswith(f"FAIL {requirement}: ")


def test_a_tree_for_another_arch_fails_the_arch_requirement(repo: Repo, tmp_path: Path) -> None:
    tree = good_tree(tmp_path / "tree")
    (tree / "usr/sbin/sshd").write_bytes(AARCH64_ELF)
    commit(repo, tree, "os/arm")
    assert failures(repo, "os/arm")["arch"] == (
        "FAIL arch: its binaries are built for aarch64, not x86_64 "
        "(gate it with --arch aarch64, or compose it for x86_64)"
    )


def test_check_and_the_gate_refuse_an_unreachable_tree_before_booting(
    treegate_cli: TreegateCli, repo: Repo, tmp_path: Path
) -> None:
    tree = good_tree(tmp_path / "tree")
    (tree / "usr/sbin/sshd").unlink()
    commit(repo, tree, "os/no-sshd")
    # From a directory outside the checkout, as a user would.
    check = treegate_cli("check", "--repo", str(repo.path), "--commit", "os/no-sshd", cwd=tmp_path)
    assert check.returncode == 1, check.stderr
    assert "FAIL ssh server: no /usr/sbin/sshd (install openssh-server)" in check.stdout
    assert "cannot be gated on x86_64" in check.stdout

    verdict = tmp_path / "verdict.json"
    state = tmp_path / "state"
    gate = treegate_cli(
        *("gate", "--repo", str(repo.path), "--ref", "os/no-sshd", "--promote-to", "os/tested"),
        *("--state-dir", str(state), "--json", str(verdict)),
        cwd=tmp_path,
    )
    assert gate.returncode == 1, gate.stdout + gate.stderr
    data = json.loads(verdict.read_text())
    assert data["decision"] == "rejected"
    assert [(r["nodeid"], r["outcome"]) for r in data["results"]] == [
        ("tree contract: ssh server", "failed")
    ]
    assert "install openssh-server" in gate.stdout
    assert not list((state / "images").iterdir())  # no image was built, nothing booted
    assert repo.try_resolve("os/tested") is None
