"""The ``treegate`` command: compose, image, boot, ssh.

Every subcommand turns a :class:`~harness.errors.TreegateError` into one line on stderr and
an exit status: 2 for bad input, 3 for a broken harness or host, 1 for a failed tree,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from harness import log
from harness.arch import ARCHES, get_arch
from harness.boot import PROJECT_ROOT, Target
from harness.errors import InfraError, TreeFailure, TreegateError, UserError
from harness.machine.base import BACKENDS, Backend
from harness.signing import SigningKey
from harness.state import State
from harness.suites import SUITES

if TYPE_CHECKING:
    from harness.gate import GateConfig


def _cmd_compose(args: argparse.Namespace) -> int:
    from harness.compose import compose
    from harness.definition import load_definition
    from harness.repo import Repo

    definition = load_definition(args.definition)
    state = State.at(args.state_dir)
    repo = Repo(args.repo)
    signing = _signing(args)
    for arch_name in args.arch or ["x86_64"]:
        arch = get_arch(arch_name)
        show = (lambda line: print(f"  {line}", file=sys.stderr)) if not args.quiet else None
        print(f"composing {definition.name} for {arch.name} …", file=sys.stderr)
        result = compose(
            definition,
            arch,
            repo,
            workdir=state.tmp,
            force=args.force,
            progress=show,
            exclude_suites=tuple(args.exclude_suite or ()),
        )
        how = "cached" if result.cached else f"composed in {result.seconds:.0f} s"
        if signing is not None:
            repo.sign(result.commit, signing)
            how += f", signed by {signing.fingerprint[-16:]}"
        print(f"{result.ref} {result.commit} ({how})")
    return 0


def gate_config(args: argparse.Namespace) -> GateConfig:
    """The gate's configuration: ``--config``'s stream, overridden by the flags given."""
    import dataclasses

    from harness.config import load_config
    from harness.gate import GateConfig, config_for_stream
    from harness.quarantine import load_quarantine

    signing = _signing(args)
    if args.config:
        config_file = load_config(Path(args.config))
        stream = config_file.stream(args.stream)
        if signing is None and config_file.signing is not None:
            from harness.signing import load_key

            signing = load_key(config_file.signing.gpg_homedir, config_file.signing.key)
        base = config_for_stream(config_file, stream, signing=signing)
    elif args.stream:
        raise UserError("--stream needs --config")
    else:
        for flag, value in (("--repo", args.repo), ("--ref", args.ref)):
            if not value:
                raise UserError(f"{flag} is required (or --config)")
        if not args.promote_to:
            raise UserError("--promote-to is required (or --config)")
        base = GateConfig(Path(args.repo), args.ref, args.promote_to, signing=signing)
    overrides = {
        "repo": Path(args.repo) if args.repo else None,
        "candidate_ref": args.ref,
        "tested_ref": args.promote_to,
        "arches": tuple(args.arch) if args.arch else None,
        "suites": tuple(args.suite) if args.suite else None,
        "rebase_ref": args.rebase_ref,
        "state_dir": Path(args.state_dir) if args.state_dir else None,
        "timeout_min": args.timeout_min,
        "external_tests": Path(args.external_tests) if args.external_tests else None,
        "installed_prefixes": tuple(args.installed_prefix) if args.installed_prefix else None,
        "quarantine": load_quarantine(Path(args.quarantine)) if args.quarantine else None,
        "flaky_passes": True if args.flaky_passes else None,
        "allow_downgrade": True if args.allow_downgrade else None,
        "backend": _backend(args) if args.backend or args.libvirt_uri else None,
    }
    return dataclasses.replace(
        base,
        **{k: v for k, v in overrides.items() if v is not None},
        workers=args.workers,
        layout=args.layout,
        accel=args.accel,
        wait_for_lock=not args.no_wait,
    )


def _backend(args: argparse.Namespace) -> Backend:
    if args.libvirt_uri and args.backend not in (None, "libvirt"):
        raise UserError("--libvirt-uri needs --backend libvirt")
    if args.libvirt_uri:
        return Backend("libvirt", args.libvirt_uri)
    return Backend(args.backend or "qemu")


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=list(BACKENDS),
        help="what runs the machines: qemu (a QEMU process of treegate's own; the default) "
        "or libvirt (transient domains)",
    )
    p.add_argument(
        "--libvirt-uri",
        metavar="URI",
        help="libvirt daemon for --backend libvirt (default qemu:///system; another host: "
        "qemu+ssh://USER@HOST/system, which gets the image uploaded and its guests reached "
        "through an SSH tunnel)",
    )


def _signing(args: argparse.Namespace) -> SigningKey | None:
    from harness.signing import load_key

    if not args.gpg_homedir:
        if args.gpg_key:
            raise UserError("--gpg-key needs --gpg-homedir")
        return None
    return load_key(Path(args.gpg_homedir), args.gpg_key)


def _add_signing(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--gpg-homedir", metavar="DIR", help=f"GnuPG home of the key that {what}")
    p.add_argument(
        "--gpg-key", metavar="ID", help="the key in --gpg-homedir (default: its only one)"
    )


def _target(args: argparse.Namespace, arch: str | None = None) -> Target:
    from harness.repo import Repo

    return Target.create(
        State.at(args.state_dir),
        Repo(args.repo),
        arch or args.arch,
        layout=getattr(args, "layout", None),
        force_accel=getattr(args, "accel", None),
        backend=_backend(args) if hasattr(args, "backend") else None,
    )


def _cmd_check(args: argparse.Namespace) -> int:
    from harness.arch import get_arch
    from harness.boot import PROJECT_ROOT
    from harness.contract import check_tree
    from harness.layout import load_layout
    from harness.repo import Repo

    repo = Repo(args.repo)
    commit = repo.resolve(args.commit)
    arch = get_arch(args.arch)
    layout = load_layout(args.layout or arch.layout, PROJECT_ROOT / "images")
    found = check_tree(repo, commit, arch, layout)
    for requirement in found:
        print(requirement.line())
    if all(r.met for r in found):
        print(f"{commit.short} can be gated on {arch.name} ({layout.name})")
        return 0
    print(f"{commit.short} cannot be gated on {arch.name}: the gate would reject it before booting")
    return 1


def _cmd_image(args: argparse.Namespace) -> int:
    from harness.boot import image_for
    from harness.run import run

    target = _target(args)
    out = Path(args.output).resolve() if args.output else None
    tmp = None
    if out is not None:
        if not out.parent.is_dir():
            raise UserError(f"cannot write {out}: {out.parent} is not a directory")
        tmp = out.with_name(f".{out.name}.partial")
        try:  # fail before the build, not after it
            tmp.touch()
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror}") from None
    try:
        image = image_for(target, args.commit)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    how = "cached" if image.cached else f"built in {image.seconds:.1f} s"
    if out is not None and tmp is not None:
        fmt = "qcow2" if out.suffix == ".qcow2" else "raw"
        try:
            run(["qemu-img", "convert", "-O", fmt, str(image.path), str(tmp)])
            tmp.replace(out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        print(f"{out} ({fmt}, commit {image.commit[:12]}, {how})")
    else:
        print(f"{image.path} (commit {image.commit[:12]}, {how})")
    return 0


def _cmd_boot(args: argparse.Namespace) -> int:
    import time

    from harness.boot import booted, image_for, ssh_command

    target = _target(args)
    image = image_for(target, args.commit)
    start = time.monotonic()
    with booted(target, image, name=args.name) as machine:
        took = time.monotonic() - start
        vm = machine.vm
        (vm.workdir / "hostkey.pub").write_text(image.host_key + "\n")
        print(f"{args.name}: {image.commit[:12]} up in {took:.1f} s (console: {vm.console_log})")
        ssh = ssh_command(target.state, vm.ssh_port, image.host_key, vm.workdir)
        print("ssh: " + " ".join(ssh))
        print(f"or: treegate ssh {args.name}   (Ctrl-C stops the machine)")
        sys.stdout.flush()
        while vm.is_running():
            time.sleep(0.5)
        print(f"{args.name} stopped: {vm.exit_reason()}", file=sys.stderr)
    return 0


def _cmd_ssh(args: argparse.Namespace) -> int:
    import json

    from harness.boot import machines_dir, ssh_command

    state = State.at(args.state_dir)
    running = []
    for meta in sorted(machines_dir(state).glob("*/machine.json")):
        data = json.loads(meta.read_text())
        if (meta.parent / "hostkey.pub").exists() and (
            args.name is None or data["name"] == args.name
        ):
            running.append((data, (meta.parent / "hostkey.pub").read_text().strip(), meta.parent))
    if not running:
        raise UserError(
            "no running machine" + (f" named {args.name}" if args.name else ""),
            hint="start one with treegate boot",
        )
    if len(running) > 1:
        names = ", ".join(d["name"] for d, _, _ in running)
        raise UserError(f"several machines are running ({names})", hint="name one")
    data, host_key, workdir = running[0]
    argv = ssh_command(state, int(data["ssh_port"]), host_key, workdir) + list(args.command)
    os.execvp(argv[0], argv)
    return 0  # not reached


def _cmd_gate(args: argparse.Namespace) -> int:
    import json

    from harness.gate import run_gate

    config = gate_config(args)
    verdict = run_gate(config)
    print(verdict.table())
    if args.json:
        Path(args.json).write_text(json.dumps(verdict.to_json(), indent=1))
    return verdict.exit_code


def _cmd_watch(args: argparse.Namespace) -> int:
    from harness.config import load_config
    from harness.signing import load_key
    from harness.watch import WatchConfig, watch

    config = load_config(Path(args.config))
    signing = _signing(args)
    if signing is None and config.signing is not None:
        signing = load_key(config.signing.gpg_homedir, config.signing.key)
    if args.interval <= 0:
        raise UserError("--interval must be positive")

    def say(line: str) -> None:
        print(line, flush=True)

    return watch(
        WatchConfig(
            config=config,
            interval=args.interval,
            once=args.once,
            state_dir=Path(args.state_dir) if args.state_dir else None,
            signing=signing,
        ),
        say,
    )


def _cmd_flakes(args: argparse.Namespace) -> int:
    from harness.store import Store

    state = State.at(args.state_dir)
    flakes = Store(state.root / "treegate.db").flakes(limit=args.limit, last_runs=args.runs)
    if not flakes:
        print(f"no flaky test in the last {args.runs} gates")
        return 0
    print(f"{'flaky':>5} {'changes':>7} {'runs':>4}  {'last':11} {'arch':7} test")
    for f in flakes:
        print(f"{f.flaky:5} {f.changes:7} {f.runs:4}  {f.last:11} {f.arch:7} {f.nodeid}")
    return 0


def _cmd_bisect(args: argparse.Namespace) -> int:
    from harness.bisect import bisect, pytest_runner
    from harness.repo import Repo

    state = State.at(args.state_dir)
    repo = Repo(args.repo)
    repo.check()
    get_arch(args.arch)
    backend = _backend(args)
    extra = (
        [] if backend.kind == "qemu" else ["--backend", backend.kind, "--libvirt-uri", backend.uri]
    )
    result = bisect(
        repo, args.good, args.bad, pytest_runner(repo, args.test, args.arch, state, extra)
    )
    first = result.first_bad
    print(f"first bad commit: {first.checksum}")
    print(f"  version: {first.version or '(none)'}")
    print(f"  {len(result.probes)} test run(s) over {result.commits} commit(s):")
    for probe in result.probes:
        print(f"    {probe.commit[:12]} {probe.outcome:7} {probe.seconds:6.1f}s")
    print("  " + result.diff.replace("\n", "\n  "))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from harness.demo import run_demo

    state = State.at(args.state_dir)
    workdir = Path(args.workdir) if args.workdir else state.root / "demo"
    return run_demo(workdir, state, arch=args.arch, json_out=Path(args.json) if args.json else None)


def _cmd_cache(args: argparse.Namespace) -> int:
    import time

    from harness import cache

    state = State.at(args.state_dir)
    if args.action == "gc":
        removed = cache.gc(state, older_than_days=args.older_than)
        freed = sum(e.size for e in removed)
        print(f"removed {len(removed)} entries, {freed / 2**20:.0f} MiB freed")
        return 0
    total = 0
    for e in cache.entries(state):
        age = (time.time() - e.last_used) / 86400
        print(
            f"{e.kind:8} {e.size / 2**20:8.0f} MiB  used {age:5.1f} days ago  {e.commit[:12]}  {e.path}"
        )
        total += e.size
    print(f"total {total / 2**20:.0f} MiB in {state.root}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report import build
    from harness.store import Store

    state = State.at(args.state_dir)
    index = build(
        Path(args.results),
        Path(args.out),
        store=Store(state.root / "treegate.db"),
        allure=PROJECT_ROOT / "node_modules" / ".bin" / "allure",
        history=args.history,
    )
    print(f"report: {index}")
    return 0


def _add_target(p: argparse.ArgumentParser, commit: bool = True) -> None:
    p.add_argument("--repo", required=True, help="OSTree repository holding the commit")
    if commit:
        p.add_argument(
            "--commit",
            required=True,
            metavar="REF_OR_CHECKSUM",
            help="commit to use (a ref or checksum)",
        )
    p.add_argument(
        "--arch", default="x86_64", help=f"guest arch: {', '.join(ARCHES)} (default x86_64)"
    )
    p.add_argument("--layout", help="disk layout name or file (default: the arch's, images/*.toml)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir", help="state directory (default: $TREEGATE_STATE_DIR or .treegate)"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show progress (-v) and every host command (-vv)",
    )


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``treegate`` command (also used to render --help in docs)."""
    parser = _Parser(
        prog="treegate",
        description="Boot OSTree commits in real VMs, test them over SSH, gate their promotion.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compose", help="compose a tree definition into an OSTree commit")
    p.add_argument("definition", help="tree definition file (fixtures/trees/*.toml)")
    p.add_argument("--repo", required=True, help="OSTree repository (created if missing)")
    p.add_argument(
        "--arch",
        action="append",
        choices=list(ARCHES),
        help="target arch (repeatable; default x86_64)",
    )
    p.add_argument(
        "--force", action="store_true", help="compose again even if the cache has this definition"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not show mmdebstrap's progress")
    p.add_argument(
        "--exclude-suite",
        action="append",
        metavar="SUITE",
        help="leave this apt suite of the host's sources out (repeatable), e.g. a "
        "security suite whose index the mirror serves stale",
    )
    _add_signing(p, "signs the commit (a detached signature; cached composes too)")
    _add_common(p)
    p.set_defaults(func=_cmd_compose)

    p = sub.add_parser(
        "check",
        help="check, without booting, that a commit holds what treegate needs to boot and reach it",
        description="Prints each requirement of the tree contract (docs/trees.md), met or not, "
        "with the change that meets it.  Exit status: 0 every requirement met, 1 the tree cannot "
        "be gated, 2 bad input.",
    )
    _add_target(p)
    _add_common(p)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "image", help="build (or fetch from the cache) a bootable disk image of a commit"
    )
    _add_target(p)
    p.add_argument("-o", "--output", help="also write the image here (.qcow2 or raw)")
    _add_common(p)
    p.set_defaults(func=_cmd_image)

    p = sub.add_parser("boot", help="boot a commit in QEMU and keep it running until Ctrl-C")
    _add_target(p)
    p.add_argument("--name", default="treegate", help="machine name (default: treegate)")
    p.add_argument("--accel", choices=["kvm", "tcg"], help="force an accelerator (default: probe)")
    _add_backend(p)
    _add_common(p)
    p.set_defaults(func=_cmd_boot)

    p = sub.add_parser(
        "gate",
        help="test a candidate commit and promote it to the tested ref only if every required suite passed",
        description="Exit status: 0 promoted, 1 rejected (a test failed: the tree is bad), "
        "2 bad input, 3 error (the harness or host broke: nothing promoted), 130 interrupted.",
    )
    p.add_argument(
        "--config", metavar="FILE", help="treegate.toml: the stream's settings are the defaults"
    )
    p.add_argument("--stream", help="the stream of --config to gate (default: its only one)")
    p.add_argument("--repo", help="OSTree repository")
    p.add_argument("--ref", help="candidate ref (may contain {arch})")
    p.add_argument(
        "--promote-to",
        metavar="TESTED_REF",
        help="tested ref moved on success; its commit is the upgrade baseline (may contain {arch})",
    )
    p.add_argument("--arch", action="append", help="required arch (repeatable; default x86_64)")
    p.add_argument(
        "--suite",
        action="append",
        help="required suite (repeatable; default: every suite that "
        "applied to the baseline): " + ", ".join(SUITES),
    )
    p.add_argument(
        "--rebase-ref", help="another tree's ref for the rebase suite (may contain {arch})"
    )
    p.add_argument(
        "--external-tests",
        metavar="DIR",
        help="external tests in kola's format, required as the 'external' suite",
    )
    p.add_argument(
        "--installed-prefix",
        action="append",
        metavar="PREFIX",
        help="the 'installed' suite runs only the installed tests whose names start with "
        "PREFIX (repeatable), as gnome-desktop-testing-runner PREFIX does",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="VMs run side by side (pytest-xdist; default 1)"
    )
    p.add_argument("--layout", help="disk layout (default: the arch's)")
    p.add_argument("--accel", choices=["kvm", "tcg"], help="force an accelerator (default: probe)")
    _add_backend(p)
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="refuse instead of waiting when another gate holds the tested ref",
    )
    p.add_argument("--json", metavar="FILE", help="write the verdict as JSON")
    p.add_argument(
        "--quarantine",
        metavar="FILE",
        help="known-bad tests (test, arch, reason, expires) reported but not blocking",
    )
    p.add_argument(
        "--flaky-passes",
        action="store_true",
        help="a flaky test (error, then passed on a retry) counts as a pass",
    )
    p.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="gate a candidate older than the one the tested ref holds (refused otherwise); "
        "its promotion is stamped with the time it happens, so machines following the ref "
        "move to it",
    )
    p.add_argument(
        "--timeout-min",
        type=float,
        metavar="MIN",
        help="stop the gate's tests after this many minutes (an error: nothing promoted)",
    )
    _add_signing(
        p,
        "candidates must be signed by, guests verify pulls against, and promotions are signed with",
    )
    _add_common(p)
    p.set_defaults(func=_cmd_gate)

    p = sub.add_parser(
        "watch",
        help="follow the streams of a treegate.toml and gate each new candidate commit",
        description="Polls every stream's candidate refs; gates each new head with the "
        "stream's settings; commits superseded before they were gated are recorded as such. "
        "What was handled is kept in the store, so a restart gates nothing twice. "
        "SIGTERM stops it (exit 0 between gates, 130 if it interrupted one).",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="treegate.toml")
    p.add_argument(
        "--interval", type=float, default=30.0, help="seconds between polls (default 30)"
    )
    p.add_argument("--once", action="store_true", help="one pass over the streams, then exit")
    _add_signing(p, "overrides the config's signing key")
    _add_common(p)
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser(
        "flakes",
        help="the flakiest tests of recent gates, from the store",
        description="Tests that ended flaky (error, then passed on a retry) or changed "
        "outcome between gates, most flaky first.",
    )
    p.add_argument("--limit", type=int, default=20, help="how many tests (default 20)")
    p.add_argument("--runs", type=int, default=100, help="over the last N gates (default 100)")
    _add_common(p)
    p.set_defaults(func=_cmd_flakes)

    p = sub.add_parser(
        "bisect",
        help="find the first commit between a good and a bad one where a test fails",
        description="Binary search over the first-parent history from --bad back to --good, "
        "running one test (a pytest node id) on each probe as the gate runs it.",
    )
    p.add_argument("--repo", required=True, help="OSTree repository")
    p.add_argument("--good", required=True, help="a commit (or ref) where the test passes")
    p.add_argument("--bad", required=True, help="a later commit (or ref) where it fails")
    p.add_argument(
        "--test",
        required=True,
        metavar="NODEID",
        help="one test, e.g. 'tests/system/test_smoke.py::test_system_is_running[x86_64]'",
    )
    p.add_argument("--arch", default="x86_64", help="arch to test on (default x86_64)")
    _add_backend(p)
    _add_common(p)
    p.set_defaults(func=_cmd_bisect)

    p = sub.add_parser(
        "demo", help="compose the fixture trees and gate them, checking every verdict"
    )
    p.add_argument("--workdir", help="where the demo repository lives (default: STATE_DIR/demo)")
    p.add_argument("--arch", default="x86_64", choices=list(ARCHES), help="arch to run the demo on")
    p.add_argument("--json", metavar="FILE", help="write the list of verdicts as JSON")
    _add_common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("cache", help="list or trim cached images and saved machine states")
    p.add_argument(
        "action", choices=["ls", "gc"], help="ls: list with sizes; gc: remove unused entries"
    )
    p.add_argument(
        "--older-than",
        type=float,
        default=7.0,
        metavar="DAYS",
        help="gc: remove entries unused for this many days (default 7; 0 removes all)",
    )
    _add_common(p)
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser(
        "report",
        help="build the HTML report (allure, cross-arch matrix, trend) of a run's results",
        description="Every pytest run of treegate's suites writes allure results (by default "
        "under STATE_DIR/runs/RUN/allure-results; a gate's under its run directory).",
    )
    p.add_argument("--results", required=True, metavar="ALLURE_DIR", help="allure results")
    p.add_argument("--out", required=True, metavar="HTML_DIR", help="where to write the report")
    p.add_argument(
        "--history", type=int, default=10, metavar="N", help="report runs in the trend (10)"
    )
    _add_common(p)
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "ssh",
        help="open a shell (or run a command) on a machine started by treegate boot",
        description="Options come before NAME: everything after NAME is the command to run.",
    )
    p.add_argument("name", nargs="?", help="machine name (default: the only running one)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    _add_common(p)
    p.set_defaults(func=_cmd_ssh)
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _failed(exc: TreegateError) -> int:
    """Say what went wrong in one line; the exit status says whose fault it was."""
    print(f"treegate: error: {exc.one_line()}", file=sys.stderr)
    if isinstance(exc, UserError):
        return 2
    if isinstance(exc, TreeFailure):
        return 1
    return 3 if isinstance(exc, InfraError) else 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``treegate`` command."""
    try:
        args = build_parser().parse_args(argv)
    except UserError as exc:
        return _failed(exc)
    # boot narrates what it does (the accelerator chosen, the wait for SSH); others are quiet.
    log.setup(args.verbose + (1 if args.command == "boot" else 0))
    func: Callable[[argparse.Namespace], int] = args.func
    # SIGTERM unwinds like Ctrl-C, so machines are destroyed and the store is finished.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return func(args)
    except KeyboardInterrupt:
        print("treegate: interrupted", file=sys.stderr)
        return 130
    except TreegateError as exc:
        return _failed(exc)
    except OSError as exc:
        # A host problem that no layer anticipated (full disk, permissions): still one line.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"treegate: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
