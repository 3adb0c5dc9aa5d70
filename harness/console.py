"""The console watcher: reads a machine's serial log as it grows and fails a boot at once.

A broken boot should fail in seconds with the lines that show why, not after an SSH
timeout.  Each pattern below names the failure it catches.  The watcher is polled by every
wait (see :func:`harness.retry.retry`), so a panic during ``wait_for_ssh`` or
``wait_for_unit`` ends the wait immediately with a :class:`~harness.errors.BootFailure`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BootFailure


@dataclass(frozen=True)
class ConsolePattern:
    """A console line that means the boot has failed, and what it means."""

    name: str
    regex: re.Pattern[str]
    meaning: str


PATTERNS: tuple[ConsolePattern, ...] = (
    # The kernel gave up: includes "Attempted to kill init!" when PID 1 exits, and
    # "VFS: Unable to mount root fs" when the root device never appeared.
    ConsolePattern(
        "kernel panic", re.compile(r"Kernel panic - not syncing"), "the kernel panicked"
    ),
    # A kernel Oops: the kernel hit a bug and killed the faulting task; the system is unsafe.
    ConsolePattern(
        "oops", re.compile(r"\bOops: [0-9a-fx]+ \[#\d+\]|\bOops#\d+"), "the kernel oopsed"
    ),
    # BUG() assertions and NULL dereferences print this header before (or instead of) an Oops.
    ConsolePattern(
        "kernel bug",
        re.compile(r"\bBUG: (?:kernel NULL pointer|unable to handle|soft lockup|scheduling while)"),
        "the kernel hit a BUG",
    ),
    # systemd reached emergency.target (a mount or a required unit failed): a root shell waits
    # on the console and nothing else starts.
    ConsolePattern(
        "emergency shell",
        re.compile(r"You are in emergency mode"),
        "systemd entered emergency mode",
    ),
    # Same for rescue.target, reached when asked on the command line or isolated by a unit.
    ConsolePattern(
        "rescue shell", re.compile(r"You are in rescue mode"), "systemd entered rescue mode"
    ),
    # The initramfs could not find or mount the root: treegate's own /init says why before it
    # exits (then the kernel panics); dracut's stock initramfs drops to its emergency shell.
    ConsolePattern(
        "initramfs failure",
        re.compile(
            r"treegate-initramfs: "
            r"|Entering emergency mode\. Exit the shell to continue|dracut(?:-\w+)?(?:\[\d+\])?: FATAL:"
            r"|Could not boot\.|Warning: /dev/\S+ does not exist"
        ),
        "the initramfs failed to mount the root filesystem",
    ),
    # ostree-prepare-root failed: the ostree= argument points at no deployment.
    ConsolePattern(
        "ostree prepare-root",
        re.compile(
            r"ostree-prepare-root(?:\[\d+\])?: (?:Couldn't find|ostree-prepare-root:)"
            r"|Failed to start .*OSTree Prepare OS"
        ),
        "ostree-prepare-root could not set up the deployment",
    ),
    # The kernel found no init to run at all.
    ConsolePattern(
        "no init",
        re.compile(r"No working init found|Failed to execute /init"),
        "no init could be run",
    ),
    # systemd broke a dependency loop by dropping a job: some unit silently did not start.
    ConsolePattern(
        "ordering cycle", re.compile(r"Found ordering cycle on"), "systemd found an ordering cycle"
    ),
    # The OOM killer ran during boot: the image needs more memory than the machine has.
    ConsolePattern(
        "out of memory", re.compile(r"Out of memory: Killed process"), "the OOM killer ran"
    ),
    # GRUB could not read what the guest's ostree wrote for it.
    ConsolePattern(
        "bootloader",
        re.compile(
            r"error: (?:file `[^']*' not found|no such partition|unknown filesystem|invalid magic number)"
        ),
        "the bootloader could not load the deployment",
    ),
)


@dataclass(frozen=True)
class ConsoleMatch:
    pattern: ConsolePattern
    line: str


def scan(text: str, patterns: tuple[ConsolePattern, ...] = PATTERNS) -> ConsoleMatch | None:
    """The first line of ``text`` that matches a failure pattern, if any."""
    for line in text.splitlines():
        for pattern in patterns:
            if pattern.regex.search(line):
                return ConsoleMatch(pattern, line.strip())
    return None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def clean(text: str) -> str:
    """Console text without terminal escape sequences and carriage returns."""
    return _ANSI.sub("", text)


class ConsoleWatcher:
    """Follows one serial log file; :meth:`check` raises as soon as a failure shows up."""

    def __init__(self, path: Path, patterns: tuple[ConsolePattern, ...] = PATTERNS) -> None:
        self.path = path
        self.patterns = patterns
        self._offset = 0
        self._scanned_from = 0
        self._pending = ""
        self._text: list[str] = []

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self._offset += len(data)
        self._text.append(data.decode(errors="replace"))

    def text(self) -> str:
        """Everything the console printed so far (escape sequences removed)."""
        self._read()
        return clean("".join(self._text))

    def mark(self) -> None:
        """Forget failures printed before now (e.g. the shutdown of a reboot)."""
        self._scanned_from = self.size()

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` non-empty lines of the console."""
        kept = [ln for ln in self.text().splitlines() if ln.strip()]
        return "\n".join(kept[-lines:])

    def tail_through(self, line: str, lines: int = 25, after: int = 5) -> str:
        """``lines`` non-empty lines of the console that hold ``line`` (the last time it was
        printed) and, when enough came before it, end ``after`` lines past it: what led to a
        failure, not only the call trace a panic prints after its own line."""
        kept = [ln for ln in self.text().splitlines() if ln.strip()]
        at = max((i for i, ln in enumerate(kept) if ln.strip() == line), default=len(kept) - 1)
        end = min(len(kept), max(at + 1 + after, lines))
        return "\n".join(kept[max(0, end - lines) : end])

    def check(self) -> None:
        """Raise :class:`BootFailure` if the console shows a failure since the last mark."""
        self._read()
        raw = "".join(self._text)[self._scanned_from :]
        found = scan(clean(raw), self.patterns)
        if found is not None:
            raise BootFailure(
                f"console shows {found.pattern.meaning}: {found.line}",
                console_tail=self.tail_through(found.line),
            )

    def size(self) -> int:
        """How much the console has printed so far: a position for :meth:`seen_after`."""
        self._read()
        return sum(len(t) for t in self._text)

    def seen_after(self, position: int, regex: str) -> bool:
        """True when ``regex`` occurs in what the console printed after ``position``."""
        self._read()
        return re.search(regex, clean("".join(self._text)[position:])) is not None

    def wait_text_seen(self, regex: str) -> bool:
        """True when ``regex`` occurs in the console since the last mark (for retry loops)."""
        self._read()
        return re.search(regex, clean("".join(self._text)[self._scanned_from :])) is not None
