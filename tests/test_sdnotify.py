"""sd_notify against a real datagram socket, as systemd listens on one."""

from __future__ import annotations

import socket

from dewy.systemd import sdnotify


def test_notify_reaches_the_socket_and_a_gone_socket_is_no_error(tmp_path, monkeypatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("READY=1", "STATUS=v1.2.3")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=v1.2.3"
    path.unlink()  # systemd re-executing: nobody listens for a moment
    assert sdnotify.notify("WATCHDOG=1") is False
