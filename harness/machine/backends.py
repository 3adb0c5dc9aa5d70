"""The backends that run machines, by :attr:`Backend.kind`, and what concerns all of them.

Each backend's machine class builds itself from a base image (:meth:`create`) and checks that
its backend can be used before any work (:meth:`check`); callers ask :func:`create` and
:func:`check` here and never test a backend's kind themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from harness.machine import libvirt, qemu
from harness.machine.base import VM, Backend, Disk, MachineConfig

MACHINES: dict[str, type[qemu.QemuVM] | type[libvirt.LibvirtVM]] = {
    "qemu": qemu.QemuVM,
    "libvirt": libvirt.LibvirtVM,
}
"""The machine class of each backend kind (:data:`harness.machine.base.BACKENDS`)."""


def check(backend: Backend) -> None:
    """Fail now, with one line, if ``backend`` cannot run machines (a libvirt daemon that
    does not answer), before any image is built."""
    MACHINES[backend.kind].check(backend)


def create(backend: Backend, disk: Disk, config: MachineConfig) -> VM:
    """``backend``'s machine on a new overlay of ``disk``."""
    return MACHINES[backend.kind].create(backend, disk, config)


def reap_stale(machines_dir: Path) -> list[str]:
    """Remove work directories of machines whose owning harness process is gone.

    Returns the names removed.  QEMU itself died with its owner (PDEATHSIG); this cleans up
    the files a killed harness could not, and destroys libvirt domains it left.
    """
    removed = []
    for meta in machines_dir.glob("*/machine.json"):
        try:
            data = json.loads(meta.read_text())
            owner = int(data["owner"])
        except (OSError, ValueError, KeyError):
            continue
        pid = int(data.get("pid", 0))
        if data.get("kept") and pid and _alive(pid):
            continue  # left running on purpose (--keep-vm)
        if not _alive(owner) or (data.get("kept") and not _alive(pid)):
            if data.get("domain"):
                libvirt.destroy_leftover(str(data["libvirt_uri"]), str(data["domain"]))
            elif pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(meta.parent, ignore_errors=True)
            removed.append(str(data.get("name")))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
