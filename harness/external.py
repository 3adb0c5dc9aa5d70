"""External tests in kola's format: a directory of executables, each its own pytest item.

Projects such as ostree and rpm-ostree keep tests like these in their own repositories and
run them with kola; treegate runs them unchanged.  A test is an executable file; its optional
metadata is a ``## kola:`` comment block of ``key: value`` lines (kola's YAML)::

    #!/bin/bash
    ## kola:
    ##   timeoutMin: 10
    ##   architectures: x86_64 aarch64
    ##   tags: reboot

Known keys: ``timeoutMin``, ``architectures`` (names, or ``!name`` to exclude), ``tags``,
``exclusive`` (treegate gives every test a fresh machine, so both values are honoured).
A test that asks for what treegate cannot give (``additionalDisks``, ``minMemory`` above the
machine's, ``injectContainer``…) is skipped with that reason, never run half-way.

In the guest the test is copied to ``/var/tmp/treegate-ext/`` and run as root in its own
session.  It follows the autopkgtest reboot protocol, as kola does: calling
``/tmp/autopkgtest-reboot MARK`` ends the test's process group and the harness reboots the
machine (through its bootloader) and runs the test again with ``AUTOPKGTEST_REBOOT_MARK=MARK``.
Exit status 0 passes, 77 skips, anything else fails with the output's last lines.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import TreeFailure, UserError
from harness.guest import Guest

GUEST_DIR = "/var/tmp/treegate-ext"
SKIP_STATUS = 77
MAX_REBOOTS = 10
DEFAULT_TIMEOUT_MIN = 10.0

UNSUPPORTED = {
    "additionalDisks": "extra disks are not supported",
    "additionalNics": "extra NICs are not supported",
    "injectContainer": "container injection is not supported",
    "primaryDisk": "a custom primary disk is not supported",
    "minDisk": "a minimum disk size is not supported",
    "appendKernelArgs": "extra kernel arguments are not supported",
    "appendFirstbootKernelArgs": "extra kernel arguments are not supported",
}
"""kola metadata keys treegate refuses, with the reason the skipped test reports."""

KNOWN = {"timeoutMin", "architectures", "tags", "exclusive", "minMemory", "platforms", "distros"}

REBOOT_HELPER = f"""#!/bin/sh
# autopkgtest's reboot protocol, as kola provides it: record the mark, then end the test's
# process group; treegate reboots the machine and runs the test again with the mark set.
echo "$1" > {GUEST_DIR}/reboot-mark
/bin/kill -s TERM -- -"$(ps -o pgid= -p $$ | tr -d ' ')"
"""

RUNNER = f"""#!/bin/sh
# treegate: run one external test ($1) as root in its own session, with the reboot mark ($2).
cd {GUEST_DIR}
rm -f reboot-mark
mkdir -p tmp
export KOLA_TEST="$1" AUTOPKGTEST_TMP={GUEST_DIR}/tmp AUTOPKGTEST_REBOOT_MARK="$2"
[ -n "$2" ] || unset AUTOPKGTEST_REBOOT_MARK
setsid --wait "./$1"
"""


@dataclass(frozen=True)
class ExternalTest:
    """One executable of an external test directory and its kola metadata."""

    name: str
    path: Path
    timeout_min: float = DEFAULT_TIMEOUT_MIN
    architectures: tuple[str, ...] = ()
    """Arches it runs on (empty: all); ``!name`` entries exclude."""
    tags: tuple[str, ...] = ()
    exclusive: bool = True
    refused: str = ""
    """Why treegate will not run it (skipped with this reason), or empty."""
    metadata: dict[str, object] = field(default_factory=dict, compare=False)

    def skip_reason(self, arch: str, memory_mib: int) -> str:
        """Why the test does not run on ``arch`` here, or empty when it does."""
        if self.refused:
            return self.refused
        memory = self.metadata.get("minMemory")
        if isinstance(memory, int) and memory > memory_mib:
            return f"needs {memory} MiB of memory, the machine has {memory_mib}"
        wanted = [a for a in self.architectures if not a.startswith("!")]
        excluded = [a[1:] for a in self.architectures if a.startswith("!")]
        if arch in excluded or (wanted and arch not in wanted):
            return f"architectures {' '.join(self.architectures)!r} exclude {arch}"
        return ""


def parse_metadata(text: str) -> dict[str, object]:
    """The ``## kola:`` block of a test's source as a dict (kola's YAML subset: one
    ``key: value`` per line; values are numbers, booleans, quoted or bare strings, or JSON
    lists).  A one-line JSON form, ``# kola: {...}``, is read too."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("# kola:") and stripped[len("# kola:") :].strip().startswith("{"):
            try:
                data = json.loads(stripped[len("# kola:") :])
            except json.JSONDecodeError as exc:
                raise UserError(f"bad kola JSON metadata: {exc}") from None
            if not isinstance(data, dict):
                raise UserError("kola metadata must be a mapping")
            return data
        if stripped == "## kola:":
            return _parse_block(lines[i + 1 :])
    return {}


def _parse_block(lines: list[str]) -> dict[str, object]:
    data: dict[str, object] = {}
    for line in lines:
        if not line.startswith("##"):
            break
        body = line[2:].strip()
        if not body or body.startswith("#"):
            continue
        key, sep, value = body.partition(":")
        if not sep:
            raise UserError(f"bad kola metadata line {line!r} (want 'key: value')")
        data[key.strip()] = _scalar(value.strip())
    return data


def _scalar(value: str) -> object:
    if value in ("true", "false"):
        return value == "true"
    if value[:1] in "\"'" and value[-1:] == value[:1] and len(value) >= 2:
        return value[1:-1]
    if value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"bad kola metadata list {value!r}: {exc}") from None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _words(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return tuple(str(value).replace(",", " ").split())


def load_test(path: Path) -> ExternalTest:
    """Read one test's metadata; a key treegate cannot honour makes it *refused*."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read external test {path}: {exc.strerror}") from None
    try:
        meta = parse_metadata(text)
    except UserError as exc:
        raise UserError(f"{path}: {exc.one_line()}") from None
    refused = "; ".join(f"{key}: {why}" for key, why in UNSUPPORTED.items() if key in meta)
    unknown = sorted(set(meta) - KNOWN - set(UNSUPPORTED))
    if unknown and not refused:
        refused = f"unknown kola metadata {', '.join(unknown)}"
    timeout = meta.get("timeoutMin", DEFAULT_TIMEOUT_MIN)
    return ExternalTest(
        name=path.name,
        path=path,
        timeout_min=float(timeout) if isinstance(timeout, int | float) else DEFAULT_TIMEOUT_MIN,
        architectures=_words(meta.get("architectures", "")),
        tags=_words(meta.get("tags", "")),
        exclusive=bool(meta.get("exclusive", True)),
        refused=refused,
        metadata=meta,
    )


def discover(directory: Path) -> list[ExternalTest]:
    """The external tests in ``directory``: its executable regular files, by name."""
    if not directory.is_dir():
        raise UserError(f"external test directory {directory} does not exist")
    tests = [
        load_test(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and os.access(p, os.X_OK) and not p.name.startswith(".")
    ]
    if not tests:
        raise UserError(f"{directory} holds no executable tests")
    return tests


def run_external(test: ExternalTest, machine: Guest, output: Path) -> None:
    """Run ``test`` on ``machine`` with the reboot protocol; raise :class:`TreeFailure` if it
    failed (its output is written to ``output``).  Returns normally when it passed; exit
    status 77 raises ``Skipped`` through pytest."""
    import pytest  # the skip outcome belongs to pytest; the rest of this module does not need it

    def install() -> None:
        # Again after every reboot: the boot empties /tmp, where the helper must be.
        machine.succeed(f"mkdir -p {GUEST_DIR}")
        with tempfile.TemporaryDirectory() as tmp:
            helper, runner = Path(tmp) / "reboot", Path(tmp) / "run-one"
            helper.write_text(REBOOT_HELPER)
            runner.write_text(RUNNER)
            machine.put_file(helper, "/tmp/autopkgtest-reboot")
            machine.put_file(runner, f"{GUEST_DIR}/run-one")
        machine.put_file(test.path, f"{GUEST_DIR}/{test.name}")
        machine.succeed(
            f"chmod 0755 /tmp/autopkgtest-reboot {GUEST_DIR}/run-one "
            f"{GUEST_DIR}/{shlex.quote(test.name)}"
        )

    mark = ""
    transcript: list[str] = []
    for _ in range(MAX_REBOOTS + 1):
        install()
        status, out = machine.execute(
            f"{GUEST_DIR}/run-one {shlex.quote(test.name)} {shlex.quote(mark)}",
            timeout=test.timeout_min * 60,
        )
        transcript.append(f"--- run{' after reboot ' + mark if mark else ''}: exit {status}\n{out}")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(transcript))
        code, new_mark = machine.execute(f"cat {GUEST_DIR}/reboot-mark 2>/dev/null")
        if code == 0 and new_mark.strip():
            mark = new_mark.strip()
            machine.reboot()
            continue
        if status == 0:
            return
        if status == SKIP_STATUS:
            pytest.skip(f"{test.name} exited 77 (skip): {_tail(out, 3)}")
        raise TreeFailure(f"external test {test.name} exited {status}:\n{_tail(out, 20)}")
    raise TreeFailure(f"external test {test.name} asked for more than {MAX_REBOOTS} reboots")


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
