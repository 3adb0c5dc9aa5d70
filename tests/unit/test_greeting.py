"""How the wait for SSH opens connections (harness.guest._Greeting), against a local listener
that stands in for QEMU's user-mode network: it accepts every connection at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from harness.guest import _Greeting


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    yield sock
    sock.close()


def _accept_all(listener: socket.socket) -> list[socket.socket]:
    accepted = []
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return accepted
        accepted.append(conn)


def test_one_connection_per_quiet_interval_until_the_guest_is_up(
    listener: socket.socket,
) -> None:
    up = False
    greeting = _Greeting(listener.getsockname()[1], lambda: up)
    greeting.QUIET_INTERVAL = 0.5
    opened = []
    try:
        for _ in range(5):
            assert greeting.poll(0.01) is None
        opened += _accept_all(listener)
        assert len(opened) == 1  # every connection now would reach sshd later, all at once

        time.sleep(0.5)
        assert greeting.poll(0.01) is None
        opened += _accept_all(listener)
        assert len(opened) == 2

        up = True  # the console showed a login prompt: one more connection per poll
        for _ in range(3):
            assert greeting.poll(0.01) is None
        opened += _accept_all(listener)
        assert len(opened) == 5
    finally:
        greeting.close()
        for conn in opened:
            conn.close()


def test_a_refused_connection_is_not_counted(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()  # QEMU not listening yet
    greeting = _Greeting(port, lambda: False)
    try:
        assert greeting.poll(0.01) is None
        assert greeting._opened == float("-inf")  # the next poll tries again at once
    finally:
        greeting.close()


def test_the_greeted_connection_is_returned_with_its_greeting_unread(
    listener: socket.socket,
) -> None:
    greeting = _Greeting(listener.getsockname()[1], lambda: False)
    accepted: list[socket.socket] = []
    try:
        assert greeting.poll(0.01) is None
        accepted = _accept_all(listener)
        accepted[0].sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        sock = greeting.poll(1.0)
        assert sock is not None
        assert sock.recv(100).startswith(b"SSH-2.0-")  # only peeked: paramiko reads it
        sock.close()
    finally:
        greeting.close()
        for conn in accepted:
            conn.close()
