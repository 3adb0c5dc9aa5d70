"""Compose a tree definition into an OSTree commit, as a build server does.

The tree is built with mmdebstrap from the host's own apt sources (passed explicitly:
mmdebstrap's built-in default is not what every machine reaches), then rearranged into the
layout OSTree systems boot:

* kernel and initramfs in ``/usr/lib/modules/$KVER/`` (``vmlinuz``, ``initramfs.img``); on
  ARMv7 the kernel uncompressed, as a U-Boot legacy image (:mod:`harness.uimage`);
* ``/etc`` moved to ``/usr/etc`` (ostree makes the deployment's ``/etc`` from it);
* ``/var`` empty (it is per-machine state), the dpkg database moved to
  ``/usr/share/dpkg/database`` so the package list is part of the commit, with a tmpfiles
  link so ``dpkg -l`` still works in the guest;
* ``/home``, ``/root``, ``/opt``, ``/srv``, ``/mnt`` as links into ``/var``;
* ``/sysroot`` and ``/ostree -> sysroot/ostree``.

The initramfs is built by dracut inside the tree, with one module of treegate's own
(``harness/initramfs/``): a shell ``/init`` that loads the virtio and ext4 drivers, finds the
root filesystem, runs the tree's ``ostree-prepare-root`` and switches root. Dracut's systemd
and udev stages cost about three seconds of every boot under TCG; this one takes well under
one, and its image is 5 MB instead of 13.
Composes are cached: the commit records a digest of the definition, and composing an
unchanged definition returns the existing commit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness import uimage
from harness.arch import Arch
from harness.definition import Definition
from harness.errors import CommandError, InfraError, UserError
from harness.repo import Repo
from harness.run import run

log = logging.getLogger("treegate.compose")

RECIPE = "3"
"""Bump when this module's code changes what a definition produces: it invalidates the cache.
(Changes to the initramfs module and the configuration written from here are seen without.)"""

DRACUT_CONF = """\
# Written by treegate's compose: the lean initramfs of dracut module "treegate" (in
# modules.d/50treegate), which boots a VM from a virtio disk without systemd or udev.
hostonly="no"
dracutmodules=" treegate "
# ostree-boot's dracut.conf.d/ostree.conf adds its systemd-based module: not wanted here.
omit_dracutmodules+=" ostree systemd "
drivers=" virtio_blk virtio_pci virtio_mmio crc32c_generic ext4 "
compress="gzip"
"""

INITRAMFS_MODULE = Path(__file__).parent / "initramfs"
"""treegate's dracut module: ``module-setup.sh`` and the ``init.sh`` it installs as /init."""

TMPFILES = """\
# Written by treegate's compose: state directories that live in /var on an OSTree system.
d /var/home 0755 root root -
d /var/roothome 0700 root root -
d /var/opt 0755 root root -
d /var/srv 0755 root root -
d /var/mnt 0755 root root -
d /var/lib 0755 root root -
L /var/lib/dpkg - - - - /usr/share/dpkg/database
"""

_VAR_LINKS = {
    "home": "var/home",
    "root": "var/roothome",
    "opt": "var/opt",
    "srv": "var/srv",
    "mnt": "var/mnt",
    "media": "run/media",
    "ostree": "sysroot/ostree",
}


@dataclass(frozen=True)
class ComposeResult:
    """What a compose produced: the ref, its commit and whether the cache served it."""

    ref: str
    commit: str
    cached: bool
    seconds: float


def compose(
    definition: Definition,
    arch: Arch,
    repo: Repo,
    *,
    workdir: Path,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    exclude_suites: tuple[str, ...] = (),
) -> ComposeResult:
    """Compose ``definition`` for ``arch`` and commit it on its ref in ``repo``.

    Returns the existing commit when the ref (or its recent history) already holds a compose
    of the same definition, without moving the ref (unless ``force``): composing v1 after v2
    of a stream finds v1 again.  ``progress`` receives mmdebstrap's output line by line.
    ``exclude_suites`` leaves apt suites out (say, a security suite whose index the mirror
    serves stale), in addition to the definition's own ``exclude_suites``.
    """
    start = time.monotonic()
    if exclude_suites:
        # Part of the definition from here on, so the cache key tells the two trees apart.
        merged = tuple(dict.fromkeys((*definition.exclude_suites, *exclude_suites)))
        definition = dataclasses.replace(definition, exclude_suites=merged)
    ref = definition.ref(arch.name)
    key = definition.cache_key(arch.name, _recipe(arch))
    repo.init()
    if not force:
        for earlier in repo.history(ref, limit=50):
            if earlier.metadata.get("treegate.compose-key") == key:
                return ComposeResult(ref, earlier.checksum, True, time.monotonic() - start)
    metadata = {
        "version": definition.version,
        "treegate.definition": definition.name,
        "treegate.stream": definition.stream,
        "treegate.arch": arch.name,
        "treegate.compose-key": key,
    }
    subject = f"{definition.name} {definition.version} ({arch.name})"
    workdir.mkdir(parents=True, exist_ok=True)
    if definition.layers_on_parent():
        assert definition.parent is not None
        parent = compose(definition.parent, arch, repo, workdir=workdir, progress=progress)
        with _workspace(workdir, "layer-") as tmp:
            layer = _layer(definition, definition.parent, repo, parent.commit, tmp)
            commit = repo.commit(layer, ref, subject=subject, metadata=metadata, base=parent.commit)
        return ComposeResult(ref, commit, False, time.monotonic() - start)
    _check_can_run(arch)
    with _workspace(workdir, "compose-") as tmp:
        root = tmp / "root"
        _mmdebstrap(definition, arch, root, tmp, progress or (lambda line: None))
        _to_ostree_layout(root, arch)
        commit = repo.commit(root, ref, subject=subject, metadata=metadata)
        _remove_tree(root)
    return ComposeResult(ref, commit, False, time.monotonic() - start)


@contextmanager
def _workspace(workdir: Path, prefix: str) -> Iterator[Path]:
    """A scratch directory under ``workdir``, removed afterwards however the block ends.

    If mmdebstrap was killed before it could unmount its chroot, what is still mounted below
    is unmounted first: removing files through a mounted /proc or /sys would fail (and must
    never be tried on a bind mount), and that error would hide why the compose stopped.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    try:
        yield tmp
    finally:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        for mount in mounts_below(tmp, mountinfo):
            run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def mounts_below(path: Path, mountinfo: str) -> list[str]:
    """The mount points at or below ``path`` in ``mountinfo`` (``/proc/self/mountinfo``'s
    format), deepest first: the order to unmount them in."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        # The kernel escapes space, tab, newline and backslash in octal (\040 ...).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == str(path) or point.startswith(prefix):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _recipe(arch: Arch) -> str:
    """The compose recipe for ``arch``: what the cache key needs beyond the definition.

    Besides :data:`RECIPE`, the arch's kernel and boot packages and the form its kernel is
    stored in (:attr:`Arch.uimage_load`), it covers what compose puts
    into every tree from here (the dracut configuration, treegate's initramfs module, the
    tmpfiles lines), so editing ``initramfs/init.sh`` recomposes without a manual bump.
    """
    built_in = hashlib.sha256((DRACUT_CONF + TMPFILES).encode())
    for path in sorted(INITRAMFS_MODULE.iterdir()):
        built_in.update(path.name.encode() + b"\0" + path.read_bytes())
    uimage_load = "" if arch.uimage_load is None else f"|uimage@{arch.uimage_load:#x}"
    return (
        f"{RECIPE}|{arch.kernel_package}|{','.join(arch.boot_packages)}|{built_in.hexdigest()[:16]}"
        f"{uimage_load}"
    )


def _tree_path(path: str) -> str:
    """Where a definition's file lands in an OSTree commit: ``/etc`` lives in ``/usr/etc``."""
    rel = path.lstrip("/")
    return "usr/" + rel if rel == "etc" or rel.startswith("etc/") else rel


def _layer(definition: Definition, parent: Definition, repo: Repo, base: str, tmp: Path) -> Path:
    """The files and unit links that ``definition`` adds to its parent's commit ``base``."""
    layer = tmp / "layer"
    layer.mkdir(mode=0o755)
    for f in definition.files:
        dest = layer / _tree_path(f.path)
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        dest.write_text(f.content)
        dest.chmod(f.mode)
    units = layer / "usr/etc/systemd/system"
    own = {f.path: f.content for f in definition.files}
    for service in definition.services:
        if service in parent.services:
            continue
        unit_path, text = _find_unit(service, own, repo, base)
        for target in _wanted_by(text):
            link = units / f"{target}.wants" / service
            link.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            os.symlink(unit_path, link)
    for name in definition.masked:
        if name not in parent.masked:
            link = layer / "usr" / mask_link(name)
            link.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            os.symlink("/dev/null", link)
    return layer


def excluded_suites(specs: Iterable[str], arch: str) -> tuple[str, ...]:
    """The apt suites to leave out of composes for ``arch``, from ``[ARCH:]SUITE`` specs."""
    out = []
    for spec in specs:
        only, _, suite = spec.rpartition(":")
        if not only or only == arch:
            out.append(suite)
    return tuple(out)


def mask_link(name: str) -> str:
    """Where masking ``name`` puts its link to /dev/null, relative to the root of the tree.

    A unit is masked in ``etc/systemd/system`` (what ``systemctl mask`` does); a name ending in
    ``-generator`` is a systemd generator, masked in ``etc/systemd/system-generators`` so that
    the manager does not run it at every boot.
    """
    if name.endswith("-generator"):
        return f"etc/systemd/system-generators/{name}"
    return f"etc/systemd/system/{name}"


def _find_unit(unit: str, own: dict[str, str], repo: Repo, base: str) -> tuple[str, str]:
    for where in ("/etc/systemd/system", "/usr/lib/systemd/system"):
        path = f"{where}/{unit}"
        if path in own:
            return path, own[path]
        tree_path = "/" + _tree_path(path)
        if repo.has_path(base, tree_path):
            return path, repo.read_file(base, tree_path)
    raise UserError(f"cannot enable {unit}: no such unit in the tree or the definition's files")


def _wanted_by(unit_text: str) -> list[str]:
    """The targets in a unit's ``[Install] WantedBy=`` (what ``systemctl enable`` links into)."""
    targets: list[str] = []
    section = ""
    for line in unit_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Install]" and line.startswith("WantedBy="):
            targets += line.split("=", 1)[1].split()
    if not targets:
        raise UserError("a unit to enable has no [Install] WantedBy=")
    return targets


def host_apt_sources(suite: str, exclude_suites: tuple[str, ...] = ()) -> str:
    """The host's apt sources as deb822 text, with the host's codename replaced by ``suite``.

    Only ``deb`` entries of enabled files are kept.  Suites named in ``exclude_suites`` (after
    the codename substitution) are left out.
    """
    codename = _host_codename()
    stanzas: list[dict[str, str]] = []
    src_dir = Path("/etc/apt/sources.list.d")
    for path in sorted(src_dir.glob("*.sources")) if src_dir.is_dir() else []:
        stanzas += _parse_deb822(path.read_text())
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        stanzas += _parse_one_line(legacy.read_text())
    out = []
    for st in stanzas:
        if "deb" not in st.get("Types", "").split() or st.get("Enabled", "yes") == "no":
            continue
        suites = [s.replace(codename, suite, 1) if codename else s for s in st["Suites"].split()]
        suites = [s for s in suites if s not in exclude_suites]
        if not suites:
            continue
        lines = [
            "Types: deb",
            f"URIs: {st['URIs']}",
            f"Suites: {' '.join(suites)}",
            f"Components: {st.get('Components', 'main')}",
        ]
        if "Signed-By" in st:
            lines.append(f"Signed-By: {st['Signed-By']}")
        out.append("\n".join(lines))
    if not out:
        raise UserError(
            "this host has no usable apt sources in /etc/apt", hint="configure apt first"
        )
    return "\n\n".join(out) + "\n"


def _host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _parse_deb822(text: str) -> list[dict[str, str]]:
    stanzas = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
                continue
            if line[0].isspace() and fields:
                continue  # continuation lines (inline keys) are not needed here
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
        if "URIs" in fields and "Suites" in fields:
            stanzas.append(fields)
    return stanzas


def _parse_one_line(text: str) -> list[dict[str, str]]:
    stanzas = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        if words[1].startswith("["):
            end = next(i for i, w in enumerate(words) if w.endswith("]"))
            words = [words[0], *words[end + 1 :]]
        stanzas.append(
            {
                "Types": "deb",
                "URIs": words[1],
                "Suites": words[2],
                "Components": " ".join(words[3:]) or "main",
            }
        )
    return stanzas


def _check_can_run(arch: Arch) -> None:
    if shutil.which("mmdebstrap") is None:
        raise UserError("mmdebstrap is not installed", hint="run ci/setup")
    if os.geteuid() != 0:
        raise UserError("composing a tree needs root (mmdebstrap --mode=root and ostree commit)")
    if not arch.host_matches():
        handler = {"armhf": "qemu-arm", "arm64": "qemu-aarch64"}.get(arch.debian, arch.debian)
        if not Path(f"/proc/sys/fs/binfmt_misc/{handler}").exists():
            raise UserError(
                f"cannot run {arch.name} programs: no binfmt handler {handler}",
                hint="install qemu-user-static and binfmt-support (ci/setup does, and "
                "registers the handlers)",
            )


def _mmdebstrap(
    definition: Definition, arch: Arch, root: Path, tmp: Path, progress: Callable[[str], None]
) -> None:
    sources = tmp / "treegate.sources"
    sources.write_text(host_apt_sources(definition.suite, definition.exclude_suites))
    dracut_conf = tmp / "dracut.conf"
    dracut_conf.write_text(DRACUT_CONF)
    stage = tmp / "files"
    for f in definition.files:
        dest = stage / f.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.content)
        dest.chmod(f.mode)
    packages = [*definition.packages, arch.kernel_package, *arch.boot_packages]
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=essential",
        f"--architectures={arch.debian}",
        f"--include={','.join(packages)}",
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
        # /usr merged by symlinks before the essential packages, as debootstrap does, instead
        # of the usrmerge package: that one converts the tree in perl and pulls perl into it,
        # 15 s and 50 MB of an emulated compose.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        # Documentation and translations are dead weight in a test image.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        # The dracut configuration and module, in place before any package's hook looks.
        f'--essential-hook=mkdir -p "$1/etc/dracut.conf.d" "$1/usr/lib/dracut/modules.d" && '
        f'cp {dracut_conf} "$1/etc/dracut.conf.d/10-treegate.conf" && '
        f'cp -r {INITRAMFS_MODULE} "$1/usr/lib/dracut/modules.d/50treegate"',
    ]
    if definition.files:
        argv.append(f'--customize-hook=cp -a {stage}/. "$1/"')
    if definition.services:
        argv.append(
            f'--customize-hook=chroot "$1" systemctl enable {" ".join(definition.services)}'
        )
    for name in definition.masked:
        link = f'"$1/{mask_link(name)}"'
        argv.append(f"--customize-hook=mkdir -p $(dirname {link}) && ln -sfn /dev/null {link}")
    # The initramfs is built once, after every package and the definition's files are in.
    # Left to the packages, dracut runs at the kernel's postinst and again at the trigger
    # that ostree-boot's dracut module fires (18 s each under qemu-user).  Both of those
    # honour INITRD=No, which the run below sets.
    argv.append(
        '--customize-hook=chroot "$1" sh -ec \'for k in /boot/vmlinuz-*; do '
        "v=${k#/boot/vmlinuz-}; dracut -q --force /boot/initrd.img-$v $v; done'"
    )
    argv += [definition.suite, str(root), str(sources)]
    try:
        run(argv, on_line=progress, env={"INITRD": "No"})
    except CommandError as exc:
        raise _explain_mmdebstrap(exc, definition) from None


def _explain_mmdebstrap(exc: CommandError, definition: Definition) -> Exception:
    text = exc.stderr
    if "unexpected size" in text or "Hash Sum mismatch" in text:
        bad = sorted({m.group(1) for m in re.finditer(r"dists/([\w.-]+)/", text)})
        return InfraError(
            f"the package mirror served a stale or corrupt index for {', '.join(bad) or 'a suite'}",
            hint="retry later, or leave the suite out: treegate compose --exclude-suite SUITE "
            "(pytest: --exclude-suite [ARCH:]SUITE), or exclude_suites in the definition",
        )
    for line in text.splitlines():
        if "Unable to locate package" in line or "has no installation candidate" in line:
            return UserError(f"{definition.name}: {line.split(':', 1)[-1].strip()}")
    if "No space left on device" in text:
        return InfraError("no space left on device while composing", hint="free disk space")
    errors = [ln for ln in text.splitlines() if ln.startswith("E:")]
    return InfraError(f"mmdebstrap failed: {errors[-1] if errors else exc.message}")


def _to_uimage(kernel: Path, load: int) -> None:
    """Replace the zImage ``kernel`` with its uncompressed kernel as a U-Boot legacy image (in
    place, keeping its mode and time).  A kernel that is not an XZ zImage is left as it is:
    U-Boot boots a zImage too, only slower."""
    image = uimage.decompress_zimage(kernel.read_bytes())
    if image is None:
        return
    stat = kernel.stat()
    kernel.write_bytes(
        uimage.legacy_image(
            image, load=load, time=int(stat.st_mtime), name=f"Linux {kernel.parent.name}"
        )
    )
    os.utime(kernel, (stat.st_atime, stat.st_mtime))


def _to_ostree_layout(root: Path, arch: Arch) -> None:
    boot = root / "boot"
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise InfraError(f"expected one kernel in the composed /boot, found {kernels or 'none'}")
    kver = kernels[0]
    moddir = root / "usr/lib/modules" / kver
    shutil.move(boot / f"vmlinuz-{kver}", moddir / "vmlinuz")
    if arch.uimage_load is not None:
        _to_uimage(moddir / "vmlinuz", arch.uimage_load)
    initrd = boot / f"initrd.img-{kver}"
    if not initrd.exists():
        raise InfraError(f"dracut made no initramfs for kernel {kver}")
    shutil.move(initrd, moddir / "initramfs.img")
    (moddir / "initramfs.img").chmod(0o644)
    # Debian ships device trees beside the kernel; ostree looks for them in the module dir.
    dtbs = root / "usr/lib" / f"linux-image-{kver}"
    if dtbs.is_dir():
        os.symlink(f"../../linux-image-{kver}", moddir / "dtb")
    for entry in list(boot.iterdir()):
        _remove_tree(entry)
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        (root / link).unlink(missing_ok=True)

    etc = root / "etc"
    for key in etc.glob("ssh/ssh_host_*"):
        key.unlink()  # a host key in the tree would be shared by every machine
    (etc / "machine-id").unlink(missing_ok=True)
    (etc / "machine-id").write_text("")  # systemd fills it in on first boot

    dpkg_db = root / "usr/share/dpkg/database"
    dpkg_db.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(root / "var/lib/dpkg", dpkg_db)
    tmpfiles = root / "usr/lib/tmpfiles.d/treegate-ostree.conf"
    tmpfiles.write_text(TMPFILES)

    for name in ("var", "dev", "run", "tmp", "proc", "sys"):
        _remove_tree(root / name)
        (root / name).mkdir()
    (root / "tmp").chmod(0o1777)
    shutil.move(etc, root / "usr/etc")
    for name, target in _VAR_LINKS.items():
        _remove_tree(root / name)
        os.symlink(target, root / name)
    (root / "sysroot").mkdir(exist_ok=True)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
