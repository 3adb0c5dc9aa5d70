"""The libvirt backend: each machine is a transient libvirt domain, created from XML built here.

Release teams run their VMs under libvirt, and a remote libvirt URI is how treegate uses
another host.  A domain is named ``treegate-<run>-<test>`` (``virsh list`` shows who owns
it), runs QEMU as root on a throw-away qcow2 overlay (``cache=unsafe``) with the same
devices, CPU and firmware as the QEMU backend, and reaches the world the same way:
user-mode networking restricted to SSH in on a loopback port and the repo server out.
What libvirt's own XML cannot say is passed as QEMU arguments (``<qemu:commandline>``,
which libvirt reports as "custom-argv"): that network (libvirt's ``<interface
type='user'>`` forwards ports only through passt), the ``-cpu`` of the arch profile, and on
ARMv7 the flash bank holding U-Boot's environment (:mod:`harness.uboot`; libvirt's ROM
loader has no second bank).

The serial console comes through libvirt's console stream into a local file, so the
console watcher reads it the same way for a local or a remote daemon.  Domains are created
with ``AUTODESTROY`` (they die with the harness's connection, even if the harness is
killed) unless ``--keep-vm`` may keep them, and :meth:`LibvirtVM.destroy` removes them on
every normal, failed or interrupted path.

Saving uses libvirt's save/restore API.  libvirt restores a saved domain under the name and
UUID it was saved with, so a restored machine is named after its saved state
(``treegate-snapshot-…``) and carries its run and test in the domain's title
(``virsh list --title``); one saved state runs as one domain at a time.

The QEMU guest forward to the repo server runs ``socat`` for each guest connection: libvirt's
QEMU seccomp sandbox forbids that, so the daemon needs ``seccomp_sandbox = 0`` in its
``qemu.conf`` (``ci/setup`` sets it on this machine).
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import libvirt

from harness.accel import Accel
from harness.errors import InfraError, UserError
from harness.image import GUEST_REPO_ADDR, GUEST_REPO_PORT
from harness.machine import pool
from harness.machine.base import (
    LOOPBACK_HOSTS,
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
from harness.machine.screen import ppm_to_png
from harness.machine.tunnel import Tunnel

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)

VIDEO_MODELS = {"VGA": "vga", "virtio-gpu-pci": "virtio", "ramfb": "ramfb"}
"""libvirt's ``<video><model type=…>`` for each QEMU display device of :mod:`harness.arch`."""


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; treegate reports its own."""


@functools.cache
def _event_loop() -> threading.Thread:
    """libvirt's event loop, run in a thread of its own for the life of the process.

    Console streams are read as events arrive; a thread blocked in a stream read would
    block every other call on the same connection.  libvirt needs the loop registered before
    the first connection is opened, once per process.
    """
    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    thread = threading.Thread(target=loop, name="libvirt-events", daemon=True)
    thread.start()
    return thread


def connect(uri: str) -> libvirt.virConnect:
    """A connection to the libvirt daemon at ``uri``; every way it can fail is one line."""
    host = urlsplit(uri).hostname or ""
    backend = Backend("libvirt", uri)
    if backend.remote and not backend.tunnelled and host not in LOOPBACK_HOSTS:
        # The guest's forwards are bound to the daemon host's loopback: only an SSH login
        # to that host can carry them here.
        raise UserError(
            f"libvirt URI {uri}: another host is reached with qemu+ssh:// only",
            hint="use qemu+ssh://USER@HOST/system",
        )
    libvirt.registerErrorHandler(_quiet, None)
    _event_loop()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        msg = (exc.get_error_message() or str(exc)).strip().splitlines()[0]
        # Checked first: polkit, which authorises non-root users, fails as "no system bus".
        if any(w in msg.lower() for w in ("permission denied", "authentication", "system bus")):
            raise UserError(
                f"not allowed to use libvirt at {uri}: {msg}",
                hint="run as root, or as a member of group libvirt",
            ) from None
        if "No such file or directory" in msg or "Connection refused" in msg:
            raise UserError(
                f"libvirt is not running at {uri}: {msg}",
                hint="start it: virtlogd -d && libvirtd -d",
            ) from None
        raise UserError(f"cannot connect to libvirt at {uri}: {msg}") from None


class LibvirtVM:
    """A VM run as a transient domain of a libvirt daemon."""

    @staticmethod
    def check(backend: Backend) -> None:
        """Fail now, with one line, if the daemon at the backend's URI cannot be used."""
        connect(backend.uri).close()

    @classmethod
    def create(cls, backend: Backend, disk: Disk, config: MachineConfig) -> LibvirtVM:
        """See :func:`harness.machine.backends.create`."""
        return cls(
            disk.base_image,
            config,
            backend=backend,
            image_key=disk.image_key,
            base_format=disk.base_format,
            incoming=disk.saved,
        )

    def __init__(
        self,
        base_image: Path,
        config: MachineConfig,
        *,
        backend: Backend,
        image_key: str,
        base_format: str = "raw",
        incoming: Path | None = None,
    ) -> None:
        """A domain on a new overlay of ``base_image`` (uploaded first when the daemon is
        remote; ``image_key`` names it there).  With ``incoming`` (a state written by
        :meth:`save`), the domain is restored from it instead of booting."""
        if incoming is not None and backend.remote:
            raise InfraError("saved machine states are not used with a remote libvirt")
        self.base_image = base_image
        self.base_format = base_format
        self.incoming = incoming
        self.config = config
        self.backend = backend
        self.image_key = image_key
        self.name = config.name
        self.domain_name = (
            f"treegate-{config.run}-{config.name}" if config.run else f"treegate-{config.name}"
        )
        self.workdir = config.workdir
        self.console_log = self.workdir / "console.log"
        self.overlay = self.workdir / "overlay.qcow2"
        self.ssh_port = 0
        self._conn: libvirt.virConnect | None = None
        self._dom: libvirt.virDomain | None = None
        self._remote_overlay: libvirt.virStorageVol | None = None
        self._stream: libvirt.virStream | None = None
        self._console_file: BinaryIO | None = None
        self._detached = False
        self._gone = ""
        self._tunnel: Tunnel | None = None
        self.forward_port = 0
        """The guest's SSH port as forwarded on the libvirt host's loopback (the same as
        :attr:`ssh_port` unless an SSH tunnel brings it here)."""
        self._repo_port = config.repo_port
        """The repo server's port as the libvirt host sees it."""

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.backend.remote:  # a remote host has firmware files of its own
            check_firmware(self.config.arch)
            # (and so a remote ARMv7 machine keeps U-Boot's countdown: its flash file would
            # have to be uploaded first)
            u_boot_environment(self.config.arch, self.workdir)
        conn = self._conn = connect(self.backend.uri)
        disk = self._make_disk(conn)
        for _attempt in range(5):
            self.ssh_port = free_port()
            if self.backend.tunnelled:
                if not self._open_tunnel():
                    continue
            else:
                self.forward_port = self.ssh_port
            try:
                if self.incoming is not None:
                    self._dom = self._restore(conn, disk)
                else:
                    flags = libvirt.VIR_DOMAIN_START_PAUSED
                    if not self.config.keepable:
                        flags |= libvirt.VIR_DOMAIN_START_AUTODESTROY
                    self._dom = conn.createXML(self.domain_xml(disk), flags)
                break
            except libvirt.libvirtError as exc:
                msg = exc.get_error_message() or str(exc)
                if "already exists" in msg:
                    raise UserError(
                        f"a libvirt domain named {self._wanted_name()} already exists",
                        hint=f"virsh -c {self.backend.uri} destroy {self._wanted_name()}",
                    ) from None
                if "hostfwd" not in msg and "host forwarding" not in msg:
                    raise InfraError(f"libvirt could not start {self.domain_name}: {msg}") from None
                self._close_tunnel()
        else:
            raise InfraError("QEMU could not bind a free SSH port after 5 tries")
        self.domain_name = self._dom.name()
        self._start_console(self._dom)
        self._dom.resume()
        write_machine_record(
            self,
            self.pid,
            f"virsh -c {self.backend.uri} destroy {self.domain_name}",
            libvirt_uri=self.backend.uri,
            domain=self.domain_name,
        )

    def _open_tunnel(self) -> bool:
        """Pick ports on the libvirt host and open the SSH tunnel; False when a port there was
        taken (the caller tries others)."""
        # Ports on another host cannot be probed from here: pick them at random and let ssh
        # (ExitOnForwardFailure) or QEMU (hostfwd) say when one was taken.
        self.forward_port = random.randint(30000, 60999)
        repo = None
        if self.config.repo_port is not None:
            self._repo_port = random.randint(30000, 60999)
            repo = (self._repo_port, self.config.repo_port)
        try:
            self._tunnel = Tunnel(
                self.backend.uri,
                local_port=self.ssh_port,
                guest_port=self.forward_port,
                repo_ports=repo,
                log=self.workdir / "tunnel.log",
            )
        except InfraError:
            if "forwarding" in (self.workdir / "tunnel.log").read_text(errors="replace"):
                return False
            raise
        return True

    def _close_tunnel(self) -> None:
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    def _wanted_name(self) -> str:
        if self.incoming is not None:
            return str(ET.fromstring(self._saved_xml()).findtext("name"))
        return self.domain_name

    def _make_disk(self, conn: libvirt.virConnect) -> str:
        """The overlay the domain runs on: a file in the work directory, or a volume in the
        remote host's pool."""
        if self.backend.remote:
            base = pool.upload(conn, self.base_image, self.image_key)
            self._remote_overlay = pool.overlay(conn, base, self.domain_name)
            return str(self._remote_overlay.path())
        make_overlay(self.base_image, self.base_format, self.overlay)
        return str(self.overlay)

    @property
    def pid(self) -> int:
        """The QEMU process's pid on this host (0 for a remote daemon)."""
        if self.backend.remote:
            return 0
        try:
            return int(Path(f"/run/libvirt/qemu/{self.domain_name}.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def domain_xml(self, disk: str) -> str:
        """The transient domain's XML (documented in docs/architecture.md)."""
        c = self.config
        arch = c.arch
        dom = ET.Element("domain", type="kvm" if c.accel is Accel.kvm else "qemu")
        ET.SubElement(dom, "name").text = self.domain_name
        ET.SubElement(dom, "title").text = f"treegate run {c.run or '-'}: {c.name}"
        ET.SubElement(dom, "memory", unit="MiB").text = str(c.memory_mib)
        ET.SubElement(dom, "vcpu").text = str(c.smp)
        os_ = ET.SubElement(dom, "os")
        ET.SubElement(os_, "type", arch=_libvirt_arch(arch.name), machine=arch.machine).text = "hvm"
        for fw in arch.firmware:
            if fw.kind == "pflash-code":
                ET.SubElement(os_, "loader", readonly="yes", type="pflash").text = fw.path
            elif fw.kind == "pflash-vars":
                nvram = ET.SubElement(os_, "nvram", template=fw.path)
                if not self.backend.remote:
                    nvram.text = str(self.workdir / "efivars.fd")
            else:
                ET.SubElement(os_, "loader", type="rom").text = fw.path
        if any(fw.kind == "pflash-code" for fw in arch.firmware):
            # No wait for a key in UEFI's boot manager (5 s in AAVMF): see qemu.py.
            ET.SubElement(os_, "bootmenu", enable="yes", timeout="0")
        features = ET.SubElement(dom, "features")
        if arch.name == "x86_64":
            ET.SubElement(features, "acpi")
        if c.accel is not Accel.kvm:
            tcg = ET.SubElement(features, "tcg")
            ET.SubElement(tcg, "tb-cache", unit="MiB").text = "256"
        ET.SubElement(dom, "clock", offset="utc")
        ET.SubElement(dom, "on_poweroff").text = "destroy"
        ET.SubElement(dom, "on_reboot").text = "restart"
        ET.SubElement(dom, "on_crash").text = "destroy"
        devices = ET.SubElement(dom, "devices")
        d = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(d, "driver", name="qemu", type="qcow2", cache="unsafe", discard="unmap")
        ET.SubElement(d, "source", file=disk)
        ET.SubElement(d, "target", dev="vda", bus="virtio")
        ET.SubElement(d, "boot", order="1")
        ET.SubElement(devices, "controller", type="usb", model="none")
        serial = ET.SubElement(devices, "serial", type="pty")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="pty")
        ET.SubElement(console, "target", type="serial", port="0")
        video = ET.SubElement(devices, "video")
        ET.SubElement(video, "model", type=VIDEO_MODELS[arch.display])
        rng = ET.SubElement(devices, "rng", model="virtio")
        ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
        ET.SubElement(devices, "memballoon", model="none")
        # QEMU runs as root, as with the QEMU backend: no relabelling of the harness's cache.
        seclabel = ET.SubElement(dom, "seclabel", type="static", model="dac", relabel="no")
        ET.SubElement(seclabel, "label").text = "+0:+0"
        cmdline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        cpu = "host" if c.accel is Accel.kvm else arch.cpu
        # libvirt's <loader type='rom'> is -bios; U-Boot's environment goes in the second bank.
        args = ["-cpu", cpu, "-netdev", self._netdev(), "-device", self._nic()]
        for arg in [*args, *u_boot_drive(self.workdir)]:
            ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
        return ET.tostring(dom, encoding="unicode")

    def _netdev(self) -> str:
        netdev = f"user,id=tgnet,restrict=on,hostfwd=tcp:127.0.0.1:{self.forward_port}-:22"
        if self._repo_port is not None:
            netdev += (
                f",guestfwd=tcp:{GUEST_REPO_ADDR}:{GUEST_REPO_PORT}"
                f"-cmd:socat - TCP:127.0.0.1:{self._repo_port}"
            )
        return netdev

    @staticmethod
    def _nic() -> str:
        # An address libvirt does not hand out: it places its own devices from slot 1 up.  No
        # network boot ROM, as with the QEMU backend.
        return "virtio-net-pci,netdev=tgnet,bus=pcie.0,addr=0x10,romfile="

    def _saved_xml(self) -> str:
        assert self._conn is not None and self.incoming is not None
        return str(self._conn.saveImageGetXMLDesc(str(self.incoming / "state"), 0))

    def _restore(self, conn: libvirt.virConnect, disk: str) -> libvirt.virDomain:
        assert self.incoming is not None
        dom = ET.fromstring(self._saved_xml())
        name = str(dom.findtext("name"))
        title = dom.find("title")
        if title is None:
            title = ET.SubElement(dom, "title")
        title.text = f"treegate run {self.config.run or '-'}: {self.config.name}"
        source = dom.find("./devices/disk/source")
        assert source is not None
        source.set("file", disk)
        nvram = dom.find("os/nvram")
        if nvram is not None:  # a fresh copy of the variable store, as the QEMU backend does
            nvram.text = str(self.workdir / "efivars.fd")
        flash = u_boot_drive(self.workdir)
        for arg in dom.iter(f"{{{QEMU_NS}}}arg"):
            if arg.get("value", "").startswith("user,id=tgnet"):
                arg.set("value", self._netdev())
            elif arg.get("value", "").startswith("if=pflash,") and flash:
                arg.set("value", flash[1])  # this machine's copy
        # One saved state runs as one domain at a time (libvirt keeps its name and UUID):
        # wait for another worker's machine of the same state to end.
        deadline = time.monotonic() + 600
        while _exists(conn, name):
            if time.monotonic() > deadline:
                raise InfraError(f"saved state {name} stayed in use by another machine")
            time.sleep(0.5)
        conn.restoreFlags(
            str(self.incoming / "state"),
            ET.tostring(dom, encoding="unicode"),
            libvirt.VIR_DOMAIN_SAVE_PAUSED,
        )
        return conn.lookupByName(name)

    def _start_console(self, dom: libvirt.virDomain) -> None:
        """Copy the serial console into :attr:`console_log` from the first byte on (the
        domain is still paused), as libvirt's event loop delivers it."""
        assert self._conn is not None
        stream = self._stream = self._conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        log = self._console_file = open(self.console_log, "ab", buffering=0)  # noqa: SIM115

        def readable(st: libvirt.virStream, events: int, _opaque: object) -> None:
            while True:
                try:
                    data = st.recv(65536)
                except libvirt.libvirtError:
                    data = b""
                if data == -2:  # nothing more for now
                    break
                if isinstance(data, int) or not data:  # end of stream or error
                    events |= libvirt.VIR_STREAM_EVENT_HANGUP
                    break
                with contextlib.suppress(ValueError):  # closed by _stop_console meanwhile
                    log.write(data)
            if events & (libvirt.VIR_STREAM_EVENT_HANGUP | libvirt.VIR_STREAM_EVENT_ERROR):
                with contextlib.suppress(libvirt.libvirtError):
                    st.eventRemoveCallback()
                log.close()

        stream.eventAddCallback(
            libvirt.VIR_STREAM_EVENT_READABLE
            | libvirt.VIR_STREAM_EVENT_HANGUP
            | libvirt.VIR_STREAM_EVENT_ERROR,
            readable,
            None,
        )

    def save(self, dest: Path) -> None:
        """Save the domain through libvirt (``dest/state``) and move its overlay to
        ``dest/disk.qcow2``; the domain is gone afterwards."""
        if self.backend.remote or self._dom is None:
            raise InfraError("saving a machine needs a local libvirt daemon")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            self._dom.save(str(dest / "state"))
        except libvirt.libvirtError as exc:
            raise InfraError(f"saving {self.domain_name} failed: {exc}") from None
        self._gone = "saved"
        self._stop_console()
        shutil.move(self.overlay, dest / "disk.qcow2")

    # -- state ---------------------------------------------------------------------------
    def is_running(self) -> bool:
        if self._dom is None or self._gone:
            return False
        try:
            return bool(self._dom.isActive())
        except libvirt.libvirtError:  # a transient domain that stopped no longer exists
            return False

    def is_frozen(self) -> bool:
        if not self.is_running():
            return False
        assert self._dom is not None
        state, _reason = self._dom.state()
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return True
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] in ("T", "t")

    def exit_reason(self) -> str:
        if self.is_running():
            return "still running"
        if self._gone:
            return f"the domain was {self._gone}"
        tail = "no message"
        if not self.backend.remote:
            with contextlib.suppress(OSError):
                lines = Path(f"/var/log/libvirt/qemu/{self.domain_name}.log").read_text(
                    errors="replace"
                )
                last = [li for li in lines.splitlines() if li.strip()]
                tail = last[-1] if last else tail
        return f"libvirt domain {self.domain_name} is gone ({tail})"

    # -- actions -------------------------------------------------------------------------
    def screenshot(self, path: Path) -> Path:
        if not self.is_running() or self._conn is None or self._dom is None:
            raise InfraError(f"machine {self.name} is not running: {self.exit_reason()}")
        stream = self._conn.newStream(0)
        chunks: list[bytes] = []
        try:
            mime = self._dom.screenshot(stream, 0, 0)
            stream.recvAll(lambda _s, data, acc: acc.append(data) or 0, chunks)
            stream.finish()
        except libvirt.libvirtError as exc:
            raise InfraError(f"screenshot of {self.name} failed: {exc}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(chunks)
        path.write_bytes(data if mime == "image/png" else ppm_to_png(data))
        return path

    def pause(self) -> None:
        """Freeze the guest's vCPUs (the domain stays)."""
        if self._dom is not None:
            self._dom.suspend()

    def resume(self) -> None:
        if self._dom is not None:
            self._dom.resume()

    def kill(self) -> None:
        if self.is_running() and self._dom is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._dom.destroy()
            self._gone = "killed"

    def detach(self) -> None:
        """Leave the domain running after the harness ends (``--keep-vm``); :meth:`destroy`
        then does nothing."""
        meta = self.workdir / "machine.json"
        data = json.loads(meta.read_text())
        meta.write_text(json.dumps({**data, "kept": True}))
        self._stop_console()
        self._detached = True

    def destroy(self) -> None:
        if self._detached:
            return
        if self._dom is not None and not self._gone:
            with contextlib.suppress(libvirt.libvirtError):
                self._dom.destroy()
            self._gone = "destroyed"
        self._stop_console()
        self._close_tunnel()
        if self._remote_overlay is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._remote_overlay.delete(0)
            self._remote_overlay = None
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_console(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()
            self._stream = None
        if self._console_file is not None:
            self._console_file.close()
            self._console_file = None


def _exists(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def _libvirt_arch(name: str) -> str:
    return {"armv7": "armv7l"}.get(name, name)


def destroy_leftover(uri: str, domain: str) -> None:
    """Destroy ``domain`` if it still runs (its harness died without cleaning up)."""
    with contextlib.suppress(libvirt.libvirtError, UserError):
        conn = connect(uri)
        try:
            conn.lookupByName(domain).destroy()
        finally:
            conn.close()
