"""The error taxonomy every layer raises, and that the CLI, pytest and the gate read.

Three outcomes must stay apart all the way to the gate's decision:

* :class:`TreeFailure` -- the tree under test is bad (a kernel panic on the console, a unit
  that failed, a command that should have worked and did not).  pytest reports it as
  **failed**; the gate rejects the candidate.
* :class:`InfraError` -- the harness or the host broke (QEMU died, the disk is full, an
  infrastructure timeout).  pytest reports it as **error**; the gate never promotes and says
  the run should be retried.
* :class:`UserError` -- bad input (a missing ref, an unknown arch).  The CLI prints one line
  and exits 2.
"""

from __future__ import annotations


class TreegateError(Exception):
    """Base class: every error treegate raises on purpose prints as one line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint as the single line the CLI prints."""
        text = " ".join(self.message.split())
        return f"{text} ({self.hint})" if self.hint else text


class UserError(TreegateError):
    """Bad input: a path, ref, commit, arch or definition the user got wrong."""


class InfraError(TreegateError):
    """The harness or the host broke; nothing is known about the tree under test."""


class CommandError(InfraError):
    """A host command (ostree, qemu-img, mkfs, ...) exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"{argv[0]} failed with exit status {returncode}: {tail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class TreeFailure(TreegateError, AssertionError):
    """The tree under test misbehaved: pytest reports it as failed, the gate rejects."""


class _ConsoleTail:
    """An error that prints the machine's last console lines under its message."""

    message: str
    console_tail: str

    def __str__(self) -> str:
        if not self.console_tail:
            return self.message
        return f"{self.message}\n--- last console lines ---\n{self.console_tail}"


class BootFailure(_ConsoleTail, TreeFailure):
    """The console showed that the boot went wrong (panic, emergency shell, ...)."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail


class GuestCommandFailed(TreeFailure):
    """A command run with ``machine.succeed`` (or ``fail``) did not end as the test expected.

    Its text is the command and its exit status on the first line, then the command's whole
    output (stdout and stderr as the guest interleaved them); :func:`describe` keeps the
    output's last lines, where a failing command says why.
    """

    def __init__(self, command: str, status: int, output: str, expected: str) -> None:
        said = f"; output:\n{output.rstrip()}" if output.strip() else "; no output"
        super().__init__(f"command {command!r} exited {status}, expected {expected}{said}")
        self.command = command
        self.status = status
        self.output = output


class GuestTimeout(_ConsoleTail, TreeFailure):
    """The guest did not reach a state (unit active, port open, SSH up) in time.

    A timeout is the tree's fault when the machine was running all along: QEMU was alive and
    the harness could reach it.  When QEMU itself died, :class:`MachineDied` is raised instead.
    """

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail


class MachineDied(InfraError):
    """The VM process went away under the test (killed, crashed, out of memory)."""


class HostOverloaded(_ConsoleTail, InfraError):
    """A guest missed a time limit while the host starved it of CPU (see
    :mod:`harness.hostload`): the host's error, not the tree's failure."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(
            message, hint="run fewer machines at once (pytest -n, gate --workers), then again"
        )
        self.console_tail = console_tail


SHOWN_LINES = 6
"""How many lines of a failure's detail (a command's output, a console tail) every place
that shows a failure keeps: its last ones, where programs say why they stopped."""

SHOWN_WIDTH = 240
"""How many characters of each such line are kept."""


def summarize(text: str, lines: int = SHOWN_LINES, width: int = SHOWN_WIDTH) -> str:
    """A failure's text as the verdict, the results file and the report show it: the first
    line (what failed), then the last ``lines`` non-empty lines of the rest (why), each cut
    to ``width`` characters, with a line saying how many were left out."""
    all_lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    if not all_lines:
        return ""

    def cut(line: str) -> str:
        return line if len(line) <= width else line[: width - 1] + "…"

    head, rest = all_lines[0], all_lines[1:]
    shown = rest[-lines:] if lines > 0 else []
    out = [cut(head)]
    if len(rest) > len(shown):
        out.append(f"[… {len(rest) - len(shown)} earlier line(s)]")
    out += [cut(line) for line in shown]
    return "\n".join(out)


def describe(exc: BaseException) -> str:
    """``Type: text`` of a failure, summarized (see :func:`summarize`)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {summarize(text)}" if text else type(exc).__name__
