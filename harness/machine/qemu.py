"""The QEMU backend: one ``qemu-system-*`` process, driven over QMP with ``qemu.qmp``.

Each VM runs on a throw-away qcow2 overlay of the cached base image (``cache=unsafe``: the
overlay is discarded, so flushing it to disk is wasted time), with its serial console in a
log file, user-mode networking restricted to two forwards (SSH in, the repo server out), and
a QMP socket for screenshots and power actions.

QEMU is started with ``PR_SET_PDEATHSIG`` so it dies with the process that started it, even
if that process is killed outright; :meth:`QemuVM.destroy` stops it and removes its work
directory on every normal, failed or interrupted path.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.accel import Accel
from harness.errors import InfraError, UserError
from harness.image import GUEST_REPO_ADDR, GUEST_REPO_PORT
from harness.machine.base import (
    Backend,
    Disk,
    MachineConfig,
    check_firmware,
    free_port,
    make_overlay,
    u_boot_drive,
    u_boot_environment,
    write_machine_record,
)
from harness.retry import retry

_PR_SET_PDEATHSIG = 1


_QMP_FD = 3
"""The descriptor number QEMU finds its end of the QMP socketpair at."""


def _child_setup(qmp_fd: int, die_with_parent: bool) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child between fork and exec: QEMU gets SIGKILL when the harness dies,
        # and a Ctrl-C at the terminal goes to the harness alone, which stops QEMU itself.
        if die_with_parent:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        if qmp_fd != _QMP_FD:
            os.dup2(qmp_fd, _QMP_FD)
            os.set_inheritable(_QMP_FD, True)

    return setup


class QemuVM:
    """A VM run by a QEMU process on this host."""

    @staticmethod
    def check(backend: Backend) -> None:
        """Nothing to check before work: QEMU's binary and firmware are checked per arch."""

    @classmethod
    def create(cls, backend: Backend, disk: Disk, config: MachineConfig) -> QemuVM:
        """See :func:`harness.machine.backends.create`."""
        incoming = disk.saved / "state" if disk.saved is not None else None
        return cls(disk.base_image, config, base_format=disk.base_format, incoming=incoming)

    def __init__(
        self,
        base_image: Path,
        config: MachineConfig,
        *,
        base_format: str = "raw",
        incoming: Path | None = None,
    ) -> None:
        """A VM on a new overlay of ``base_image``.

        With ``incoming`` (a state file written by :meth:`save`), the VM starts from that saved
        state instead of booting: ``base_image`` must then be the disk saved with it.
        """
        self.base_image = base_image
        self.base_format = base_format
        self.incoming = incoming
        self.config = config
        self.name = config.name
        self.workdir = config.workdir
        self.console_log = self.workdir / "console.log"
        self.overlay = self.workdir / "overlay.qcow2"
        self.ssh_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._qmp_sock: socket.socket | None = None
        self._detached = False
        self._stderr_path = self.workdir / "qemu.stderr"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        arch = self.config.arch
        if shutil.which(arch.qemu_binary) is None:
            raise UserError(
                f"{arch.qemu_binary} is not installed", hint=f"apt-get install {arch.qemu_package}"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._check_firmware()
        make_overlay(self.base_image, self.base_format, self.overlay)
        # The port is free when chosen but could be taken before QEMU binds it: try again.
        for _attempt in range(5):
            self.ssh_port = free_port()
            self._spawn()
            if self._wait_for_qmp():
                break
            reason = self.exit_reason()
            if "hostfwd" not in reason and "Could not set up host forwarding" not in reason:
                raise InfraError(f"QEMU did not start: {reason}")
        else:
            raise InfraError("QEMU could not bind a free SSH port after 5 tries")
        if self.incoming is not None:
            self._restore(self.incoming)
        write_machine_record(self, self.pid, f"kill {self.pid}")

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc else 0

    def qemu_argv(self) -> list[str]:
        """The full QEMU command line (documented in docs/architecture.md)."""
        c = self.config
        arch = c.arch
        netdev = f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        if c.repo_port is not None:
            # A command forward spawns one socat per guest connection; a tcp: chardev would
            # serve a single connection and hang the next pull.
            netdev += (
                f",guestfwd=tcp:{GUEST_REPO_ADDR}:{GUEST_REPO_PORT}"
                f"-cmd:socat - TCP:127.0.0.1:{c.repo_port}"
            )
        cpu = "host" if c.accel is Accel.kvm else arch.cpu
        return [
            arch.qemu_binary,
            "-name",
            c.name,
            "-machine",
            arch.machine,
            *c.accel.qemu_args(),
            "-cpu",
            cpu,
            "-smp",
            str(c.smp),
            "-m",
            str(c.memory_mib),
            "-nodefaults",
            "-display",
            "none",
            "-device",
            arch.display,
            *self._firmware_args(),
            "-drive",
            f"file={self.overlay},format=qcow2,if=none,id=disk0,cache=unsafe,discard=unmap",
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=0",
            "-netdev",
            netdev,
            "-device",
            # No network boot ROM (iPXE): guests boot from their disk, and the firmware
            # would spend boot time under emulation initialising it.
            "virtio-net-pci,netdev=net0,romfile=",
            "-device",
            "virtio-rng-pci",
            "-chardev",
            f"file,id=serial0,path={self.console_log}",
            "-serial",
            "chardev:serial0",
            # QMP over an inherited socketpair: no socket path (paths are limited to 108
            # bytes, and a deep work directory would exceed it), nothing to clean up.
            "-chardev",
            f"socket,id=qmp,fd={_QMP_FD}",
            "-mon",
            "chardev=qmp,mode=control",
            *(["-incoming", "defer"] if self.incoming is not None else []),
        ]

    def _restore(self, state: Path) -> None:
        self.qmp("migrate-incoming", uri=f"exec:cat {shlex.quote(str(state))}")

        def loaded(_last: bool) -> bool:
            status = self.qmp("query-status")
            assert isinstance(status, dict)
            return status.get("status") not in ("inmigrate", "prelaunch")

        retry(
            loaded,
            120,
            interval=0.05,
            max_interval=0.2,
            what="the saved state to load",
            on_timeout=InfraError,
        )
        self.qmp("cont")

    def save(self, dest: Path) -> None:
        """Save the running VM into ``dest`` (``state`` and ``disk.qcow2``) and stop it.

        The vCPUs are stopped, RAM and device state go to ``dest/state`` through QEMU's
        migration, QEMU quits (flushing the overlay), and the overlay becomes
        ``dest/disk.qcow2``: together they restore the machine as it was, any number of times,
        each on its own new overlay.
        """
        dest.mkdir(parents=True, exist_ok=True)
        self.qmp("stop")
        self.qmp("migrate", uri=f"exec:cat > {shlex.quote(str(dest / 'state'))}")

        def done(_last: bool) -> bool:
            info = self.qmp("query-migrate")
            assert isinstance(info, dict)
            status = info.get("status")
            if status == "failed":
                raise InfraError(f"saving {self.name} failed: {info.get('error-desc', 'unknown')}")
            return status == "completed"

        retry(
            done,
            300,
            interval=0.05,
            max_interval=0.5,
            what="the machine state to be saved",
            on_timeout=InfraError,
        )
        with contextlib.suppress(Exception):
            self.qmp("quit")
        if self._proc is not None:
            self._proc.wait(timeout=30)
        shutil.move(self.overlay, dest / "disk.qcow2")

    def _firmware_args(self) -> list[str]:
        args: list[str] = []
        for fw in self.config.arch.firmware:
            if fw.kind == "pflash-code":
                args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={fw.path}"]
                # UEFI's boot manager waits for a key (5 s in AAVMF) before it boots, unless
                # QEMU passes it a boot menu timeout: zero, as libvirt's <bootmenu> does.
                args += ["-boot", "menu=on,splash-time=0"]
            elif fw.kind == "pflash-vars":
                # Each machine gets its own copy of the UEFI variable store.
                args += [
                    "-drive",
                    f"if=pflash,format=raw,unit=1,file={self.workdir / 'efivars.fd'}",
                ]
            else:  # u-boot
                args += ["-bios", fw.path, *u_boot_drive(self.workdir)]
        return args

    def _check_firmware(self) -> None:
        check_firmware(self.config.arch)
        for fw in self.config.arch.firmware:
            if fw.kind == "pflash-vars":
                shutil.copyfile(fw.path, self.workdir / "efivars.fd")
        u_boot_environment(self.config.arch, self.workdir)

    def _spawn(self) -> None:
        if self._qmp_sock is not None:
            self._qmp_sock.close()
        ours, theirs = socket.socketpair()
        self._qmp_sock = ours
        with open(self._stderr_path, "wb") as err:
            self._proc = subprocess.Popen(
                self.qemu_argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_child_setup(theirs.fileno(), not self.config.keepable),
                pass_fds=tuple({_QMP_FD, theirs.fileno()}),
            )
        theirs.close()

    def _wait_for_qmp(self) -> bool:
        """Connect to QMP; False when QEMU exited instead (its stderr says why)."""
        assert self._qmp_sock is not None
        qmp = QEMUMonitorProtocol(self._qmp_sock)
        try:
            qmp.connect()
        except Exception:  # any failure here means QEMU went away
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    raise InfraError("QEMU neither answered QMP nor exited") from None
            return False
        self._qmp = qmp
        return True

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_frozen(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        # The state letter follows the parenthesised command name; T: stopped, t: traced.
        return self.is_running() and stat.rsplit(")", 1)[-1].split()[0] in ("T", "t")

    def exit_reason(self) -> str:
        code = self._proc.poll() if self._proc else None
        try:
            err = self._stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            err = []
        tail = err[-1] if err else "no message"
        if code is None:
            return "still running"
        if code < 0:
            return f"QEMU was killed by signal {signal.Signals(-code).name} ({tail})"
        return f"QEMU exited with status {code}: {tail}"

    # -- QMP -----------------------------------------------------------------------------
    def qmp(self, command: str, **args: object) -> object:
        """Run a QMP command and return its result; an error if QEMU is gone."""
        if self._qmp is None or not self.is_running():
            raise InfraError(f"machine {self.name} is not running: {self.exit_reason()}")
        try:
            return self._qmp.cmd(command, **args)
        except ExecuteError as exc:
            raise InfraError(f"QMP {command} failed on {self.name}: {exc}") from None

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.qmp("screendump", filename=str(path), format="png")
        return path

    def pause(self) -> None:
        """Freeze the guest's vCPUs (the process stays)."""
        self.qmp("stop")

    def resume(self) -> None:
        self.qmp("cont")

    def kill(self) -> None:
        if self.is_running() and self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def detach(self) -> None:
        """Leave the VM running after the harness ends (``--keep-vm``); :meth:`destroy` then
        does nothing.  Its directory stays, marked *kept*, for ``treegate ssh``."""
        meta = self.workdir / "machine.json"
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps({**data, "kept": True}))
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None
        self._proc = None
        self._detached = True

    def destroy(self) -> None:
        if self._detached:
            return
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)
