"""Refuse network access to anything but this machine, in every Python process of a test run.

Installed by ``tests/conftest.py`` in the pytest process and, through the
``sitecustomize.py`` beside this file (on ``PYTHONPATH``), in every Python process the
tests start: ``fedge-sim`` subprocesses, LocalGrid workers, Ray's driver-side helpers and
workers. ``connect``, ``connect_ex``, ``sendto`` and ``sendmsg`` on a socket whose
peer is not loopback (127.0.0.0/8, ::1, a local Unix socket) raise
:class:`NetworkAccessBlocked` before any packet leaves, and the attempt is appended to
the file named by ``FEDGE_NETGUARD_LOG``, which the test session checks at its end (a
process may swallow the exception; the log still fails the run).

Written by hand: no library patches sockets process-wide and across subprocesses this way
(pytest-socket guards only the pytest process). Native code (gRPC C-core inside Ray)
does not go through Python sockets; a private Ray instance is pinned to 127.0.0.1 instead.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback

LOG_ENV = "FEDGE_NETGUARD_LOG"


class NetworkAccessBlocked(ConnectionRefusedError):
    """A test tried to reach a non-loopback address."""


def is_local(address: object) -> bool:
    """Whether a socket address stays on this machine (loopback, unspecified, Unix path)."""
    if isinstance(address, (str, bytes)):  # AF_UNIX path or abstract name
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # a host name: resolving it may already leave the machine
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or (mapped is not None and mapped.is_loopback)


def _record(call: str, address: object) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        where = "".join(traceback.format_stack(limit=6)[:-2])
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"pid {os.getpid()} {call}({address!r})\n{where}\n")


def _guard(name: str, address_arg: int):
    original = getattr(socket.socket, name)

    def guarded(self, *args, **kwargs):
        address = args[address_arg] if len(args) > address_arg else kwargs.get("address")
        if name == "sendmsg":
            address = args[3] if len(args) > 3 else kwargs.get("address")
            if address is None:  # connected socket: checked at connect time
                return original(self, *args, **kwargs)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address):
            _record(name, address)
            raise NetworkAccessBlocked(f"fedge tests: network access to {address!r} is blocked ({name})")
        return original(self, *args, **kwargs)

    guarded.__wrapped__ = original  # type: ignore[attr-defined]
    guarded.__name__ = name
    return guarded


def install() -> None:
    """Patch ``socket.socket`` in this process (idempotent)."""
    if installed():
        return
    socket.socket.connect = _guard("connect", 0)  # type: ignore[method-assign]
    socket.socket.connect_ex = _guard("connect_ex", 0)  # type: ignore[method-assign]
    socket.socket.sendto = _guard("sendto", -1)  # type: ignore[method-assign]
    socket.socket.sendmsg = _guard("sendmsg", 3)  # type: ignore[method-assign]


def installed() -> bool:
    """Whether this process's sockets are guarded."""
    return hasattr(socket.socket.connect, "__wrapped__")
