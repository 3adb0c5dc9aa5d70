"""Running VMs.  :class:`~harness.machine.base.VM` is the interface; backends live beside it.

* :mod:`harness.machine.qemu` -- a QEMU process driven over QMP (the default backend).
"""
