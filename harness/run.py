"""The one way treegate runs host commands: logged, checked, and raising a typed error."""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence

from harness.errors import CommandError, InfraError

log = logging.getLogger("treegate.run")

_PR_SET_PDEATHSIG = 1

STOP_GRACE = 60.0
"""Seconds a command has to exit after SIGTERM before it is killed: mmdebstrap unmounts its
chroot and removes its files in that time."""


def _dies_with_caller() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the kernel send the child SIGTERM when its caller dies.

    So no command outlives a treegate or pytest process that was killed outright, and a
    compose still gets to unmount its chroot.  The libc handle is looked up here, in the
    parent: between fork and exec the child only makes the one system call.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """End ``proc`` the way it can clean up after itself: SIGTERM, a grace period, SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
    stdout_path: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return the completed process with text stdout/stderr.

    Raises :class:`CommandError` (with stderr) when the command exits non-zero and ``check``
    is true, and :class:`InfraError` when the program does not exist or times out.  A command
    that is cut short (timeout, Ctrl-C, SIGTERM to treegate) gets SIGTERM and time to clean up
    before it is killed, and one whose caller dies gets SIGTERM from the kernel.  With
    ``capture`` false the command's output goes to the terminal.  With ``on_line``, stdout and
    stderr are merged and each line is handed to it as it arrives (progress of long steps);
    the merged text is then the result's ``stdout`` and ``stderr`` both.  With
    ``stdout_path``, stdout (binary) goes to that file instead.
    """
    args = [str(a) for a in argv]
    log.debug("$ %s", shlex.join(args))
    full_env = None if env is None else {**os.environ, **env}
    data = input.encode() if isinstance(input, str) else input
    if on_line is not None:
        return _run_streaming(args, full_env, cwd, check, on_line)
    out_file = open(stdout_path, "wb") if stdout_path is not None else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if data is not None else None,
            env=full_env,
            cwd=cwd,
            stdout=out_file if out_file else subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            preexec_fn=_dies_with_caller(),
        )
    except FileNotFoundError as exc:
        if out_file is not None:
            out_file.close()
        raise InfraError(f"{args[0]} is not installed", hint="run ci/setup") from exc
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _stop(proc)
        raise InfraError(f"{args[0]} did not finish within {timeout:.0f} s") from exc
    except BaseException:
        _stop(proc)
        raise
    finally:
        if out_file is not None:
            out_file.close()
    stdout = (out or b"").decode(errors="replace")
    stderr = (err or b"").decode(errors="replace")
    result = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, stderr or stdout)
    return result


def _run_streaming(
    args: list[str],
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    check: bool,
    on_line: Callable[[str], None],
) -> subprocess.CompletedProcess[str]:
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=_dies_with_caller(),
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{args[0]} is not installed", hint="run ci/setup") from exc
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            on_line(line.rstrip("\n"))
        proc.wait()
    finally:
        _stop(proc)
    text = "".join(lines)
    result = subprocess.CompletedProcess(args, proc.returncode, text, text)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, text)
    return result
