"""The system-test machinery itself: a real systemd boots, dewy installs, host loopback is reachable."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.system.nspawn import Machine

pytestmark = pytest.mark.system


@pytest.fixture
def host_http() -> Iterator[int]:
    """A loopback HTTP server on the host (ephemeral port) answering every GET with 'hello from the host'."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_smoke(machine_factory, host_http: int) -> None:
    m: Machine = machine_factory(install="wheel")     # the wheel path stays tested; the deb's is test_package
    print(f"\n{m.name}: boot {m.boot_seconds:.2f}s, install {m.install_seconds:.2f}s "
          f"({'overlay' if m.overlay else 'copy'} root)")

    assert m.run(["systemctl", "is-system-running"], check=False).stdout.strip() in ("running", "degraded")
    assert m.failed_units() == []

    version = m.run(["dewy", "--version"]).stdout
    assert version.startswith("dewy "), version
    m.run([m.dewy_python, "-c", "import systemd.journal, systemd.daemon, dbus_next"])

    m.run(["systemd-run", "--wait", "--unit=hello", "/bin/true"])
    assert m.wait_until(lambda: [r for r in m.journal("hello.service") if "Deactivated successfully" in r["MESSAGE"]],
                        10, what="hello.service to finish in the journal")

    body = m.run(["curl", "-fsS", "--max-time", "5", f"http://127.0.0.1:{host_http}/"]).stdout
    assert body == "hello from the host\n"


def test_machine_api(machine_factory, tmp_path) -> None:
    """What feature tests build on: binds, files, units, pids, the journal with fields, the shared dir, waiting."""
    registry = tmp_path / "registry"
    (registry / "v1.0.0").mkdir(parents=True)
    (registry / "v1.0.0" / "app.tar.gz").write_bytes(b"not really")
    machine: Machine = machine_factory(bind_ro=[registry])
    assert machine.read(str(registry / "v1.0.0" / "app.tar.gz")) == "not really"
    assert machine.run(["touch", str(registry / "x")], check=False).returncode != 0     # read-only

    machine.write("/etc/dewy-smoke/hello.txt", "hi\n", 0o600)
    assert machine.read("/etc/dewy-smoke/hello.txt") == "hi\n"
    assert machine.run("stat -c %a /etc/dewy-smoke/hello.txt").stdout.strip() == "600"

    (machine.share / "from-host").write_text("shared\n")
    assert machine.read(str(machine.share / "from-host")) == "shared\n"

    machine.write("/usr/local/bin/chatty", "#!/bin/sh\necho started; exec sleep 300\n", 0o755)
    machine.run(["systemd-run", "--unit=chatty", "-p", "MemoryMax=64M", "/usr/local/bin/chatty"])
    pid = machine.wait_until(lambda: machine.pid_of("chatty"), 10, what="chatty's MainPID")
    assert machine.run(["cat", f"/proc/{pid}/comm"]).stdout.strip() == "sleep"
    assert machine.show("chatty", "MemoryMax")["MemoryMax"] == str(64 * 1024 * 1024)
    records = machine.wait_until(lambda: machine.journal(_SYSTEMD_UNIT="chatty.service", MESSAGE="started"), 10,
                                 what="chatty's stdout in the journal")
    assert records[0]["SYSLOG_IDENTIFIER"] == "chatty"

    machine.run(["logger", "--journald"], input="MESSAGE=structured\nDEWY_EVENT=smoke-test\n")
    event = machine.wait_until(lambda: machine.journal(DEWY_EVENT="smoke-test"), 10, what="the structured record")
    assert event[0]["MESSAGE"] == "structured"

    machine.systemctl("stop", "chatty")
    assert machine.pid_of("chatty") == 0


def test_two_machines_at_once(machine_factory) -> None:
    """Machines booted side by side are separate systems (own cgroups, units, files)."""
    a, b = machine_factory(), machine_factory()
    a.run(["systemd-run", "--unit=only-in-a", "sleep", "300"])
    assert a.is_active("only-in-a") == "active"
    assert b.is_active("only-in-a") == "inactive"
    b.write("/etc/only-in-b", "b")
    assert a.run(["test", "-e", "/etc/only-in-b"], check=False).returncode == 1
    assert a.run("hostname").stdout.strip() == a.name
    b.systemctl("daemon-reexec")
    assert a.is_active("only-in-a") == "active"
