"""Downtime of replacing a container with a new image: dewy's rolling update vs stop-then-start.

The same images (the container tests' busybox httpd app, one per tag, in a local
docker-registry), the same load (the harness's client loop in a few threads, one
GET / per connection, counting every connection error and non-2xx answer), the same
host port style (127.0.0.1:PORT), five updates each, on real Podman:

- dewy: ``dewy container --replicas 1 --port 127.0.0.1:PORT --health-path /health``; each
  update is a new tag pushed to the registry, which dewy pulls and rolls out (new replica
  next to the old one, health-checked, the proxy switched, the old one drained).
- stop-then-start, what ``podman auto-update`` (restarting the container's systemd unit)
  and Watchtower (stop, remove, create, start) do: ``podman pull`` the new tag, ``podman
  stop`` + ``rm`` the running container, ``podman run -p 127.0.0.1:PORT:8080`` the new one.

Printed per contender: requests, failed requests, longest gap between two successful
answers, slowest request. Targets: dewy 0 failed, longest gap under 1 s.

Needs root and Podman (``scripts/test`` installs podman, runc, aardvark-dns,
busybox-static and docker-registry); skipped otherwise.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

UPDATES = 5
THREADS = 3
PAUSE = 1.5  # steady load between two updates
READY_TIMEOUT = 60


class TimedLoop(c.ClientLoop):
    """The harness's client loop, also recording when each successful answer arrived and the slowest request."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.done_at: list[float] = []
        self.slowest = 0.0

    def _run(self) -> None:
        import http.client

        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            began = time.monotonic()
            try:
                status, body = c.get(self.port)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(type(exc).__name__)
                time.sleep(0.001)  # a refused connect returns at once: do not spin
                continue
            ended = time.monotonic()
            self.slowest = max(self.slowest, ended - began)
            if 200 <= status < 300:
                self.ok += 1
                self.done_at.append(ended)
                if not self.bodies or self.bodies[-1] != body:
                    self.bodies.append(body)
            else:
                self.failures.append(f"HTTP {status}")


class Load:
    def __init__(self, port: int) -> None:
        self.loops = [TimedLoop(port, max_seconds=300) for _ in range(THREADS)]

    def __enter__(self) -> Load:
        self.began = time.monotonic()
        for loop in self.loops:
            loop.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for loop in self.loops:
            loop.__exit__(*exc)
        self.ended = time.monotonic()

    def figures(self) -> dict:
        done = sorted([self.began] + [t for loop in self.loops for t in loop.done_at] + [self.ended])
        failures = [f for loop in self.loops for f in loop.failures]
        kinds: dict[str, int] = {}
        for failure in failures:
            kinds[failure] = kinds.get(failure, 0) + 1
        return {"requests": sum(loop.ok for loop in self.loops) + len(failures), "failed": len(failures),
                "kinds": kinds, "gap": max(b - a for a, b in zip(done, done[1:])),
                "slowest": max(loop.slowest for loop in self.loops)}


def wait_answering(port: int, version: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:  # bounded readiness loop
        try:
            if c.get(port, "/VERSION", timeout=2) == (200, version):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered {version} on port {port} within {READY_TIMEOUT} s")


def run_dewy(podman, registry, repository: str, versions: list[str], workdir: Path) -> dict:
    app = f"bench{secrets.token_hex(2)}"
    port = c.free_port()
    podman.push_app(repository, versions[0])
    dewy = c.Dewy(["container", "--registry", f"img://{registry.host}/{repository}", "--container-port", "8080",
                   "--port", f"127.0.0.1:{port}", "--replicas", "1", "--health-path", "/health", "--health-timeout", "10",
                   "--drain-time", "2", "--stop-timeout", "5", "-i", "0.2", "-d", str(workdir / app)],
                  cwd=workdir, env={"CONTAINER_HOST": podman.url})
    try:
        dewy.wait_for("deployed", version=versions[0], timeout=READY_TIMEOUT)
        wait_answering(port, versions[0])
        with Load(port) as load:
            time.sleep(PAUSE)
            for version in versions[1:]:
                podman.push_app(repository, version)
                dewy.wait_for("deployed", version=version, timeout=READY_TIMEOUT)
                time.sleep(PAUSE)
        figures = load.figures()
        figures["bodies"] = load.loops[0].bodies
        return figures
    finally:
        try:
            dewy.stop(timeout=60)
        except subprocess.TimeoutExpired:
            dewy.kill()
        podman.cleanup(app, "-")


def run_stop_then_start(podman, registry, repository: str, versions: list[str]) -> dict:
    name = f"bench-naive-{secrets.token_hex(2)}"
    port = c.free_port()

    def start(version: str) -> None:
        podman.podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", f"{registry.host}/{repository}:{version}")

    try:
        podman.podman("pull", "--tls-verify=false", f"{registry.host}/{repository}:{versions[0]}")
        start(versions[0])
        wait_answering(port, versions[0])
        with Load(port) as load:
            time.sleep(PAUSE)
            for version in versions[1:]:
                podman.podman("pull", "--tls-verify=false", f"{registry.host}/{repository}:{version}")
                podman.podman("stop", "-t", "10", name)
                podman.podman("rm", name)
                start(version)
                wait_answering(port, version)
                time.sleep(PAUSE)
        figures = load.figures()
        figures["bodies"] = load.loops[0].bodies
        return figures
    finally:
        podman.podman("rm", "-f", "-t", "0", name, check=False)


def main() -> int:
    c.banner("container rollout: dewy rolling update vs stop-then-start (podman auto-update, Watchtower)")
    if os.geteuid() != 0:
        c.verdict("dewy container rollout", None, "needs root (rootful Podman)")
        return 0
    try:
        from tests.oci_registry import OciRegistry
        from tests.podman import PodmanService, ensure_packages

        ensure_packages()
    except BaseException as exc:  # pytest.skip inside ensure_packages when apt cannot install
        c.verdict("dewy container rollout", None, f"Podman is not available: {exc}")
        return 0
    versions = [f"v1.{i}.0" for i in range(UPDATES + 1)]
    repository = f"bench{secrets.token_hex(2)}/web"
    with tempfile.TemporaryDirectory(prefix="dewy-bench-") as tmp, OciRegistry(Path(tmp)) as registry:
        podman = PodmanService(Path(tmp) / "podman", registry.host).start()
        try:
            dewy = run_dewy(podman, registry, repository, versions, Path(tmp))
            naive = run_stop_then_start(podman, registry, repository, versions)
        finally:
            podman.cleanup("-", repository)
            podman.stop()
    rows = []
    for label, figures in (("dewy container (rolling update)", dewy), ("stop-then-start (auto-update, Watchtower)", naive)):
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(figures["kinds"].items())) or "-"
        rows.append((label, figures["requests"], figures["failed"], c.ms(figures["gap"]), c.ms(figures["slowest"]), kinds))
    c.table(f"{UPDATES} updates each, {THREADS} client threads, same images", rows,
            ("replacement", "requests", "failed", "longest gap", "slowest request", "failures"))
    print(f"versions seen by one client: dewy {dewy['bodies']}; stop-then-start {naive['bodies']}")
    ok_failed = c.verdict("dewy: no failed request across updates", dewy["failed"] == 0,
                          f"{dewy['failed']} failed of {dewy['requests']} (stop-then-start: {naive['failed']} failed)")
    ok_gap = c.verdict("dewy: longest gap under 1 s", dewy["gap"] < 1.0,
                       f"{c.ms(dewy['gap'])} (stop-then-start: {c.ms(naive['gap'])})")
    return 0 if ok_failed and ok_gap else 1


if __name__ == "__main__":
    sys.exit(main())
