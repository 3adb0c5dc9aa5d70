"""The interface every VM backend provides, and the configuration it is given."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from harness import uboot
from harness.accel import Accel
from harness.arch import Arch
from harness.errors import UserError
from harness.run import run

BACKENDS = ("qemu", "libvirt")

LOOPBACK_HOSTS = ("", "localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Backend:
    """What runs machines: ``qemu`` (a QEMU process of the harness's own, driven over QMP) or
    ``libvirt`` (a transient domain of the libvirt daemon at :attr:`uri`)."""

    kind: str = "qemu"
    uri: str = "qemu:///system"
    """The libvirt connection URI (``libvirt`` only)."""

    @property
    def remote(self) -> bool:
        """True when the libvirt daemon is reached over the network (``qemu+tcp://…``,
        ``qemu+ssh://…``): it shares no files with the harness, so images are uploaded to it
        and saved machine states, which live in files, are not used."""
        return self.kind == "libvirt" and "+" in urlsplit(self.uri).scheme

    @property
    def tunnelled(self) -> bool:
        """True for ``qemu+ssh://`` URIs: the guest's forwards reach the libvirt host's
        loopback, and an SSH tunnel brings them here (see :mod:`harness.machine.tunnel`)."""
        return self.remote and urlsplit(self.uri).scheme.endswith("+ssh")

    @property
    def can_save(self) -> bool:
        """True when machines can be saved and restored (see :func:`harness.boot.snapshot_for`)."""
        return not self.remote

    def describe(self) -> str:
        """``qemu``, or ``libvirt (URI)``: for logs and reports."""
        return self.kind if self.kind == "qemu" else f"libvirt ({self.uri})"


@dataclass(frozen=True)
class MachineConfig:
    """How to run one VM.  Built by the caller, never read from globals."""

    arch: Arch
    accel: Accel
    workdir: Path
    """A directory the VM owns: overlay, console log, QMP socket.  Removed on :meth:`VM.destroy`."""
    name: str = "treegate"
    memory_mib: int = 1024
    smp: int = 2
    keepable: bool = False
    """May outlive the harness (``--keep-vm``): QEMU then does not die with its parent."""
    run: str = ""
    """The run the machine belongs to: with libvirt, domains are named ``treegate-<run>-<name>``."""
    repo_port: int | None = None
    """Host port of the harness's repo server on 127.0.0.1; the guest reaches it through a
    guest forward at :data:`harness.image.GUEST_REPO_URL` and has no other route out."""


@dataclass(frozen=True)
class Disk:
    """What a new machine starts from: a base image (booted through firmware), or the disk
    of a saved state with the state beside it in the directory ``saved`` (restored)."""

    base_image: Path
    image_key: str
    """The image's cache key (names it on a remote libvirt host)."""
    base_format: str = "raw"
    saved: Path | None = None


class VM(Protocol):
    """A running virtual machine, whatever runs it."""

    name: str
    ssh_port: int
    """The guest's SSH port on 127.0.0.1."""
    console_log: Path
    workdir: Path
    """The VM's own directory (overlay, logs, sockets); removed by :meth:`destroy`."""

    def start(self) -> None:
        """Create the throw-away overlay and start the VM; return once it is running."""

    def is_running(self) -> bool:
        """True while the VM process exists and has not shut down."""

    def exit_reason(self) -> str:
        """Why the VM is not running (exit status, last stderr line), for error messages."""

    def is_frozen(self) -> bool:
        """True when the VM exists but cannot run: its process is stopped (SIGSTOP, a
        debugger).  A guest that does not answer is then the host's fault, not the tree's."""

    def screenshot(self, path: Path) -> Path:
        """Save the VM's display as a PNG at ``path``."""

    def save(self, dest: Path) -> None:
        """Save the running VM into ``dest`` (``state`` and ``disk.qcow2``) and stop it; a VM
        started with that ``state`` and a new overlay of that disk runs on from there."""

    def kill(self) -> None:
        """Stop the VM at once (as a crash would), keeping its files."""

    def detach(self) -> None:
        """Leave the VM running when the harness ends (for ``--keep-vm``)."""

    def destroy(self) -> None:
        """Stop the VM if needed and remove everything it created.  Safe to call twice."""


def check_firmware(arch: Arch) -> None:
    """A one-line error naming the Debian package when a firmware file of ``arch`` is missing."""
    for fw in arch.firmware:
        if not Path(fw.path).is_file():
            raise UserError(
                f"{arch.name} firmware {fw.path} is missing", hint=f"apt-get install {fw.package}"
            )


U_BOOT_ENV = "u-boot-env.fd"
"""The flash image with U-Boot's environment, in a machine's work directory."""


def u_boot_environment(arch: Arch, workdir: Path) -> None:
    """Write the flash bank holding U-Boot's environment without its boot countdown
    (:mod:`harness.uboot`) into a machine's ``workdir``, when ``arch`` boots U-Boot and its
    default environment is found (otherwise it boots after the countdown)."""
    for fw in arch.firmware:
        if fw.kind == "u-boot":
            uboot.write_flash(Path(fw.path), workdir / U_BOOT_ENV)


def u_boot_drive(workdir: Path) -> list[str]:
    """QEMU's ``-drive`` for the flash bank :func:`u_boot_environment` wrote into
    ``workdir`` (the second bank: U-Boot itself is ``-bios``, the first); none if it wrote
    none."""
    env = workdir / U_BOOT_ENV
    if not env.exists():
        return []
    return ["-drive", f"if=pflash,format=raw,unit=1,readonly=on,file={env}"]


def make_overlay(base: Path, base_format: str, overlay: Path) -> None:
    """A new qcow2 ``overlay`` backed by ``base``: what a machine writes, thrown away with it."""
    run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base_format,
            "-b",
            str(base),
            str(overlay),
        ]
    )


def write_machine_record(vm: VM, pid: int, stop: str, **extra: str) -> None:
    """``machine.json`` in the VM's work directory: how ``treegate ssh`` finds a machine,
    how the next run's clean-up knows whose it was (``owner``), and how to stop it."""
    (vm.workdir / "machine.json").write_text(
        json.dumps(
            {
                "name": vm.name,
                "ssh_port": vm.ssh_port,
                "pid": pid,
                "owner": os.getpid(),
                "console": str(vm.console_log),
                "stop": stop,
                **extra,
            }
        )
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
