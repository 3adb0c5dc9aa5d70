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
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness import log
from harness.accel import Accel, choose_accel, host_cache, qemu_version
from harness.arch import Arch, get_arch
from harness.errors import InfraError, TreeFailure, UserError
from harness.guest import Guest
from harness.image import Image, build_image
from harness.keys import ensure_client_key
from harness.layout import Layout, load_layout
from harness.machine import backends
from harness.machine.base import VM, Backend, Disk, MachineConfig
from harness.repo import Repo
from harness.signing import SigningKey
from harness.state import State

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    signing: SigningKey | None = None
    """Images trust this key: guests pull with signature verification on."""
    backend: Backend = field(default_factory=Backend)
    """What runs the machines: the QEMU backend, or libvirt at a URI."""
    run: str = ""
    """The run machines belong to (libvirt names its domains after it)."""

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
        signing: SigningKey | None = None,
        backend: Backend | None = None,
        run: str = "",
    ) -> Target:
        """Resolve names into a target; every bad name is a one-line error."""
        repo.check()
        a = get_arch(arch)
        if backend is not None:
            backends.check(backend)
        lay = load_layout(layout or a.layout, images_dir or PROJECT_ROOT / "images")
        return cls(
            state=state,
            repo=repo,
            arch=a,
            layout=lay,
            client_key=ensure_client_key(state.key),
            force_accel=force_accel,
            repo_port=repo_port,
            keep_vm=keep_vm,
            signing=signing,
            backend=backend or Backend(),
            run=run,
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
            trusted_key=target.signing,
        )


def accel_for(target: Target, image: Image) -> tuple[Accel, str]:
    """The accelerator for machines of ``image``, with the one-line reason."""
    if target.force_accel or Accel.kvm_unusable_reason(target.arch) is not None:
        return choose_accel(
            target.arch, Path("/nonexistent"), host_cache(), force=target.force_accel
        )
    kernel = image.path.parent / "vmlinuz"
    if not kernel.exists():
        kver = target.repo.kernel_version(image.commit)
        target.repo.export_file(image.commit, f"/usr/lib/modules/{kver}/vmlinuz", kernel)
    return choose_accel(target.arch, kernel, host_cache())


def machines_dir(state: State) -> Path:
    """Where running machines keep their work directories."""
    path = state.tmp / "machines"
    path.mkdir(parents=True, exist_ok=True)
    return path


SNAPSHOT_RECIPE = "3"
"""Bump when the machine's devices change: a saved state restores only into the same devices."""


def _machine_config(
    target: Target, image: Image, accel: Accel, name: str, *, run: str | None = None
) -> MachineConfig:
    mdir = machines_dir(target.state)
    workdir = Path(tempfile.mkdtemp(prefix=f"{_safe(name)}-", dir=mdir))
    return MachineConfig(
        arch=target.arch,
        accel=accel,
        workdir=workdir,
        name=name,
        memory_mib=target.memory_mib,
        smp=target.arch.smp,
        repo_port=target.repo_port,
        keepable=target.keep_vm,
        run=target.run if run is None else run,
    )


def _vm(
    target: Target,
    image: Image,
    config: MachineConfig,
    *,
    saved: Path | None = None,
) -> VM:
    """The backend's machine on a new overlay of ``image``, or of the state saved at ``saved``
    (started from that state instead of booting)."""
    if saved is not None:
        disk = Disk(saved / "disk.qcow2", image.key, base_format="qcow2", saved=saved)
    else:
        disk = Disk(image.path, image.key)
    return backends.create(target.backend, disk, config)


def snapshot_for(
    target: Target, image: Image, accel: Accel, console_to: Path | None = None
) -> Path:
    """The saved, booted-and-ready state of ``image``: made once by a cold boot, then reused.

    Keyed by the image and everything in the machine's configuration that a saved state must
    match (arch, accelerator, memory, vCPUs, QEMU version).  Built under a lock, in a
    temporary directory renamed into place, so parallel workers wait for one build.  When it
    is built here, ``console_to`` keeps the console log of that boot (also when it failed).
    """
    if not target.backend.can_save:
        raise InfraError(f"{target.backend.describe()} keeps no saved machine states")
    key = hashlib.sha256(
        json.dumps(
            [
                image.key,
                target.arch.name,
                accel.value,
                target.memory_mib,
                target.arch.smp,
                target.arch.cpu,  # a saved state restores only on the CPU model it ran on
                target.arch.display,  # and the devices it had
                qemu_version(target.arch.qemu_binary),
                target.backend.kind,
                SNAPSHOT_RECIPE,
            ]
        ).encode()
    ).hexdigest()[:32]
    root = target.state.root / "snapshots"
    root.mkdir(exist_ok=True)

    def make(build: Path) -> str:
        # Not named after the run: a saved libvirt domain keeps its name on every restore.
        config = _machine_config(target, image, accel, f"snapshot-{image.key[:8]}", run="")
        vm = _vm(target, image, config)
        guest = _guest(target, image, vm, accel)
        try:
            with log.nested(f"booting {image.commit[:12]} once to save it ready"):
                vm.start()
                guest.wait_for_ssh()
                return _save_when_settled(guest, vm, build)
        finally:
            _shut_down(guest, vm, console_to)

    return _saved(root / key, image, make)


def derived_state(
    target: Target,
    image: Image,
    accel: Accel,
    *,
    what: str,
    key: object,
    prepare: Callable[[Guest], None],
    console_to: Path | None = None,
    failure_memo: Path | None = None,
) -> Path:
    """A saved machine state made once from ``image``'s ready state by ``prepare``, then reused.

    ``prepare`` gets the restored machine and may change it in any way, reboots included
    (an upgrade, say); the machine is saved once systemd has settled.  ``key`` (JSON) names
    what ``prepare`` does: equal keys must mean equal states.  Restore it with
    ``booted(..., state=path)``.  Lives under the image's snapshot, so cleaning that removes
    it too; ``console_to`` keeps the console log of the preparation (also when it failed).

    A :class:`TreeFailure` while preparing is written to ``failure_memo``; while that file
    exists, asking for the state raises the same failure at once instead of preparing again
    (a broken upgrade fails every test that needs it, and costs one attempt).
    """
    base = snapshot_for(target, image, accel, _saved_boot_log(console_to))
    digest = hashlib.sha256(json.dumps([what, key]).encode()).hexdigest()[:32]
    root = base / "derived"
    root.mkdir(exist_ok=True)

    def make(build: Path) -> str:
        config = _machine_config(target, image, accel, f"state-{digest[:8]}", run="")
        vm = _vm(target, image, config, saved=base)
        guest = _guest(target, image, vm, accel)
        guest.expected_boot_id = json.loads((base / "snapshot.json").read_text())["boot_id"]
        try:
            with log.nested(f"preparing {what} from {image.commit[:12]}, to save it"):
                vm.start()
                guest.wait_for_ssh()
                guest.sync_clock()
                prepare(guest)
                return _save_when_settled(guest, vm, build)
        finally:
            _shut_down(guest, vm, console_to)

    return _saved(root / digest, image, make, failure_memo)


def _saved_boot_log(console_to: Path | None) -> Path | None:
    """Where the console log of a boot made to save a ready state goes, beside ``console_to``."""
    return None if console_to is None else console_to.with_name(f"{console_to.stem}-saved-boot.log")


def _shut_down(guest: Guest, vm: VM, console_to: Path | None) -> None:
    """Close the connection, keep the console log at ``console_to`` if asked, destroy the VM."""
    guest.close()
    if console_to is not None and vm.console_log.exists():
        console_to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vm.console_log, console_to)
    vm.destroy()


def _save_when_settled(guest: Guest, vm: VM, dest: Path) -> str:
    # Ready means systemd finished starting units, whatever their outcome.
    guest.execute("systemctl is-system-running --wait", timeout=300, idempotent=True)
    boot_id = guest.boot_id()
    guest.close()
    vm.save(dest)
    return boot_id


def _saved(
    final: Path, image: Image, make: Callable[[Path], str], failure_memo: Path | None = None
) -> Path:
    """``final``, made by ``make(build_dir)`` (which returns the saved boot id) if missing.

    Built under a lock, in a temporary directory renamed into place, so parallel workers
    wait for one build and nobody sees half a state.
    """
    if (final / "snapshot.json").is_file():
        (final / "snapshot.json").touch()  # last use, for treegate cache gc
        return final
    with open(final.parent / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "snapshot.json").is_file():
            return final
        if failure_memo is not None and failure_memo.is_file():
            raise TreeFailure(failure_memo.read_text())
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        try:
            try:
                boot_id = make(build)
            except TreeFailure as exc:
                if failure_memo is not None:
                    failure_memo.parent.mkdir(parents=True, exist_ok=True)
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    failure_memo.write_text(f"{type(exc).__name__}: {first} (earlier in this run)")
                raise
            (build / "snapshot.json").write_text(
                json.dumps(
                    {
                        "image": image.key,
                        "commit": image.commit,
                        "boot_id": boot_id,
                        "saved": time.time(),
                    }
                )
            )
            os.rename(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return final


def _guest(target: Target, image: Image, vm: VM, accel: Accel) -> Guest:
    guest = Guest(
        vm,
        client_key=target.state.key,
        host_key=image.host_key,
        timeout_scale=_scale(target, accel),
    )
    guest.image_commit = image.commit
    return guest


def _scale(target: Target, accel: Accel) -> float:
    # Emulated guests get the arch's slack; under KVM, guest work runs at native speed.
    return 1.0 if accel is Accel.kvm else target.arch.timeout_scale


@contextlib.contextmanager
def booted(
    target: Target,
    image: Image,
    *,
    name: str = "treegate",
    restore: bool = False,
    state: Path | None = None,
    console_to: Path | None = None,
) -> Iterator[Guest]:
    """Run a machine on a throw-away overlay of ``image`` and yield it once SSH answers.

    With ``restore``, the machine starts from the image's saved ready state (see
    :func:`snapshot_for`) in a second or two instead of booting; its disk is still a new
    overlay, its clock is set to now, and nothing it writes reaches the next machine.  With
    ``state`` (from :func:`derived_state`), it starts from that saved state instead.  The
    machine is destroyed when the block ends, whatever ends it; with ``console_to``, its serial
    console log is kept there first (also when the boot failed).
    """
    backends.reap_stale(machines_dir(target.state))
    accel, why = accel_for(target, image)
    log.info(f"accelerator: {why}")
    if restore and state is None and not target.backend.can_save:
        log.info(f"{target.backend.describe()} keeps no saved states: booting instead")
        restore = False
    if state is not None:
        restore, snapshot = True, state
    elif restore:
        snapshot = snapshot_for(target, image, accel, _saved_boot_log(console_to))
    config = _machine_config(target, image, accel, name)
    vm = _vm(target, image, config, saved=snapshot if restore else None)
    guest = _guest(target, image, vm, accel)
    if restore:
        # The restored machine is the saved one, boot id included.
        guest.expected_boot_id = json.loads((snapshot / "snapshot.json").read_text())["boot_id"]
    try:
        how = "restoring" if restore else "booting"
        with log.nested(f"{how} {name} ({target.arch.name}, {accel.value})"):
            vm.start()
            guest.wait_for_ssh()
            if restore:
                guest.sync_clock()
        yield guest
    finally:
        _shut_down(guest, vm, console_to)


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
