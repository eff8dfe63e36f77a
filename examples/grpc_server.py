"""A small dewy gRPC registry server: serves releases from a directory, logs deploy reports.

    python examples/grpc_server.py DIR --port 9000 [--host 127.0.0.1] [--tls CERT KEY] [--pre-release]

DIR is laid out like a file:// registry: DIR/<semver>/<artifact> (examples/publish.py
writes one). Current answers the newest version (pre-releases only with --pre-release)
with its artifact as a file:// URL, so dewy must see DIR at the same path (the same
host, or a shared mount). A real server would hand out s3://, gs:// or
ghr://OWNER/REPO/tag/TAG/NAME URLs instead. The artifact is the one dewy asked for
(arifact_name, from artifact= in its registry URL), else the first archive whose name
contains the host's OS and architecture. A version directory without a matching
archive is answered with an empty artifact_url and the directory's time as
created_at: dewy waits for 30 minutes, then reports an error. Reports are logged.

Point dewy at it with grpc://HOST:PORT (TLS, --tls here) or grpc://HOST:PORT?no-tls=true.
The protocol is dewy/proto/dewy.proto, documented in docs/grpc.md. Needs dewy's grpc
extra (grpcio, protobuf).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import grpc
import grpc.aio
import semver
from google.protobuf.empty_pb2 import Empty

from dewy.proto import dewy_pb2 as pb
from dewy.proto import dewy_pb2_grpc as pb_grpc

log = logging.getLogger("grpc_server")

ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
# Go's GOOS/GOARCH names (what dewy sends) and the other spellings found in file names.
OS_WORDS = {"linux": ("linux",), "darwin": ("darwin", "macos"), "windows": ("windows",)}
ARCH_WORDS = {
    "amd64": ("amd64", "x86_64", "x64"),
    "arm64": ("arm64", "aarch64"),
    "386": ("386", "i386", "i686", "x86"),
    "arm": ("armv7", "armhf", "arm"),
}


def parse_version(tag: str) -> semver.Version | None:
    try:
        return semver.Version.parse(tag[1:] if tag[:1] in "vV" else tag)
    except (ValueError, TypeError):
        return None


def has_word(name: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", name) for w in words)


def choose_artifact(names: list[str], wanted: str | None, os_name: str, arch: str) -> str | None:
    if wanted:
        return wanted if wanted in names else None
    for name in names:
        lower = name.lower()
        if (lower.endswith(ARCHIVES) and has_word(lower, OS_WORDS.get(os_name, (os_name,)))
                and has_word(lower, ARCH_WORDS.get(arch, (arch,)))):
            return name
    return None


class DirectoryRegistryService(pb_grpc.RegistryServiceServicer):
    """RegistryService over DIR/<semver>/<artifact>; ``on_report`` sees every ReportRequest."""

    def __init__(self, root: Path, *, prerelease: bool = False,
                 on_report: Callable[[pb.ReportRequest], None] | None = None) -> None:
        self.root = root.resolve()
        self.prerelease = prerelease
        self.on_report = on_report

    def newest(self) -> tuple[str, semver.Version] | None:
        best = None
        for entry in self.root.iterdir() if self.root.is_dir() else ():
            version = parse_version(entry.name) if entry.is_dir() else None
            if version is None or (version.prerelease and not self.prerelease):
                continue
            if best is None or version.replace(build=None) > best[1].replace(build=None):
                best = (entry.name, version)
        return best

    async def Current(self, request: pb.CurrentRequest, context: grpc.aio.ServicerContext) -> pb.CurrentResponse:
        found = self.newest()
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no release directory named by a semantic version in {self.root}")
        tag = found[0]
        directory = self.root / tag
        names = sorted(p.name for p in directory.iterdir() if p.is_file())
        wanted = request.arifact_name if request.HasField("arifact_name") else None
        name = choose_artifact(names, wanted, request.os, request.arch)
        response = pb.CurrentResponse(id=tag, tag=tag, artifact_url=(directory / name).as_uri() if name else "")
        response.created_at.FromDatetime(datetime.fromtimestamp(directory.stat().st_mtime, timezone.utc))
        log.info("current: %s/%s asked%s, answered %s %s", request.os, request.arch,
                 f" for {wanted}" if wanted else "", tag, response.artifact_url or "(no artifact yet)")
        return response

    async def Report(self, request: pb.ReportRequest, context: grpc.aio.ServicerContext) -> Empty:
        outcome = f"FAILED: {request.err}" if request.HasField("err") else "ok"
        log.info("report from %s: %s %s (id %s) %s", context.peer(), request.command, request.tag, request.id, outcome)
        if self.on_report:
            self.on_report(request)
        return Empty()


async def start(service: pb_grpc.RegistryServiceServicer, host: str = "127.0.0.1", port: int = 0,
                tls: tuple[bytes, bytes] | None = None) -> tuple[grpc.aio.Server, int]:
    """Start serving ``service``; ``tls`` is (certificate chain PEM, private key PEM). Returns the server and its port."""
    server = grpc.aio.server()
    pb_grpc.add_RegistryServiceServicer_to_server(service, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    return server, bound


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Serve dewy releases from DIR/<semver>/<artifact> over gRPC.")
    parser.add_argument("dir", type=Path, help="release directory, laid out like a file:// registry")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), type=Path, help="serve TLS with this PEM certificate chain and key")
    parser.add_argument("--pre-release", action="store_true", help="also answer pre-release versions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tls = (args.tls[0].read_bytes(), args.tls[1].read_bytes()) if args.tls else None
    server, port = await start(DirectoryRegistryService(args.dir, prerelease=args.pre_release), args.host, args.port, tls)
    log.info("serving %s on %s:%d (%s)", args.dir.resolve(), args.host, port, "TLS" if tls else "plaintext")
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(5)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(sys.argv[1:])))
    except KeyboardInterrupt:
        sys.exit(0)
