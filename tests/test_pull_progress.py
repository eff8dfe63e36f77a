"""A long image pull says how far it is: real Podman pulling from a real docker-registry through a throttled link."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path

import pytest

from dewy.container.runtimes import PullProgress
from dewy.container.runtimes.docker import DockerRuntime
from tests.faultinject import THROTTLE, FaultProxy
from tests.harness import Dewy, free_port
from tests.oci_registry import OciRegistry, tar_layer
from tests.podman import PORT, PodmanService, ensure_packages, registry  # noqa: F401 (registry: the module's fixture)

pytestmark = pytest.mark.system

# random bytes: gzip leaves them as large, so the pull takes LAYER / RATE seconds (12 s: the first progress
# line comes after 5 s, which leaves time to look at progress.json while the pull lasts)
LAYER = 12 << 20
RATE = 1 << 20  # bytes per second through the proxy


@pytest.fixture(scope="module")
def slow_link(registry):  # noqa: F811
    with FaultProxy(("127.0.0.1", registry.port), THROTTLE, rate=RATE) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def podman_behind(tmp_path_factory, slow_link):
    """Podman whose registries.conf names the throttled proxy as the (plain-http) registry."""
    if os.geteuid() != 0:
        pytest.skip("container tests need root (rootful Podman)")
    ensure_packages()
    service = PodmanService(tmp_path_factory.mktemp("podman"), f"127.0.0.1:{slow_link.port}").start()
    try:
        yield service
    finally:
        service.stop()


def push_big(registry: OciRegistry, repository: str, tag: str) -> int:  # noqa: F811
    """An image of one random LAYER; the bytes its pull downloads."""
    image = registry.push_image(repository, [tag], layers=[tar_layer({"big.bin": os.urandom(LAYER)})],
                                config={"Cmd": ["/bin/busybox", "sleep", "60"]})
    return sum(layer["size"] for layer in json.loads(image.manifest)["layers"])


class Recorded(PullProgress):
    """PullProgress, remembering what it counted after each line."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[int, int]] = []

    def seen(self, line: dict) -> None:
        super().seen(line)
        if self.counted():
            self.history.append(self.counted())


def test_a_runtime_that_tells_bytes_counts_them_as_the_layers_arrive(registry, slow_link, podman_behind) -> None:  # noqa: F811
    repository = f"p{secrets.token_hex(3)}/big"
    size = push_big(registry, repository, "v1")
    reference = f"127.0.0.1:{slow_link.port}/{repository}:v1"
    progress = Recorded()
    try:
        image_id = asyncio.run(DockerRuntime(podman_behind.url).pull(reference, None, False, progress))
    finally:
        podman_behind.podman("rmi", "-f", reference, check=False)
    assert image_id
    assert progress.history[-1] == (size, size)
    assert any(0 < done < size for done, total in progress.history), "bytes are told while they arrive"


def test_a_long_pull_is_told_every_few_seconds(registry, slow_link, podman_behind, tmp_path) -> None:  # noqa: F811
    repository = f"p{secrets.token_hex(3)}/big"
    push_big(registry, repository, "v1.0.0")
    reference = f"127.0.0.1:{slow_link.port}/{repository}:v1.0.0"
    dewy = Dewy(["container", "--registry", f"img://127.0.0.1:{slow_link.port}/{repository}", "--container-port",
                 str(PORT), "--port", f"127.0.0.1:{free_port()}", "-i", "0.3", "-d", str(tmp_path / "app")],
                cwd=tmp_path, env={"CONTAINER_HOST": podman_behind.url})
    try:
        dewy.wait_for("pulling", version="v1.0.0", timeout=60)
        told = dewy.wait_for("progress", version="v1.0.0", timeout=LAYER / RATE + 10)
        assert told["phase"] == "pulling" and told["msg"].startswith("pulling v1.0.0: ")
        # Podman 4's libpod API tells no bytes (the time taken), Podman 5's compatMode tells them
        assert told["msg"].endswith(" so far") or " of " in told["msg"], told
        status = Path(tmp_path / "app" / ".dewy" / "progress.json")
        assert status.exists() and "pulling v1.0.0" in status.read_text(), "dewy status shows it while it lasts"
        dewy.wait_for("pulled", version="v1.0.0", timeout=LAYER / RATE + 30)
    finally:
        dewy.kill()
        podman_behind.podman("rmi", "-f", reference, check=False)
