"""SSH forwards to a libvirt host reached with ``qemu+ssh://``: how a guest on another machine
is reached, and how it reaches the repo server.

A guest's user-mode network forwards its SSH port to the *libvirt host's* loopback, and its
repo address to a ``socat`` run on that host.  With a remote host, one ``ssh`` process (the
same login libvirt's own ``qemu+ssh`` transport uses: user, port and ``keyfile`` from the
URI) carries both: ``-L`` brings the guest's SSH port here, ``-R`` takes the harness's repo
server there.  It lives as long as the machine.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from harness.errors import InfraError, UserError


class Tunnel:
    """One ``ssh -N`` with the machine's forwards; :meth:`close` ends it."""

    def __init__(
        self,
        uri: str,
        *,
        local_port: int,
        guest_port: int,
        repo_ports: tuple[int, int] | None,
        log: Path,
    ) -> None:
        """Forward ``127.0.0.1:local_port`` here to ``127.0.0.1:guest_port`` on the libvirt
        host, and (``repo_ports`` = (there, here)) the libvirt host's ``127.0.0.1:there`` to
        ``127.0.0.1:here``.  Returns once the forwards are up; ssh's messages go to ``log``."""
        self.log = log
        argv = [*ssh_login(uri), "-N", "-o", "ExitOnForwardFailure=yes"]
        argv += ["-L", f"127.0.0.1:{local_port}:127.0.0.1:{guest_port}"]
        if repo_ports is not None:
            argv += ["-R", f"127.0.0.1:{repo_ports[0]}:127.0.0.1:{repo_ports[1]}"]
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + 60
        while not _listening(local_port):
            if self.proc.poll() is not None:
                raise self._failure()
            if time.monotonic() > deadline:
                self.close()
                raise InfraError(f"the SSH tunnel to {uri} did not come up in 60 s")
            time.sleep(0.1)

    def _failure(self) -> Exception:
        text = self.log.read_text(errors="replace").strip()
        last = text.splitlines()[-1] if text else f"ssh exited {self.proc.returncode}"
        if "Permission denied" in text or "Host key verification failed" in text:
            return UserError(f"cannot log in for the SSH tunnel: {last}")
        return InfraError(f"the SSH tunnel failed: {last}")

    def forwards_failed(self) -> bool:
        """True when ssh ended because a forward's port was taken (try other ports)."""
        return self.proc.poll() is not None and "forwarding" in self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ssh_login(uri: str) -> list[str]:
    """The ``ssh`` command line (up to the host) that logs in as ``qemu+ssh://`` URI ``uri``
    does: its user and port, and its ``keyfile`` and ``no_verify`` parameters."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5"]
    if parts.port:
        argv += ["-p", str(parts.port)]
    if parts.username:
        argv += ["-l", parts.username]
    if "keyfile" in query:
        argv += ["-i", query["keyfile"][0], "-o", "IdentitiesOnly=yes"]
    if query.get("no_verify", ["0"])[0] == "1":
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return [*argv, str(parts.hostname)]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
