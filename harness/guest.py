"""The guest API that tests use: a booted machine you talk to over SSH.

Every method reads as an action on the machine::

    machine.succeed("systemctl is-active docker")
    machine.wait_for_unit("sshd.service")
    machine.reboot()

Commands run as root over one SSH connection (paramiko, the harness's own key, the image's
host key pinned).  Outcomes follow treegate's taxonomy (:mod:`harness.errors`): a command
that does not do what the test expected is a :class:`~harness.errors.TreeFailure` (the test
*failed*); a VM that died under the test is a :class:`~harness.errors.MachineDied` (the test
*errored*).  Every wait is a :func:`~harness.retry.retry` that also watches the serial
console, so a kernel panic ends any wait at once.
"""

from __future__ import annotations

import contextlib
import math
import re
import select
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness import log
from harness.console import ConsoleWatcher
from harness.errors import (
    BootFailure,
    GuestCommandFailed,
    GuestTimeout,
    HostOverloaded,
    InfraError,
    MachineDied,
    TreeFailure,
    TreegateError,
)
from harness.hostload import starved
from harness.machine.base import VM
from harness.retry import retry


class _KeyRefused(Exception):
    """sshd completed the handshake and refused the harness's key."""


@dataclass(frozen=True)
class Deployment:
    """One line of ``ostree admin status``."""

    stateroot: str
    checksum: str
    serial: int
    booted: bool
    pending: bool
    rollback: bool
    version: str
    origin: str


class Guest:
    """A booted machine, as a test sees it."""

    def __init__(
        self,
        vm: VM,
        *,
        client_key: Path,
        host_key: str,
        timeout_scale: float = 1.0,
        boot_timeout: float = 120.0,
    ) -> None:
        self.vm = vm
        self.name = vm.name
        self.console = ConsoleWatcher(vm.console_log)
        self.timeout_scale = timeout_scale
        self.boot_timeout = boot_timeout * timeout_scale
        self._pkey = paramiko.Ed25519Key.from_private_key_file(str(client_key))
        self._host_key = paramiko.Ed25519Key(data=_b64(host_key.split()[1]))
        self.host_key_line = host_key
        self._client: paramiko.SSHClient | None = None
        self.boot_count = 0
        self.image_commit = ""
        """The commit the machine's image was built from (what it booted first)."""
        self.artifacts: Path | None = None
        """Where to keep a screenshot at the end of each boot (set by the pytest plugin)."""
        self.expected_boot_id = ""
        """The boot id of the boot the harness knows about; another one means the guest
        rebooted behind the harness's back."""

    def __repr__(self) -> str:
        return f"<Guest {self.name} port {self.vm.ssh_port}>"

    # -- connection ----------------------------------------------------------------------
    def _check_alive(self) -> None:
        """Raise the right error when the VM is gone or its console shows a failed boot."""
        self.console.check()
        if not self.vm.is_running():
            raise MachineDied(
                f"machine {self.name} stopped: {self.vm.exit_reason()}", hint="see the console log"
            )
        if self.vm.is_frozen():
            raise MachineDied(
                f"machine {self.name}: its QEMU process is stopped (SIGSTOP?): the host "
                "froze it, so the guest cannot answer"
            )

    def _connect_once(self, greeting: _Greeting) -> paramiko.SSHClient | None:
        """One connection attempt: SSH on the first connection sshd has greeted, if any yet."""
        sock = greeting.poll(0.5)
        if sock is None:
            return None
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{self.vm.ssh_port}", "ssh-ed25519", self._host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                "127.0.0.1",
                port=self.vm.ssh_port,
                username="root",
                pkey=self._pkey,
                allow_agent=False,
                look_for_keys=False,
                sock=sock,
                timeout=5,
                banner_timeout=10,
                auth_timeout=10,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise TreeFailure(f"machine {self.name} presented an unexpected SSH host key") from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            sock.close()
            if "timeout" in str(exc).lower():
                return None  # an emulated guest slow to answer, not a refusal
            raise _KeyRefused(str(exc) or type(exc).__name__) from exc
        except (paramiko.SSHException, OSError, EOFError):
            client.close()
            sock.close()
            return None
        transport = client.get_transport()
        if transport is not None:
            # Without keepalives a `systemctl reboot` over SSH can leave the session hanging.
            transport.set_keepalive(5)
        return client

    def wait_for_ssh(self, timeout: float | None = None) -> None:
        """Wait until the machine answers SSH; fail early on a console failure or a dead VM."""
        with log.nested(f"waiting for SSH on {self.name}"):
            self._connect(timeout if timeout is not None else self.boot_timeout)
            self.boot_count += 1
            if not self.expected_boot_id:
                # What a later lost connection is checked against (a restored machine's is
                # known from its saved state and costs no round trip).
                self.expected_boot_id = self._raw_boot_id()

    def _connect(self, limit: float) -> None:
        greeting = _Greeting(self.vm.ssh_port, self._looks_up)
        refusals: list[str] = []

        def attempt(_last: bool) -> paramiko.SSHClient | None:
            self._check_alive()
            if self.console.wait_text_seen(_SSHD_FAILED):
                # systemd printed that sshd failed: SSH will never answer, say so now.
                raise BootFailure(
                    f"{self.name}: sshd failed to start", console_tail=self.console.tail()
                )
            try:
                return self._connect_once(greeting)
            except _KeyRefused as refused:
                # The key is in root's home from the image's first boot on, so a refusal is
                # the tree's sshd configuration; twice in a row, to be sure it was not a
                # session cut short.
                refusals.append(str(refused))
                if len(refusals) < 2:
                    return None
                raise TreeFailure(
                    f"{self.name}: sshd answered but refused the harness's key for root "
                    f"({refused}): does the tree allow root to log in with a key "
                    "(PermitRootLogin prohibit-password or yes)?"
                ) from refused

        def timed_out(message: str) -> Exception:
            return self._timeout(f"{self.name}: {message}", self.console.tail())

        with contextlib.closing(greeting):
            self._client = retry(
                attempt,
                limit,
                interval=0.05,
                max_interval=0.05,
                what="SSH to answer",
                on_timeout=timed_out,
            )

    def _looks_up(self) -> bool:
        # A login prompt since the last mark: this boot's getty, not the one before a reboot.
        return self.console.wait_text_seen(_LOGIN_PROMPT)

    def _timeout(self, message: str, console_tail: str) -> TreegateError:
        """A missed time limit: the tree's :class:`GuestTimeout`, unless the host was starving
        its guests of CPU meanwhile (:mod:`harness.hostload`): then the host's error."""
        why = starved()
        if why is not None:
            return HostOverloaded(f"{message}, while {why}", console_tail=console_tail)
        return GuestTimeout(message, console_tail=console_tail)

    def close(self) -> None:
        """Close the SSH connection (the VM keeps running)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- commands ------------------------------------------------------------------------
    def execute(
        self, command: str, timeout: float = 300.0, *, idempotent: bool = False
    ) -> tuple[int, str]:
        """Run ``command`` as root in a shell; return its exit status and combined output.

        ``timeout`` (seconds, scaled for emulation) bounds the command; a command still
        running then is a :class:`GuestTimeout`.

        When the SSH connection drops under the command, the harness reconnects and reads
        the boot id: a machine that rebooted on its own is a :class:`TreeFailure`.  Otherwise
        an ``idempotent`` command (one that is safe to run twice: a query, a wait) runs
        again; any other is an :class:`InfraError` naming the command, since it may have
        had effects that a second run would repeat.
        """
        for attempt in (1, 2):
            try:
                return self._run(command, timeout)
            except _ConnectionLost as lost:
                self._after_lost_connection(command, lost)
                if not idempotent or attempt == 2:
                    raise InfraError(
                        f"SSH connection to {self.name} dropped while running {command!r}"
                        + (" (not retried: it may have had effects)" if not idempotent else ""),
                        hint="run the test again; the console log may say why",
                    ) from lost
                log.info(f"SSH connection dropped under {command!r}: running it again")
        raise AssertionError("unreachable")

    def _run(self, command: str, timeout: float) -> tuple[int, str]:
        """One run of ``command`` on the current connection (see :meth:`execute`)."""
        if self._client is None:
            self.wait_for_ssh()
        assert self._client is not None
        # A dead or frozen machine is said so now: opening a channel on it would wait 30 s.
        self._check_alive()
        limit = timeout * self.timeout_scale
        try:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("SSH transport closed")
            console_at = self.console.size()  # a reset from here on ends the command
            chan = transport.open_session(timeout=30)
            chan.set_combine_stderr(True)
            # Short receive timeouts are polling ticks: the deadline below decides, and a silent
            # command past it is the guest's timeout, not a lost connection.
            chan.settimeout(1.0)
            chan.exec_command(command)
            chunks: list[bytes] = []
            deadline = time.monotonic() + limit
            while True:
                if time.monotonic() > deadline:
                    chan.close()
                    raise self._timeout(
                        f"command {command!r} did not finish within {limit:.0f} s",
                        self.console.tail(10),
                    )
                try:
                    data = chan.recv(65536)
                except TimeoutError:
                    self._check_alive()
                    if self.console.seen_after(console_at, _RESTARTING):
                        # A machine that resets drops its TCP connections without a word;
                        # the user-mode network's retransmission backoff would take a minute
                        # or more to notice.  The kernel's last line says it at once.
                        raise EOFError("the console shows the machine restarting") from None
                    continue
                if not data:
                    break
                chunks.append(data)
            status = chan.recv_exit_status()
            chan.close()
            if status == -1:
                # No exit status at all: the connection (or the machine) went away.
                raise EOFError("the channel closed without an exit status")
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            # A QEMU that died takes the connection with it a moment before its process is
            # gone: give it that moment, so the error says the machine died.
            for _ in range(20):
                self._check_alive()
                time.sleep(0.1)
            raise _ConnectionLost(
                f"SSH connection to {self.name} lost while running {command!r}: {exc}"
            ) from exc
        return status, b"".join(chunks).decode(errors="replace")

    def _raw_boot_id(self) -> str:
        # Below execute(): no retry, no reconnection (reboot() and reconnecting use it).
        return self._run("cat /proc/sys/kernel/random/boot_id", timeout=30)[1].strip()

    def _after_lost_connection(self, command: str, lost: Exception) -> None:
        """Reconnect after a dropped connection; a new boot id means the guest rebooted."""
        with log.nested(f"reconnecting to {self.name} after: {lost}"):
            self._connect(self.boot_timeout)
            now = self._raw_boot_id()
        if self.expected_boot_id and now != self.expected_boot_id:
            self.expected_boot_id = now
            self.boot_count += 1
            raise TreeFailure(
                f"machine {self.name} rebooted on its own while running {command!r} "
                "(its boot id changed)"
            )

    def succeed(self, command: str, timeout: float = 300.0, *, idempotent: bool = False) -> str:
        """Run ``command``; return its output, or fail the test if it exits non-zero.

        ``idempotent``: safe to run again if the connection drops under it (see
        :meth:`execute`).
        """
        with log.nested(f"must succeed: {command}"):
            status, output = self.execute(command, timeout, idempotent=idempotent)
        if status != 0:
            self.console.check()
            raise GuestCommandFailed(command, status, output, expected="0")
        return output

    def fail(self, command: str, timeout: float = 300.0) -> str:
        """Run ``command``; return its output, or fail the test if it exits zero."""
        with log.nested(f"must fail: {command}"):
            status, output = self.execute(command, timeout)
        if status == 0:
            raise GuestCommandFailed(command, status, output, expected="non-zero")
        return output

    def wait_until_succeeds(self, command: str, timeout: float = 120.0) -> str:
        """Run ``command`` until it exits zero; return its output."""
        limit = timeout * self.timeout_scale
        with log.nested(f"waiting until succeeds: {command}"):

            def attempt(last: bool) -> str | None:
                self._check_alive()
                # Waiting re-runs the command by definition: a dropped connection may too.
                status, output = self.execute(command, timeout=timeout, idempotent=True)
                if status == 0:
                    return output
                if last:
                    raise GuestCommandFailed(
                        command, status, output, expected=f"0 within {limit:.0f} s"
                    )
                return None

            return retry(attempt, limit, what=command)

    def wait_for_unit(self, unit: str, timeout: float = 120.0) -> None:
        """Wait until systemd reports ``unit`` active; fail at once if it failed."""
        limit = timeout * self.timeout_scale
        with log.nested(f"waiting for unit {unit}"):

            def attempt(last: bool) -> bool:
                self._check_alive()
                _, state = self.execute(
                    f"systemctl is-active {shlex.quote(unit)}", timeout=30, idempotent=True
                )
                state = state.strip()
                if state == "active":
                    return True
                if state == "failed" or last:
                    _, status = self.execute(
                        f"systemctl status --no-pager -n 20 {shlex.quote(unit)}"
                    )
                    raise TreeFailure(f"unit {unit} is {state or 'unknown'}:\n{status.rstrip()}")
                return False

            retry(attempt, limit, what=f"unit {unit}")

    def wait_for_open_port(self, port: int, timeout: float = 60.0) -> None:
        """Wait until something in the guest listens on TCP ``port``."""
        self.wait_until_succeeds(f"ss -Htln 'sport = :{port}' | grep -q .", timeout)

    def wait_for_console_text(self, regex: str, timeout: float = 60.0) -> None:
        """Wait until ``regex`` (Python syntax, searched in the console's text without
        escape sequences) shows on the serial console since the machine started or last
        rebooted.  A restored machine's console starts at the restore: what its first boot
        printed is not there.

        Units start in parallel: SSH can answer before ``serial-getty`` has printed its
        login prompt, so a test about the console waits for what it looks for.
        """
        limit = timeout * self.timeout_scale
        with log.nested(f"waiting for console text {regex!r}"):

            def attempt(last: bool) -> bool:
                self._check_alive()
                if self.console.wait_text_seen(regex):
                    return True
                if last:
                    raise TreeFailure(
                        f"the console did not show {regex!r} within {limit:.0f} s; "
                        f"its last lines:\n{self.console.tail()}"
                    )
                return False

            retry(attempt, limit, what=f"console text {regex!r}")

    def sync_clock(self) -> None:
        """Set the guest's clock to the host's (a restored machine wakes up in the past)."""
        self.succeed(f"date -s @{time.time():.3f} >/dev/null", idempotent=True)

    # -- reboots -------------------------------------------------------------------------
    def boot_id(self) -> str:
        """The kernel's random boot id: changes on every boot."""
        return self.succeed("cat /proc/sys/kernel/random/boot_id", idempotent=True).strip()

    def reboot(self) -> None:
        """Reboot through systemd and wait for the new boot; fail if it never came.

        Proof is the kernel's boot id: right after ``systemctl reboot`` the old system may
        still accept an SSH connection while it shuts down, so the wait ends only when a
        connection answers with a different boot id (kola's ``WaitForReboot``).
        """
        with log.nested(f"rebooting {self.name}"):
            before = self.boot_id()
            if self.artifacts is not None:
                # The end of this boot, as its screen showed it (best effort).
                with contextlib.suppress(TreegateError, OSError):
                    self.screenshot(self.artifacts / f"screen-boot-{self.boot_count}.png")
            self.console.mark()
            # The connection may drop before the command returns.
            with contextlib.suppress(InfraError):
                self._run("systemctl reboot", timeout=30)
            self.close()
            seen_old = False
            greeting = _Greeting(self.vm.ssh_port, self._looks_up)

            def came_back(_last: bool) -> bool:
                nonlocal seen_old
                self._check_alive()
                if self.console.wait_text_seen(_SSHD_FAILED):
                    raise BootFailure(
                        f"{self.name}: sshd failed to start", console_tail=self.console.tail()
                    )
                client = self._connect_once(greeting)
                if client is None:
                    return False
                self._client = client
                try:
                    status, out = self._run("cat /proc/sys/kernel/random/boot_id", timeout=30)
                except InfraError:
                    status, out = -1, ""  # the old system went down under the connection
                if status == 0 and out.strip() and out.strip() != before:
                    self.expected_boot_id = out.strip()
                    return True
                seen_old = seen_old or out.strip() == before
                self.close()
                return False

            def timed_out(message: str) -> Exception:
                if seen_old:
                    return TreeFailure(
                        f"machine {self.name} did not reboot (boot id unchanged): {message}"
                    )
                return self._timeout(f"{self.name}: {message}", self.console.tail())

            with contextlib.closing(greeting):
                retry(
                    came_back,
                    self.boot_timeout,
                    interval=0.05,
                    max_interval=0.05,
                    what="the machine to come back with a new boot id",
                    on_timeout=timed_out,
                )
            self.boot_count += 1

    # -- ostree --------------------------------------------------------------------------
    def deployments(self) -> list[Deployment]:
        """The deployments ``ostree admin status`` lists, newest (default) first."""
        return parse_admin_status(self.succeed("ostree admin status", idempotent=True))

    def booted_commit(self) -> str:
        """The checksum of the booted deployment."""
        for d in self.deployments():
            if d.booted:
                return d.checksum
        raise TreeFailure(f"machine {self.name} has no booted ostree deployment")

    def upgrade(self, to: str | None = None, *, allow_downgrade: bool = False) -> Deployment:
        """Pull and deploy an update from the harness's repo server (``ostree admin upgrade``).

        ``to`` pins the commit to deploy (``--override-commit``); without it the origin ref's
        newest commit is deployed.  ostree refuses a commit whose timestamp is older than the
        booted one's; ``allow_downgrade`` lets it through (``--allow-downgrade``).  Returns
        the new (pending) default deployment; the machine boots it on the next :meth:`reboot`.
        """
        flags = f" --override-commit={shlex.quote(to)}" if to else ""
        flags += " --allow-downgrade" if allow_downgrade else ""
        with log.nested(f"upgrading {self.name}" + (f" to {to[:12]}" if to else "")):
            self.succeed(f"ostree admin upgrade{flags}", timeout=600)
        return self._pending_default(to)

    def rollback(self) -> Deployment:
        """Make the previous deployment's commit the default again; boot it on the next reboot.

        ostree 2022.7 has no ``admin rollback``: the previous commit is deployed again with its
        own origin (so a later upgrade still follows its ref), and its ``/etc`` is merged from
        the booted one as on any deploy.
        """
        deployments = self.deployments()
        booted = next((i for i, d in enumerate(deployments) if d.booted), None)
        if booted is None:
            raise TreeFailure(f"machine {self.name} has no booted deployment")
        previous = next((d for d in deployments[booted + 1 :]), None)
        if previous is None:
            raise TreeFailure(f"machine {self.name} has no previous deployment to roll back to")
        origin = f"/ostree/deploy/{previous.stateroot}/deploy/{previous.checksum}.{previous.serial}.origin"
        with log.nested(f"rolling {self.name} back to {previous.checksum[:12]}"):
            self.succeed(
                f"ostree admin deploy --os={shlex.quote(previous.stateroot)} "
                f"--origin-file={shlex.quote(origin)} {previous.checksum}",
                timeout=600,
            )
        return self._pending_default(previous.checksum)

    def switch(self, ref: str, remote: str = "treegate") -> Deployment:
        """Rebase onto another tree: pull ``remote:ref`` and deploy it (``ostree admin switch``)."""
        with log.nested(f"switching {self.name} to {remote}:{ref}"):
            self.succeed(f"ostree admin switch {shlex.quote(f'{remote}:{ref}')}", timeout=600)
        return self._pending_default(None)

    def _pending_default(self, expected: str | None) -> Deployment:
        default = self.deployments()[0]
        if default.booted:
            raise TreeFailure(f"machine {self.name}: ostree deployed nothing new")
        if expected is not None and not default.checksum.startswith(expected):
            raise TreeFailure(
                f"machine {self.name}: default deployment is {default.checksum[:12]}, expected {expected[:12]}"
            )
        return default

    # -- files and logs ------------------------------------------------------------------
    def put_file(self, local: Path, remote: str) -> None:
        """Copy a host file into the guest."""
        if self._client is None:
            self.wait_for_ssh()
        assert self._client is not None
        with self._client.open_sftp() as sftp:
            sftp.put(str(local), remote)

    def get_file(self, remote: str, local: Path) -> Path:
        """Copy a guest file to the host."""
        if self._client is None:
            self.wait_for_ssh()
        assert self._client is not None
        local.parent.mkdir(parents=True, exist_ok=True)
        with self._client.open_sftp() as sftp:
            sftp.get(remote, str(local))
        return local

    def journal(self, path: Path) -> Path:
        """Save this boot's journal to ``path``."""
        _, text = self.execute(
            "journalctl -b --no-pager -o short-monotonic", timeout=120, idempotent=True
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def screenshot(self, path: Path) -> Path:
        """Save the VM's display as PNG."""
        return self.vm.screenshot(path)


class _ConnectionLost(InfraError):
    """The SSH connection went away under a command (handled by :meth:`Guest.execute`)."""


# The kernel's last line before a reset (printed at every log level).
_RESTARTING = r"reboot: Restarting system"
# A getty's prompt on the serial console: userspace is up, and sshd starts beside it.
_LOGIN_PROMPT = r"(?m)^\S+ login: "
_SSHD_FAILED = r"Failed to start (?:ssh|sshd)\S*\.service|Failed to start .*OpenBSD Secure Shell"

_STATUS_LINE = re.compile(
    r"^(?P<mark>[* ]) (?P<os>\S+) (?P<csum>[0-9a-f]{64})\.(?P<serial>\d+)(?P<flags>.*)$"
)


def parse_admin_status(text: str) -> list[Deployment]:
    """Parse ``ostree admin status`` (2022.7 has no JSON output) into deployments."""
    out: list[Deployment] = []
    current: dict[str, object] | None = None
    for line in text.splitlines():
        m = _STATUS_LINE.match(line)
        if m:
            if current:
                out.append(Deployment(**current))  # type: ignore[arg-type]
            flags = m.group("flags")
            current = {
                "stateroot": m.group("os"),
                "checksum": m.group("csum"),
                "serial": int(m.group("serial")),
                "booted": m.group("mark") == "*",
                "pending": "(pending)" in flags,
                "rollback": "(rollback)" in flags,
                "version": "",
                "origin": "",
            }
        elif current is not None:
            stripped = line.strip()
            if stripped.startswith("Version:"):
                current["version"] = stripped.split(":", 1)[1].strip()
            elif stripped.startswith("origin refspec:"):
                current["origin"] = stripped.split(":", 1)[1].strip()
    if current:
        out.append(Deployment(**current))  # type: ignore[arg-type]
    return out


class _Greeting:
    """Finds a connection on which the guest's sshd has sent its greeting.

    QEMU's user-mode network accepts a host connection at once and only then connects to the
    guest; while the guest boots, slirp retransmits that SYN with a growing backoff, so one
    connection that simply waits for the banner can sit seconds past the moment sshd starts.
    Once the guest is ``up``, each poll therefore opens one more connection and watches the
    last few together: the first to show ``SSH-`` wins (a slow sshd greets on an old one, a
    fresh one gets past the backoff).  The greeting is only peeked at, so paramiko reads it as
    usual.

    Until then a new connection is opened only every :attr:`QUIET_INTERVAL` seconds.  slirp
    keeps every connection it accepted, closed by us or not, and hands them all to the guest
    when its network comes up: a connection every half second through a 30 s reboot was some
    fifty connections arriving at once, sshd throttled them (``MaxStartups``), forked a child
    for each under emulation, and greeted treegate 18-20 s after it started listening.
    """

    KEEP = 6
    """Connections watched at once; sshd's default MaxStartups is 10."""

    QUIET_INTERVAL = 5.0
    """Seconds between new connections while the guest has not shown that it is up."""

    def __init__(self, port: int, up: Callable[[], bool] = lambda: True) -> None:
        self.port = port
        self.up = up
        self.pending: list[socket.socket] = []
        self._opened = -math.inf
        self._up = False

    def poll(self, wait: float) -> socket.socket | None:
        """Open one more connection if it is time to; return the first greeted one within
        ``wait`` seconds."""
        now = time.monotonic()
        # Once up, always up: the console is not searched again on every poll.
        self._up = self._up or self.up()
        if now - self._opened >= self.QUIET_INTERVAL or self._up:
            with contextlib.suppress(OSError):  # refused: QEMU is not listening yet
                self.pending.append(
                    socket.create_connection(("127.0.0.1", self.port), timeout=wait)
                )
                self._opened = now
        while len(self.pending) > self.KEEP:
            self.pending.pop(0).close()
        if not self.pending:
            return None
        ready, _, _ = select.select(self.pending, [], [], wait)
        for sock in ready:
            try:
                head = sock.recv(4, socket.MSG_PEEK)
            except OSError:
                head = b""
            if head == b"SSH-":
                self.pending.remove(sock)
                sock.settimeout(None)
                return sock
            if not b"SSH-".startswith(head) or not head:  # closed, or not sshd
                self.pending.remove(sock)
                sock.close()
        return None

    def close(self) -> None:
        for sock in self.pending:
            sock.close()
        self.pending.clear()


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)
