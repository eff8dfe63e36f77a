"""minisign signatures of release archives: only what a trusted key signed is deployed.

A minisign signature file (``<artifact>.minisig``) holds four lines: an untrusted
comment, the signature (algorithm, key id, Ed25519 signature), the trusted comment,
and a global signature over the signature and the trusted comment together. The
algorithm ``Ed`` (legacy, ``minisign -l``) signs the file's bytes; ``ED`` (minisign's
default) signs their BLAKE2b-512 hash, so it can be checked while the bytes stream by.

A check is built from the signature before the download starts: the key must be one
of the trusted ones (several may be, for rotation) and the trusted comment must be
authentic, so a release signed by anyone else is refused without fetching it. If the
trusted comment names the signed file (``file:NAME``, as minisign writes by default),
it must name this artifact: a signed archive republished under another name is refused.

The registry URL's ``verify=`` and the ``--trusted-key`` values are read here too
(:class:`Verification`), for archives and for images (:mod:`dewy.cosign`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dewy.artifacts import ARTIFACTS
from dewy.errors import ArtifactError, ArtifactNotReady, UsageError
from dewy.registry import UPLOAD_GRACE, Release
from dewy.urls import Url

if TYPE_CHECKING:  # cryptography is imported only where a signature is checked: verify= is opt-in
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

LEGACY = b"Ed"
PREHASHED = b"ED"
KEY_ALGORITHM = b"Ed"
SUFFIX = ".minisig"
MAX_SIGNATURE_BYTES = 64 << 10  # a real one is about 300 bytes; the trusted comment is one line
MAX_KEY_FILE_BYTES = 64 << 10  # a minisign .pub is 2 lines, a PEM key a few hundred bytes
CHUNK = 1 << 20


class SignatureRefused(ArtifactError):
    """The release's signature is missing, made by an untrusted key, or does not match: never deploy it."""


@dataclass(frozen=True)
class TrustedKey:
    """A minisign public key: its 8-byte id (which signatures name) and the Ed25519 key."""

    key_id: bytes
    public: Ed25519PublicKey

    @property
    def id(self) -> str:
        return key_id_text(self.key_id)


@dataclass(frozen=True)
class Signed:
    """What a verified signature says: which key signed, and the signer's comment (minisign's trusted comment,
    cosign's annotations)."""

    key_id: str
    comment: str
    tool: str = "minisign"

    def __str__(self) -> str:
        return f"{self.tool} key {self.key_id} ({self.comment})" if self.comment else f"{self.tool} key {self.key_id}"


def key_id_text(key_id: bytes) -> str:
    """The key id as minisign prints it in the public key's comment: the little-endian 64-bit number in upper-case hex."""
    return f"{int.from_bytes(key_id, 'little'):X}"


def _base64(text: str, size: int, what: str) -> bytes:
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not base64") from None
    if len(data) != size:
        raise ValueError(f"the {what} has {len(data)} bytes, not {size}")
    return data


def parse_public_key(text: str) -> TrustedKey:
    """A minisign public key: the ``.pub`` file's text, or its base64 line alone (``RW...``). ValueError if not one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("untrusted comment:"):
        lines = lines[1:]
    if len(lines) != 1:
        raise ValueError("not a minisign public key (expected a base64 line such as RWQ..., after an optional comment line)")
    data = _base64(lines[0], 42, "minisign public key")
    if data[:2] != KEY_ALGORITHM:
        raise ValueError(f"not an Ed25519 minisign public key (algorithm {data[:2]!r})")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return TrustedKey(data[2:10], Ed25519PublicKey.from_public_bytes(data[10:]))


def read_key_text(value: str, environ: Mapping[str, str] | None = None) -> str:
    """The text of a ``--trusted-key``: the key itself, or the file it names.

    A relative name is looked up first among the service's systemd credentials
    (``LoadCredential=minisign.pub:/etc/dewy/minisign.pub`` with ``--trusted-key minisign.pub``),
    then in the working directory. ValueError saying what could not be read.
    """
    environ = os.environ if environ is None else environ
    if _is_inline_key(value):
        return value
    path = Path(value)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and credentials and (Path(credentials) / path).is_file():
        path = Path(credentials) / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{value}: cannot read the key file: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{value}: {len(data)} bytes is too big for a public key file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{value}: not a public key file (not ASCII text)") from None


def _is_inline_key(value: str) -> bool:
    try:
        return base64.b64decode(value.strip(), validate=True)[:2] == KEY_ALGORITHM
    except (binascii.Error, ValueError):
        return False


def signature_url(artifact_url: str) -> str:
    """The URL of ``<artifact>.minisig`` beside the artifact, in any artifact store.

    A GitHub asset's ``asset=ID`` is the artifact's own: the signature is found by name in the release.
    """
    parts = urlsplit(artifact_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not (parts.scheme == "ghr" and k == "asset")]
    return urlunsplit(parts._replace(path=parts.path + SUFFIX, query=urlencode(query, safe=":/")))


@dataclass(frozen=True)
class Signature:
    """One parsed ``.minisig`` file."""

    algorithm: bytes
    key_id: bytes
    signature: bytes
    comment: str
    global_signature: bytes


def parse_signature(data: bytes) -> Signature:
    """The four lines of a minisign signature file; ValueError naming what is wrong."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise ValueError(f"{len(data)} bytes is too big for a minisign signature")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not a minisign signature (not UTF-8 text)") from None
    lines = text.rstrip("\r\n").split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    if len(lines) != 4 or not lines[0].startswith("untrusted comment:") or not lines[2].startswith("trusted comment: "):
        raise ValueError("not a minisign signature (expected 4 lines: untrusted comment, signature, trusted comment, global signature)")
    packed = _base64(lines[1], 74, "signature")
    if packed[:2] not in (LEGACY, PREHASHED):
        raise ValueError(f"unknown signature algorithm {packed[:2]!r} (minisign uses Ed or ED)")
    return Signature(packed[:2], packed[2:10], packed[10:], lines[2].removeprefix("trusted comment: "),
                     _base64(lines[3], 64, "global signature"))


def signed_file_name(comment: str) -> str | None:
    """The ``file:NAME`` field of a trusted comment (minisign's default ``timestamp:T<TAB>file:NAME``), if any."""
    for field in comment.split("\t"):
        if field.startswith("file:"):
            return field.removeprefix("file:")
    return None


class MinisignCheck:
    """The verification of one artifact against its signature, fed the artifact's bytes as they arrive.

    Built before the download (see the module docstring); :meth:`update` takes the bytes in
    order, :meth:`verify` decides. The legacy form signs the whole file, so :meth:`verify`
    then needs it in one buffer (a memory map of the downloaded file); the prehashed form
    needs nothing but what :meth:`update` saw.
    """

    def __init__(self, data: bytes, keys: Sequence[TrustedKey], artifact: str, where: str) -> None:
        self.where = where
        try:
            self.signature = parse_signature(data)
        except ValueError as exc:
            raise self.refused(f"its signature {artifact}{SUFFIX} is unreadable: {exc}") from None
        by_id = {key.key_id: key for key in keys}
        key = by_id.get(self.signature.key_id)
        if key is None:
            trusted = ", ".join(k.id for k in keys)
            raise self.refused(f"it is signed by minisign key {key_id_text(self.signature.key_id)}, which is not trusted"
                               f" (trusted: {trusted})")
        self.key = key
        from cryptography.exceptions import InvalidSignature

        try:
            key.public.verify(self.signature.global_signature, self.signature.signature + self.signature.comment.encode())
        except InvalidSignature:
            raise self.refused(f"the trusted comment of {artifact}{SUFFIX} was altered (its global signature does not match)") from None
        named = signed_file_name(self.signature.comment)
        if named is not None and named != artifact:
            raise self.refused(f"its signature was made for {named!r}, not {artifact!r}")
        self.prehashed = self.signature.algorithm == PREHASHED
        self._hash = hashlib.blake2b(digest_size=64) if self.prehashed else None

    def refused(self, why: str) -> SignatureRefused:
        return SignatureRefused(f"{self.where}: refused: {why}; the artifact was not deployed")

    def update(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)

    def verify(self, whole: bytes | memoryview | None = None) -> Signed:
        """Check the signature over what :meth:`update` saw (prehashed) or over ``whole`` (legacy)."""
        if self._hash is not None:
            message: bytes | memoryview = self._hash.digest()
        elif whole is None:
            raise ValueError("a legacy minisign signature is checked over the whole file: pass it")
        else:
            message = whole
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.public.verify(self.signature.signature, message)
        except InvalidSignature:
            raise self.refused(f"its minisign signature does not match the downloaded bytes (key {self.key.id})") from None
        return Signed(self.key.id, self.signature.comment)


def await_signature(release: Release) -> None:
    """ArtifactNotReady if ``release`` has no signature but is young enough that CI may still be uploading it."""
    age = datetime.now(timezone.utc) - release.created_at if release.created_at else None
    if release.signature_url is None and age is not None and age < UPLOAD_GRACE:
        raise ArtifactNotReady(f"{release.artifact_name} of {release.tag}: the release has no signature"
                               f" {release.artifact_name}{SUFFIX} yet (published {int(age.total_seconds())}s ago;"
                               " waiting for the upload)")


async def fetch_check(release: Release, keys: Sequence[TrustedKey]) -> MinisignCheck:
    """The check for ``release``'s artifact, from the signature the release publishes beside it; a release without
    one is refused once CI can no longer be uploading it (see :func:`await_signature`)."""
    where = f"{release.artifact_name} of {release.tag}"
    name = release.artifact_name + SUFFIX
    if release.signature_url is None:
        await_signature(release)
        raise SignatureRefused(f"{where}: refused: the release has no signature {name} and verify=minisign is set;"
                               " the artifact was not deployed")
    buffer = _Bounded(where, name)
    await ARTIFACTS.load(Url.parse(release.signature_url)).download(buffer)
    return MinisignCheck(bytes(buffer.data), keys, release.artifact_name, where)


class _Bounded:
    """A signature in memory: a file far larger than any signature is refused, not read whole."""

    def __init__(self, where: str, name: str) -> None:
        self.where, self.name = where, name
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        if len(self.data) > MAX_SIGNATURE_BYTES:
            raise SignatureRefused(f"{self.where}: refused: {self.name} is over {MAX_SIGNATURE_BYTES} bytes, not a minisign"
                                   " signature; the artifact was not deployed")
        return len(data)


def finish(check: MinisignCheck, file: BinaryIO, *, fed: bool = True) -> Signed:
    """Verify the artifact in ``file`` (open for reading, flushed): its bytes went through :meth:`MinisignCheck.update`
    already unless ``fed`` is false; the legacy form reads it whole through a memory map (blocking: run in a thread)."""
    if not fed:
        file.seek(0)
        while chunk := file.read(CHUNK):
            check.update(chunk)
    if check.prehashed:
        return check.verify()
    if os.fstat(file.fileno()).st_size == 0:
        return check.verify(b"")
    with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as whole:
        return check.verify(whole)


def load_keys(values: Iterable[str]) -> list[TrustedKey]:
    """The minisign keys of ``--trusted-key`` values; ValueError naming the value that is not one."""
    return [read_key(value, parse_public_key) for value in values]


def read_key(value: str, parse: Callable[[str], Any]) -> Any:
    """``parse`` of the key ``value`` is or names (see :func:`read_key_text`); its ValueError names the value."""
    text = read_key_text(value)
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"{value}: {exc}") from None


def pem_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A cosign public key (``cosign.pub``): ECDSA P-256 in PEM. ValueError if it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key (cosign generate-key-pair makes one)")
    return key


@dataclass(frozen=True)
class Verification:
    """What the registry URL's ``verify=`` asks for, with the trusted keys it is checked against."""

    method: str  # minisign | cosign
    keys: tuple

    @classmethod
    def of(cls, registry: str, trusted_keys: Sequence[str]) -> tuple[str, Verification | None]:
        """The registry URL without ``verify=`` (the registries do not know it) and the verification; UsageError
        (naming the URL) for a method that does not fit the registry, or keys without a method or the other way round."""
        url = Url.parse(registry)
        method = url.query.get("verify")
        plain = without_query_key(registry, "verify")
        if method is None:
            if trusted_keys:
                raise UsageError(f"{url}: trusted keys are set but the registry URL has no verify="
                                 f"{'cosign' if url.scheme == 'img' else 'minisign'}: add it, or nothing is verified")
            return plain, None
        expected = "cosign" if url.scheme == "img" else "minisign"
        if method != expected:
            what = "images (img://) are verified with verify=cosign" if url.scheme == "img" else \
                "archives are verified with verify=minisign (verify=cosign is for img:// images)"
            raise UsageError(f"{url}: verify={method!r} cannot be used here: {what}")
        if not trusted_keys:
            raise UsageError(f"{url}: verify={method} needs the publisher's public key: --trusted-key FILE|KEY"
                             " (trusted_keys = [...] in the config file)")
        try:
            import cryptography  # noqa: F401  (bundled in the packages; an extra for pip)
        except ImportError:
            raise UsageError(f"{url}: verify={method} needs the Python package cryptography: pip install 'dewy[signing]'") from None
        try:
            keys = tuple(load_keys(trusted_keys)) if method == "minisign" else tuple(
                read_key(value, pem_public_key) for value in trusted_keys)
        except ValueError as exc:
            raise UsageError(f"{url}: verify={method}: trusted key {exc}") from None
        return plain, cls(method, keys)


def without_query_key(raw: str, key: str) -> str:
    """``raw`` without the query pairs named ``key``, the rest of it as written."""
    base, question, rest = raw.partition("?")
    if not question:
        return raw
    query, hash_mark, fragment = rest.partition("#")
    kept = [pair for pair in query.split("&") if pair.partition("=")[0] != key]
    return base + ("?" + "&".join(kept) if kept else "") + hash_mark + fragment
