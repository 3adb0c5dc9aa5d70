"""The guest API on a real machine: command outcomes, timeouts and files."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import GuestCommandFailed, GuestTimeout, TreeFailure, describe
from harness.guest import Guest

pytestmark = pytest.mark.vm


def test_succeed_fail_and_their_failures(machine: Guest) -> None:
    assert machine.succeed("echo out; echo err >&2") == "out\nerr\n"
    assert "No such file" in machine.fail("ls /nonexistent")
    with pytest.raises(GuestCommandFailed) as caught:
        machine.succeed(
            "for n in $(seq 20); do echo progress $n; done; echo why it failed >&2; exit 3"
        )
    assert caught.value.status == 3
    # What the verdict and the report show: the command, its status, the output's last lines.
    first, *rest = describe(caught.value).splitlines()
    assert first.startswith("GuestCommandFailed: command 'for n in") and "exited 3" in first
    assert rest[-2:] == ["progress 20", "why it failed"], rest
    with pytest.raises(GuestCommandFailed):
        machine.fail("true")


def test_a_command_past_its_timeout_is_a_guest_timeout_and_the_connection_survives(
    machine: Guest,
) -> None:
    with pytest.raises(GuestTimeout, match="did not finish within"):
        machine.execute("sleep 60", timeout=2)
    assert machine.succeed("echo still here").strip() == "still here"


def test_files_go_both_ways_and_waits_work(machine: Guest, tmp_path: Path) -> None:
    local = tmp_path / "payload"
    local.write_bytes(bytes(range(256)) * 64)
    machine.put_file(local, "/var/tmp/payload")
    back = machine.get_file("/var/tmp/payload", tmp_path / "back")
    assert back.read_bytes() == local.read_bytes()
    machine.wait_for_unit("ssh.service")
    machine.wait_for_open_port(22)
    machine.succeed("echo treegate-console-check > /dev/console")
    machine.wait_for_console_text(r"(?m)^treegate-console-check", timeout=30)
    with pytest.raises(TreeFailure, match="did not show 'never printed'"):
        machine.wait_for_console_text("never printed", timeout=2)
    journal = machine.journal(tmp_path / "journal.txt").read_text()
    assert "Linux version" in journal  # this boot's journal, from the kernel's first line on


def test_an_sshd_that_refuses_the_harness_key_fails_with_that_reason(machine: Guest) -> None:
    """A tree whose sshd answers but will not let root in with the harness's key (root login
    disabled, say) fails with that reason, not as a guest that never came up."""
    machine.succeed("echo 'PermitRootLogin no' > /etc/ssh/sshd_config.d/00-no-root.conf")
    machine.succeed("systemctl reload ssh.service")
    machine.close()
    with pytest.raises(TreeFailure, match="refused the harness's key") as caught:
        machine.wait_for_ssh(timeout=300)
    assert not isinstance(caught.value, GuestTimeout)
