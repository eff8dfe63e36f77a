"""dewy@NAME with ``mode = "container"`` under a real systemd (PID 1 in systemd-nspawn), dewy installed
from the .deb, each behaviour its own test.

Podman runs on the host, not in the machine: the machine shares the host's network namespace,
where nspawn grants no CAP_NET_ADMIN, so Podman inside could not create its bridge networks.
The host's Podman API service (tests/podman.py) has its socket directory bound into the machine at
/run/podman, so the socket is /run/podman/podman.sock, where ``podman.socket`` puts it on a real host.
For shutdown, where what matters is the order in which systemd stops units, the machine has
``podman.socket`` itself (Debian's settings) activating a ``podman.service`` that forwards to the host's
Podman (systemd-socket-proxyd), as a host running Podman from its socket would.
dewy's proxy holds the host port inside the machine; the client loop on the host counts every failed
request through it, and the replicas' addresses on the podman network are reachable from both sides.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.harness import ClientLoop, free_port, get
from tests.oci_registry import OciRegistry
from tests.podman import PORT, PodmanService, podman, registry  # noqa: F401  podman, registry: fixtures
from tests.system.nspawn import Machine

pytestmark = [pytest.mark.system, pytest.mark.every_suite]

SOCKET_DIR = "/run/podman"  # podman.socket's directory: dewy finds podman.sock there with no runtime setting
HOST_SOCKET_DIR = "/run/host-podman"  # where the host's socket is when the machine has podman.socket
PODMAN_SOCKET_UNIT = """[Unit]
Description=Podman API Socket
[Socket]
ListenStream=%t/podman/podman.sock
SocketMode=0660
[Install]
WantedBy=sockets.target
"""
PODMAN_SERVICE_UNIT = f"""[Unit]
Description=Podman API Service (forwarding to the host's Podman)
Requires=podman.socket
After=podman.socket
[Service]
Type=exec
ExecStart=/usr/lib/systemd/systemd-socket-proxyd {HOST_SOCKET_DIR}/podman.sock
"""


@dataclass
class Instance:
    """dewy@NAME in a booted machine, deploying NAME/web from the test registry as replicas on the host's Podman."""

    m: Machine
    podman: PodmanService
    registry: OciRegistry
    name: str
    port: int

    @property
    def unit(self) -> str:
        return f"dewy@{self.name}.service"

    @property
    def repository(self) -> str:
        return f"{self.name}/web"

    def configure(self) -> None:
        self.m.write(f"/etc/dewy/{self.name}.toml", f"""
mode = "container"
registry = "img://{self.registry.host}/{self.repository}"
interval = "0.5s"

[container]
container_port = {PORT}
ports = ["127.0.0.1:{self.port}"]
replicas = 2
health_path = "/health"
health_timeout = "10s"
drain_time = "2s"
stop_timeout = "2s"
""")

    def events(self, event: str, **fields: str) -> list[dict]:
        return self.m.journal(self.unit, DEWY_EVENT=event, **fields)

    def wait_for(self, event: str, count: int = 1, timeout: float = 60, **fields: str) -> list[dict]:
        """The journal's ``event`` records once there are ``count`` of them."""
        return self.m.wait_until(lambda: (found := self.events(event, **fields)) and len(found) >= count and found,
                                 timeout, what=f"{count} {event} event(s) of {self.unit}")

    def containers(self) -> list[dict]:
        """Every container labelled dewy.app=NAME in Podman, whatever its state."""
        return self.podman.containers(self.name)

    def replica_ids(self) -> set[str]:
        return {c["id"] for c in self.containers()}

    def dewy_pid(self) -> int:
        return self.m.pid_of(self.unit)


@contextlib.contextmanager
def booted(machine_factory: Callable[..., Machine], podman: PodmanService, registry: OciRegistry,
           socket_dir: str) -> Iterator[Instance]:
    """A machine with the deb installed and the host's Podman socket directory bound at ``socket_dir``."""
    name = f"t{secrets.token_hex(3)}"
    machine = machine_factory(install="deb", bind=[(podman.dir, socket_dir)])
    instance = Instance(machine, podman, registry, name, free_port())
    try:
        yield instance
    finally:
        if machine.alive:  # stopped before the cleanup: nothing recreates the replicas
            machine.systemctl("stop", instance.unit, check=False, timeout=120)
        podman.cleanup(name, instance.repository)


@pytest.fixture
def instance(machine_factory: Callable[..., Machine], podman: PodmanService,
             registry: OciRegistry) -> Iterator[Instance]:
    """dewy@NAME's machine, the host's Podman socket at /run/podman/podman.sock."""
    with booted(machine_factory, podman, registry, SOCKET_DIR) as instance:
        yield instance


@pytest.fixture
def activated(machine_factory: Callable[..., Machine], podman: PodmanService,
              registry: OciRegistry) -> Iterator[Instance]:
    """dewy@NAME's machine with ``systemctl enable --now podman.socket``, its service forwarding to the host's Podman."""
    with booted(machine_factory, podman, registry, HOST_SOCKET_DIR) as instance:
        instance.m.write("/etc/systemd/system/podman.socket", PODMAN_SOCKET_UNIT)
        instance.m.write("/etc/systemd/system/podman.service", PODMAN_SERVICE_UNIT)
        instance.m.systemctl("daemon-reload")
        instance.m.systemctl("enable", "--now", "podman.socket")
        yield instance


def start(instance: Instance) -> None:
    """v1.0.0 pushed, /etc/dewy/NAME.toml written, ``systemctl enable --now dewy@NAME``, v1.0.0 deployed."""
    instance.podman.push_app(instance.repository, "v1.0.0")
    instance.configure()
    instance.m.systemctl("enable", "--now", instance.unit, timeout=120)
    instance.wait_for("deployed", DEWY_VERSION="v1.0.0")


def serve_through(instance: Instance, client: ClientLoop, more: int = 20) -> None:
    """Wait until ``more`` further requests through the host port have succeeded (the loop is still running)."""
    target = client.ok + more
    instance.m.wait_until(lambda: client.ok >= target or client.failures, 30, what=f"{more} more answers")


def test_enable_now_brings_the_replicas_up_behind_the_host_port(instance: Instance) -> None:
    start(instance)
    shown = instance.m.show(instance.unit, "ActiveState", "SubState", "NFileDescriptorStore")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running")
    assert shown["NFileDescriptorStore"] == "1", "the host port is kept in the fd store"
    assert instance.m.systemctl("is-enabled", instance.unit).stdout.strip() == "enabled"
    replicas = instance.containers()
    assert sorted((c["labels"]["dewy.version"], c["labels"]["dewy.replica"], c["state"]) for c in replicas) == [
        ("v1.0.0", "1", "running"), ("v1.0.0", "2", "running")]
    assert get(instance.port, "/VERSION") == (200, "v1.0.0")
    status = json.loads(instance.m.run(["dewy", "status", instance.name, "--json"]).stdout)
    assert status["version"] == "v1.0.0" and status["app"]["mode"] == "container"
    assert status["app"]["runtime"] == "podman", "no runtime setting: found /run/podman/podman.sock"
    assert sorted(r["id"] for r in status["app"]["replicas"]) == sorted(c["id"] for c in replicas)
    assert all(r["healthy"] for r in status["app"]["replicas"])


def test_systemctl_restart_keeps_the_replicas_serving_and_adopts_them(instance: Instance) -> None:
    start(instance)
    replicas, dewy_pid = instance.replica_ids(), instance.dewy_pid()
    with ClientLoop(instance.port) as client:
        serve_through(instance, client)
        began = time.monotonic()
        instance.m.systemctl("restart", instance.unit, timeout=120)  # Type=notify: back once the new dewy is READY
        took = time.monotonic() - began
        adopted = instance.wait_for("replicas-adopted", timeout=30)
        serve_through(instance, client)
    assert client.failures == [], client.failures[:5]
    print(f"\nsystemctl restart ({took:.1f}s): {client.ok} requests answered, {len(client.failures)} failed")
    assert instance.dewy_pid() not in (0, dewy_pid), "dewy itself was restarted"
    assert adopted[0]["DEWY_VERSION"] == "v1.0.0"
    assert instance.replica_ids() == replicas, "the same replicas serve: none restarted or replaced"
    assert len(instance.events("replica-starting")) == 2, "no replica was started after the first deploy"
    assert len(instance.events("deployed")) == 1, "nothing was redeployed"
    said = [r["MESSAGE"] for r in instance.events("stopping")]
    assert any("dewy is restarting: the replicas keep serving" in message for message in said), said


def test_systemctl_kill_usr1_rolls_the_replicas(instance: Instance) -> None:
    start(instance)
    old, dewy_pid = instance.replica_ids(), instance.dewy_pid()
    with ClientLoop(instance.port) as client:
        serve_through(instance, client)
        instance.m.systemctl("kill", "-s", "USR1", instance.unit)
        instance.wait_for("rollout-switched", count=2, DEWY_VERSION="v1.0.0")
        instance.wait_for("replicas-drained", timeout=30)
        instance.m.wait_until(lambda: not old & instance.replica_ids(), 30, what="the old replicas removed")
        serve_through(instance, client)
    assert client.failures == [], client.failures[:5]
    print(f"\nsystemctl kill -s USR1: {client.ok} requests answered, {len(client.failures)} failed")
    new = instance.containers()
    assert len(new) == 2 and not old & {c["id"] for c in new}, "two fresh replicas replaced the old ones"
    assert all(c["state"] == "running" and c["labels"]["dewy.version"] == "v1.0.0" for c in new)
    assert instance.dewy_pid() == dewy_pid, "dewy itself kept running"
    assert get(instance.port, "/VERSION") == (200, "v1.0.0")


def test_systemctl_stop_removes_the_replicas(instance: Instance) -> None:
    start(instance)
    assert len(instance.containers()) == 2
    instance.m.systemctl("stop", instance.unit, timeout=120)
    assert instance.m.is_active(instance.unit) == "inactive"
    assert instance.containers() == [], "no container labelled dewy.app=NAME is left in Podman"
    assert instance.events("replicas-stopping")
    with pytest.raises(OSError):
        get(instance.port, timeout=1)
    assert instance.m.failed_units() == []


def test_poweroff_removes_the_replicas_before_podman_stops(activated: Instance) -> None:
    start(activated)
    assert activated.m.is_active("podman.service") == "active", "dewy reached Podman through podman.socket"
    assert len(activated.containers()) == 2
    activated.m.poweroff(timeout=60)
    assert activated.m.process.returncode == 0, "the machine powered off by itself, nothing was killed"
    assert activated.containers() == [], "dewy stopped and removed its replicas while Podman still answered"
