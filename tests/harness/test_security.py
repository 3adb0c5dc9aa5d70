"""Security on real VMs: the harness's key is its own, no image takes a password, guest host
keys are pinned, nothing secret reaches the logs, and a guest that stops answering is a
timeout with the last console lines."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from harness.errors import GuestTimeout, TreeFailure
from harness.guest import Guest
from harness.plugin.session import Harness

pytestmark = pytest.mark.vm


def test_harness_key_is_its_own_and_private(harness: Harness, machine: Guest) -> None:
    key = harness.state.key
    assert key.parent == harness.state.root
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = key.with_name(key.name + ".pub").read_text().split()[1]
    for mine in Path.home().glob(".ssh/*.pub"):
        assert mine.read_text().split()[1:2] != [public], f"{mine} is the harness's key"
    # The only key root's authorized_keys in the guest holds is the harness's.
    keys = machine.succeed("cat /root/.ssh/authorized_keys").split("\n")
    assert [k.split()[1] for k in keys if k.strip()] == [public]


def test_no_image_accepts_a_password(machine: Guest) -> None:
    config = machine.succeed("sshd -T")
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    # From the host, as an attacker would try: the server offers public keys only.
    with socket.create_connection(("127.0.0.1", machine.vm.ssh_port), timeout=30) as sock:
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=30)
            with pytest.raises(paramiko.BadAuthenticationType) as info:
                transport.auth_password("root", "root")
            assert info.value.allowed_types == ["publickey"]
        finally:
            transport.close()


def test_a_different_host_key_is_refused(harness: Harness, machine: Guest, tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    impostor = Guest(
        machine.vm,
        client_key=harness.state.key,
        host_key=(tmp_path / "other.pub").read_text(),
    )
    with pytest.raises(TreeFailure, match="unexpected SSH host key"):
        impostor.wait_for_ssh(timeout=60)


def test_nothing_secret_in_logs_or_reports(harness: Harness, machine: Guest) -> None:
    machine.succeed("true")
    secret = [
        line
        for line in harness.state.key.read_text().splitlines()
        if line and not line.startswith("-----")
    ]
    for path in harness.state.runs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            text = path.read_bytes().decode(errors="replace")
            assert not any(line in text for line in secret), f"private key material in {path}"


def test_guest_that_stops_answering_is_a_timeout_with_the_console(machine: Guest) -> None:
    # A line on the console (a restored machine has printed nothing since its restore).
    machine.succeed("echo 'treegate: last words before the network goes' > /dev/console")
    # The guest drops its network: the running command's connection goes silent.
    command = "ip -o link | awk -F': ' '$2 != \"lo\" {print $2}' | xargs -n1 -I{} ip link set {} down; sleep 600"
    with pytest.raises(GuestTimeout) as info:
        machine.execute(command, timeout=8)
    assert "did not finish within" in str(info.value)
    assert "last words before the network goes" in info.value.console_tail
    # Nothing can reach this machine any more: spare the teardown its attempts to.
    machine.vm.destroy()
