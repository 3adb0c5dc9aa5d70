"""Faults under a running test, on real VMs: each ends as the right kind of outcome, fast.

A QEMU that dies or is frozen under a test is the host's fault (*error*: the gate never
promotes and says "run again"); a guest has no way out of its user-mode network except its
SSH forward and the repo server; a full disk while building an image is one line and leaves
nothing half-written in the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.errors import GuestTimeout, HostOverloaded, InfraError, MachineDied, TreeFailure
from harness.guest import Guest
from harness.hostload import STARVED_PERCENT, cpu_pressure
from harness.machine.qemu import GUEST_REPO_ADDR, GUEST_REPO_PORT
from harness.plugin.session import Harness
from harness.repo import Commit

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]


def qemu_pid(machine: Guest) -> int:
    pid = getattr(machine.vm, "pid", 0)
    assert pid > 0
    return int(pid)


def test_qemu_killed_under_a_test_is_an_error(machine: Guest) -> None:
    os.kill(qemu_pid(machine), signal.SIGKILL)
    with pytest.raises(MachineDied) as info:
        machine.execute("true", timeout=60)
    assert isinstance(info.value, InfraError)  # error, not failed: the tree did nothing wrong
    assert "stopped" in str(info.value) or "exit" in str(info.value)


def test_frozen_qemu_is_an_error_long_before_the_command_timeout(machine: Guest) -> None:
    pid = qemu_pid(machine)
    # Frozen under a running command, two seconds in.
    freeze = threading.Timer(2.0, os.kill, (pid, signal.SIGSTOP))
    try:
        start = time.monotonic()
        freeze.start()
        with pytest.raises(MachineDied, match="stopped"):
            machine.execute("sleep 60", timeout=600)
        # Caught at the first polling tick after the freeze, not at the 600 s timeout.
        assert time.monotonic() - start < 30
        # A command started on the frozen machine fails at once, before SSH waits on it.
        start = time.monotonic()
        with pytest.raises(MachineDied, match="stopped"):
            machine.execute("true", timeout=600)
        assert time.monotonic() - start < 5
    finally:
        freeze.cancel()
        os.kill(pid, signal.SIGCONT)


def test_a_timeout_on_a_starved_host_is_the_hosts_error(machine: Guest) -> None:
    """The same missed time limit blames the tree on a calm host and the host when busy
    processes starve the guest of CPU (pressure stall information, :mod:`harness.hostload`)."""
    if cpu_pressure() is None:
        pytest.skip("this kernel has no CPU pressure information (/proc/pressure/cpu)")
    with pytest.raises(GuestTimeout) as calm:
        machine.execute("sleep 30", timeout=1)
    assert not isinstance(calm.value, HostOverloaded)  # failed: the tree's
    # Three busy processes per core keep runnable tasks waiting for a CPU all the time.
    hogs = [
        subprocess.Popen(["sh", "-c", "while :; do :; done"])
        for _ in range(3 * (os.cpu_count() or 1))
    ]
    try:
        deadline = time.monotonic() + 180
        while (cpu_pressure() or 0.0) < STARVED_PERCENT + 10:
            assert time.monotonic() < deadline, f"CPU pressure stayed at {cpu_pressure()}"
            time.sleep(1)
        with pytest.raises(HostOverloaded, match="overloaded") as busy:
            machine.execute("sleep 30", timeout=1)
        assert isinstance(busy.value, InfraError)  # error: the gate never rejects for it
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_guest_cannot_reach_host_ports(machine: Guest) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0)
    port = listener.getsockname()[1]
    try:
        # 10.0.2.2 is the host in QEMU's user-mode network; restrict=on drops everything but
        # the forwards treegate set up.
        status, _ = machine.execute(
            f"timeout 15 bash -c 'echo hello > /dev/tcp/10.0.2.2/{port}'", timeout=60
        )
        assert status != 0
        with pytest.raises(BlockingIOError):
            listener.accept()
        # The one service the guest may reach is there (the check above is not vacuous).
        machine.succeed(
            f"timeout 15 bash -c 'exec 3<>/dev/tcp/{GUEST_REPO_ADDR}/{GUEST_REPO_PORT}; "
            'printf "HEAD /config HTTP/1.0\\r\\n\\r\\n" >&3; head -1 <&3\' | grep -q 200',
            timeout=60,
        )
    finally:
        listener.close()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_while_building_an_image(
    treegate_cli: Callable[..., subprocess.CompletedProcess[str]],
    harness: Harness,
    candidate: Commit,
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "small", "48m") as small:
        state = small / "state"
        proc = treegate_cli(
            "image",
            "--repo",
            str(harness.repo.path),
            "--commit",
            candidate.checksum,
            "--state-dir",
            str(state),
            timeout=600,
        )
        assert proc.returncode == 3, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("treegate: error: "), proc.stderr
        assert "Traceback" not in proc.stderr
        images = state / "images"
        leftovers = [p for p in images.iterdir()] if images.exists() else []
        assert leftovers == [], leftovers  # nothing half-written in the cache


def test_corrupt_object_in_the_candidate_is_rejected(
    treegate_cli: Callable[..., subprocess.CompletedProcess[str]],
    harness: Harness,
    candidate: Commit,
    tmp_path: Path,
) -> None:
    # A repository holding only the candidate, with one byte of one of its files flipped.
    repo = tmp_path / "repo"
    ref = "treegate/bookworm/x86_64/corrupt"
    subprocess.run(["ostree", "init", f"--repo={repo}", "--mode=archive"], check=True)
    subprocess.run(
        ["ostree", "pull-local", f"--repo={repo}", str(harness.repo.path), candidate.checksum],
        check=True,
    )
    subprocess.run(
        ["ostree", "refs", f"--repo={repo}", f"--create={ref}", candidate.checksum], check=True
    )
    listing = subprocess.run(
        ["ostree", "ls", f"--repo={repo}", "-R", "-C", candidate.checksum, "/usr/bin"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    obj = next(line.split()[4] for line in listing.splitlines() if line.startswith("-"))
    path = repo / "objects" / obj[:2] / f"{obj[2:]}.filez"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    # A local pull hard-links objects: replace the file, never write through the shared inode
    # (that would corrupt the fixtures repository too).
    path.unlink()
    path.write_bytes(bytes(data))

    state = tmp_path / "state"  # nothing cached: the candidate's image is built from the repo
    verdict = tmp_path / "verdict.json"
    proc = treegate_cli(
        "gate",
        "--repo",
        str(repo),
        "--ref",
        ref,
        "--promote-to",
        "treegate/tested",
        "--suite",
        "smoke",
        "--state-dir",
        str(state),
        "--json",
        str(verdict),
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    data_out = json.loads(verdict.read_text())
    assert data_out["decision"] == "rejected"
    assert any("corrupt" in r.get("message", "") for r in data_out["results"]), data_out
    refs = subprocess.run(
        ["ostree", "refs", f"--repo={repo}"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert refs == [ref]  # the tested ref was never written
    images = state / "images"
    assert [p.name for p in images.iterdir() if p.name.startswith(".build-")] == []


# Kills the sshd processes that serve the harness's connection (not the listener), from inside
# the very command that runs over it: the connection drops mid-command, the guest stays up.
DROP_CONNECTION = "pkill -KILL -f 'sshd: root'"


def test_dropped_connection_fails_a_command_that_may_have_had_effects(machine: Guest) -> None:
    with pytest.raises(InfraError, match=r"dropped while running .*not retried") as info:
        machine.execute(f"touch /root/ran-once; {DROP_CONNECTION}; sleep 60", timeout=120)
    assert not isinstance(info.value, TreeFailure)  # the tree did nothing wrong: error
    # The machine is still there and the harness reconnected to the same boot.
    assert machine.succeed("ls /root/ran-once").strip() == "/root/ran-once"


def test_dropped_connection_reruns_an_idempotent_command(machine: Guest) -> None:
    # Drops the connection the first time only, like a network blip.
    command = (
        f"test -e /run/dropped || {{ touch /run/dropped; {DROP_CONNECTION}; sleep 60; }}; echo done"
    )
    status, out = machine.execute(command, timeout=120, idempotent=True)
    assert (status, out.strip()) == (0, "done")


def test_guest_that_reboots_on_its_own_is_caught_by_its_boot_id(machine: Guest) -> None:
    before = machine.boot_id()
    # The reboot comes from the guest itself, a second later, behind the harness's back.  (A
    # timer's default accuracy is a minute: without AccuracySec it may fire 60 s late.)
    machine.succeed("systemd-run --on-active=1 --timer-property=AccuracySec=100ms systemctl reboot")
    with pytest.raises(TreeFailure, match="rebooted on its own") as info:
        machine.succeed("sleep 120", timeout=300, idempotent=True)
    assert isinstance(info.value, TreeFailure)  # failed, not error: the tree rebooted
    assert machine.boot_id() != before


def test_ssh_port_taken_before_qemu_binds_it_is_retried(
    harness: Harness, candidate: Commit, arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.machine.qemu as qemu_module

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = qemu_module.free_port
    offered = iter([taken])
    # The first port the harness picks is taken by someone else by the time QEMU binds it.
    monkeypatch.setattr(qemu_module, "free_port", lambda: next(offered, None) or real_free_port())
    image = harness.image(candidate.checksum, arch, ref=candidate.ref)
    try:
        with harness.boot(image, name="port-taken", restore=True) as machine:
            assert machine.vm.ssh_port != taken
            machine.succeed("true")
    finally:
        squatter.close()
