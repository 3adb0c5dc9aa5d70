"""Whether the host starved its guests of CPU: what decides who a guest timeout blames.

Under TCG every guest instruction is host CPU time, so a host with more busy threads than
cores slows every guest down: a reboot that takes 30 s on an idle 2-core host took over
120 s with two 2-vCPU guests side by side, and the good tree it was rebooting would have
been rejected.  Linux's pressure stall information (``/proc/pressure/cpu``) says what share
of the last minute runnable tasks spent waiting for a CPU.  Above :data:`STARVED_PERCENT`,
a guest that missed its time limit says nothing about the tree: the harness reports the
host's error (:class:`~harness.errors.HostOverloaded`), which the gate never promotes on and
never rejects for.
"""

from __future__ import annotations

from pathlib import Path

PSI_CPU = Path("/proc/pressure/cpu")

STARVED_PERCENT = 40.0
"""CPU pressure over the last minute (percent) from which a guest timeout is the host's.

Measured on a 2-core host: one 2-vCPU guest alone, 4-18 %; an ARM compose (emulated dpkg)
beside one guest, 40-45 %; two composes with no guest, 20-35 %."""


def cpu_pressure(psi_text: str | None = None) -> float | None:
    """The percentage of the last 60 s in which some runnable task waited for a CPU, read
    from ``psi_text`` (default: ``/proc/pressure/cpu``); ``None`` without PSI."""
    if psi_text is None:
        try:
            psi_text = PSI_CPU.read_text()
        except OSError:
            return None
    for line in psi_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "some":
            for field in fields[1:]:
                key, _, value = field.partition("=")
                if key == "avg60":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def starved(psi_text: str | None = None) -> str | None:
    """Why the host could not give its guests their CPU time (for an error message), or
    ``None`` when it could, or when the kernel does not say."""
    pressure = cpu_pressure(psi_text)
    if pressure is None or pressure < STARVED_PERCENT:
        return None
    return f"the host was overloaded: runnable tasks waited for a CPU {pressure:.0f}% of the last minute"
