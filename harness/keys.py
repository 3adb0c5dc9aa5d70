"""SSH keys: the harness's own client key, and host keys made for each image.

The client key is generated once per state directory (ed25519, mode 0600) and never taken
from the user's ``~/.ssh``: images built with it stay valid as long as the state directory
lives, and nothing personal ends up in a test VM.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.run import run


def ensure_client_key(path: Path) -> str:
    """Create the harness key at ``path`` if needed; return its public key line."""
    pub = path.with_name(path.name + ".pub")
    if not path.exists() or not pub.exists():
        path.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "treegate", "-f", str(path)])
    os.chmod(path, 0o600)
    return pub.read_text().strip()


def make_host_keys(etc_ssh: Path) -> str:
    """Generate an ed25519 host key into ``etc_ssh``; return its public key line to pin."""
    etc_ssh.mkdir(parents=True, exist_ok=True)
    key = etc_ssh / "ssh_host_ed25519_key"
    key.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "treegate-host", "-f", str(key)])
    key.chmod(0o600)
    return key.with_name(key.name + ".pub").read_text().strip()
