"""Choosing the accelerator: KVM only where a real probe boot proves it works.

``/dev/kvm`` existing is not enough: on some hosts (software nested virtualisation) KVM opens
fine, runs firmware, and then hangs a 64-bit kernel right after its decompressor.  So the
first time treegate wants KVM for an arch on a host, it boots the candidate's own kernel under
KVM with no root filesystem and waits for the kernel's "VFS: Unable to mount root" panic.
Seeing it within a few seconds proves KVM works; the answer is cached per host (and host
boot), kernel, QEMU version and arch in the user's cache directory (:func:`host_cache`), not
in a state directory: it is a fact of the host, and a fresh clone or an empty state directory
need not pay a 20 s probe to learn it again.  Everything else runs under TCG
(multi-threaded).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from harness.arch import Arch

PROBE_TIMEOUT = 20.0


class Accel(enum.Enum):
    """The two ways QEMU runs a guest."""

    kvm = "kvm"
    tcg = "tcg"

    def qemu_args(self) -> list[str]:
        """QEMU's ``-accel`` option for this accelerator."""
        if self is Accel.kvm:
            return ["-accel", "kvm"]
        # One host thread per vCPU; single-threaded TCG also hangs ARMv7 guests with 2 vCPUs.
        return ["-accel", "tcg,thread=multi,tb-size=256"]

    @staticmethod
    def kvm_unusable_reason(arch: Arch) -> str | None:
        """Why KVM cannot even be tried for ``arch`` on this host, or ``None``."""
        if not arch.host_matches():
            return f"host is {platform.machine()}, guest is {arch.name}"
        if not os.path.exists("/dev/kvm"):
            return "/dev/kvm does not exist"
        try:
            fd = os.open("/dev/kvm", os.O_RDWR)
        except OSError as exc:
            return f"/dev/kvm cannot be opened ({exc.strerror})"
        os.close(fd)
        return None


def choose_accel(
    arch: Arch, kernel: Path, cache: Path, *, force: str | None = None
) -> tuple[Accel, str]:
    """Return the accelerator to use for ``arch`` and a one-line reason.

    ``force`` (``"kvm"`` or ``"tcg"``) skips the decision.  ``kernel`` is a kernel of that arch
    used for the probe boot.
    """
    if force:
        return Accel(force), f"{force} (forced)"
    reason = Accel.kvm_unusable_reason(arch)
    if reason is not None:
        return Accel.tcg, f"TCG: {reason}"
    host = f"{platform.node()}|{_host_boot_id()}|{os.uname().release}"
    key = f"{host}|{qemu_version(arch.qemu_binary)}|{arch.name}"
    results = _load(cache)
    if key not in results:
        ok, detail = probe_kvm(arch, kernel)
        results[key] = {"kvm": ok, "detail": detail, "when": time.time()}
        _save(cache, results)
    entry = results[key]
    if entry["kvm"]:
        return Accel.kvm, "KVM (a probe boot on this host succeeded)"
    return Accel.tcg, f"TCG: KVM is present but a probe boot failed ({entry['detail']})"


def probe_kvm(arch: Arch, kernel: Path) -> tuple[bool, str]:
    """Boot ``kernel`` under KVM with no root; True when it reaches its root-mount panic."""
    with tempfile.TemporaryDirectory(prefix="treegate-kvm-probe-") as tmp:
        log = Path(tmp) / "console.log"
        argv = [
            arch.qemu_binary,
            "-machine",
            arch.machine,
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-serial",
            f"file:{log}",
            "-kernel",
            str(kernel),
            "-append",
            f"console={arch.console} panic=-1",
        ]
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError:
            return False, f"{arch.qemu_binary} is not installed"
        try:
            while time.monotonic() - start < PROBE_TIMEOUT:
                text = log.read_text(errors="replace") if log.exists() else ""
                if "Unable to mount root" in text or "Kernel panic" in text:
                    return (
                        True,
                        f"kernel reached its root mount in {time.monotonic() - start:.1f} s",
                    )
                if proc.poll() is not None:
                    err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                    return (
                        False,
                        f"QEMU exited: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}",
                    )
                time.sleep(0.2)
            return False, f"the kernel printed nothing useful within {PROBE_TIMEOUT:.0f} s"
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def qemu_version(binary: str) -> str:
    """The first line of ``binary --version`` ("missing" when it is not installed): part of
    every cache key that a different QEMU would invalidate."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.split("\n", 1)[0]
    except FileNotFoundError:
        return "missing"


def host_cache() -> Path:
    """Where probe results are kept: ``$XDG_CACHE_HOME/treegate/accel.json`` (by default
    ``~/.cache/treegate/accel.json``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "treegate" / "accel.json"


def _host_boot_id() -> str:
    # A host that rebooted may have another hypervisor setup under it: probe again.
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _load(cache: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(cache: Path, results: dict[str, dict[str, object]]) -> None:
    # An unwritable cache costs a probe next time, nothing more.
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(cache)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
