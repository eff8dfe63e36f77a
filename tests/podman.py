"""Real Podman for container-mode tests: packages, the API service, tiny images.

- :func:`ensure_packages` installs podman, runc, aardvark-dns and busybox-static with apt
  when they are missing (a failure skips, and in CI fails, the test).
- :class:`PodmanService` writes the containers.conf this kernel needs (runc, cgroupfs, fixed
  ulimits) and a registries.conf that marks the test registry as plain HTTP (what a
  Docker engine does for loopback registries by default; Podman's Docker-compatible pull
  has no TLS switch), and runs ``podman system service`` on a socket of its own.
- :meth:`PodmanService.push_app` builds an image with ``podman import`` from a rootfs of
  busybox-static whose CMD runs ``busybox httpd`` on port 8080 serving ``/`` and ``/VERSION``
  (the version), ``/health`` (left out for an unhealthy image) and ``/cgi-bin/slow`` (answers after 2 s),
  and pushes it to the registry under a semver tag.

Every container, network and image a test makes is removed by :meth:`PodmanService.cleanup`.
The module-scoped fixtures ``registry`` and ``podman`` (a test module imports them) give each
test module its own registry and Podman service.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.harness import Dewy
from tests.oci_registry import OciRegistry

PACKAGES = ("podman", "runc", "aardvark-dns", "busybox-static")
BUSYBOX = Path("/bin/busybox")
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
PORT = 8080  # where the test images listen
SECOND_PORT = 9090  # where they also listen with second_port=True (www2: "VERSION on 9090")
CLIENT_IMAGE = f"localhost/dewy-test-client:{os.getpid()}"  # one per test run: another run removes only its own


def _missing(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for package in packages:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
        if "ok installed" not in result.stdout:
            missing.append(package)
    return missing


def ensure_packages() -> None:
    """podman and friends from Debian, installed if missing (a failure skips, or fails in CI)."""
    missing = _missing(PACKAGES)
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, check=True,
                       capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        message = f"{', '.join(missing)} not installed and apt-get install failed: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def rootfs(version: str, *, healthy: bool = True, web: bool = True) -> bytes:
    """A tar of busybox-static and the web root of version ``version``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "www", "www/cgi-bin", "www2", "tmp"):
            _add(tar, directory, mode=0o1777 if directory == "tmp" else 0o755, kind=tarfile.DIRTYPE)
        _add(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        _add(tar, "bin/sh", kind=tarfile.SYMTYPE, link="busybox")
        if web:
            _add(tar, "www/VERSION", version.encode())
            _add(tar, "www/index.html", version.encode())  # what GET / answers (the client loops)
            _add(tar, "www2/index.html", f"{version} on {SECOND_PORT}".encode())  # the second port's answer
            if healthy:
                _add(tar, "www/health", b"ok\n")
            _add(tar, "www/cgi-bin/slow", b"#!/bin/sh\n/bin/busybox sleep 2\necho 'Content-Type: text/plain'\necho\n"
                                           b"cat /www/VERSION\n", 0o755)
    return buffer.getvalue()


def serve_command(start_delay: float = 0, second_port: bool = False) -> str:
    """CMD of the test images: busybox httpd in the foreground (two with ``second_port``), gone at once on SIGTERM."""
    delay = f"/bin/busybox sleep {start_delay}; " if start_delay else ""
    second = f"/bin/busybox httpd -f -p {SECOND_PORT} -h /www2 & " if second_port else ""
    return (f'["/bin/sh", "-c", "trap \'exit 0\' TERM; {delay}{second}/bin/busybox httpd -f -p {PORT} -h /www & wait"]')


class PodmanService:
    """``podman system service`` on a private socket, with this testbed's containers.conf."""

    def __init__(self, workdir: Path, registry_host: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.registry_host = registry_host
        (self.dir / "containers.conf").write_text(CONTAINERS_CONF)
        (self.dir / "registries.conf").write_text(
            f'unqualified-search-registries = []\n[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.dir / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(self.dir / "registries.conf")}
        for variable in ("CONTAINER_HOST", "DOCKER_HOST"):
            self.env.pop(variable, None)
        self.socket = self.dir / "podman.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> PodmanService:
        self.log = open(self.dir / "service.log", "wb")
        self.process = subprocess.Popen(["podman", "system", "service", "--time=0", self.url], env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while True:  # bounded readiness loop: the API answers /_ping
            if self.process.poll() is not None:
                raise RuntimeError(f"podman system service exited: {(self.dir / 'service.log').read_text()[-2000:]}")
            if self.socket.exists() and self._ping():
                break
            if time.monotonic() > deadline:
                raise RuntimeError("podman system service did not answer within 30 s")
            time.sleep(0.05)
        self.podman("import", "--change", 'CMD ["/bin/busybox", "sh"]', "-", CLIENT_IMAGE, input=rootfs("client", web=False))
        return self

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.")
        except OSError:
            return False

    def stop(self) -> None:
        self.podman("rmi", "-f", CLIENT_IMAGE, check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.log.close()

    # -- podman CLI ------------------------------------------------------------------------

    def podman(self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> str:
        result = subprocess.run(["podman", *args], env=self.env, input=input, capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()[-1500:]}")
        return result.stdout.decode()

    def push_app(self, repository: str, version: str, *, healthy: bool = True, start_delay: float = 0,
                 crash: bool = False, second_port: bool = False, expose: tuple[int, ...] = ()) -> str:
        """Build the test app as ``registry/repository:version`` (with EXPOSE of each of ``expose``) and push
        it; the reference.

        The local image stays (removing it could race with dewy pulling it): dewy's pull still asks the
        registry for the manifest and finds the layers present."""
        reference = f"{self.registry_host}/{repository}:{version}"
        command = '["/bin/sh", "-c", "exit 3"]' if crash else serve_command(start_delay, second_port)
        changes = [option for port in expose for option in ("--change", f"EXPOSE {port}")]
        self.podman("import", "--change", f"CMD {command}", *changes, "-", reference, input=rootfs(version, healthy=healthy))
        self.podman("push", "--tls-verify=false", reference)  # kept locally: cleanup() or dewy's pruning removes it
        return reference

    def containers(self, app: str) -> list[dict]:
        """Every container of dewy app ``app`` (any state): name, id, labels, state, IP on dewy's network."""
        ids = self.podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label=dewy.app={app}").split()
        if not ids:
            return []
        found = []
        inspected = [data for i in ids for data in json.loads(self.podman("container", "inspect", i, check=False) or "[]")]
        for data in inspected:  # one by one: a container may be removed between ps and inspect
            network = (data.get("NetworkSettings", {}).get("Networks") or {}).get(f"dewy-{app}") or {}
            found.append({"id": data["Id"], "name": data["Name"].lstrip("/"), "labels": data["Config"]["Labels"] or {},
                          "state": data["State"]["Status"], "ip": network.get("IPAddress"),
                          "aliases": network.get("Aliases") or []})
        return found

    def images(self, repository: str) -> list[str]:
        out = self.podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                          f"reference={self.registry_host}/{repository}")
        return sorted(line for line in out.split() if line)

    def client(self, app: str, *command: str, timeout: float = 30) -> str:
        """Run ``command`` in a throwaway client container on dewy's network; its output. Retried (3 times at
        most) when the lookup failed because aardvark-dns was reloading (see :meth:`client_loop`)."""
        for attempt in range(3):
            result = subprocess.run(["podman", "run", "--rm", "--network", f"dewy-{app}", CLIENT_IMAGE, *command],
                                    env=self.env, capture_output=True, timeout=timeout)
            output = (result.stdout + result.stderr).decode()
            if result.returncode == 0 and "can't resolve" not in output and "NXDOMAIN" not in output:
                return result.stdout.decode()
            if "bad address" not in output and "can't resolve" not in output and "NXDOMAIN" not in output:
                break
        raise AssertionError(f"client {' '.join(command)} failed ({result.returncode}): {output[-1500:]}")

    def client_loop(self, app: str, url: str, iterations: int) -> str:
        """A client container fetching ``url`` (``http://NAME:PORT/PATH``) in a loop (bounded); returns its name.

        Each round looks NAME up (``nslookup``), then fetches from the address it got, so a failed lookup
        (``dns TIME``) is told apart from a failed fetch (``fail IP TIME STDERR``); success prints
        ``ok BODY``. Lookups fail now and then for reasons outside dewy: aardvark-dns before 1.11 (Debian 12
        has 1.4) restarts its listeners whenever any container joins or leaves the network and drops or
        refuses queries meanwhile (containers/aardvark-dns#389). busybox 1.35's ``wget -T`` crashes, so
        timeouts come from busybox ``timeout``."""
        name = f"dewy-test-client-{app}"
        host, _, rest = url.removeprefix("http://").partition(":")
        script = (f"i=0; while [ $i -lt {iterations} ]; do "
                  f"ip=$(/bin/busybox timeout 12 /bin/busybox nslookup {host} 2>/dev/null | "
                  f"/bin/busybox awk '/^Name:/ {{n=1}} n && /^Address/ {{print $2; exit}}'); "
                  f"if [ -z \"$ip\" ]; then echo \"dns $(/bin/busybox date +%s)\"; "
                  f"elif v=$(/bin/busybox timeout 12 /bin/busybox wget -O - http://$ip:{rest} 2>/tmp/err); then echo \"ok $v\"; "
                  f"else echo \"fail $ip $(/bin/busybox date +%s) $(/bin/busybox tr '\\n' ' ' </tmp/err)\"; fi; "
                  f"i=$((i+1)); /bin/busybox usleep 20000; done")
        self.podman("run", "-d", "--name", name, "--network", f"dewy-{app}", CLIENT_IMAGE, "/bin/sh", "-c", script)
        return name

    def cleanup(self, app: str, repository: str) -> None:
        """Remove what a test made: dewy's containers for ``app``, its network, client containers, the images."""
        ids = self.podman("ps", "-a", "-q", "--filter", f"label=dewy.app={app}", check=False).split()
        if ids:
            self.podman("rm", "-f", "-t", "0", *ids, check=False)
        self.podman("rm", "-f", "-t", "0", f"dewy-test-client-{app}", check=False)
        self.podman("network", "rm", "-f", f"dewy-{app}", check=False)
        images = self.podman("images", "-q", "--filter", f"reference={self.registry_host}/{repository}", check=False).split()
        if images:
            self.podman("rmi", "-f", *set(images), check=False)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """A docker-registry on loopback for the module's images (import it into a test module to use it)."""
    with OciRegistry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, registry: OciRegistry):
    """The module's PodmanService, pulling from ``registry`` (import it into a test module to use it)."""
    if os.geteuid() != 0:
        pytest.skip("container tests need root (rootful Podman: dewy reaches replicas on their bridge network)")
    ensure_packages()
    service = PodmanService(tmp_path_factory.mktemp("podman"), registry.host).start()
    try:
        yield service
    finally:
        service.stop()


# Runs dewy with its host port handed over as fd 3 (LISTEN_FDS/LISTEN_PID, systemd's socket-activation
# protocol), as systemd's fd store does for dewy@.service: the socket outlives each dewy process.
_ACTIVATE = """
import os, sys
fd = int(os.environ.pop("DEWY_TEST_LISTEN_FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-m", "dewy", *sys.argv[1:]])
"""


class ActivatedDewy(Dewy):
    """``Dewy`` started with an already-listening socket (socket activation), like a restart under systemd."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str], listener: socket.socket) -> None:
        import queue

        self.events = queue.Queue()
        self.seen = []
        self.process = subprocess.Popen(
            [sys.executable, "-c", _ACTIVATE, *args[:1], "-f", "json", "-l", "debug", *args[1:]],
            cwd=cwd, env={**os.environ, **env, "DEWY_TEST_LISTEN_FD": str(listener.fileno())},
            pass_fds=(listener.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def stop_dewy(dewy: Dewy) -> None:
    """SIGTERM (dewy stops its replicas), SIGKILL if that hangs."""
    try:
        dewy.stop(signal.SIGTERM, timeout=60)
    except subprocess.TimeoutExpired:
        dewy.kill()

