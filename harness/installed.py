"""Installed tests: the ``.test`` key files under ``/usr/share/installed-tests/``.

GNOME's "as-installed" test format, which Debian's ``ostree-tests`` (the libostree tests),
GLib, GTK and others ship, and which ``gnome-desktop-testing-runner`` runs.  Each test is a
GLib key file; its name is its path below ``installed-tests/`` (``libostree/test-basic.sh.test``),
exactly as the runner names it::

    [Test]
    Type=session
    Exec=env G_TEST_SRCDIR=/usr/libexec/installed-tests/libostree /usr/libexec/…/test-basic.sh
    # optional: replaces the whole environment, as the runner does
    TestEnvironment=LC_ALL=C.UTF-8;HOME=/tmp;

``Type`` is ``session`` or ``session-exclusive``.  treegate lists the tests by reading the
candidate commit on the host (no boot needed), so each becomes its own pytest item.  A test
that is ``session-exclusive`` or lives in a ``destructive/`` directory needs a machine of its
own (:attr:`InstalledTest.destructive`); the others share one.

In the guest a test runs the way the runner runs it (:func:`run_installed`): its ``Exec``
argv, no shell, in a fresh temporary directory under ``/tmp`` holding a ``.testtmp`` stamp,
with ``GIO_USE_VFS=local``, stdin from ``/dev/null``, killed at its timeout.  Exit status 0
passes, 77 skips (the reason is the output's last line), anything else fails, and so does a
test that was killed at its timeout.
"""

from __future__ import annotations

import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError
from harness.guest import Guest
from harness.repo import Repo

INSTALLED_TESTS_DIR = "/usr/share/installed-tests"
"""Where a tree's installed tests live (the runner also reads ``/usr/local/share``, which
an OSTree tree does not ship)."""

SKIP_STATUS = 77
DEFAULT_TIMEOUT_S = 300.0
"""gnome-desktop-testing-runner's default ``--timeout``."""

KILL_AFTER_S = 10
"""Grace between the TERM at a test's timeout and the KILL that follows it."""

GUEST_DIR = "/var/tmp/treegate-installed"
"""Where the guest keeps each test's output (``NAME.txt``, ``/`` squashed to ``_``)."""

TYPES = ("session", "session-exclusive")

RUNNER = f"""
# treegate: run one installed test as gnome-desktop-testing-runner runs it.
# $1: the test's name with / as _, $2: its limit in seconds, then its argv.
name=$1 limit=$2
shift 2
out={GUEST_DIR}/$name.txt
mkdir -p {GUEST_DIR} && d=$(mktemp -d "/tmp/test-tmp-$name-XXXXXX") || exit 125
: > "$d/.testtmp"
cd "$d" || exit 125
start=${{EPOCHREALTIME/[.,]/}}
GIO_USE_VFS=local timeout --kill-after={KILL_AFTER_S} "$limit" "$@" > "$out" 2>&1 < /dev/null
status=$?
end=${{EPOCHREALTIME/[.,]/}}
cd /
us=$((end - start))
# timeout(1) exits 124 after its TERM and 137 after its KILL; a test may exit 124 itself, so
# only a test that also ran for the whole limit counts as killed.
timed_out=0
if (( (status == 124 || status == 137) && us >= limit * 1000000 )); then
    timed_out=1
    echo "treegate: killed at its timeout of $limit s" >> "$out"
fi
# Like the runner: remove the test's directory, only if it still holds the stamp.
if [[ -e $d/.testtmp ]]; then rm -rf "$d"; fi
printf 'treegate-installed: status=%d seconds=%d.%06d timed_out=%d\\n' \\
    "$status" $((us / 1000000)) $((us % 1000000)) "$timed_out"
cat "$out"
"""
"""The guest side of :func:`run_installed` (bash, for its clock without a process per read):
the test's ``Exec`` argv without a shell, in a fresh ``/tmp/test-tmp-NAME-XXXXXX`` holding a
``.testtmp`` stamp, ``GIO_USE_VFS=local``, stdin from ``/dev/null``, output (stdout and
stderr) to ``GUEST_DIR/NAME.txt``, TERM at the limit and KILL ``KILL_AFTER_S`` later.  Prints
``treegate-installed: status=S seconds=T timed_out=0|1``, then the output: one round trip."""


@dataclass(frozen=True)
class InstalledTest:
    """One installed test of a tree, read from its key file."""

    name: str
    """Its path below ``installed-tests/``, as the runner names it: ``libostree/test-basic.sh.test``."""
    argv: tuple[str, ...]
    """``Exec``, split as GLib splits it (shell quoting, no expansion); run without a shell."""
    type: str = "session"
    environment: tuple[str, ...] = ()
    """``TestEnvironment`` (``KEY=VALUE`` entries): when set it *replaces* the environment."""
    problem: str = ""
    """Why the key file cannot be run (no ``Exec``, an unknown ``Type``…), or empty.  Such a test
    fails with this reason: the runner refuses the whole run over it."""

    @property
    def destructive(self) -> bool:
        """True when the test needs a machine of its own: ``Type=session-exclusive``, or its key
        file is in a ``destructive/`` directory."""
        return self.type == "session-exclusive" or "destructive" in self.name.split("/")[:-1]

    @property
    def squashed(self) -> str:
        """The name with ``/`` as ``_``: how the runner names the test's files."""
        return self.name.replace("/", "_")

    def command(self, limit_s: float) -> str:
        """The guest shell command that runs the test (see :data:`RUNNER`), bounded by
        ``limit_s`` seconds."""
        argv = list(self.argv)
        if self.environment:
            argv = ["env", "-i", *self.environment, *argv]
        limit = f"{max(1, round(limit_s))}"  # timeout(1) takes 0 as no limit at all
        return shlex.join(["bash", "-c", RUNNER, "run-one", self.squashed, limit, *argv])


@dataclass(frozen=True)
class InstalledResult:
    """How one run of an installed test ended."""

    outcome: str
    """``passed``, ``skipped`` or ``failed`` (as gnome-desktop-testing-runner would say)."""
    status: int
    seconds: float
    """Time the test itself ran in the guest."""
    timed_out: bool
    output: str

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines of the test's output."""
        return "\n".join(self.output.rstrip().splitlines()[-lines:])

    @property
    def skip_reason(self) -> str:
        """The output's last non-empty line (libostree's ``skip`` prints ``1..0 # SKIP why``)."""
        return self.tail(1).strip() or "no output"


# -- key files ------------------------------------------------------------------------------


def parse_keyfile(text: str) -> dict[str, dict[str, str]]:
    """A GLib key file as ``{group: {key: raw value}}``: comments and blank lines skipped,
    localized keys (``Name[de]``) left out, a repeated key's last value kept."""
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = groups.setdefault(stripped[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"not a key file line: {line!r}")
        key = key.strip()
        if "[" in key:
            continue
        current[key] = value.strip()
    return groups


_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\", ";": ";"}


def keyfile_string(raw: str) -> str:
    """A key file string value with GLib's escapes (``\\s``, ``\\n``, ``\\t``, ``\\r``,
    ``\\\\``) resolved."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), raw)


def keyfile_list(raw: str) -> tuple[str, ...]:
    """A key file string list: ``;``-separated (``\\;`` is a literal ``;``), trailing ``;``
    optional."""
    items = re.split(r"(?<!\\);", raw)
    if items and items[-1] == "":
        items.pop()
    return tuple(keyfile_string(item) for item in items)


def parse_test(name: str, text: str) -> InstalledTest:
    """The test ``name`` (its path below ``installed-tests/``) from its key file's text.
    Never raises for a bad file: the returned test carries the :attr:`~InstalledTest.problem`."""
    try:
        group = parse_keyfile(text).get("Test")
    except ValueError as exc:
        return InstalledTest(name, (), problem=f"{name}: {exc}")
    if group is None:
        return InstalledTest(name, (), problem=f"{name}: no [Test] group")
    if "Exec" not in group:
        return InstalledTest(name, (), problem=f"{name}: no Exec key")
    try:
        argv = tuple(shlex.split(keyfile_string(group["Exec"])))
    except ValueError as exc:
        return InstalledTest(name, (), problem=f"{name}: cannot split Exec: {exc}")
    if not argv:
        return InstalledTest(name, (), problem=f"{name}: empty Exec")
    kind = keyfile_string(group.get("Type", ""))
    if kind not in TYPES:
        return InstalledTest(
            name,
            argv,
            problem=f"{name}: unknown test type {kind!r} (want session or session-exclusive)",
        )
    environment = keyfile_list(group["TestEnvironment"]) if "TestEnvironment" in group else ()
    return InstalledTest(name, argv, type=kind, environment=environment)


def discover_tree(root: Path) -> list[InstalledTest]:
    """The installed tests in a directory laid out like ``installed-tests/`` (every regular
    ``*.test`` file below it, recursively), sorted by name."""
    return [
        parse_test(str(path.relative_to(root)), path.read_text(errors="replace"))
        for path in sorted(root.rglob("*.test"))
        if path.is_file() and not path.is_symlink()
    ]


def list_in_commit(repo: Repo, commit: str) -> list[InstalledTest]:
    """The installed tests of ``commit`` in ``repo``, read on the host without booting it
    (empty when the tree has no ``/usr/share/installed-tests``)."""
    if not repo.has_path(commit, INSTALLED_TESTS_DIR):
        return []
    with tempfile.TemporaryDirectory(prefix="treegate-installed-") as tmp:
        dest = Path(tmp) / "installed-tests"
        repo.checkout(commit, INSTALLED_TESTS_DIR, dest)
        return discover_tree(dest)


def select(tests: list[InstalledTest], prefixes: tuple[str, ...]) -> list[InstalledTest]:
    """The tests whose names start with one of ``prefixes`` (all of them when there are
    none), as the runner's ``PREFIX`` arguments select."""
    if not prefixes:
        return tests
    return [t for t in tests if t.name.startswith(prefixes)]


# -- running --------------------------------------------------------------------------------


def run_installed(
    test: InstalledTest, machine: Guest, timeout_s: float, output: Path | None = None
) -> InstalledResult:
    """Run ``test`` on ``machine`` as gnome-desktop-testing-runner runs it and say how it
    ended; its whole output is copied to ``output`` when given.

    ``timeout_s`` bounds the test in the guest (scaled by the machine's timeout scale under
    emulation): past it the test gets TERM, then KILL, and is *failed* with its last output.
    A machine that stops answering beyond that is the guest API's timeout (also failed).
    """
    limit = timeout_s * machine.timeout_scale
    code, answer = machine.execute(test.command(limit), timeout=timeout_s + KILL_AFTER_S + 60)
    first, _, text = answer.partition("\n")
    fields = dict(w.split("=", 1) for w in first.split() if "=" in w)
    try:
        if not first.startswith("treegate-installed: "):
            raise ValueError(first)
        status, seconds = int(fields["status"]), float(fields["seconds"])
    except (KeyError, ValueError):
        raise InfraError(
            f"treegate's installed-test runner ended {code} without a status: {answer[-500:]!r}"
        ) from None
    timed_out = fields.get("timed_out") == "1"
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    if status == 0 and not timed_out:
        outcome = "passed"
    elif status == SKIP_STATUS:
        outcome = "skipped"
    else:
        outcome = "failed"
    return InstalledResult(outcome, status, seconds, timed_out, text)


def describe_failure(test: InstalledTest, result: InstalledResult, lines: int = 20) -> str:
    """The message of a failed test: how it ended and its last output lines."""
    how = (
        f"was killed at its timeout after {result.seconds:.0f} s"
        if result.timed_out
        else f"exited {result.status} after {result.seconds:.1f} s"
    )
    return f"installed test {test.name} {how}; last output:\n{result.tail(lines)}"


# -- gnome-desktop-testing-runner's own report ------------------------------------------------


_TAP = re.compile(r"^(ok|not ok)(?: # SKIP)? - (.+)$")


def parse_runner_tap(text: str, names: set[str]) -> dict[str, str]:
    """Each test's outcome from ``gnome-desktop-testing-runner --tap`` output: ``passed``,
    ``skipped`` or ``failed``.  Only lines naming one of ``names`` count (the runner also
    prints ``not ok - Test timed out after N seconds`` for a timeout, then the test's own
    ``not ok`` line)."""
    outcomes: dict[str, str] = {}
    for line in text.splitlines():
        m = _TAP.match(line.strip())
        if m is None or m.group(2) not in names:
            continue
        if m.group(1) == "not ok":
            outcomes[m.group(2)] = "failed"
        elif "# SKIP" in line:
            outcomes[m.group(2)] = "skipped"
        else:
            outcomes[m.group(2)] = "passed"
    return outcomes
