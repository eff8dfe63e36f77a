"""cosign signatures of images (``verify=cosign`` on an ``img://`` registry), with a key pair.

``cosign sign --key cosign.key IMAGE@DIGEST`` stores its signature in the image's own
repository under the tag ``sha256-<hex>.sig``: an OCI manifest whose layers are
"simple signing" payloads (media type ``application/vnd.dev.cosign.simplesigning.v1+json``),
each with its ECDSA P-256 signature (SHA-256, ASN.1 DER, base64) in the annotation
``dev.cosignproject.cosign/signature``. The payload names what was signed::

    {"critical": {"identity": {"docker-reference": "HOST/REPO"},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": {...annotations given with cosign sign -a...}}

An image is deployed if one layer's payload is signed by a trusted key and names this
image's digest and this repository; the replicas are then started from ``REPO@DIGEST``,
so a tag moved after the check cannot bring in anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dewy.errors import ArtifactNotReady
from dewy.registry import UPLOAD_GRACE, Release
from dewy.signing import SignatureRefused, Signed

if TYPE_CHECKING:  # cryptography is imported only where a signature is checked: verify=cosign is opt-in
    from cryptography.hazmat.primitives.asymmetric import ec

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
MAX_PAYLOAD_BYTES = 64 << 10  # a payload is a few hundred bytes, with annotations a few kB
MAX_LAYERS = 64  # signatures kept on one digest (cosign appends one per signing)
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}  # image platforms name CPUs as Go does


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of ``digest``: ``sha256:abc`` -> ``sha256-abc.sig``."""
    return digest.replace(":", "-") + ".sig"


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """A short name for a cosign public key (which has no id of its own): the sha256 of its DER form, shortened."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def same_repository(claimed: str, expected: str) -> bool:
    """Whether a payload's docker-reference names ``expected`` (``HOST/REPO``); Docker Hub has two host names."""
    def normal(reference: str) -> str:
        for alias in ("index.docker.io/", "registry-1.docker.io/"):
            if reference.startswith(alias):
                return "docker.io/" + reference.removeprefix(alias)
        return reference

    return normal(claimed) == normal(expected)


@dataclass(frozen=True)
class VerifiedImage:
    """A verified image: who signed it, and the image the pull must bring."""

    signed: Signed
    image_id: str  # the config digest of this host's image under the signed manifest digest


class ImageVerifier:
    """Checks images against the trusted cosign keys. An image is signed after it is pushed (``cosign sign`` needs
    its digest): a digest without signature is waited for during the upload grace from when dewy first saw it."""

    def __init__(self, keys: Sequence[ec.EllipticCurvePublicKey], clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.clock = clock
        self.unsigned: dict[str, float] = {}  # digest -> when first seen without signature

    async def ready(self, registry: Any, release: Release) -> None:
        """ArtifactNotReady while ``release``'s image digest has no signature yet (within the upload grace from
        when dewy first saw it), SignatureRefused (one line) after it. ``registry`` is the img:// registry of the
        release (:class:`dewy.registry.img.ImageRegistry`)."""
        tag = signature_tag(release.id)
        if await registry.has_tag(tag):
            self.unsigned.pop(release.id, None)
            return
        waited = self.clock() - self.unsigned.setdefault(release.id, self.clock())
        where = f"{release.artifact_name} ({release.id})"
        if waited < UPLOAD_GRACE.total_seconds():
            raise ArtifactNotReady(f"{where}: no cosign signature yet (no tag {tag}; waiting for cosign sign,"
                                   f" {int(waited)}s so far)")
        raise SignatureRefused(f"{where}: refused: no cosign signature (no tag {tag} in {registry.reference} after"
                               f" {int(waited)}s) and verify=cosign is set; the image was not deployed")

    async def verify(self, registry: Any, release: Release) -> VerifiedImage:
        """Who signed ``release``'s image digest (its signature is there: :meth:`ready`), and the image id the
        pull must bring; SignatureRefused (one line) if no trusted key signed it."""
        return VerifiedImage(await verify_image(registry, release, self.keys), await image_id(registry, release))


async def verify_image(registry: Any, release: Release, keys: Sequence[ec.EllipticCurvePublicKey]) -> Signed:
    """Who signed ``release``'s image digest, from its signature tag (which exists), checked against ``keys``;
    SignatureRefused (one line) if no trusted key did."""
    where = f"{release.artifact_name} ({release.id})"
    tag = signature_tag(release.id)

    def refused(why: str) -> SignatureRefused:
        return SignatureRefused(f"{where}: refused: {why}; the image was not deployed")

    try:
        manifest = json.loads(await registry.manifest(tag))
        layers = manifest["layers"]
        if not isinstance(layers, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise refused(f"the signature manifest {tag} is not an OCI manifest with layers") from None
    problems: list[str] = []
    for layer in layers[:MAX_LAYERS]:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        signature = _signature_of(layer)
        size, digest = layer.get("size"), layer.get("digest")
        if signature is None or not isinstance(size, int) or not 0 < size <= MAX_PAYLOAD_BYTES or not isinstance(digest, str):
            problems.append("a layer without a usable signature annotation, size or digest")
            continue
        payload = await registry.blob(digest)
        if "sha256:" + hashlib.sha256(payload).hexdigest() != digest:
            problems.append("a payload that does not match its digest")
            continue
        signer = next((key for key in keys if _signed_by(key, signature, payload)), None)
        if signer is None:
            problems.append("a signature by no trusted key")
            continue
        problem = _claims_problem(payload, release.id, registry.reference)
        if problem:
            problems.append(problem)
            continue
        return Signed(key_id(signer), _annotations(payload), tool="cosign")
    found = "; ".join(dict.fromkeys(problems)) or "no simple signing layer"
    raise refused(f"no cosign signature by a trusted key for this digest and repository (found {found})")


async def image_id(registry: Any, release: Release) -> str:
    """The id (config digest) of the image the signed digest stands for on this host: for a multi-platform
    index, of its manifest for this host's platform. Each manifest read is checked against its digest."""
    digest = release.id
    for _ in range(2):  # an index, then the platform's manifest
        data = await registry.manifest(digest)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise SignatureRefused(f"{release.artifact_name}: the registry answered other bytes for the manifest {digest};"
                                   " the image was not deployed")
        try:
            manifest = json.loads(data)
            if "manifests" not in manifest:
                return str(manifest["config"]["digest"])
            digest = next(str(m["digest"]) for m in manifest["manifests"] if _this_platform(m.get("platform") or {}))
        except (ValueError, KeyError, TypeError, StopIteration):
            break
    raise SignatureRefused(f"{release.artifact_name}: the signed manifest {release.id} names no image for"
                           f" linux/{GO_ARCH.get(platform.machine().lower(), platform.machine())}; the image was not deployed")


def _this_platform(entry: dict) -> bool:
    machine = platform.machine().lower()
    return entry.get("os") == "linux" and entry.get("architecture") == GO_ARCH.get(machine, machine)


def _signature_of(layer: dict) -> bytes | None:
    annotations = layer.get("annotations")
    text = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _signed_by(key: ec.EllipticCurvePublicKey, signature: bytes, payload: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _claims_problem(payload: bytes, digest: str, reference: str) -> str | None:
    """What is wrong with a validly signed payload's claims for this image, or None."""
    try:
        critical = json.loads(payload)["critical"]
        claimed_digest = critical["image"]["docker-manifest-digest"]
        claimed_reference = critical["identity"]["docker-reference"]
        kind = critical["type"]
    except (ValueError, KeyError, TypeError):
        return "a signed payload that is not a simple signing payload"
    if kind != PAYLOAD_TYPE:
        return f"a signed payload of type {str(kind)[:80]!r}"
    if claimed_digest != digest:
        return f"a trusted signature for another image digest ({str(claimed_digest)[:80]})"
    if not isinstance(claimed_reference, str) or not same_repository(claimed_reference, reference):
        return f"a trusted signature for another repository ({str(claimed_reference)[:120]})"
    return None


def _annotations(payload: bytes) -> str:
    """The signer's annotations (``cosign sign -a key=value``), as the signature's comment."""
    optional = json.loads(payload).get("optional")
    if not isinstance(optional, dict):
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(optional.items()))[:400]
