"""Image signatures made the way ``cosign sign --key`` makes them, pushed to a test registry.

cosign is not packaged for Debian or PyPI, so the tests build its output with ``cryptography``:
a simple signing payload as a blob, an OCI manifest under the tag ``sha256-<hex>.sig`` whose
layer is that payload, with the ECDSA P-256 / SHA-256 signature (DER, base64) as the
``dev.cosignproject.cosign/signature`` annotation.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.oci_registry import OCI_CONFIG, OCI_MANIFEST, OciRegistry

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"


def generate(directory: Path, name: str = "cosign") -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """A key pair as ``cosign generate-key-pair`` makes (its public half as cosign.pub, PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = directory / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, public


def payload(reference: str, digest: str, annotations: dict[str, str] | None = None) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"},
                       "optional": annotations}, separators=(",", ":")).encode()


def sign(registry: OciRegistry, repository: str, digest: str, key: ec.EllipticCurvePrivateKey, *,
         claimed_digest: str | None = None, reference: str | None = None, annotations: dict[str, str] | None = None,
         signed_payload: bytes | None = None) -> str:
    """Sign ``digest`` as cosign would; returns the payload's digest. ``claimed_digest``/``reference`` put other
    claims in the payload, and ``signed_payload`` signs other bytes than the payload stored (one that does not match)."""
    body = payload(reference or f"{registry.host}/{repository}", claimed_digest or digest, annotations)
    signature = key.sign(signed_payload or body, ec.ECDSA(hashes.SHA256()))
    layer_digest = registry.push_blob(repository, body)
    config = json.dumps({"architecture": "", "config": {}, "created": "0001-01-01T00:00:00Z", "os": "",
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": registry.push_blob(repository, config)},
        "layers": [{"mediaType": SIMPLE_SIGNING, "size": len(body), "digest": layer_digest,
                    "annotations": {"dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()}}],
    }).encode()
    registry.put_manifest(repository, digest.replace(":", "-") + ".sig", manifest, OCI_MANIFEST)
    return layer_digest
