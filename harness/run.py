"""The one way treegate runs host commands: logged, checked, and raising a typed error."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence

from harness.errors import CommandError, InfraError

log = logging.getLogger("treegate.run")


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
    is true, and :class:`InfraError` when the program does not exist or times out.  With
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
        proc = subprocess.run(
            args,
            input=data,
            env=full_env,
            cwd=cwd,
            stdout=out_file if out_file else subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{args[0]} is not installed", hint="run ci/setup") from exc
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{args[0]} did not finish within {timeout:.0f} s") from exc
    finally:
        if out_file is not None:
            out_file.close()
    stdout = (proc.stdout or b"").decode(errors="replace")
    stderr = (proc.stderr or b"").decode(errors="replace")
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
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    result = subprocess.CompletedProcess(args, proc.returncode, text, text)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, text)
    return result
