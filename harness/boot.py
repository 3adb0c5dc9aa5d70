"""From a commit to a booted machine: the one path the CLI, the pytest plugin and the gate share.

:class:`Target` gathers the explicit configuration (repo, arch, layout, state directory,
accelerator); :func:`image_for` returns the cached or freshly built image of a commit, and
:func:`booted` runs a machine on it for the length of a ``with`` block::

    target = Target.create(state, repo, "x86_64")
    image = image_for(target, "treegate/bookworm/x86_64/minimal")
    with booted(target, image, name="smoke") as machine:
        machine.succeed("true")
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import log
from harness.accel import Accel, choose_accel
from harness.arch import Arch, get_arch
from harness.guest import Guest
from harness.image import Image, build_image
from harness.keys import ensure_client_key
from harness.layout import Layout, load_layout
from harness.machine.base import MachineConfig
from harness.machine.qemu import QemuVM, reap_stale
from harness.repo import Repo
from harness.state import State

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LAYOUTS = {"x86_64": "bios"}


@dataclass(frozen=True)
class Target:
    """Where and how machines of one arch are built and run."""

    state: State
    repo: Repo
    arch: Arch
    layout: Layout
    client_key: str
    """The harness's public key line, baked into every image."""
    force_accel: str | None = None
    repo_port: int | None = None
    memory_mib: int = 1024
    keep_vm: bool = False
    """Machines may be left running after the harness ends (``--keep-vm``)."""

    @classmethod
    def create(
        cls,
        state: State,
        repo: Repo,
        arch: str,
        *,
        layout: str | None = None,
        images_dir: Path | None = None,
        force_accel: str | None = None,
        repo_port: int | None = None,
        keep_vm: bool = False,
    ) -> Target:
        """Resolve names into a target; every bad name is a one-line error."""
        repo.check()
        a = get_arch(arch)
        lay = load_layout(
            layout or DEFAULT_LAYOUTS.get(a.name, "bios"), images_dir or PROJECT_ROOT / "images"
        )
        return cls(
            state=state,
            repo=repo,
            arch=a,
            layout=lay,
            client_key=ensure_client_key(state.key),
            force_accel=force_accel,
            repo_port=repo_port,
            keep_vm=keep_vm,
        )


def image_for(target: Target, rev: str, *, ref: str | None = None) -> Image:
    """The image of ``rev`` (a ref or checksum) for the target, from the cache when possible.

    The deployment's origin (what ``ostree admin upgrade`` in the guest follows) is ``ref``
    when given, else ``rev`` when it is a ref, else a ref whose history holds the commit.
    """
    commit = target.repo.resolve(rev)
    origin = ref or commit.ref or target.repo.ref_containing(commit.checksum)
    arch_of_commit = commit.metadata.get("treegate.arch")
    if arch_of_commit and arch_of_commit != target.arch.name:
        from harness.errors import UserError

        raise UserError(f"{rev} is a {arch_of_commit} commit, not {target.arch.name}")
    with log.nested(f"image of {commit.short} ({target.arch.name}, {target.layout.name})"):
        return build_image(
            target.repo,
            commit,
            ref=origin,
            arch=target.arch,
            layout=target.layout,
            client_key=target.client_key,
            cache_dir=target.state.images,
        )


def accel_for(target: Target, image: Image) -> tuple[Accel, str]:
    """The accelerator for machines of ``image``, with the one-line reason."""
    if target.force_accel or Accel.kvm_unusable_reason(target.arch) is not None:
        return choose_accel(
            target.arch, Path("/nonexistent"), target.state.accel_cache, force=target.force_accel
        )
    kernel = image.path.parent / "vmlinuz"
    if not kernel.exists():
        kver = target.repo.kernel_version(image.commit)
        target.repo.export_file(image.commit, f"/usr/lib/modules/{kver}/vmlinuz", kernel)
    return choose_accel(target.arch, kernel, target.state.accel_cache)


def machines_dir(state: State) -> Path:
    """Where running machines keep their work directories."""
    path = state.tmp / "machines"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def booted(
    target: Target, image: Image, *, name: str = "treegate", wait: bool = True
) -> Iterator[Guest]:
    """Run a machine on a throw-away overlay of ``image`` and yield it once SSH answers.

    The machine is destroyed when the block ends, whatever ends it.
    """
    mdir = machines_dir(target.state)
    reap_stale(mdir)
    accel, why = accel_for(target, image)
    log.info(f"accelerator: {why}")
    workdir = Path(tempfile.mkdtemp(prefix=f"{_safe(name)}-", dir=mdir))
    config = MachineConfig(
        arch=target.arch,
        accel=accel,
        workdir=workdir,
        name=name,
        memory_mib=target.memory_mib,
        smp=target.arch.smp,
        repo_port=target.repo_port,
        keepable=target.keep_vm,
    )
    vm = QemuVM(image.path, config)
    # Emulated guests get the arch's slack; under KVM, guest work runs at native speed.
    scale = 1.0 if accel is Accel.kvm else target.arch.timeout_scale
    guest = Guest(vm, client_key=target.state.key, host_key=image.host_key, timeout_scale=scale)
    try:
        with log.nested(f"booting {name} ({target.arch.name}, {accel.value})"):
            vm.start()
            if wait:
                guest.wait_for_ssh()
        yield guest
    finally:
        guest.close()
        vm.destroy()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60] or "vm"


def ssh_command(state: State, port: int, host_key: str, workdir: Path) -> list[str]:
    """An ``ssh`` command line that reaches a machine with the harness key and pinned host key.

    The pinned key goes into ``workdir/known_hosts``: the machine's own work directory, removed
    with the machine.
    """
    known = workdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {' '.join(host_key.split()[:2])}\n")
    os.chmod(known, 0o600)
    return [
        "ssh",
        "-i",
        str(state.key),
        "-p",
        str(port),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ServerAliveInterval=5",
        "root@127.0.0.1",
    ]
