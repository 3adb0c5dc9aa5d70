"""treegate: boot OSTree commits in real VMs, test them over SSH, and gate their promotion."""

__version__ = "0.1.0"
