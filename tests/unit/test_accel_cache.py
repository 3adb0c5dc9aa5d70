"""The KVM probe's answer is kept per host (and host boot), outside any state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import accel
from harness.accel import Accel, choose_accel, host_cache
from harness.arch import get_arch


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Probe boots asked for; each answers that KVM hung (as on the development machines)."""
    calls: list[str] = []

    def probe(arch: object, kernel: Path) -> tuple[bool, str]:
        calls.append(str(kernel))
        return False, "the kernel printed nothing useful within 20 s"

    monkeypatch.setattr(accel, "probe_kvm", probe)
    monkeypatch.setattr(Accel, "kvm_unusable_reason", staticmethod(lambda arch: None))
    return calls


def test_one_probe_per_host_boot(
    probes: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache" / "treegate" / "accel.json"
    x86 = get_arch("x86_64")
    first = choose_accel(x86, Path("/kernel"), cache)
    again = choose_accel(x86, Path("/kernel"), cache)
    assert first == again
    assert first[0] is Accel.tcg and "probe boot failed" in first[1]
    assert len(probes) == 1 and cache.is_file()

    monkeypatch.setattr(accel, "_host_boot_id", lambda: "the host rebooted")
    choose_accel(x86, Path("/kernel"), cache)
    assert len(probes) == 2


def test_forced_accelerator_needs_no_probe(probes: list[str], tmp_path: Path) -> None:
    assert choose_accel(get_arch("x86_64"), Path("/k"), tmp_path / "a.json", force="tcg") == (
        Accel.tcg,
        "tcg (forced)",
    )
    assert probes == []


def test_cache_lives_in_the_users_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert host_cache() == tmp_path / "treegate" / "accel.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert host_cache() == tmp_path / "home" / ".cache" / "treegate" / "accel.json"


def test_an_unwritable_cache_costs_a_probe_not_an_error(probes: list[str], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cache = blocker / "accel.json"
    for _ in range(2):
        assert choose_accel(get_arch("x86_64"), Path("/k"), cache)[0] is Accel.tcg
    assert len(probes) == 2
    assert list(tmp_path.iterdir()) == [blocker]  # no temporary file left behind
