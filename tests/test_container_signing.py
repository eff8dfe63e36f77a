"""dewy container with verify=cosign: real Podman and docker-registry, signatures made the way cosign makes them.

Only an image whose digest a trusted key signed runs, its replicas started by digest; a refused
image leaves the running replicas serving, and a tag moved after the check brings in nothing.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest

from tests.cosign_signer import generate, sign
from tests.harness import ClientLoop, Dewy, free_port, get
from tests.oci_registry import DOCKER_MANIFEST, OCI_MANIFEST, RegistryFront
from tests.podman import PORT, podman, registry, stop_dewy  # noqa: F401 (the module's fixtures)

pytestmark = pytest.mark.system


def digest_of_tag(registry, repository: str, tag: str) -> str:
    answer = registry.client.head(f"/v2/{repository}/manifests/{tag}", headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"})
    assert answer.status_code == 200, answer.status_code
    return answer.headers["Docker-Content-Digest"]


def move_tag(registry, repository: str, tag: str, to: str) -> None:
    """Point ``tag`` at the image ``to`` names, as a writer of the registry would."""
    manifest = registry.client.get(f"/v2/{repository}/manifests/{to}", headers={"Accept": OCI_MANIFEST})
    registry.put_manifest(repository, tag, manifest.content, manifest.headers["Content-Type"])


def test_only_images_signed_by_a_trusted_key_run(podman, registry, tmp_path) -> None:  # noqa: F811
    name = f"t{secrets.token_hex(3)}"
    repository, port = f"{name}/web", free_port()
    key, public = generate(tmp_path, "publisher")
    stranger, _ = generate(tmp_path, "stranger")
    with RegistryFront(registry) as front:
        def publish(version: str, signer=None) -> str:
            podman.push_app(repository, version)
            digest = digest_of_tag(registry, repository, version)
            if signer is not None:
                sign(registry, repository, digest, signer, reference=f"{front.host}/{repository}",
                     annotations={"version": version})
            return digest

        first = publish("v1.0.0", key)
        dewy = Dewy(["container", "--registry", f"img://{front.host}/{repository}?verify=cosign", "--trusted-key",
                     str(public), "--container-port", str(PORT), "--port", f"127.0.0.1:{port}", "-i", "0.3",
                     "--health-path", "/health", "--health-timeout", "5", "--drain-time", "1", "--stop-timeout", "2",
                     "-d", str(tmp_path / name)], cwd=tmp_path, env={"CONTAINER_HOST": podman.url})
        try:
            deployed = dewy.wait_for("deployed", version="v1.0.0", timeout=90)
            assert deployed["signed_by"].startswith("cosign key sha256:") and deployed["signed_by"].endswith("(version=v1.0.0)")
            assert images_of(podman, name) == [config_of(registry, repository, first)]
            with ClientLoop(port, max_seconds=150) as loop:
                publish("v1.1.0", stranger)
                failure = failed(dewy, "refused")
                assert "v1.1.0" in failure["msg"] and "found a signature by no trusted key" in failure["msg"], failure
                dewy.wait_for("quarantined", version="v1.1.0", timeout=30)

                publish("evil")  # not a version: dewy never picks it by itself
                good = publish("v1.2.0")
                dewy.wait_for("waiting", timeout=30)  # pushed, not signed yet
                dewy.wait_for("waiting", timeout=30)  # and still not on the next poll: no deploy started meanwhile
                assert [e for e in dewy.seen if e.get("event") == "deploying" and e.get("version") == "v1.2.0"] == []
                payload = sign(registry, repository, good, key, reference=f"{front.host}/{repository}")
                # Right after dewy has read the signature, before it pulls, v1.2.0 is moved to the unsigned image.
                front.before(f"/v2/{repository}/blobs/{payload}", lambda: move_tag(registry, repository, "v1.2.0", "evil"))
                failure = failed(dewy, "the pull brought")
                assert failure["msg"].startswith(f"{front.host}/{repository}:v1.2.0: the pull brought image "), failure
                assert f"not the verified {config_of(registry, repository, good)} of {good} (the tag was moved" in failure["msg"]
                waiting = dewy.wait_for("waiting", timeout=30)  # the tag's new digest has no signature
                assert f"({digest_of_tag(registry, repository, 'evil')}): no cosign signature yet" in waiting["msg"]
                assert get(port, "/VERSION")[1] == "v1.0.0"
            assert loop.failures == [], loop.failures[:5]
            assert set(loop.bodies) == {"v1.0.0"}, loop.bodies
            assert images_of(podman, name) == [config_of(registry, repository, first)]
        finally:
            stop_dewy(dewy)
            podman.cleanup(name, repository)
    status = subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(tmp_path / name), "--json"],
                            capture_output=True, text=True, timeout=30)
    assert json.loads(status.stdout)["signed_by"] == deployed["signed_by"]


def failed(dewy: Dewy, says: str) -> dict:
    """The next deploy failure saying ``says``; others (a tag listed a moment before its manifest) may come first."""
    for _ in range(5):
        failure = dewy.wait_for("deploy-failed", timeout=60)
        if says in failure["msg"]:
            return failure
    raise AssertionError(f"no deploy failure saying {says!r}; the last: {failure}")


def images_of(podman, app: str) -> list[str]:
    """The ids of the images dewy's replicas of ``app`` run."""
    ids = podman.podman("ps", "-q", "--filter", f"label=dewy.app={app}").split()
    return sorted("sha256:" + json.loads(podman.podman("container", "inspect", i))[0]["Image"] for i in ids)


def config_of(registry, repository: str, digest: str) -> str:
    """The image id (config digest) of the manifest ``digest``."""
    return registry.client.get(f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}).json()["config"]["digest"]
