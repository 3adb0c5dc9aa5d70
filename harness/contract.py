"""The tree contract: what a commit must hold for treegate to boot it and reach it over SSH.

:func:`check_tree` reads the commit in the repository (nothing boots) and returns one
:class:`Requirement` per item, met or not, each with the change that would meet it.  The
gate checks it before anything else: a tree that can never be reached is rejected at once
with these lines, instead of costing boot timeouts and reading as a test failure.
``treegate check`` prints it.  docs/trees.md is the same contract in prose, with what
treegate adds to each deployment's ``/etc`` at image time (never to the commit).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.arch import Arch
from harness.errors import CommandError, UserError
from harness.image import GRUB_EFI
from harness.layout import Layout
from harness.repo import Commit, Repo


@dataclass(frozen=True)
class Requirement:
    """One item of the contract, as checked on one commit."""

    name: str
    met: bool
    found: str
    """What the commit holds for it (when met) or lacks (when not)."""
    fix: str = ""
    """The change to the tree that meets it (when not met)."""

    def line(self) -> str:
        """``ok   name: found`` or ``FAIL name: found (fix)``."""
        if self.met:
            return f"ok   {self.name}: {self.found}"
        return f"FAIL {self.name}: {self.found} ({self.fix})"


_ELF_MACHINES = {(2, 62): "x86_64", (2, 183): "aarch64", (1, 40): "armv7"}
"""(ELF class, e_machine) of each arch's binaries: 64-bit x86-64, 64-bit AArch64, 32-bit ARM."""

_DHCP_NETWORK = re.compile(r"^\s*DHCP\s*=\s*(yes|true|ipv4|both)\s*$", re.M | re.I)


def check_tree(repo: Repo, commit: Commit, arch: Arch, layout: Layout) -> list[Requirement]:
    """Every requirement of the contract, checked on ``commit`` for ``arch`` and ``layout``."""
    c = commit.checksum
    out = [
        _etc(repo, c),
        _root_home(repo, c),
    ]
    kernel = _kernel(repo, c)
    out.append(kernel)
    if kernel.met:
        kver = kernel.found.split("/")[4]
        initramfs = f"/usr/lib/modules/{kver}/initramfs.img"
        if repo.has_path(c, initramfs):
            out.append(Requirement("initramfs", True, initramfs))
            out.append(_prepare_root(repo, c, initramfs))
        else:
            out.append(
                Requirement(
                    "initramfs",
                    False,
                    f"no {initramfs}",
                    "build an initramfs with ostree's module (dracut's 98ostree) beside the kernel",
                )
            )
    sshd = repo.has_path(c, "/usr/sbin/sshd")
    out.append(
        Requirement("ssh server", True, "/usr/sbin/sshd")
        if sshd
        else Requirement("ssh server", False, "no /usr/sbin/sshd", "install openssh-server")
    )
    if sshd:
        out.append(_arch(repo, c, arch))
    out.append(_dhcp(repo, c))
    if layout.bootloader == "grub-efi":
        modules = f"/usr/lib/grub/{GRUB_EFI[arch.name][0]}"
        packages = ", ".join(arch.boot_packages) or "GRUB's EFI modules"
        out.append(
            Requirement("bootloader", True, f"GRUB modules in {modules}")
            if repo.has_path(c, modules)
            else Requirement(
                "bootloader",
                False,
                f"no {modules} (the {layout.name} layout builds its GRUB from the tree's)",
                f"install {packages} in the tree",
            )
        )
    return out


def _etc(repo: Repo, c: str) -> Requirement:
    if repo.has_path(c, "/usr/etc") and repo.has_path(c, "/etc"):
        return Requirement(
            "/usr/etc",
            False,
            "the commit has both /etc and /usr/etc: ostree refuses to deploy it",
            "commit the tree's /etc as /usr/etc only",
        )
    if repo.has_path(c, "/usr/etc"):
        return Requirement("/usr/etc", True, "the default /etc is /usr/etc")
    return Requirement(
        "/usr/etc",
        False,
        "no /usr/etc",
        "commit the tree's /etc as /usr/etc: ostree merges it into each machine's /etc",
    )


def _root_home(repo: Repo, c: str) -> Requirement:
    entry = _ls_entry(repo, c, "/root")
    target = entry.split(" -> ", 1)[1] if entry and " -> " in entry else ""
    if target.lstrip("/").startswith("var/"):
        return Requirement("root's home", True, f"/root -> {target}")
    return Requirement(
        "root's home",
        False,
        "/root is not a link into /var" if entry else "no /root",
        "make /root a symlink to var/roothome: the harness's key is put there on each machine",
    )


def _kernel(repo: Repo, c: str) -> Requirement:
    try:
        kver = repo.kernel_version(c)
    except (UserError, CommandError):
        return Requirement(
            "kernel",
            False,
            "no /usr/lib/modules/*/vmlinuz",
            "put the kernel at /usr/lib/modules/$KVER/vmlinuz, where ostree looks for it",
        )
    return Requirement("kernel", True, f"/usr/lib/modules/{kver}/vmlinuz")


def _prepare_root(repo: Repo, c: str, initramfs: str) -> Requirement:
    with tempfile.TemporaryDirectory() as tmp:
        data = repo.export_file(c, initramfs, Path(tmp) / "initramfs.img").read_bytes()
    try:
        contents = _unpacked(data)
    except ValueError as exc:
        return Requirement(
            "ostree-prepare-root",
            False,
            f"the initramfs cannot be read ({exc})",
            "compress it with gzip, xz, zstd or bzip2",
        )
    if b"ostree-prepare-root" in contents:
        return Requirement("ostree-prepare-root", True, "in the initramfs")
    return Requirement(
        "ostree-prepare-root",
        False,
        "not in the initramfs: it cannot find the deployment to boot",
        "build the initramfs with ostree's dracut module (dracut -a ostree)",
    )


def _arch(repo: Repo, c: str, arch: Arch) -> Requirement:
    with tempfile.TemporaryDirectory() as tmp:
        head = repo.export_file(c, "/usr/sbin/sshd", Path(tmp) / "sshd").read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return Requirement("arch", False, "/usr/sbin/sshd is not an ELF binary", "")
    built_for = _ELF_MACHINES.get((head[4], int.from_bytes(head[18:20], "little")), "another")
    if built_for == arch.name:
        return Requirement("arch", True, f"{arch.name} binaries")
    return Requirement(
        "arch",
        False,
        f"its binaries are built for {built_for}, not {arch.name}",
        f"gate it with --arch {built_for}, or compose it for {arch.name}",
    )


def _dhcp(repo: Repo, c: str) -> Requirement:
    for directory in ("/usr/etc/systemd/network", "/usr/lib/systemd/network"):
        for path in _files(repo, c, directory):
            if (
                path.endswith(".network")
                and _DHCP_NETWORK.search(repo.read_file(c, path))
                and repo.has_path(c, "/usr/lib/systemd/systemd-networkd")
            ):
                return Requirement("network", True, f"systemd-networkd, DHCP in {path}")
    if repo.has_path(c, "/usr/sbin/NetworkManager"):
        return Requirement("network", True, "NetworkManager (DHCP on wired links by default)")
    if repo.has_path(c, "/usr/etc/network/interfaces") and re.search(
        r"\binet6?\s+dhcp\b", repo.read_file(c, "/usr/etc/network/interfaces")
    ):
        return Requirement("network", True, "ifupdown, DHCP in /usr/etc/network/interfaces")
    return Requirement(
        "network",
        False,
        "nothing configures a wired link by DHCP",
        "a systemd-networkd .network file with DHCP=yes (and networkd enabled), or NetworkManager",
    )


def _ls(repo: Repo, c: str, path: str, *flags: str) -> list[str]:
    """``ostree ls`` lines of ``path`` in commit ``c`` (none when it does not exist)."""
    out = subprocess.run(
        ["ostree", "ls", f"--repo={repo.path}", c, *flags, path], capture_output=True, text=True
    )
    return out.stdout.splitlines() if out.returncode == 0 else []


def _ls_entry(repo: Repo, c: str, path: str) -> str:
    return next(iter(_ls(repo, c, path, "-d")), "")


def _files(repo: Repo, c: str, directory: str) -> list[str]:
    return [line.split()[-1] for line in _ls(repo, c, directory) if line.startswith("-")]


_CPIO_TRAILER = b"TRAILER!!!"


def _unpacked(data: bytes) -> bytes:
    """The initramfs's archives, decompressed: an uncompressed early cpio (CPU microcode) may
    come first, then the main one, compressed."""
    out = b""
    if data.startswith(b"070701") and _CPIO_TRAILER in data:
        end = data.index(_CPIO_TRAILER) + len(_CPIO_TRAILER)
        out, data = data[:end], data[end:].lstrip(b"\0")
    if not data:
        return out
    if data.startswith(b"\x1f\x8b"):
        return out + gzip.decompress(data)
    if data.startswith(b"\xfd7zXZ\0") or data.startswith(b"\x5d\0\0"):
        return out + lzma.decompress(data)
    if data.startswith(b"BZh"):
        return out + bz2.decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        done = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True)
        if done.returncode != 0:
            raise ValueError("zstd could not decompress it (apt-get install zstd)")
        return out + done.stdout
    if data.startswith(b"070701"):
        return out + data
    raise ValueError("an unknown compression")
