"""``treegate demo``: the main job on the fixture trees, end to end.

Composes the fixture trees into a work directory's repository and gates them in the order a
build server would see them, checking each verdict against the expected one:

1. minimal v1, the first commit of its stream: promoted (smoke, rebase);
2. minimal v2: promoted after upgrading v1 to it and rolling back (smoke, upgrade, rollback,
   rebase);
3. the docker tree: promoted (smoke, docker, rebase);
4. a broken candidate for the minimal stream (its init exits): rejected as *failed*, and the
   tested ref is left where it was.

Like a build server it first writes its ``treegate.toml`` (one stream per candidate ref) and
makes a local signing key: every compose and promotion is signed, and the guests verify
every pull.  Each gate is the stream's, as ``treegate gate --config … --stream …`` runs it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.arch import Arch, get_arch
from harness.compose import compose
from harness.config import load_config
from harness.definition import load_definition
from harness.gate import config_for_stream, run_gate
from harness.outcome import Decision, Outcome, Verdict
from harness.repo import SCRATCH_ZLIB_LEVEL, Repo
from harness.signing import SigningKey, demo_key
from harness.state import State

TREES = Path(__file__).resolve().parent.parent / "fixtures" / "trees"


@dataclass(frozen=True)
class Step:
    """One gate of the demo and the verdict it must reach."""

    compose: str
    candidate: str
    tested: str
    rebase: str
    expected: Decision

    @property
    def stream(self) -> str:
        """The name of its stream in the demo's ``treegate.toml``."""
        return self.candidate.rsplit("/", 1)[-1]


def write_config(path: Path, arch: str) -> None:
    """The demo's ``treegate.toml``: its repository, signing key and streams."""
    lines = ['repo = "repo"', "", "[signing]", 'gpg_homedir = "gpg"']
    seen = set()
    for step in steps(arch):
        if step.stream in seen:
            continue
        seen.add(step.stream)
        lines += [
            "",
            f"[streams.{step.stream}]",
            f'candidate = "{step.candidate.replace(arch, "{arch}")}"',
            f'tested = "{step.tested.replace(arch, "{arch}")}"',
            f'arches = ["{arch}"]',
            f'rebase = "{step.rebase.replace(arch, "{arch}")}"',
            "timeout_min = 30",
        ]
    path.write_text("\n".join(lines) + "\n")


def steps(arch: str) -> list[Step]:
    """The demo's gates, in order."""
    minimal = f"treegate/bookworm/{arch}/minimal"
    docker = f"treegate/bookworm/{arch}/docker"
    return [
        Step("minimal", minimal, f"{minimal}-tested", docker, Decision.promoted),
        Step("minimal-v2", minimal, f"{minimal}-tested", docker, Decision.promoted),
        Step("docker", docker, f"{docker}-tested", minimal, Decision.promoted),
        Step(
            "broken-init",
            f"treegate/bookworm/{arch}/broken-init",
            f"{minimal}-tested",
            docker,
            Decision.rejected,
        ),
    ]


def run_demo(
    workdir: Path, state: State, arch: str = "x86_64", json_out: Path | None = None
) -> int:
    """Run the demo; 0 when every verdict is the expected one."""
    repo = Repo(workdir / "repo")
    repo.init(zlib_level=SCRATCH_ZLIB_LEVEL)
    a = get_arch(arch)
    # Signed like a build server's: a local key made on first use signs every compose and
    # promotion, and the demo's guests verify every pull against it.
    key = demo_key(workdir / "gpg")
    write_config(workdir / "treegate.toml", arch)
    config = load_config(workdir / "treegate.toml")
    print(
        f"treegate demo: {config.path} (repository {repo.path}, signing key {key.fingerprint})",
        file=sys.stderr,
    )
    # Each run starts from a stream nobody has gated yet.
    for step in steps(arch):
        repo.delete_ref(step.tested)
    # The rebase target of the first gates must exist before them.
    for name in ("docker", "minimal"):
        _compose(name, a, repo, state, key)
    rows: list[tuple[Step, Verdict, bool]] = []
    for step in steps(arch):
        _compose(step.compose, a, repo, state, key)
        before = repo.try_resolve(step.tested)
        print(
            f"\n== gating {step.compose}: {step.candidate} → {step.tested} (expect {step.expected})",
            file=sys.stderr,
        )
        verdict = run_gate(
            config_for_stream(config, config.stream(step.stream), signing=key, state_dir=state.root)
        )
        print(verdict.table(), file=sys.stderr)
        ok = verdict.decision == step.expected
        if step.expected is Decision.rejected:
            after = repo.try_resolve(step.tested)
            untouched = (before.checksum if before else None) == (after.checksum if after else None)
            only_failed = any(r.outcome is Outcome.failed for r in verdict.results) and not any(
                r.outcome is Outcome.error for r in verdict.results
            )
            ok = ok and untouched and only_failed
        rows.append((step, verdict, ok))
    print("\ntreegate demo verdicts:")
    print(f"  {'tree':12} {'decision':9} {'expected':9} {'ok':3} reason")
    for step, verdict, ok in rows:
        print(
            f"  {step.compose:12} {verdict.decision:9} {step.expected:9} {'yes' if ok else 'NO':3} {verdict.reason}"
        )
    print(f"logs: {state.runs}")
    if json_out is not None:
        json_out.write_text(json.dumps([v.to_json() for _, v, _ in rows], indent=1))
        print(f"verdicts: {json_out}")
    return 0 if all(ok for _, _, ok in rows) else 1


def _compose(name: str, arch: Arch, repo: Repo, state: State, key: SigningKey) -> None:
    definition = load_definition(TREES / f"{name}.toml")
    print(f"composing {name} for {arch.name} …", file=sys.stderr)
    result = compose(definition, arch, repo, workdir=state.tmp)
    how = "cached" if result.cached else f"{result.seconds:.0f} s"
    repo.sign(result.commit, key)
    print(f"  {result.ref} {result.commit[:12]} ({how}, signed)", file=sys.stderr)
    # As on a build server, the ref now points at what was just composed (a compose served
    # from the cache of an earlier demo run does not move it by itself).
    repo.set_ref(result.ref, result.commit)
