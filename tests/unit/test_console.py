"""Console patterns, checked against console text captured from real boots."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.console import ConsoleWatcher, clean, scan
from harness.errors import BootFailure

DATA = Path(__file__).parent / "data"


def test_clean_boot_and_reboot_match_nothing() -> None:
    assert scan(clean((DATA / "console-clean-x86_64.log").read_text())) is None


def test_init_exit_panic_is_caught() -> None:
    found = scan(clean((DATA / "console-panic-x86_64.log").read_text()))
    assert found is not None
    assert found.pattern.name == "kernel panic"
    assert "Attempted to kill init" in found.line


@pytest.mark.parametrize(
    ("line", "name"),
    [
        # systemd's emergency.service banner (systemd 252)
        (
            'You are in emergency mode. After logging in, type "journalctl -xb" to view',
            "emergency shell",
        ),
        ('You are in rescue mode. After logging in, type "journalctl -xb" to view', "rescue shell"),
        # dracut's own shell when the root never appears
        (
            "[  190.1] dracut-initqueue[201]: Warning: /dev/disk/by-label/tg-root does not exist",
            "initramfs failure",
        ),
        ("Entering emergency mode. Exit the shell to continue.", "initramfs failure"),
        # treegate's lean initramfs, captured from a boot without root= (it then exits)
        ("treegate-initramfs: no root= on the kernel command line", "initramfs failure"),
        (
            "[    2.5] systemd[1]: multi-user.target: Found ordering cycle on foo.service/start",
            "ordering cycle",
        ),
        ("[    3.1] Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops"),
        ("[    3.1] BUG: kernel NULL pointer dereference, address: 0000000000000008", "kernel bug"),
        ("[    9.0] Out of memory: Killed process 412 (dockerd)", "out of memory"),
        ("error: file `/boot/ostree/x/vmlinuz' not found.", "bootloader"),
    ],
)
def test_each_pattern_catches_its_failure(line: str, name: str) -> None:
    found = scan(line)
    assert found is not None and found.pattern.name == name


@pytest.mark.parametrize(
    "line",
    [
        "[    0.0] Linux version 6.1.0 (debian-kernel@lists.debian.org)",
        "treegate login: ",
        "[   16.9] systemd-shutdown[1]: Failed to finalize file systems, ignoring.",
        "error: you need to load the kernel first.",  # GRUB, harmless in our grub.cfg
    ],
)
def test_ordinary_lines_are_not_failures(line: str) -> None:
    assert scan(line) is None


def test_watcher_follows_a_growing_file_and_honours_marks(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    watcher = ConsoleWatcher(log)
    watcher.check()  # no file yet: nothing to say
    log.write_text("booting\n")
    watcher.check()
    with open(log, "a") as f:
        f.write("[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    with pytest.raises(BootFailure) as caught:
        watcher.check()
    assert "Unable to mount root" in str(caught.value)
    assert "booting" in caught.value.console_tail
    watcher.mark()
    watcher.check()  # the panic is before the mark
    assert "Kernel panic" in watcher.tail()


def test_seen_after_looks_only_past_its_position(tmp_path: Path) -> None:
    # The lines are the end of a guest's own reboot, as its console printed them.
    log = tmp_path / "console.log"
    log.write_text("[   77.9] systemd-shutdown[1]: Syncing filesystems and block devices.\n")
    watcher = ConsoleWatcher(log)
    start = watcher.size()
    assert start > 0
    assert not watcher.seen_after(start, r"reboot: Restarting system")
    with open(log, "a") as f:
        f.write("[   78.045225] reboot: Restarting system\n\x1b[H\x1b[J\x1b[1;1H\n")
    assert watcher.seen_after(start, r"reboot: Restarting system")
    assert not watcher.seen_after(watcher.size(), r"reboot: Restarting system")


def test_a_panics_console_tail_keeps_its_line_however_long_the_trace_after_it(
    tmp_path: Path,
) -> None:
    """A panic prints its call trace after its own line: the failure's console tail shows
    the lines that led to it and the panic line, however much of the trace was read."""
    log = tmp_path / "console.log"
    panic = (DATA / "console-panic-x86_64.log").read_text()
    boot = "".join(f"[    5.{n:06d}] booting step {n}\n" for n in range(40))
    trace = "".join(f"[    6.986452]  frame_{n}+0x2d/0x80\n" for n in range(60))
    log.write_text(boot + panic + trace)
    with pytest.raises(BootFailure) as caught:
        ConsoleWatcher(log).check()
    tail = caught.value.console_tail.splitlines()
    assert len(tail) == 25
    assert "Kernel panic - not syncing: Attempted to kill init!" in tail[-6]
    assert tail[0] == "[    5.000021] booting step 21"
    # Nothing before the panic: its first 25 lines, the panic line first.
    log.write_text(panic + trace)
    with pytest.raises(BootFailure) as caught:
        ConsoleWatcher(log).check()
    assert "Attempted to kill init" in caught.value.console_tail.splitlines()[0]
