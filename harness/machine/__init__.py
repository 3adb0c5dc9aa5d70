"""Running VMs.  :class:`~harness.machine.base.VM` is the interface; backends live beside it.

* :mod:`harness.machine.qemu` -- a QEMU process driven over QMP (the default backend);
* :mod:`harness.machine.libvirt` -- a transient domain of a libvirt daemon, local or remote;
* :mod:`harness.machine.backends` -- which class runs each backend's machines, and the
  clean-up of machines a killed harness left behind.
"""
