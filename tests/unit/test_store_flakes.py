"""``treegate flakes``: the store ranks tests by flaky outcomes, then by outcome changes."""

from __future__ import annotations

from pathlib import Path

from harness.store import ResultRow, Store


def gate_run(store: Store, outcomes: dict[str, str]) -> None:
    run = store.start_run(
        kind="gate",
        repo="/r",
        candidate_ref="c",
        tested_ref="t",
        candidate="abc",
        baseline=None,
        arches=["x86_64"],
        suites=["smoke"],
        artifacts="/a",
    )
    store.finish_run(
        run,
        decision="promoted",
        reason="",
        promotion_commit=None,
        results=[ResultRow(n, "x86_64", "smoke", o, 1.0, "", "") for n, o in outcomes.items()],
    )


def test_flakiest_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "treegate.db")
    gate_run(store, {"a": "passed", "b": "flaky", "c": "passed"})
    gate_run(store, {"a": "failed", "b": "flaky", "c": "passed"})
    gate_run(store, {"a": "passed", "b": "passed", "c": "passed"})
    flakes = store.flakes()
    assert [(f.nodeid, f.flaky, f.changes) for f in flakes] == [("b", 2, 1), ("a", 0, 2)]
    assert flakes[0].runs == 3 and flakes[0].last == "passed"
