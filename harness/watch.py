"""``treegate watch``: follow every stream's candidate refs and gate each new commit.

Every ``interval`` seconds it reads each stream's candidate ref (per arch).  A head commit the
store has not seen for that stream is gated with the stream's settings, exactly as
``treegate gate --config … --stream …`` would.  Commits that landed on the ref after the
last one handled but before the head (pushed while a gate ran, or while watch was down) are
not gated: they are recorded as *superseded*.  What was handled lives in the SQLite store,
so a restarted watch never gates a commit twice.  SIGTERM or Ctrl-C between gates stops it
(exit 0); during a gate, the gate is interrupted like any other (its commit is not marked
handled, so the next watch gates it) and watch exits 130.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.config import Config, Stream
from harness.gate import config_for_stream, expand, run_gate
from harness.outcome import Verdict
from harness.repo import Repo
from harness.signing import SigningKey
from harness.state import State
from harness.store import Store


@dataclass(frozen=True)
class WatchConfig:
    """What ``treegate watch`` follows and how often it looks."""

    config: Config
    interval: float = 30.0
    once: bool = False
    """One pass over the streams, then stop (for cron, and tests)."""
    state_dir: Path | None = None
    signing: SigningKey | None = None


def watch(wc: WatchConfig, say: Callable[[str], None] = print) -> int:
    """Follow the streams until stopped; the exit status (see the module's text)."""
    state = State.at(wc.state_dir or wc.config.state_dir)
    store = Store(state.root / "treegate.db")
    repo = Repo(wc.config.repo)
    repo.check()
    names = ", ".join(s.name for s in wc.config.streams)
    say(f"watching {names} in {repo.path} every {wc.interval:g} s")
    while True:
        for stream in wc.config.streams:
            heads = _new_heads(repo, store, stream)
            if not heads:
                continue
            gating = ", ".join(f"{a} {c[:12]}" for a, c in sorted(heads.items()))
            say(f"{stream.name}: gating {gating}")
            try:
                verdict = run_gate(
                    config_for_stream(wc.config, stream, signing=wc.signing, state_dir=state.root)
                )
            except KeyboardInterrupt:
                say(f"{stream.name}: gate interrupted; watch stopped")
                return 130
            _record(repo, store, stream, verdict)
            say(verdict.table())
        if wc.once:
            return 0
        try:
            time.sleep(wc.interval)
        except KeyboardInterrupt:
            say("watch stopped")
            return 0


def _new_heads(repo: Repo, store: Store, stream: Stream) -> dict[str, str]:
    """The head commits of the stream's candidate refs, by arch, when any is not handled yet
    (a multi-arch stream is gated as a whole); empty when nothing is new."""
    heads = {}
    for arch in stream.arches:
        head = repo.try_resolve(expand(stream.candidate, arch))
        if head is None:
            return {}  # an arch without a candidate yet: nothing to gate as a whole
        heads[arch] = head.checksum
    if all(c in store.watched(_key(repo, stream), a) for a, c in heads.items()):
        return {}
    return heads


def _record(repo: Repo, store: Store, stream: Stream, verdict: Verdict) -> None:
    """Mark the gated head of each arch, and the commits it superseded since the last one."""
    for a in verdict.per_arch:
        handled = store.watched(_key(repo, stream), a.arch)
        if handled:
            # Walk back from the gated commit to the last one handled: those in between were
            # never gated on their own.
            for commit in repo.history(a.candidate, limit=200)[1:]:
                if commit.checksum in handled:
                    break
                store.mark_watched(_key(repo, stream), a.arch, commit.checksum, "superseded")
        store.mark_watched(_key(repo, stream), a.arch, a.candidate, "gated", verdict.run_id)


def _key(repo: Repo, stream: Stream) -> str:
    # Streams of different repositories may share a name; the store tells them apart.
    return f"{repo.path}#{stream.name}"
