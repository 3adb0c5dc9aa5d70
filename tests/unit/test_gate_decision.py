"""The gate's decision for every combination of outcomes (no VM: pure logic)."""

from __future__ import annotations

import itertools

import pytest

from harness.gate import CaseResult, decide


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
    from harness.pytest_plugin import MACHINE_FOOTPRINT_MIB, auto_workers

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
