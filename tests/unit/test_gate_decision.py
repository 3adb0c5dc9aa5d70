"""The gate's decision for every combination of outcomes (no VM: pure logic)."""

from __future__ import annotations

import itertools
import time

import pytest

from harness.errors import GuestCommandFailed, describe, summarize
from harness.gate import _promotion_timestamp
from harness.outcome import CaseResult, Decision, Outcome, Verdict, decide
from harness.repo import Commit


def r(suite: str, outcome: str, arch: str = "x86_64", message: str = "") -> CaseResult:
    return CaseResult(f"tests/system/test_{suite}.py::test_x[{arch}]", arch, outcome, 1.0, message)


REQUIRED = ["smoke", "upgrade"]


def test_all_passed_promotes() -> None:
    assert (
        decide([r("smoke", "passed"), r("upgrade", "passed")], REQUIRED, ["x86_64"])[0]
        == "promoted"
    )


def test_a_failure_rejects_even_beside_an_error() -> None:
    decision, reason = decide([r("smoke", "failed"), r("upgrade", "error")], REQUIRED, ["x86_64"])
    assert decision == "rejected"
    assert "test_smoke.py" in reason


def test_an_error_never_promotes() -> None:
    decision, reason = decide(
        [r("smoke", "passed"), r("upgrade", "error", message="QEMU died")], REQUIRED, ["x86_64"]
    )
    assert decision == "error"
    assert "QEMU died" in reason


def test_not_run_is_an_error() -> None:
    assert (
        decide([r("smoke", "passed"), r("upgrade", "not run")], REQUIRED, ["x86_64"])[0] == "error"
    )


def test_required_suite_only_skipped_rejects_with_its_reason() -> None:
    decision, reason = decide(
        [r("smoke", "passed"), r("upgrade", "skipped", message="no docker")], REQUIRED, ["x86_64"]
    )
    assert decision == "rejected"
    assert "upgrade" in reason and "no docker" in reason


def test_partly_skipped_required_suite_is_fine() -> None:
    results = [r("smoke", "passed"), r("upgrade", "passed"), r("upgrade", "skipped")]
    assert decide(results, REQUIRED, ["x86_64"])[0] == "promoted"


def test_required_suite_missing_on_one_arch_is_an_error() -> None:
    results = [r(s, "passed", a) for s in REQUIRED for a in ("x86_64", "aarch64")]
    results = [x for x in results if not (x.arch == "aarch64" and x.suite == "upgrade")]
    decision, reason = decide(results, REQUIRED, ["x86_64", "aarch64"])
    assert decision == "error" and "aarch64" in reason


def test_no_results_is_an_error() -> None:
    assert decide([], [], ["x86_64"])[0] == "error"


@pytest.mark.parametrize(
    "outcomes", list(itertools.product(["passed", "failed", "error", "skipped"], repeat=2))
)
def test_every_combination_has_exactly_the_documented_decision(outcomes: tuple[str, str]) -> None:
    results = [r("smoke", outcomes[0]), r("upgrade", outcomes[1])]
    decision, _ = decide(results, REQUIRED, ["x86_64"])
    if "failed" in outcomes:
        assert decision == "rejected"
    elif "error" in outcomes:
        assert decision == "error"
    elif "skipped" in outcomes:
        assert decision == "rejected"
    else:
        assert decision == "promoted"
    assert decision != "promoted" or outcomes == ("passed", "passed")


def test_suite_is_read_from_the_module_name() -> None:
    assert r("rollback", "passed").suite == "rollback"


def test_auto_workers_respect_cores_vcpus_and_memory() -> None:
    from harness.plugin.collection import MACHINE_FOOTPRINT_MIB, auto_workers

    assert auto_workers(2, 24 * 1024, 2) == 1  # this machine: one 2-vCPU guest fills it
    assert auto_workers(8, 24 * 1024, 2) == 4  # the cores decide
    assert auto_workers(16, 3 * MACHINE_FOOTPRINT_MIB, 2) == 3  # memory decides
    assert auto_workers(4, 100, 1) == 1  # always at least one


def test_flaky_does_not_count_as_a_pass_by_default() -> None:
    results = [r("smoke", "passed"), r("upgrade", "flaky", message="error, then passed")]
    decision, reason = decide(results, REQUIRED, ["x86_64"])
    assert decision == "error"
    assert "flaky" in reason and "--flaky-passes" in reason


def test_flaky_counts_as_a_pass_when_policy_says_so() -> None:
    results = [r("smoke", "passed"), r("upgrade", "flaky")]
    decision, reason = decide(results, REQUIRED, ["x86_64"], flaky_passes=True)
    assert decision == "promoted"
    assert "1 flaky" in reason


def test_a_failure_still_rejects_beside_a_flaky_test() -> None:
    results = [r("smoke", "failed"), r("upgrade", "flaky")]
    assert decide(results, REQUIRED, ["x86_64"], flaky_passes=True)[0] == "rejected"


def test_quarantined_does_not_block() -> None:
    results = [r("smoke", "passed"), r("smoke", "quarantined"), r("upgrade", "passed")]
    decision, reason = decide(results, REQUIRED, ["x86_64"])
    assert decision == "promoted"
    assert "1 quarantined" in reason


def test_promotion_is_stamped_with_the_candidate_unless_the_tested_ref_is_newer() -> None:
    def commit(timestamp: int) -> Commit:
        return Commit(f"{timestamp:064x}", None, {}, timestamp)

    # The tested ref's head is older: compose order is kept.
    assert _promotion_timestamp(commit(200), commit(100)) == 200
    assert _promotion_timestamp(commit(200), None) == 200
    # The head is newer (an allowed downgrade, a head stamped when it was promoted): the
    # promotion must still be newer than the head, or machines that follow it refuse it.
    stamp = _promotion_timestamp(commit(100), commit(2_000_000_000_0))
    assert stamp == 2_000_000_000_0
    before = int(time.time())
    assert _promotion_timestamp(commit(100), commit(200)) >= before


def result(nodeid: str, outcome: str, message: str, arch: str = "x86_64") -> CaseResult:
    return CaseResult(nodeid, arch, outcome, 1.0, message, reproduce=f"pytest {nodeid}")


def verdict_with(results: list[CaseResult]) -> Verdict:
    return Verdict(
        "rejected", "r", "/repo", "c", "t", "0" * 64, None, ("x86_64",), (), tuple(results)
    )


def test_one_reproduce_line_per_cause_and_none_for_a_quarantined_failure() -> None:
    panic = "BootFailure: console shows the kernel panicked: [    {}] Kernel panic - not syncing"
    results = [result(f"t.py::test_{n}", "failed", panic.format(f"2.{n}")) for n in range(8)]
    results.append(result("t.py::test_q", "quarantined", "failed, quarantined until …"))
    results.append(result("u.py::test_other", "failed", "GuestCommandFailed: command 'x' exited 1"))
    text = verdict_with(results).table()
    reproduce = [line for line in text.splitlines() if "reproduce:" in line]
    assert reproduce == [
        "  reproduce: pytest t.py::test_0   (and 7 more that failed the same way)",
        "  reproduce: pytest u.py::test_other",
    ]


def test_a_failed_commands_last_output_lines_reach_the_verdict() -> None:
    exc = GuestCommandFailed(
        "ostree admin upgrade --override-commit=abc",
        1,
        "".join(f"progress {n}\n" for n in range(20))
        + "error: Upgrade target revision 'abc' with timestamp '…' is chronologically older "
        "than current revision 'def'; use --allow-downgrade to permit\n",
        expected="0",
    )
    message = describe(exc)
    first, *rest = message.splitlines()
    assert first == (
        "GuestCommandFailed: command 'ostree admin upgrade --override-commit=abc' exited 1, "
        "expected 0; output:"
    )
    assert rest[0] == "[… 15 earlier line(s)]"
    assert rest[-1].startswith("error: Upgrade target revision 'abc'")
    assert rest[-1].endswith("use --allow-downgrade to permit")
    text = verdict_with([result("t.py::test_upgrade", "failed", message)]).table()
    assert "           error: Upgrade target revision 'abc'" in text
    assert "no output" in describe(GuestCommandFailed("false", 1, "", expected="0"))


def test_summarize_cuts_long_lines_and_keeps_the_first() -> None:
    text = "what\n" + "x" * 1000
    assert summarize(text, width=10) == "what\nxxxxxxxxx…"
    assert summarize("") == ""


def test_outcomes_and_decisions_carry_their_behaviour() -> None:
    assert [d.exit_code for d in Decision] == [0, 1, 3, 130]
    assert [o for o in Outcome if o.decides_against] == [Outcome.failed, Outcome.error]
    assert [o for o in Outcome if o.quarantinable] == [Outcome.failed, Outcome.error, Outcome.flaky]
    assert not Outcome.flaky.counts_as_pass(flaky_passes=False)
    assert Outcome.flaky.counts_as_pass(flaky_passes=True)
    # Read back from a results file or the store, an outcome is text: it becomes an Outcome.
    read = CaseResult("t.py::test_x", "x86_64", "not run", 0.0)  # type: ignore[arg-type]
    assert read.outcome is Outcome.not_run
    assert decide([read], ["t"], ["x86_64"])[0] is Decision.error
    with pytest.raises(ValueError):
        CaseResult("t.py::test_x", "x86_64", "broken", 0.0)  # type: ignore[arg-type]
