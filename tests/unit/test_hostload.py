"""Reading the host's CPU pressure, which decides whether a guest timeout blames the host."""

from __future__ import annotations

from harness.hostload import STARVED_PERCENT, cpu_pressure, starved

BUSY = """\
some avg10=91.20 avg60=63.05 avg300=20.11 total=2203400553
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""
CALM = """\
some avg10=3.34 avg60=12.18 avg300=16.97 total=2203400553
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""


def test_pressure_is_the_last_minute_of_some() -> None:
    assert cpu_pressure(BUSY) == 63.05
    assert cpu_pressure(CALM) == 12.18


def test_only_a_starved_host_is_blamed() -> None:
    why = starved(BUSY)
    assert why is not None and "63%" in why
    assert starved(CALM) is None
    assert 12.18 < STARVED_PERCENT < 63.05


def test_no_pressure_information_blames_nobody_but_the_tree() -> None:
    # Kernels without PSI (or a file that is not what it should be): the old rule stands.
    assert cpu_pressure("") is None
    assert cpu_pressure("some avg10=1.0\n") is None
    assert cpu_pressure("some avg60=oops\n") is None
    assert starved("") is None
