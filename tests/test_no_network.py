"""No network: sockets to other machines fail in the tests and in every process they start (must-show 4).

Only UDP ``connect`` is tried against a non-loopback (TEST-NET-1, documentation-only)
address: it sends no packet even when unguarded, so these checks never leave the machine.
"""

import socket
import subprocess
import sys

import fedge_netguard
import pytest

OUTSIDE = ("192.0.2.1", 9)  # RFC 5737 TEST-NET-1


def test_this_process_refuses_non_loopback(tmp_path, monkeypatch):
    log = tmp_path / "attempts.log"
    monkeypatch.setenv(fedge_netguard.LOG_ENV, str(log))
    assert fedge_netguard.installed()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(fedge_netguard.NetworkAccessBlocked):
        udp.connect(OUTSIDE)
    assert "192.0.2.1" in log.read_text()


def test_loopback_still_works():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            conn, _ = server.accept()
            conn.close()


def test_child_processes_are_guarded_too(tmp_path, monkeypatch):
    log = tmp_path / "child.log"
    monkeypatch.setenv(fedge_netguard.LOG_ENV, str(log))
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"try:\n    s.connect({OUTSIDE!r})\nexcept ConnectionRefusedError as e:\n    print('blocked:', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "blocked:" in proc.stdout and "network access to" in proc.stdout
    assert "192.0.2.1" in log.read_text()


@pytest.mark.parametrize(
    ("address", "local"),
    [
        (("127.0.0.1", 80), True),
        (("127.8.9.10", 80), True),
        (("::1", 80, 0, 0), True),
        (("::ffff:127.0.0.1", 80, 0, 0), True),
        (("localhost", 80), True),
        ("/tmp/some.sock", True),
        (("10.0.0.1", 80), False),
        (("8.8.8.8", 53), False),
        (("2001:db8::1", 80, 0, 0), False),
        (("example.org", 80), False),
    ],
)
def test_is_local(address, local):
    assert fedge_netguard.is_local(address) is local
