"""verify=cosign against a real docker-registry holding signatures made the way cosign makes them."""

from __future__ import annotations

import asyncio
import json
import platform
from collections.abc import Iterator

import pytest

from dewy.cosign import ImageVerifier
from dewy.errors import ArtifactNotReady, UsageError
from dewy.registry import REGISTRIES, UPLOAD_GRACE, Release
from dewy.signing import SignatureRefused, Verification, pem_public_key
from tests.cosign_signer import generate, sign
from tests.oci_registry import GO_ARCH, OCI_MANIFEST, OciRegistry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"

REPO = "acme/app"


@pytest.fixture
def registry(tmp_path) -> Iterator[OciRegistry]:
    with OciRegistry(tmp_path) as running:
        yield running


@pytest.fixture
def keys(tmp_path):
    return generate(tmp_path, "first"), generate(tmp_path, "second")


def verified(registry: OciRegistry, trusted=None, verifier: ImageVerifier | None = None) -> tuple[Release, str]:
    """The newest release and who signed it, as dewy container checks it before pulling."""
    verifier = verifier or ImageVerifier([pem_public_key(p.read_text()) for _, p in trusted])

    async def run() -> tuple[Release, str]:
        backend = REGISTRIES.load(REGISTRIES.url(f"img://{registry.host}/{REPO}"))
        try:
            release = await backend.current()
            await verifier.ready(backend, release)
            return release, str((await verifier.verify(backend, release)).signed)
        finally:
            await backend.aclose()

    return asyncio.run(run())


def test_a_signed_digest_verifies_with_the_signers_annotations(registry, keys) -> None:
    image = registry.push_image(REPO, ["v1.0.0"])
    sign(registry, REPO, image.digest, keys[0][0], annotations={"ci": "run 812"})
    release, signer = verified(registry, keys[:1])
    assert release.id == image.digest
    assert signer.startswith("cosign key sha256:") and signer.endswith(" (ci=run 812)")


def test_the_pull_must_bring_the_image_id_of_the_signed_manifest(registry, keys) -> None:
    image = registry.push_image(REPO, ["v1.0.0"])
    sign(registry, REPO, image.digest, keys[0][0])
    verifier = ImageVerifier([pem_public_key(keys[0][1].read_text())])

    async def run():
        backend = REGISTRIES.load(REGISTRIES.url(f"img://{registry.host}/{REPO}"))
        try:
            return await verifier.verify(backend, await backend.current())
        finally:
            await backend.aclose()

    assert asyncio.run(run()).image_id == json.loads(image.manifest)["config"]["digest"]

    # a multi-platform index: the id of its manifest for this host's platform
    other = registry.push_image(REPO, ["windows"], labels={"platform": "other"})
    entry = {"mediaType": OCI_MANIFEST, "size": len(image.manifest), "digest": image.digest,
             "platform": {"os": "linux", "architecture": GO_ARCH.get(platform.machine().lower(), platform.machine())}}
    foreign = {"mediaType": OCI_MANIFEST, "size": len(other.manifest), "digest": other.digest,
               "platform": {"os": "windows", "architecture": "amd64"}}
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [foreign, entry]}).encode()
    sign(registry, REPO, registry.put_manifest(REPO, "v2.0.0", index, OCI_INDEX), keys[0][0])
    assert asyncio.run(run()).image_id == json.loads(image.manifest)["config"]["digest"]


def test_either_of_two_trusted_keys_verifies(registry, keys) -> None:
    for number, (key, _) in enumerate(keys):
        image = registry.push_image(REPO, [f"v1.{number}.0"], labels={"n": str(number)})
        sign(registry, REPO, image.digest, key)
        assert verified(registry, keys)[0].id == image.digest


@pytest.mark.parametrize("how, says", [
    ("untrusted", "found a signature by no trusted key"),
    ("tampered", "found a signature by no trusted key"),
    ("other digest", "found a trusted signature for another image digest (sha256:"),
    ("other repository", "found a trusted signature for another repository (127.0.0.1:"),
])
def test_what_a_trusted_key_did_not_sign_for_this_image_is_refused(registry, keys, how, says) -> None:
    image = registry.push_image(REPO, ["v1.0.0"])
    other = registry.push_image(REPO, ["v0.9.0"], labels={"other": "1"})
    key = keys[1][0] if how == "untrusted" else keys[0][0]
    sign(registry, REPO, image.digest, key,
         claimed_digest=other.digest if how == "other digest" else None,
         reference=f"{registry.host}/acme/other" if how == "other repository" else None,
         signed_payload=b"something else" if how == "tampered" else None)
    with pytest.raises(SignatureRefused) as refused:
        verified(registry, keys[:1])
    message = str(refused.value)
    assert message.startswith(f"{registry.host}/{REPO}:v1.0.0 ({image.digest}): refused: "), message
    assert says in message and message.endswith("; the image was not deployed"), message


def test_an_unsigned_image_is_waited_for_then_refused(registry, keys) -> None:
    """cosign signs after the push: dewy waits for the signature (the upload grace, on a fake clock), then refuses."""
    image = registry.push_image(REPO, ["v1.0.0"])
    now = [1000.0]
    verifier = ImageVerifier([pem_public_key(keys[0][1].read_text())], clock=lambda: now[0])
    with pytest.raises(ArtifactNotReady, match=r"\(sha256:\w+\): no cosign signature yet \(no tag sha256-\w+\.sig;"):
        verified(registry, verifier=verifier)
    now[0] += UPLOAD_GRACE.total_seconds()
    with pytest.raises(SignatureRefused, match=f"refused: no cosign signature \\(no tag sha256-\\w+.sig in {registry.host}/"
                                               f"{REPO} after 1800s\\) and verify=cosign is set; the image was not deployed"):
        verified(registry, verifier=verifier)
    sign(registry, REPO, image.digest, keys[0][0])
    assert verified(registry, verifier=verifier)[0].id == image.digest


def test_a_cosign_key_is_required_and_a_minisign_key_is_not_one(tmp_path, keys) -> None:
    minisign = tmp_path / "minisign.pub"
    minisign.write_text("untrusted comment: minisign public key 5EEEA2538B32110E\n"
                        "RWQOETKLU6LuXkTDvz4PmFmfl0vuEabxaAoDvmjKgOj5BRTyu2MIL9d3\n")
    with pytest.raises(UsageError, match=r"verify=cosign: trusted key .*minisign.pub: not a PEM public key"):
        Verification.of("img://127.0.0.1:5000/app?verify=cosign", [str(minisign)])
    plain, verification = Verification.of("img://127.0.0.1:5000/app?verify=cosign&pre-release=true", [str(keys[0][1])])
    assert plain == "img://127.0.0.1:5000/app?pre-release=true" and verification.method == "cosign"
