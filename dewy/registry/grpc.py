"""``grpc://HOST:PORT?no-tls=true``: a user-run registry server speaking dewy's gRPC protocol.

The server chooses the version: ``Current`` answers the release this host should
run (tag, artifact URL in any scheme dewy fetches, publication time) and
``Report`` receives the outcome of each deploy. The protocol is
``dewy/proto/dewy.proto``, wire-compatible with upstream dewy servers; see
docs/grpc.md.

TLS by default, verified against the system CA store: the file named by
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, else ``SSL_CERT_FILE``, else OpenSSL's
default bundle (``ssl.get_default_verify_paths()``), else the usual
distribution bundles. ``no-tls=true`` for plaintext. Every call has a deadline
(``timeout=``, 30 s by default).

This is the only module that imports grpc and protobuf, and it is imported only
for grpc:// registries.
"""

from __future__ import annotations

import os
import platform
import re
import ssl
import sys
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dewy import __version__
from dewy.artifacts import ARTIFACTS
from dewy.errors import ArtifactNotReady, RegistryError, UsageError
from dewy.fsutil import bad_file_name
from dewy.registry import UPLOAD_GRACE, Release
from dewy.signing import signature_url
from dewy.urls import Url, redact
from dewy.versions import QUERY_KEYS as VERSION_KEYS, Selection

# grpc's C core writes its own diagnostics to stderr (handshake failures, ...); dewy reports
# every failure itself in one line, so keep the core quiet unless the operator asks otherwise.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

try:
    import grpc
    import grpc.aio

    from google.protobuf.message import DecodeError

    from dewy.proto import dewy_pb2 as pb
except ImportError:
    raise  # Plugins.load turns a missing package into a one-line usage error
except Exception as exc:  # the generated code refuses a grpcio/protobuf older than the one that generated it
    raise UsageError(f"the grpc:// registry cannot load its protocol: {exc}") from None

EXPECTED = "grpc://HOST:PORT?no-tls=true"
DEFAULT_PORT = 443
DEFAULT_TIMEOUT = 30.0

# Go's GOARCH / GOOS names, which upstream dewy servers expect.
GO_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "x64": "amd64",
    "aarch64": "arm64", "arm64": "arm64", "armv8b": "arm64", "aarch64_be": "arm64",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "x86": "386",
    "armv5l": "arm", "armv6l": "arm", "armv7l": "arm", "armv8l": "arm", "arm": "arm",
    "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "riscv64": "riscv64",
    "mips": "mips", "mipsel": "mipsle", "mips64": "mips64", "mips64el": "mips64le",
    "loongarch64": "loong64",
}
GO_OS = {"linux": "linux", "darwin": "darwin", "win32": "windows", "cygwin": "windows"}

# Where distributions keep the CA bundle, for when OpenSSL's compiled-in default is missing.
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",                  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",                    # Fedora, RHEL
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",   # RHEL 7+
    "/etc/ssl/ca-bundle.pem",                              # openSUSE
    "/etc/ssl/cert.pem",                                   # macOS, BSDs
)


def go_arch(machine: str | None = None) -> str:
    """This host's CPU architecture in Go's GOARCH spelling (amd64, arm64, 386, arm, ...)."""
    machine = (machine or platform.machine()).lower()
    return GO_ARCH.get(machine, machine)


def go_os(system: str | None = None) -> str:
    """This host's operating system in Go's GOOS spelling (linux, darwin, windows, freebsd, ...)."""
    system = system or sys.platform
    if system in GO_OS:
        return GO_OS[system]
    return system.rstrip("0123456789")  # freebsd14 -> freebsd


def _read_pem(path: str, source: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{source}={path}: cannot read the CA bundle: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UsageError(f"{source}={path}: not a PEM CA bundle (no BEGIN CERTIFICATE)")
    return data


def root_certificates() -> tuple[bytes | None, str]:
    """The system's trusted CAs as PEM bytes, and where they came from.

    None means grpc's own bundled roots (only when this host has no CA bundle at all).
    """
    for variable in ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "SSL_CERT_FILE"):
        if os.environ.get(variable):
            return _read_pem(os.environ[variable], variable), os.environ[variable]
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *CA_BUNDLES):
        if candidate and os.path.isfile(candidate):
            try:
                return _read_pem(candidate, "CA bundle"), candidate
            except UsageError:
                continue
    for directory in (os.environ.get("SSL_CERT_DIR"), paths.capath, paths.openssl_capath):
        if directory and os.path.isdir(directory):
            pems = []
            for entry in sorted(Path(directory).iterdir()):
                try:
                    data = entry.read_bytes() if entry.is_file() else b""
                except OSError:
                    continue
                if b"-----BEGIN CERTIFICATE-----" in data:
                    pems.append(data.rstrip(b"\n") + b"\n")
            if pems:
                return b"".join(pems), directory
    return None, "grpc's bundled roots"


def _serialize(message) -> bytes:
    return message.SerializeToString()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _connect_error(details: str) -> str:
    """The useful end of grpc's connection failure text (``failed to connect to all addresses; last error: ...``)."""
    match = re.search(r"last error: [A-Z_]+: (?:(?:ipv4|ipv6|unix):\S+: )?(.*)", details)
    reason = match.group(1) if match else details
    return reason.removesuffix(": OK").removesuffix(".") or "no details"


class GrpcRegistry:
    """Asks a dewy RegistryService which release to run, and reports each deploy back to it."""

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        url.check_keys({"no-tls", "artifact", "timeout", *VERSION_KEYS})
        if url.path not in ("", "/") or not url.host:
            raise UsageError(f"{url}: expected {EXPECTED}")
        if url.username or url.password:
            raise UsageError(f"{url}: credentials in a grpc:// URL are not supported; expected {EXPECTED}")
        self.url = url
        self.no_tls = url.flag("no-tls")
        self.artifact = url.query.get("artifact") or None
        self.timeout = url.seconds("timeout", DEFAULT_TIMEOUT)
        self.slot = slot
        self.selection = Selection.of(url, prerelease=True, slot=None)  # the server chooses; these only check
        host = url.host
        self.target = f"[{host}]:{url.port or DEFAULT_PORT}" if ":" in host else f"{host}:{url.port or DEFAULT_PORT}"
        self.roots, self.roots_source = (None, "") if self.no_tls else root_certificates()
        self._channel: grpc.aio.Channel | None = None

    def _connect(self) -> grpc.aio.Channel:
        """The open channel; made lazily because a channel belongs to the running event loop."""
        if self._channel is None:
            options = [("grpc.primary_user_agent", f"dewy/{__version__}")]
            if self.no_tls:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
            else:
                credentials = grpc.ssl_channel_credentials(root_certificates=self.roots)
                self._channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        return self._channel

    async def _disconnect(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def _call(self, method: str, request) -> bytes:
        """Call ``/dewy.RegistryService/<method>``; the answer comes back as bytes, parsed by the caller.

        (grpc.aio answers None when its own deserializer fails, and logs a traceback: dewy parses
        itself, to say "malformed answer" in one line.)
        """
        call = self._connect().unary_unary(f"/dewy.RegistryService/{method}", request_serializer=_serialize)
        try:
            return await call(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # A fresh connection on the next poll: dewy's own backoff paces the retries,
                # not the channel's reconnect backoff (which grows to minutes).
                await self._disconnect()
            raise RegistryError(self._explain(method, exc)) from None

    def _explain(self, method: str, exc: grpc.aio.AioRpcError) -> str:
        """One line for the operator: what failed, and what to do about it."""
        code, details = exc.code(), _one_line(exc.details() or "")
        where = f"{self.url}: {method}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return (f"{where}: no answer from {self.target} within {self.timeout:g}s (deadline exceeded);"
                    " check the server, or allow longer with timeout= in the registry URL")
        if code == grpc.StatusCode.UNAVAILABLE:
            reason = _connect_error(details)
            lower = reason.lower()
            if not self.no_tls and "wrong_version_number" in lower:
                return (f"{where}: {self.target} does not speak TLS ({reason}); if the server is plaintext,"
                        " add no-tls=true to the registry URL")
            if not self.no_tls and ("verify_failed" in lower or "verification check failed" in lower):
                return (f"{where}: the TLS certificate of {self.target} is not trusted ({reason}); trusted CAs come from"
                        f" {self.roots_source}: for a private CA set GRPC_DEFAULT_SSL_ROOTS_FILE_PATH to its PEM file,"
                        " and make sure the certificate names the host in the registry URL")
            if not self.no_tls and any(word in lower for word in ("ssl", "tls", "handshake", "certificate")):
                return f"{where}: TLS with {self.target} failed ({reason}); add no-tls=true if the server is plaintext"
            hint = " (if it uses TLS, remove no-tls=true)" if self.no_tls else ""
            return f"{where}: cannot reach the gRPC registry at {self.target} ({reason}); is the server running?{hint}"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return f"{where}: the server at {self.target} does not implement dewy.RegistryService/{method} ({details}); is it a dewy registry?"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return f"{where}: refused by the server ({code.name}: {details})"
        return f"{where}: the server answered {code.name}: {details or 'no details'}"

    async def current(self) -> Release:
        request = pb.CurrentRequest(arch=go_arch(), os=go_os())
        if self.artifact:
            request.arifact_name = self.artifact
        raw = await self._call("Current", request)
        try:
            answer = pb.CurrentResponse.FromString(raw)
        except DecodeError:
            raise RegistryError(
                f"{self.url}: Current: malformed answer from {self.target} (not a dewy.CurrentResponse message);"
                " check the server's .proto against docs/grpc.md"
            ) from None
        return self._release(answer)

    async def release(self, tag: str) -> Release:
        raise RegistryError(f"{self.url}: cannot look up release {tag}: the gRPC registry protocol only answers the "
                            "current release; pin a version kept on this host")

    def _release(self, answer) -> Release:
        where = str(self.url)
        tag = answer.tag
        if not tag:
            raise RegistryError(f"{where}: the server answered Current without a tag; it must name a semantic version like v1.2.3")
        version = self.selection.parse(tag)
        if version is None:
            scheme = f"calendar version in calver={self.selection.calver.text}" if self.selection.calver else "semantic version (like v1.2.3)"
            raise RegistryError(f"{where}: the server answered tag {tag!r}, which is not a {scheme}; nothing deployed")
        if not self.selection.eligible(version):
            raise RegistryError(f"{where}: the server answered {tag}, outside constraint={self.selection.constraint.text}; nothing deployed")
        if self.slot is not None and version.build != self.slot:
            raise RegistryError(
                f"{where}: --slot {self.slot} expects a version like {str(version).partition('+')[0]}+{self.slot} but the server"
                f" answered {tag}; with gRPC the server chooses the version: have it answer this host's slot, or drop --slot"
            )
        created_at = None
        if answer.HasField("created_at"):
            try:
                created_at = answer.created_at.ToDatetime(tzinfo=timezone.utc)
            except (ValueError, OverflowError):
                created_at = None  # out of range: treated as unknown (no upload grace)
        raw = answer.artifact_url
        if not raw:
            age = datetime.now(timezone.utc) - created_at if created_at else None
            if age is not None and age < UPLOAD_GRACE:
                raise ArtifactNotReady(
                    f"{where}: release {tag} has no artifact_url yet (published {max(0, int(age.total_seconds()))}s ago; waiting for the upload)"
                )
            published = f" (published {created_at:%Y-%m-%d %H:%M:%S} UTC)" if created_at else ""
            raise RegistryError(f"{where}: release {tag} has no artifact_url{published}; the server must answer the archive's URL")
        try:
            artifact_url = Url.parse(raw)
        except UsageError:
            raise RegistryError(f"{where}: release {tag}: artifact_url {redact(raw)!r} is not a URL (expected SCHEME://...)") from None
        if artifact_url.scheme not in ARTIFACTS.table:
            known = ", ".join(f"{s}://" for s in sorted(ARTIFACTS.table))
            raise RegistryError(
                f"{where}: release {tag}: artifact_url {artifact_url} has scheme {artifact_url.scheme!r}, which dewy cannot fetch"
                f" (supported: {known}); fix the server's answer"
            )
        name = unquote(urlsplit(raw).path.rpartition("/")[2])
        if not name:
            raise RegistryError(f"{where}: release {tag}: artifact_url {artifact_url} names no file")
        problem = bad_file_name(name)
        if problem:
            raise RegistryError(f"{where}: release {tag}: artifact_url {artifact_url} names the file {name[:100]!r},"
                                f" which {problem}; fix the server's answer")
        return Release(tag=tag, version=version, artifact_name=name, artifact_url=raw, created_at=created_at,
                       checksums_url=None, signature_url=signature_url(raw), id=answer.id)

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        """Report the deploy of ``release`` by ``command``; ``err`` is set only when it failed."""
        request = pb.ReportRequest(id=release.id, tag=release.tag, command=command)
        if error is not None:
            request.err = error
        await self._call("Report", request)

    async def aclose(self) -> None:
        await self._disconnect()
