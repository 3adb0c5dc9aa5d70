"""The interface every VM backend provides, and the configuration it is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.accel import Accel
from harness.arch import Arch


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
    repo_port: int | None = None
    """Host port of the harness's repo server on 127.0.0.1; the guest reaches it through a
    guest forward at :data:`harness.image.GUEST_REPO_URL` and has no other route out."""


class VM(Protocol):
    """A running virtual machine, whatever runs it."""

    name: str
    ssh_port: int
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

    def kill(self) -> None:
        """Stop the VM at once (as a crash would), keeping its files."""

    def detach(self) -> None:
        """Leave the VM running when the harness ends (for ``--keep-vm``)."""

    def destroy(self) -> None:
        """Stop the VM if needed and remove everything it created.  Safe to call twice."""
