"""Bootable disk images built from an OSTree commit, cached by what they are made of.

An image is a sparse raw disk with a GPT, a ``/boot`` partition and a root partition holding
the OSTree sysroot, deployed exactly as an installer would (``ostree admin init-fs``,
``os-init``, ``pull-local``, ``deploy``), plus a real bootloader that reads the configuration
the guest's own ostree keeps up to date.  Per image it gets:

* the harness's public key in root's ``authorized_keys`` (root's home is ``/var/roothome``);
* a freshly generated SSH host key, which the harness pins when it connects;
* its own machine id, and an ``/etc/fstab`` that mounts ``/boot`` by label;
* a remote ``treegate`` pointing at the harness's repo server as the guest sees it
  (:data:`GUEST_REPO_URL`), so ``ostree admin upgrade`` works from the booted machine.

No loop devices: filesystems are made from directories with ``mkfs.ext4 -d`` straight into
their partition's offset of the disk file.  The sysroot is assembled on a private tmpfs in
a private mount namespace, because ``ostree admin deploy`` freezes the filesystem that holds
``/boot`` -- that must never be the host's root -- and because the namespace cleans itself up
however the build ends.

Images are content-addressed by (commit, ref, layout, arch, client key, recipe): a second
build of the same inputs is a cache hit that returns at once.  A build writes into a
temporary directory and renames it into place only when complete, so a failed or interrupted
build (a full disk included) leaves nothing half-written in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import struct
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.arch import Arch
from harness.errors import CommandError, InfraError, TreeFailure, UserError
from harness.keys import make_host_keys
from harness.layout import Layout
from harness.repo import Commit, Repo
from harness.run import run
from harness.signing import SigningKey

RECIPE = "5"
"""Bump when the image recipe changes what an image contains: it invalidates the cache."""

STATEROOT = "debian"
"""The ostree "os" (stateroot) every image deploys into."""

GUEST_REMOTE = "treegate"
GUEST_REPO_ADDR = "10.0.2.100"
GUEST_REPO_PORT = 8080
GUEST_REPO_URL = f"http://{GUEST_REPO_ADDR}:{GUEST_REPO_PORT}"
"""Where a guest finds the harness's repo server: a QEMU guest forward, no real route."""

BOOT_LABEL = "tg-boot"
ROOT_LABEL = "tg-root"


@dataclass(frozen=True)
class Image:
    """A built disk image and what the harness needs to boot and trust it."""

    path: Path
    """The raw base disk; machines run on throw-away qcow2 overlays of it."""
    key: str
    commit: str
    ref: str
    arch: str
    layout: str
    host_key: str
    """The guest's SSH host public key line, pinned when connecting."""
    kernel_args: str
    cached: bool = False
    seconds: float = 0.0

    @property
    def host_key_blob(self) -> str:
        """The base64 part of :attr:`host_key` (what paramiko compares)."""
        return self.host_key.split()[1]


def kernel_args(arch: Arch) -> list[str]:
    """Kernel command line every deployment of an image gets (ostree adds ``ostree=``)."""
    console = f"{arch.console},115200" if arch.console.startswith("ttyS") else arch.console
    return [
        f"root=LABEL={ROOT_LABEL}",
        "rw",
        # The screen too, so that a screenshot shows what the kernel said (a panic, say); the
        # serial console comes last: it is /dev/console, where systemd and rescue shells talk.
        "console=tty0",
        f"console={console}",
        # quiet keeps the serial console (slow under emulation) to warnings and worse, which
        # still includes every panic, Oops and emergency-shell message the watcher needs.
        "quiet",
        # Throw-away overlays make filesystem checks pointless; they cost seconds under TCG.
        "fsck.mode=skip",
    ]


def image_key(
    commit: str,
    ref: str,
    layout: Layout,
    arch: Arch,
    client_key: str,
    trusted_key: SigningKey | None = None,
) -> str:
    """The cache key of an image: equal keys mean byte-for-byte interchangeable images."""
    parts: list[object] = [commit, ref, layout.digest, arch.name, client_key, RECIPE]
    if trusted_key is not None:
        parts.append(trusted_key.fingerprint)
    payload = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def build_image(
    repo: Repo,
    commit: Commit,
    *,
    ref: str,
    arch: Arch,
    layout: Layout,
    client_key: str,
    cache_dir: Path,
    trusted_key: SigningKey | None = None,
) -> Image:
    """Return the image of ``commit`` for ``arch`` and ``layout``, building it if not cached.

    ``ref`` becomes the deployment's origin (``treegate:<ref>``), which is what
    ``ostree admin upgrade`` in the guest follows.  With ``trusted_key``, the guest's remote
    has that public key and ``gpg-verify=true``: every pull in the guest checks signatures.
    """
    if layout.arches and arch.name not in layout.arches:
        raise UserError(
            f"layout {layout.name} is not for {arch.name}",
            hint=f"it supports {', '.join(layout.arches)}",
        )
    start = time.monotonic()
    key = image_key(commit.checksum, ref, layout, arch, client_key, trusted_key)
    final = cache_dir / key[:32]
    meta_path = final / "image.json"
    if meta_path.is_file():
        meta_path.touch()  # last use, for treegate cache gc
        data = json.loads(meta_path.read_text())
        data["path"] = Path(data["path"])
        image = Image(**data)
        return Image(**{**asdict(image), "cached": True, "seconds": time.monotonic() - start})
    _check_tools(layout)
    repo.kernel_version(commit.checksum)  # a commit with no kernel cannot boot: say so now
    cache_dir.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    try:
        image = _build(repo, commit, ref, arch, layout, client_key, key, build, final, trusted_key)
        meta = {k: v for k, v in asdict(image).items() if k not in ("cached", "seconds")}
        meta["path"] = str(image.path)
        (build / "image.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(build, final)
        except OSError:
            if not meta_path.is_file():  # another builder did not win the race either
                raise
            shutil.rmtree(build, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return Image(**{**asdict(image), "seconds": time.monotonic() - start})


def _check_tools(layout: Layout) -> None:
    needed = {
        "ostree": "ostree",
        "mkfs.ext4": "e2fsprogs",
        "sfdisk": "fdisk",
        "unshare": "util-linux",
        "ssh-keygen": "openssh-client",
    }
    if layout.bootloader.startswith("grub-"):
        needed["grub-mkimage"] = "grub-common"
    if layout.bootloader == "grub-efi":
        needed.update({"mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools"})
    for tool, package in needed.items():
        if shutil.which(tool) is None:
            raise UserError(
                f"{tool} is not installed", hint=f"apt-get install {package} (or run ci/setup)"
            )
    if layout.bootloader == "grub-bios" and not Path("/usr/lib/grub/i386-pc/boot.img").exists():
        raise UserError(
            "GRUB's PC BIOS modules are missing (/usr/lib/grub/i386-pc)",
            hint="apt-get install grub-pc-bin",
        )


def _build(
    repo: Repo,
    commit: Commit,
    ref: str,
    arch: Arch,
    layout: Layout,
    client_key: str,
    key: str,
    build: Path,
    final: Path,
    trusted_key: SigningKey | None,
) -> Image:
    stage = build / "stage"
    (stage / "etc").mkdir(parents=True)
    host_key = make_host_keys(stage / "etc/ssh")
    (stage / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (stage / "etc/fstab").write_text(
        "# Written by treegate: /boot is its own partition so the firmware's loader can read it.\n"
        "# Automounted on first use (ostree admin touches it), so boots never wait for it.\n"
        f"LABEL={BOOT_LABEL} /boot ext4 nofail,x-systemd.automount 0 0\n"
    )
    (stage / "authorized_keys").write_text(client_key + "\n")
    if trusted_key is not None:
        trusted_key.export_public_key(stage / "trusted.gpg")
    if layout.bootloader == "grub-bios":
        (stage / "grub.cfg").write_text(GRUB_CFG.format(terminal=_GRUB_SERIAL))
    elif layout.bootloader == "grub-efi":
        (stage / "grub.cfg").write_text(GRUB_CFG.format(terminal=""))
    disk = build / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(layout.disk_size())
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
        input=layout.sfdisk_script(),
    )
    boot, root = layout.partition("boot"), layout.partition("root")
    env = {
        "SRC_REPO": str(repo.path),
        "COMMIT": commit.checksum,
        "REF": ref,
        "OS": STATEROOT,
        "REMOTE": GUEST_REMOTE,
        "REMOTE_URL": GUEST_REPO_URL,
        # --karg-append, not --karg: --karg replaces an earlier argument of the same name, so
        # of the two console= only the serial one reached the kernel and the screen stayed
        # empty of the kernel's messages.
        "KARGS": " ".join(f"--karg-append={shlex.quote(a)}" for a in kernel_args(arch)),
        "STAGE": str(stage),
        "DISK": str(disk),
        "BOOT_OFFSET": str(boot.offset),
        "BOOT_KIB": str(boot.size // 1024),
        "BOOT_LABEL": BOOT_LABEL,
        "ROOT_OFFSET": str(root.offset),
        "ROOT_KIB": str(root.size // 1024),
        "ROOT_LABEL": ROOT_LABEL,
        "TMPFS_SIZE": f"{layout.root_mib + layout.boot_mib}m",
    }
    try:
        run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-euc", _SYSROOT_SCRIPT],
            env=env,
        )
    except CommandError as exc:
        if "No space left on device" in exc.stderr or "Could not allocate block" in exc.stderr:
            raise InfraError(
                f"no space left on device while building the image in {build.parent}",
                hint="free disk space",
            ) from None
        corrupt = re.search(r"Corrupted \S+ object[^\n]*", exc.stderr)
        if corrupt:
            # The commit as published is unusable (a client's pull would fail the same way).
            raise TreeFailure(
                f"commit {commit.checksum[:12]} in {repo.path} is corrupt: {corrupt.group(0)}",
                hint=f"ostree fsck --repo={repo.path}",
            ) from None
        raise
    if layout.bootloader == "grub-bios":
        _install_grub_bios(disk, layout)
    elif layout.bootloader == "grub-efi":
        _install_grub_efi(disk, layout, repo, commit.checksum, arch, build)
    shutil.rmtree(stage)
    return Image(
        path=final / "disk.raw",
        key=key,
        commit=commit.checksum,
        ref=ref,
        arch=arch.name,
        layout=layout.name,
        host_key=host_key,
        kernel_args=" ".join(kernel_args(arch)),
    )


# Runs as root in a private mount namespace: the tmpfs vanishes with it, however it ends.
_SYSROOT_SCRIPT = r"""
work=$(mktemp -d)
mount -t tmpfs -o size="$TMPFS_SIZE" treegate-sysroot "$work"
S="$work/sysroot"
mkdir "$S"
ostree admin init-fs "$S" >/dev/null
ostree admin os-init --sysroot="$S" "$OS" >/dev/null
R="$S/ostree/repo"
if [ -f "$STAGE/trusted.gpg" ]; then
  ostree remote add --repo="$R" --set=gpg-verify=true --gpg-import="$STAGE/trusted.gpg" \
    "$REMOTE" "$REMOTE_URL"
else
  ostree remote add --repo="$R" --set=gpg-verify=false "$REMOTE" "$REMOTE_URL"
fi
# --untrusted: every object's checksum is verified on the way in.  A local pull trusts its
# source otherwise, and would copy a corrupt object into a machine that may well boot.
ostree pull-local --untrusted --repo="$R" "$SRC_REPO" "$COMMIT" >/dev/null
ostree refs --repo="$R" --create="$REMOTE:$REF" "$COMMIT"
# With this link in place ostree's syslinux backend keeps loader/syslinux.cfg current on
# every deploy; GRUB (and U-Boot's extlinux support) read that file.
mkdir -p "$S/boot/syslinux" "$S/boot/loader.0"
: > "$S/boot/loader.0/syslinux.cfg"
ln -s loader.0 "$S/boot/loader"
ln -s ../loader/syslinux.cfg "$S/boot/syslinux/syslinux.cfg"
# U-Boot's distro boot looks for /extlinux/extlinux.conf: the same file, same format.
mkdir -p "$S/boot/extlinux"
ln -s ../loader/syslinux.cfg "$S/boot/extlinux/extlinux.conf"
eval "ostree admin deploy --sysroot=\"\$S\" --os=\"\$OS\" $KARGS \"\$REMOTE:\$REF\"" >/dev/null
D=$(echo "$S/ostree/deploy/$OS/deploy/"*.0)
cp "$STAGE/etc/fstab" "$STAGE/etc/machine-id" "$D/etc/"
install -m 0600 "$STAGE/etc/ssh/ssh_host_ed25519_key" "$D/etc/ssh/"
install -m 0644 "$STAGE/etc/ssh/ssh_host_ed25519_key.pub" "$D/etc/ssh/"
V="$S/ostree/deploy/$OS/var"
install -d -m 0700 "$V/roothome" "$V/roothome/.ssh"
install -m 0600 "$STAGE/authorized_keys" "$V/roothome/.ssh/authorized_keys"
if [ -f "$STAGE/grub.cfg" ]; then
  install -D -m 0644 "$STAGE/grub.cfg" "$S/boot/grub/grub.cfg"
fi
mkfs.ext4 -q -F -L "$BOOT_LABEL" -E offset="$BOOT_OFFSET" -d "$S/boot" "$DISK" "${BOOT_KIB}k"
chattr -R -i "$S/ostree/deploy" 2>/dev/null || true
rm -rf "$S/boot"
mkdir "$S/boot"
mkfs.ext4 -q -F -L "$ROOT_LABEL" -E offset="$ROOT_OFFSET" -d "$S" "$DISK" "${ROOT_KIB}k"
"""

GRUB_CFG = """\
# Written by treegate.  Boots whatever the guest's ostree made the default deployment: ostree
# rewrites /loader/syslinux.cfg on every deploy, and GRUB executes it as its own menu.
set timeout=0
set default=0
{terminal}syslinux_source /syslinux/syslinux.cfg
# syslinux_source loads the DEFAULT entry inline when the file names one: boot it.  When it
# does not, this fails harmlessly and the menu it created boots entry 0 at once.
boot
"""

_GRUB_SERIAL = "serial --unit=0 --speed=115200\nterminal_output serial\n"
"""PC BIOS GRUB prints to VGA by default; UEFI GRUB uses the firmware's console (serial)."""

GRUB_EFI = {"aarch64": ("arm64-efi", "BOOTAA64.EFI"), "x86_64": ("x86_64-efi", "BOOTX64.EFI")}
"""GRUB's platform and the removable-media loader name, per arch."""

_GRUB_MODULES = [
    "part_gpt",
    "ext2",
    "normal",
    "configfile",
    "syslinuxcfg",
    "linux",
    "boot",
    "echo",
    "test",
]
"""Built into every GRUB image: GPT, ext4 /boot, and the syslinux configuration parser."""


def _install_grub_efi(
    disk: Path, layout: Layout, repo: Repo, commit: str, arch: Arch, build: Path
) -> None:
    """Put GRUB on the EFI system partition as the removable-media loader (``\\EFI\\BOOT``).

    GRUB's modules come from the tree itself (Debian ships them only for the native arch, and a
    tree carries the bootloader it was composed with); ``grub-mkimage`` is arch-independent.
    """
    if arch.name not in GRUB_EFI:
        raise UserError(f"no UEFI GRUB for {arch.name}")
    platform, loader = GRUB_EFI[arch.name]
    modules = build / "grub-modules"
    try:
        run(
            [
                "ostree",
                "checkout",
                f"--repo={repo.path}",
                f"--subpath=/usr/lib/grub/{platform}",
                commit,
                str(modules),
            ]
        )
    except CommandError:
        raise UserError(
            f"commit {commit[:12]} has no GRUB modules in /usr/lib/grub/{platform}",
            hint=f"compose the tree with {', '.join(arch.boot_packages) or 'GRUB for ' + platform}",
        ) from None
    efi = build / loader
    run(
        [
            "grub-mkimage",
            "-O",
            platform,
            "-d",
            str(modules),
            "-o",
            str(efi),
            "-p",
            f"(hd0,gpt{layout.index('boot')})/grub",
            *_GRUB_MODULES,
        ]
    )
    shutil.rmtree(modules)
    esp = layout.partition("esp")
    # FAT16 explicitly: mkfs.fat sizes its choice by the whole disk file, not the partition.
    run(
        [
            "mkfs.vfat",
            "-F",
            "16",
            "-n",
            "ESP",
            f"--offset={esp.start}",
            str(disk),
            str(esp.size // 1024),
        ]
    )
    target = f"{disk}@@{esp.offset}"
    run(["mmd", "-i", target, "::/EFI", "::/EFI/BOOT"])
    run(["mcopy", "-i", target, str(efi), f"::/EFI/BOOT/{loader}"])
    efi.unlink()


_GRUB_BIOS_MODULES = [*_GRUB_MODULES, "biosdisk", "linux16", "serial", "terminal"]


def _install_grub_bios(disk: Path, layout: Layout) -> None:
    """Install GRUB for PC BIOS without grub-install (which wants a block device).

    ``core.img`` goes into the BIOS boot partition with its module set built in and its
    prefix on the ``/boot`` partition; ``boot.img`` goes into the MBR's code area with the
    LBA of ``core.img`` patched in, and core.img's own block list is patched to match.
    """
    bios = layout.partition("bios")
    boot_index = layout.index("boot")
    with tempfile.TemporaryDirectory() as tmp:
        core = Path(tmp) / "core.img"
        run(
            [
                "grub-mkimage",
                "-O",
                "i386-pc",
                "-o",
                str(core),
                "-p",
                f"(hd0,gpt{boot_index})/grub",
                *_GRUB_BIOS_MODULES,
            ]
        )
        data = bytearray(core.read_bytes())
    if len(data) > bios.size:
        raise InfraError(
            f"GRUB core image ({len(data)} bytes) does not fit the BIOS boot partition"
        )
    sectors = (len(data) + 511) // 512
    # diskboot.img's first block list entry: (start LBA u64, sector count u16) at 0x1f4.
    struct.pack_into("<QH", data, 0x1F4, bios.start + 1, sectors - 1)
    mbr_code = bytearray(Path("/usr/lib/grub/i386-pc/boot.img").read_bytes()[:440])
    struct.pack_into("<Q", mbr_code, 0x5C, bios.start)  # GRUB_BOOT_MACHINE_KERNEL_SECTOR
    with open(disk, "r+b") as f:
        f.seek(0)
        f.write(mbr_code)  # keep the protective MBR's partition entries and signature
        f.seek(bios.offset)
        f.write(data)
