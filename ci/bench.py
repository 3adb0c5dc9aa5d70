"""treegate's benchmark: medians of repeated runs, printed and written as flat JSON.

Keys (seconds): image.cold, image.cached, ARCH.boot_to_ssh for each ``--arch`` (QEMU start
through the arch's firmware, bootloader, kernel and systemd to SSH answering),
ARCH.restore_to_ssh (QEMU start from the saved ready state to SSH answering, clock set),
ARCH.upgrade_s and ARCH.rollback_s (on a machine restored at the minimal tree: ostree's
upgrade to minimal-v2, or the rollback from it, through the reboot to SSH answering on that
commit) with their ostree parts ARCH.upgrade_deploy_s and ARCH.rollback_deploy_s,
with ``--libvirt`` the same two through libvirt as ARCH.libvirt_boot_to_ssh and
ARCH.libvirt_restore_to_ssh,
gate.x86_64_full with ``--gate`` (one ``treegate gate`` of a commit with every suite
required, caches empty) and gate.matrix_3arch with ``--matrix`` (the same gate on x86_64,
aarch64 and ARMv7 at once), overhead.per_test (a trivial check as a treegate
test on an already booted machine, minus the same check over plain ssh).  With
``--installed`` (minutes to hours: the libostree installed tests under TCG), for each
``--arch``: installed.ARCH.total_s (the installed suite through pytest, one item per test),
installed.ARCH.in_one_go_s (``gnome-desktop-testing-runner`` running the same tests in one
go inside one restored machine), installed.ARCH.overhead_per_test_s (their difference per
test), installed.ARCH.item_overhead_s (the median of each item's pytest time minus the time
the test itself ran in the guest) and installed.ARCH.tests (how many).  Always, as a
yardstick for the rest: host.cpu_s (a fixed loop on every host core at once, before and
after everything else).  Run by ``ci/bench``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from harness import log
from harness.arch import ARCHES, get_arch
from harness.boot import Target, accel_for, booted, image_for, ssh_command
from harness.compose import compose, excluded_suites
from harness.definition import load_definition
from harness.errors import TreeFailure, TreegateError
from harness.image import build_image
from harness.installed import list_in_commit, parse_runner_tap, select
from harness.machine.base import Backend
from harness.repo import Repo, serve
from harness.state import State

ROOT = Path(__file__).resolve().parent.parent


TRIVIAL_SUITE = """
import pytest

pytestmark = pytest.mark.vm

@pytest.mark.parametrize("n", range({count}))
def test_trivial(shared_machine, n):
    shared_machine.succeed("true")
"""


def overhead_per_test(state: State, repo: Repo, runs: int) -> tuple[list[float], list[float]]:
    """Seconds per trivial check: as treegate tests (pytest items with fixtures on one shared,
    already booted machine) and as plain ``ssh … true`` commands on an already booted machine."""
    count = max(6, runs * 2)
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "test_trivial.py"
        suite.write_text(TRIVIAL_SUITE.format(count=count))
        results = Path(tmp) / "results.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(suite),
                "-q",
                "-p",
                "no:cacheprovider",
                "--state-dir",
                str(state.root),
                "--treegate-results",
                str(results),
                "--rootdir",
                str(ROOT),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        # The first item also starts the shared machine: only the others are per-test cost.
        items = [r["duration"] for r in json.loads(results.read_text())[1:]]
    with serve(repo) as port:
        target = Target.create(state, repo, "x86_64", repo_port=port)
        image = image_for(target, "treegate/bookworm/x86_64/minimal")
        with booted(target, image, name="bench-ssh", restore=True) as machine:
            ssh = ssh_command(state, machine.vm.ssh_port, image.host_key, machine.vm.workdir)
            plain = []
            for _ in range(count - 1):
                start = time.monotonic()
                subprocess.run(
                    [*ssh, "-o", "BatchMode=yes", "true"], check=True, capture_output=True
                )
                plain.append(time.monotonic() - start)
    return items, plain


def boot_figures(
    state: State,
    repo: Repo,
    arch_name: str,
    runs: int,
    exclude: tuple[str, ...],
    libvirt: bool = False,
) -> dict[str, list[float]]:
    """Cold boot to SSH through the arch's firmware and bootloader, and restore to SSH; with
    ``libvirt``, the same through libvirt (``qemu:///system``), each libvirt sample taken
    right after the QEMU backend's so both see the same load."""
    arch = get_arch(arch_name)
    result = compose(
        load_definition(ROOT / "fixtures/trees/minimal.toml"),
        arch,
        repo,
        workdir=state.tmp,
        exclude_suites=exclude,
    )
    samples: dict[str, list[float]] = {}
    with serve(repo) as port:
        targets = {"": Target.create(state, repo, arch_name, repo_port=port)}
        if libvirt:
            targets["libvirt_"] = dataclasses.replace(targets[""], backend=Backend("libvirt"))
        image = image_for(targets[""], result.commit, ref=result.ref)
        # The first boot of an arch on a host may probe KVM (up to 20 s, then cached for
        # the host): a fact of the host, not of a boot, so it happens before the clock starts.
        accel_for(targets[""], image)

        def timed(target: Target, restore: bool) -> float:
            start = time.monotonic()
            with booted(target, image, name=f"bench-{arch_name}", restore=restore):
                return time.monotonic() - start

        for _ in range(runs):
            for prefix, target in targets.items():
                key = f"{arch_name}.{prefix}boot_to_ssh"
                samples.setdefault(key, []).append(timed(target, False))
        for target in targets.values():
            with booted(target, image, name=f"bench-{arch_name}", restore=True):
                pass  # makes (or finds) the image's saved ready state
        for _ in range(runs):
            for prefix, target in targets.items():
                key = f"{arch_name}.{prefix}restore_to_ssh"
                samples.setdefault(key, []).append(timed(target, True))
    return samples


def upgrade_figures(
    state: State, repo: Repo, arch_name: str, runs: int, exclude: tuple[str, ...]
) -> dict[str, list[float]]:
    """An upgrade and a rollback as the suites do them, each through the arch's firmware and
    bootloader: a machine restored at the minimal tree (following minimal-v2's ref, as
    ``baseline_machine``) runs ``machine.upgrade(to=…)`` (pull and deploy) and reboots into
    minimal-v2, then ``machine.rollback()`` and reboots into minimal again.  Keys:
    ARCH.upgrade_s and ARCH.rollback_s (command through reboot to SSH answering on the
    expected commit), ARCH.upgrade_deploy_s and ARCH.rollback_deploy_s (the ostree part)."""
    arch = get_arch(arch_name)
    baseline, candidate = (
        compose(
            load_definition(ROOT / f"fixtures/trees/{tree}.toml"),
            arch,
            repo,
            workdir=state.tmp,
            exclude_suites=exclude,
        )
        for tree in ("minimal", "minimal-v2")
    )
    samples: dict[str, list[float]] = {}
    with serve(repo) as port:
        target = Target.create(state, repo, arch_name, repo_port=port)
        image = image_for(target, baseline.commit, ref=candidate.ref)
        for _ in range(runs):
            with booted(target, image, name=f"bench-upgrade-{arch_name}", restore=True) as m:
                for what, expected in (
                    ("upgrade", candidate.commit),
                    ("rollback", baseline.commit),
                ):
                    start = time.monotonic()
                    if what == "upgrade":
                        m.upgrade(to=expected)
                    else:
                        m.rollback()
                    deployed = time.monotonic()
                    m.reboot()
                    done = time.monotonic()
                    if m.booted_commit() != expected:
                        raise TreeFailure(f"{what} on {arch_name} booted the wrong commit")
                    samples.setdefault(f"{arch_name}.{what}_s", []).append(done - start)
                    samples.setdefault(f"{arch_name}.{what}_deploy_s", []).append(deployed - start)
    return samples


def _loop() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - start


def host_yardstick() -> list[float]:
    """Seconds for a fixed loop run on every core of the host at once (the slowest core's
    time), three times.

    Hosts of the same kind, and one host from hour to hour, ran the same boots up to twice
    as fast as each other (docs/speed.md): a figure can be compared with one taken at
    another time only beside this one.  Every core, because a guest's vCPUs each need one:
    a neighbour taking one core slows a guest more than a one-core loop shows.
    """
    cores = os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(cores) as pool:
        return [
            max(f.result() for f in [pool.submit(_loop) for _ in range(cores)]) for _ in range(3)
        ]


def image_figures(state: State, repo: Repo, runs: int) -> dict[str, list[float]]:
    """A disk image from a commit with nothing cached, and the same image from the cache."""
    arch = get_arch("x86_64")
    result = compose(
        load_definition(ROOT / "fixtures/trees/minimal.toml"), arch, repo, workdir=state.tmp
    )
    target = Target.create(state, repo, "x86_64")
    commit = repo.resolve(result.commit)

    def cold() -> float:
        with tempfile.TemporaryDirectory(dir=state.tmp) as cache:
            start = time.monotonic()
            build_image(
                repo,
                commit,
                ref=result.ref,
                arch=arch,
                layout=target.layout,
                client_key=target.client_key,
                cache_dir=Path(cache),
            )
            return time.monotonic() - start

    samples = {"image.cold": [cold() for _ in range(runs)]}
    image_for(target, result.commit, ref=result.ref)

    def cached() -> float:
        start = time.monotonic()
        image_for(target, result.commit, ref=result.ref)
        return time.monotonic() - start

    samples["image.cached"] = [cached() for _ in range(max(5, runs))]
    return samples


def gate_figure(
    state: State, repo: Repo, arches: list[str], exclude: list[str], workers: int = 1
) -> float:
    """Wall time of one ``treegate gate`` of a commit on ``arches``, every suite required.

    On each arch the candidate is docker v2, the tested ref holds docker v1 (so upgrade,
    rollback and the Docker upgrade test apply) and minimal is the rebase target.  The trees
    are composed first (as the build server has), but the gate runs with a state directory of
    its own: no image or saved machine of these commits is cached, as for a commit the build
    server has just composed.
    """
    trees = ROOT / "fixtures/trees"
    for name in arches:
        arch, skip = get_arch(name), excluded_suites(exclude, name)
        for tree in ("minimal", "docker", "docker-v2"):
            definition = load_definition(trees / f"{tree}.toml")
            result = compose(definition, arch, repo, workdir=state.tmp, exclude_suites=skip)
            if tree == "docker":
                repo.set_ref(f"treegate-bench/{name}/docker-tested", result.commit)
    try:
        with tempfile.TemporaryDirectory(dir=state.tmp) as gate_state:
            start = time.monotonic()
            subprocess.run(
                [
                    *(sys.executable, "-m", "harness.cli", "gate", "--repo", str(repo.path)),
                    *("--ref", "treegate/bookworm/{arch}/docker"),
                    *("--promote-to", "treegate-bench/{arch}/docker-tested"),
                    *("--rebase-ref", "treegate/bookworm/{arch}/minimal"),
                    *(a for name in arches for a in ("--arch", name)),
                    *("--workers", str(workers), "--state-dir", gate_state),
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            return time.monotonic() - start
    finally:
        for name in arches:
            repo.delete_ref(f"treegate-bench/{name}/docker-tested")


def installed_figures(
    state: State,
    repo: Repo,
    arch_name: str,
    prefixes: tuple[str, ...],
    timeout: float,
    exclude: tuple[str, ...],
) -> dict[str, list[float]]:
    """The installed tests of the installed-tests fixture tree (those starting with
    ``prefixes``): as treegate's suite, one pytest item each, and in one go by
    gnome-desktop-testing-runner in one machine.  Prints each side's outcome counts."""
    arch = get_arch(arch_name)
    result = compose(
        load_definition(ROOT / "fixtures/trees/installed-tests.toml"),
        arch,
        repo,
        workdir=state.tmp,
        exclude_suites=exclude,
    )
    tests = select(list_in_commit(repo, result.commit), prefixes)
    names = {t.name for t in tests}
    with serve(repo) as port:
        target = Target.create(state, repo, arch_name, repo_port=port)
        image = image_for(target, result.commit, ref=result.ref)
        with booted(target, image, name=f"bench-installed-{arch_name}", restore=True) as machine:
            limit = timeout * machine.timeout_scale
            start = time.monotonic()
            _, tap = machine.execute(
                "mkdir -p /var/tmp/bench-gdtr && cd /var/tmp/bench-gdtr && "
                f"gnome-desktop-testing-runner --tap --status=no --timeout={limit:.0f} "
                f"--log-directory=/var/tmp/bench-gdtr {' '.join(prefixes)} > tap.txt; cat tap.txt",
                timeout=len(tests) * (timeout + 60) + 300,
            )
            in_one_go = time.monotonic() - start
    theirs = parse_runner_tap(tap, names)
    with tempfile.TemporaryDirectory() as tmp:
        results, junit = Path(tmp) / "results.json", Path(tmp) / "junit.xml"
        start = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/system/test_installed.py",
                "-q",
                "-p",
                "no:cacheprovider",
                "--arch",
                arch_name,
                "--state-dir",
                str(state.root),
                "--installed-timeout",
                str(timeout),
                *[f"--installed-prefix={p}" for p in prefixes],
                *[f"--exclude-suite={arch_name}:{s}" for s in exclude],
                "--treegate-results",
                str(results),
                f"--junitxml={junit}",
                "-o",
                "junit_family=xunit1",
            ],
            cwd=ROOT,
            check=False,  # failed installed tests are figures too
            capture_output=True,
        )
        total = time.monotonic() - start
        ours = json.loads(results.read_text())
        guest = {
            case.get("name", ""): float(prop.get("value", "0"))
            for case in ET.parse(junit).iter("testcase")
            for prop in case.iter("property")
            if prop.get("name") == "installed_seconds"
        }
    item_overheads = [
        r["duration"] - guest[name]
        for r in ours
        if (name := r["nodeid"].split("::", 1)[1]) in guest
    ]
    for side, outcomes in (
        ("treegate", [r["outcome"] for r in ours]),
        ("gnome-desktop-testing-runner", list(theirs.values())),
    ):
        counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
        print(f"installed tests on {arch_name}, {side}: {counts}")
    key = f"installed.{arch_name}"
    return {
        f"{key}.tests": [float(len(tests))],
        f"{key}.total_s": [total],
        f"{key}.in_one_go_s": [in_one_go],
        f"{key}.overhead_per_test_s": [(total - in_one_go) / max(1, len(tests))],
        f"{key}.item_overhead_s": item_overheads or [0.0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="write the medians as JSON here")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per figure (default 3)")
    parser.add_argument(
        "--arch",
        action="append",
        choices=["x86_64", "aarch64", "armv7"],
        help="arches whose boot, restore, upgrade and rollback to measure "
        "(repeatable; default x86_64)",
    )
    parser.add_argument(
        "--exclude-suite",
        action="append",
        default=[],
        metavar="[ARCH:]SUITE",
        help="apt suite to leave out of composes, as for pytest (e.g. armv7:bookworm-security)",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="also time one full x86_64 gate (gate.x86_64_full; minutes, run once)",
    )
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="also time one gate of a commit on x86_64, aarch64 and ARMv7 with every suite "
        "required (gate.matrix_3arch; about 20 minutes, run once)",
    )
    parser.add_argument(
        "--gate-workers",
        type=int,
        default=1,
        metavar="N",
        help="with --gate or --matrix, the gate's --workers (default 1)",
    )
    parser.add_argument(
        "--libvirt",
        action="store_true",
        help="also boot and restore through libvirt (ARCH.libvirt_boot_to_ssh, "
        "ARCH.libvirt_restore_to_ssh; needs libvirtd running)",
    )
    parser.add_argument(
        "--installed",
        action="store_true",
        help="also time the installed-tests fixture tree's installed tests on each --arch, "
        "through treegate and in one go by gnome-desktop-testing-runner (run once; under TCG "
        "the libostree tests take most of an hour on x86_64)",
    )
    parser.add_argument(
        "--installed-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="with --installed, only the tests whose names start with PREFIX "
        "(repeatable; default libostree/)",
    )
    parser.add_argument(
        "--installed-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --installed, each test's timeout (default 300, the runner's)",
    )
    parser.add_argument(
        "--state-dir", default=".treegate", help="state directory (caches are shared)"
    )
    args = parser.parse_args()
    log.setup(0)
    try:
        return _measure(args)
    except KeyboardInterrupt:
        print("ci/bench: interrupted", file=sys.stderr)
        return 130
    except TreegateError as exc:  # a missing firmware, a guest that never came up, ...
        print(f"ci/bench: error: {exc.one_line()}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:  # the gate or pytest run it timed
        print(
            f"ci/bench: error: {' '.join(map(str, exc.cmd[:4]))} … exited {exc.returncode}",
            file=sys.stderr,
        )
        return 1


def _measure(args: argparse.Namespace) -> int:
    """Take every figure ``args`` asks for, print them and write them to ``--out``."""
    state = State.at(args.state_dir)
    repo = Repo(state.root / "fixtures-repo")
    repo.init()
    detail: dict[str, list[float]] = {"host.cpu_s": host_yardstick()}
    detail.update(image_figures(state, repo, args.runs))
    for arch_name in args.arch or ["x86_64"]:
        exclude = excluded_suites(args.exclude_suite, arch_name)
        detail.update(boot_figures(state, repo, arch_name, args.runs, exclude, args.libvirt))
        detail.update(upgrade_figures(state, repo, arch_name, args.runs, exclude))

    if args.gate:
        detail["gate.x86_64_full"] = [
            gate_figure(state, repo, ["x86_64"], args.exclude_suite, args.gate_workers)
        ]
    if args.matrix:
        detail["gate.matrix_3arch"] = [
            gate_figure(state, repo, list(ARCHES), args.exclude_suite, args.gate_workers)
        ]
    if args.installed:
        for arch_name in args.arch or ["x86_64"]:
            exclude = excluded_suites(args.exclude_suite, arch_name)
            prefixes = tuple(args.installed_prefix) or ("libostree/",)
            detail.update(
                installed_figures(state, repo, arch_name, prefixes, args.installed_timeout, exclude)
            )
    detail["host.cpu_s"] += host_yardstick()  # the host may have changed meanwhile
    items, plain = overhead_per_test(state, repo, args.runs)
    detail["overhead.per_test"] = [i - statistics.median(plain) for i in items]
    # Not among the keys, printed for context: the two sides of that difference.
    detail["overhead.treegate_item"] = items
    detail["overhead.plain_ssh"] = plain
    figures = {key: statistics.median(samples) for key, samples in detail.items()}
    figures["overhead.per_test"] = statistics.median(items) - statistics.median(plain)

    print(
        f"treegate benchmark on {platform.node()} ({platform.machine()}, "
        f"{os.cpu_count()} cores), medians of {args.runs}+ runs:"
    )
    for key, value in figures.items():
        samples = ", ".join(f"{s:.2f}" for s in detail[key])
        print(f"  {key:30} {value:8.2f} s   ({samples})")
    if args.out:
        Path(args.out).write_text(
            json.dumps({k: round(v, 3) for k, v in figures.items()}, indent=1) + "\n"
        )
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
