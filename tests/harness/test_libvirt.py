"""The libvirt backend against real libvirt daemons: this host's ``qemu:///system`` and a
second daemon reached over loopback TCP that shares no files with the harness.

The local daemon is started here when it is not running (there is no systemd on these
machines) and stopped afterwards if this module started it.  The second daemon runs in a
mount namespace of its own: its ``/etc/libvirt``, ``/var/lib/libvirt`` (storage pools) and
``/run/libvirt`` are private directories, so an image it boots can only have reached it
through libvirt's stream API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from harness.boot import Target, booted, image_for, machines_dir
from harness.errors import UserError
from harness.machine.backends import reap_stale
from harness.machine.base import Backend
from harness.machine.libvirt import connect
from harness.machine.pool import POOL, POOL_PATH
from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm

StartBoot = Callable[..., "subprocess.Popen[str]"]
"""The ``start_boot`` fixture (tests/conftest.py)."""
ROOT = Path(__file__).resolve().parents[2]
LOCAL = "qemu:///system"

TreegateCli = Callable[..., subprocess.CompletedProcess[str]]
"""The ``treegate_cli`` fixture (tests/conftest.py)."""


def _answers(uri: str) -> bool:
    try:
        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        libvirt.open(uri).close()
    except libvirt.libvirtError:
        return False
    return True


def _wait_for(uri: str, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 120
    while not _answers(uri):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}")
        assert time.monotonic() < deadline, f"{what} did not answer in 120 s"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This host's libvirt daemon, started (with virtlogd) if it is not running, and stopped
    afterwards if this fixture started it."""
    started: list[Path] = []
    if not _answers(LOCAL):
        run = tmp_path_factory.mktemp("libvirtd")
        for daemon in ("virtlogd", "libvirtd"):
            if not _running(daemon):
                pidfile = run / f"{daemon}.pid"
                subprocess.run([daemon, "-d", "--pid-file", str(pidfile)], check=True)
                started.append(pidfile)
        _wait_for(LOCAL, "libvirtd")
    yield LOCAL
    for pidfile in reversed(started):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            # Gone before the next session looks: a daemon still shutting down is found
            # by pgrep, not started again, and never answers.
            deadline = time.monotonic() + 30
            while not _exited(pid) and time.monotonic() < deadline:
                time.sleep(0.1)


def _state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``Z`` for a zombie), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except OSError:
        return None


def _exited(pid: int) -> bool:
    """True when process ``pid`` is gone or a zombie: daemons are reaped by PID 1 here, and
    not always at once."""
    return _state(pid) in (None, "Z")


def _running(name: str) -> bool:
    """True when a live process is ``name`` (``pgrep`` alone would count a zombie)."""
    found = subprocess.run(["pgrep", "-x", "-r", "D,R,S", name], capture_output=True)
    return found.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class RemoteHost:
    """The second libvirt daemon: reached over TCP, or by SSH login as libvirt's
    ``qemu+ssh`` transport does (an sshd in the same namespace, key-only)."""

    tcp_uri: str
    ssh_uri: str


@pytest.fixture(scope="module")
def remote_libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteHost]:
    """A second libvirt daemon in its own mount namespace, on 127.0.0.1 over TCP and SSH."""
    root = tmp_path_factory.mktemp("remote-libvirt")
    port, ssh_port = _free_port(), _free_port()
    for sub in ("etc", "var-lib", "cache", "run"):
        (root / sub).mkdir()
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "hostkey")], check=True
    )
    (root / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {ssh_port}\nHostKey {root}/hostkey\n"
        f"AuthorizedKeysFile {key}.pub\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
        f"PidFile {root}/sshd.pid\nAllowTcpForwarding yes\n"
    )
    subprocess.run(["cp", "-a", "/etc/libvirt/.", str(root / "etc")], check=True)
    with open(root / "etc" / "libvirtd.conf", "a") as conf:
        conf.write(
            f'listen_tls = 0\nlisten_tcp = 1\ntcp_port = "{port}"\n'
            'listen_addr = "127.0.0.1"\nauth_tcp = "none"\n'
        )
    with open(root / "etc" / "qemu.conf", "a") as conf:
        # No virtlogd in the namespace: QEMU's output goes to files directly.
        conf.write('stdio_handler = "file"\nseccomp_sandbox = 0\n')
    script = f"""
        set -e
        mount --bind {root}/etc /etc/libvirt
        mount --bind {root}/var-lib /var/lib/libvirt
        mount --bind {root}/cache /var/cache/libvirt
        mount --bind {root}/run /run/libvirt
        mkdir -p /run/sshd
        /usr/sbin/sshd -f {root}/sshd_config -E {root}/sshd.log
        exec libvirtd --listen --pid-file {root}/libvirtd.pid
    """
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "libvirtd.log", "wb"),  # noqa: SIM115
    )
    uri = f"qemu+tcp://127.0.0.1:{port}/system"
    ssh_uri = f"qemu+ssh://root@127.0.0.1:{ssh_port}/system?keyfile={key}&no_verify=1&no_tty=1"
    try:
        _wait_for(uri, "the second libvirtd", proc)
        yield RemoteHost(uri, ssh_uri)
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((root / "sshd.pid").read_text()), signal.SIGTERM)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def libvirt_target(harness: Harness, arch: str, uri: str) -> Target:
    return dataclasses.replace(harness.target(arch), backend=Backend("libvirt", uri))


def domain_names(uri: str) -> list[str]:
    conn = connect(uri)
    try:
        return [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()


def test_a_domain_is_named_after_its_run_and_test_and_is_gone_afterwards(
    libvirtd: str, harness: Harness, candidate: Commit, arch: str
) -> None:
    target = libvirt_target(harness, arch, libvirtd)
    image = image_for(target, candidate.checksum)
    with booted(target, image, name="named-boot") as machine:
        name = f"treegate-{target.run}-named-boot"
        assert name in domain_names(libvirtd)
        assert machine.succeed("ostree admin status").count(candidate.checksum) == 1
        # The serial console comes through libvirt's stream, up to the login prompt
        # (which serial-getty may print a moment after SSH answers).
        machine.wait_for_console_text(r"(?m)^\S+ login: ", timeout=30)
        shot = machine.screenshot(machine.vm.workdir / "screen.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        workdir = machine.vm.workdir
    assert name not in domain_names(libvirtd)
    assert not workdir.exists()


# ci/nightly: restores through libvirt; the QEMU backend's restores run in every ci/test test.
@pytest.mark.nightly
def test_restored_domains_come_from_a_state_saved_through_libvirt(
    libvirtd: str, harness: Harness, candidate: Commit, arch: str
) -> None:
    target = libvirt_target(harness, arch, libvirtd)
    image = image_for(target, candidate.checksum)
    boot_ids = []
    for round_ in range(2):
        with booted(target, image, name=f"restored-{round_}", restore=True) as machine:
            boot_ids.append(machine.boot_id())
            # Fresh: what the first machine wrote is not on the second.
            assert machine.execute("test -e /var/restored-marker")[0] != 0
            machine.succeed("touch /var/restored-marker")
            assert "restored-" in str(libvirt_title(libvirtd, machine.vm))
    # Both are the one saved machine (same boot), each on its own overlay.
    assert boot_ids[0] == boot_ids[1]


def libvirt_title(uri: str, vm: object) -> str:
    conn = connect(uri)
    try:
        dom = conn.lookupByName(vm.domain_name)  # type: ignore[attr-defined]
        return str(dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None))
    finally:
        conn.close()


def test_remote_daemon_gets_the_image_through_the_stream_api(
    remote_libvirtd: RemoteHost, harness: Harness, candidate: Commit, arch: str
) -> None:
    uri = remote_libvirtd.tcp_uri
    target = libvirt_target(harness, arch, uri)
    image = image_for(target, candidate.checksum)
    with booted(target, image, name="remote-boot") as machine:
        assert machine.succeed("ostree admin status").count(candidate.checksum) == 1
        conn = connect(uri)
        try:
            volumes = conn.storagePoolLookupByName(POOL).listVolumes()
        finally:
            conn.close()
        assert f"{image.key}.raw" in volumes
        overlay = next(v for v in volumes if v.endswith(".qcow2"))
        # The pool is the second daemon's own directory: this host's view of that path
        # does not hold it.
        assert not (Path(POOL_PATH) / overlay).exists()
    conn = connect(uri)
    try:
        left = conn.storagePoolLookupByName(POOL).listVolumes()
        assert overlay not in left, "the machine's overlay volume outlived it"
        assert not conn.listAllDomains()
    finally:
        conn.close()


# ci/nightly: the remote-daemon test above proves the remote path in ci/test.
@pytest.mark.nightly
def test_remote_host_over_ssh_is_reached_through_a_tunnel(
    remote_libvirtd: RemoteHost, harness: Harness, candidate: Commit, arch: str
) -> None:
    # qemu+ssh: libvirt's own SSH transport for the API, and treegate's tunnel for the
    # guest's SSH port (here) and the repo server (there).
    target = libvirt_target(harness, arch, remote_libvirtd.ssh_uri)
    image = image_for(target, candidate.checksum)
    with booted(target, image, name="ssh-boot") as machine:
        assert machine.succeed("ostree admin status").count(candidate.checksum) == 1
        # The guest pulls from the harness's repo server across the tunnel's -R forward.
        status = machine.succeed(
            "exec 3<>/dev/tcp/10.0.2.100/8080; printf 'GET /config HTTP/1.0\\r\\n\\r\\n' >&3;"
            " head -1 <&3"
        )
        assert status.startswith("HTTP/1.0 200"), status
        tunnel = machine.vm.workdir / "tunnel.log"
        assert tunnel.exists()
        assert machine.vm.ssh_port != machine.vm.forward_port  # type: ignore[attr-defined]
    conn = connect(remote_libvirtd.ssh_uri)
    try:
        assert not conn.listAllDomains()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "how",
    # SIGKILL leaves libvirt alone to clean up: the harder case, in ci/test.
    [pytest.param(signal.SIGINT, marks=pytest.mark.nightly), signal.SIGKILL],
    ids=["ctrl-c", "killed"],
)
def test_no_domain_outlives_the_harness(
    libvirtd: str, start_boot: StartBoot, harness: Harness, candidate: Commit, how: signal.Signals
) -> None:
    name = f"lv-{how.name.lower()}-{os.getpid()}"
    proc = start_boot(
        harness.repo.path, candidate.checksum, harness.state.root, name, "--backend", "libvirt"
    )
    assert f"treegate-{name}" in domain_names(libvirtd)
    proc.send_signal(how)
    proc.wait(timeout=60)
    # Ctrl-C: the harness destroys it; killed: libvirt does (the domain was created to die
    # with the connection that made it).
    deadline = time.monotonic() + 30
    while f"treegate-{name}" in domain_names(libvirtd):
        assert time.monotonic() < deadline, f"domain treegate-{name} outlived treegate boot"
        time.sleep(0.5)
    if how is signal.SIGKILL:  # the next run removes the work directory
        booted_dirs = [p for p in machines_dir(harness.state).iterdir() if p.name.startswith(name)]
        reap_stale(machines_dir(harness.state))
        assert all(not p.exists() for p in booted_dirs)


@pytest.mark.nightly
def test_domain_name_clash_is_one_line(
    libvirtd: str, harness: Harness, candidate: Commit, arch: str
) -> None:
    target = libvirt_target(harness, arch, libvirtd)
    image = image_for(target, candidate.checksum)
    clash = pytest.raises(UserError, match=r"a libvirt domain named treegate-.*-clash already")
    with booted(target, image, name="clash"), clash, booted(target, image, name="clash"):
        pass


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("qemu:///system?socket=/nonexistent/libvirt-sock", "libvirt is not running at"),
        ("bogus:///nothing", "cannot connect to libvirt at bogus:///nothing"),
        ("qemu+tcp://192.0.2.1/system", "another host is reached with qemu+ssh:// only"),
    ],
    ids=["not-running", "wrong-uri", "not-loopback"],
)
def test_bad_libvirt_uri_is_one_line(
    treegate_cli: TreegateCli, harness: Harness, candidate: Commit, uri: str, says: str
) -> None:
    proc = treegate_cli(
        "boot",
        "--backend",
        "libvirt",
        "--libvirt-uri",
        uri,
        "--repo",
        str(harness.repo.path),
        "--commit",
        candidate.checksum,
        "--state-dir",
        str(harness.state.root),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_permission_problem_is_one_line(libvirtd: str) -> None:
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "from harness.machine.libvirt import connect\n"
            "from harness.errors import UserError\n"
            "try:\n"
            f"    connect({LOCAL!r})\n"
            "except UserError as e:\n"
            "    print(e.one_line())\n",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.stdout.startswith(f"not allowed to use libvirt at {LOCAL}"), out
