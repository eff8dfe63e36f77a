"""grpc:// registry: a real grpc.aio server built from the shipped .proto (the example server), a real dewy.

The server runs in a background thread with its own event loop. The byte-level tests decode
what dewy puts on the wire with a hand-written protobuf decoder, and answer with hand-encoded
bytes, so a server written against upstream dewy's schema works unchanged.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2

from dewy.errors import ArtifactNotReady, RegistryError, UsageError
from dewy.proto import dewy_pb2 as pb
from dewy.proto import dewy_pb2_grpc as pb_grpc
from dewy.registry import REGISTRIES
from dewy.registry.grpc import GrpcRegistry, go_arch, go_os, root_certificates
from dewy.urls import Url
from tests.certs import PKI, make_pki
from tests.conftest import host_artifact
from tests.harness import ClientLoop, free_port, get
from tests.test_e2e_server import release, start

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("grpc_server_example", ROOT / "examples" / "grpc_server.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


# --- a gRPC server in a background thread -------------------------------------------------------

class GrpcServer:
    """Serves ``service`` (or raw generic handlers) on 127.0.0.1 from a thread running its own event loop."""

    def __init__(self, service=None, *, handlers=None, tls: PKI | None = None, port: int = 0) -> None:
        self.service, self.handlers, self.tls, self.port = service, handlers, tls, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: grpc.aio.Server | None = None

    def _run(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        tls = (self.tls.cert, self.tls.key) if self.tls else None
        if self.service is not None:
            self.server, self.port = await example.start(self.service, "127.0.0.1", self.port, tls)
            return
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(self.handlers)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    def __enter__(self) -> GrpcServer:
        self.thread.start()
        self._run(self._start())
        return self

    def stop(self) -> None:
        if self.server is not None:
            self._run(self.server.stop(0))
            self.server = None

    def restart(self) -> None:
        """Serve again on the same port (after stop())."""
        self._run(self._start())

    def __exit__(self, *exc) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}" + ("" if self.tls else "?no-tls=true")


class Scripted(pb_grpc.RegistryServiceServicer):
    """Answers Current with whatever the test sets; ``hold`` makes Current wait (for deadlines)."""

    def __init__(self, answer: pb.CurrentResponse | None = None) -> None:
        self.answer = answer or pb.CurrentResponse(id="7", tag="v1.0.0", artifact_url="file:///srv/v1.0.0/app.tar.gz")
        self.requests: list[pb.CurrentRequest] = []
        self.reports: list[pb.ReportRequest] = []
        self.hold: asyncio.Event | None = None

    async def Current(self, request, context):
        self.requests.append(request)
        if self.hold is not None:
            await self.hold.wait()
        return self.answer

    async def Report(self, request, context):
        self.reports.append(request)
        return example.Empty()


def ask(url: str, *, slot: str | None = None, then: Callable | None = None):
    """GrpcRegistry(url).current() in a fresh event loop (then ``then(registry, release)``)."""
    async def go():
        registry = GrpcRegistry(Url.parse(url), slot=slot)
        try:
            answer = await registry.current()
            if then:
                await then(registry, answer)
            return answer
        finally:
            await registry.aclose()
    return asyncio.run(go())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


# --- end to end: dewy server --------------------------------------------------------------------

def grpc_core_lines(dewy) -> list[str]:
    """Lines grpc's C core wrote to dewy's stderr (``I0101 12:00:00.000 ... file.cc:123] ...``): dewy keeps it quiet."""
    if os.environ.get("GRPC_VERBOSITY"):
        return []  # the operator asked for grpc's own logs
    return [e["msg"] for e in dewy.seen if e.get("event") == "non-json" and re.match(r"[IWEF]\d{4} \d\d:", e["msg"])]


@pytest.fixture
def directory_server(tmp_path):
    """The example server over tmp_path/registry, plaintext; reports land in ``server.reports``."""
    reports: queue.Queue = queue.Queue()
    with GrpcServer(example.DirectoryRegistryService(tmp_path / "registry", on_report=reports.put)) as server:
        server.reports = reports
        yield server


def test_deploys_two_versions_with_zero_failed_requests_and_reports_each_deploy(tmp_path, directory_server) -> None:
    registry, server, port = tmp_path / "registry", directory_server, free_port()
    release(registry, "v1.0.0")
    dewy = start(tmp_path, port, registry=server.url)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        report = server.reports.get(timeout=10)
        assert (report.id, report.tag, report.command, report.HasField("err")) == ("v1.0.0", "v1.0.0", "server", False)
        with ClientLoop(port) as client:
            release(registry, "v1.1.0")
            dewy.wait_for("deployed", version="v1.1.0")
            report = server.reports.get(timeout=10)
            assert (report.tag, report.command, report.HasField("err")) == ("v1.1.0", "server", False)
            dewy.wait_for("app-stopped", version="v1.0.0", already=True)
            assert get(port)[1] == "v1.1.0"
            release(registry, "v1.2.0", "CRASH")  # does not start: rolled back, reported with err
            dewy.wait_for("rollback", version="v1.2.0")
            report = server.reports.get(timeout=10)
            assert (report.id, report.tag, report.command) == ("v1.2.0", "v1.2.0", "server")
            assert report.HasField("err") and "exited" in report.err, report.err
            assert get(port)[1] == "v1.1.0"
        assert client.failures == []
        assert client.ok > 20
        assert list(dict.fromkeys(client.bodies)) == ["v1.0.0", "v1.1.0"]
        assert server.reports.empty()
        assert dewy.stop() == 0
        assert not grpc_core_lines(dewy)
    finally:
        dewy.kill()


def test_tls_with_a_private_ca_trusted_through_grpc_default_ssl_roots_file_path(tmp_path, pki) -> None:
    release(tmp_path / "registry", "v1.0.0")
    port = free_port()
    with GrpcServer(example.DirectoryRegistryService(tmp_path / "registry"), tls=pki) as server:
        assert "no-tls" not in server.url
        dewy = start(tmp_path, port, registry=server.url, env={"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(pki.ca_file)})
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            assert get(port)[1] == "v1.0.0"
        finally:
            dewy.kill()


def test_server_down_is_one_clear_error_the_app_keeps_serving_and_dewy_recovers(tmp_path, directory_server) -> None:
    registry, server, port = tmp_path / "registry", directory_server, free_port()
    release(registry, "v1.0.0")
    dewy = start(tmp_path, port, registry=server.url)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        server.stop()
        failure = dewy.wait_for("deploy-failed")
        assert failure["msg"].startswith(f"{server.url}: Current: cannot reach the gRPC registry at 127.0.0.1:{server.port}")
        assert "is the server running?" in failure["msg"] and "\n" not in failure["msg"]
        assert get(port)[1] == "v1.0.0"
        release(registry, "v1.1.0")
        server.restart()
        dewy.wait_for("deployed", version="v1.1.0")
        assert get(port)[1] == "v1.1.0"
        assert not grpc_core_lines(dewy)
    finally:
        dewy.kill()


# --- the client against scripted servers --------------------------------------------------------

def test_current_sends_go_platform_names_and_parses_the_answer() -> None:
    created = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    answer = pb.CurrentResponse(id="rel-42", tag="v2.3.4", artifact_url="ghr://acme/app/tag/v2.3.4/app_linux_amd64.tar.gz")
    answer.created_at.FromDatetime(created)
    service = Scripted(answer)
    with GrpcServer(service) as server:
        got = ask(server.url + "&artifact=app_linux_amd64.tar.gz",
                  then=lambda registry, rel: registry.report(rel, "assets", "boom"))
    assert (got.id, got.tag, str(got.version), got.artifact_name) == ("rel-42", "v2.3.4", "2.3.4", "app_linux_amd64.tar.gz")
    assert got.artifact_url == answer.artifact_url and got.created_at == created and got.checksums_url is None
    request = service.requests[0]
    assert (request.arch, request.os, request.arifact_name) == (go_arch(), go_os(), "app_linux_amd64.tar.gz")
    assert [(r.id, r.tag, r.command, r.err) for r in service.reports] == [("rel-42", "v2.3.4", "assets", "boom")]


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"), ("i686", "386"),
    ("armv7l", "arm"), ("armv6l", "arm"), ("ppc64le", "ppc64le"), ("s390x", "s390x"), ("riscv64", "riscv64"),
])
def test_go_arch_names(machine: str, expected: str) -> None:
    assert go_arch(machine) == expected


def test_go_os_names() -> None:
    assert [go_os(p) for p in ("linux", "darwin", "win32", "freebsd14")] == ["linux", "darwin", "windows", "freebsd"]
    if sys.platform == "linux":
        assert go_os() == "linux"


@pytest.mark.parametrize("url, expected_name", [
    ("file:///srv/releases/v1.0.0/app_linux_amd64.tar.gz", "app_linux_amd64.tar.gz"),
    ("s3://ap-northeast-1/bucket/prefix/v1.0.0/app%20x.tar.gz", "app x.tar.gz"),
    ("gs://project/bucket/prefix/v1.0.0/app.zip", "app.zip"),
    ("ghr://acme/app/tag/v1.0.0/app_linux_arm64.tgz", "app_linux_arm64.tgz"),
])
def test_artifact_urls_of_every_supported_scheme(url: str, expected_name: str) -> None:
    with GrpcServer(Scripted(pb.CurrentResponse(id="1", tag="v1.0.0", artifact_url=url))) as server:
        got = ask(server.url)
    assert (got.artifact_url, got.artifact_name, got.cache_key) == (url, expected_name, f"v1.0.0--{expected_name}")


def _answer(tag: str = "v1.0.0", url: str = "file:///srv/app.tar.gz", age: timedelta | None = None) -> pb.CurrentResponse:
    answer = pb.CurrentResponse(id="1", tag=tag, artifact_url=url)
    if age is not None:
        answer.created_at.FromDatetime(datetime.now(timezone.utc) - age)
    return answer


@pytest.mark.parametrize("answer, slot, error, expected", [
    (lambda: _answer(url="ftp://files.example/app.tar.gz"), None, RegistryError,
     r"artifact_url ftp://files\.example/app\.tar\.gz has scheme 'ftp', which dewy cannot fetch \(supported: file://, ghr://, gs://, s3://\)"),
    (lambda: _answer(url="https://u:hunter2@files.example/app.tar.gz"), None, RegistryError, r"artifact_url https://u:\*\*\*@files\.example/app\.tar\.gz has scheme 'https'"),
    (lambda: _answer(url="app.tar.gz"), None, RegistryError, r"artifact_url 'app\.tar\.gz' is not a URL"),
    (lambda: _answer(url="file:///srv/v1/"), None, RegistryError, r"names no file"),
    (lambda: _answer(url="ghr://acme/app/tag/v1.0.0/..%2F..%2Fx%2Fevil_linux_amd64.tar.gz"), None, RegistryError,
     r"names the file '\.\./\.\./x/evil_linux_amd64\.tar\.gz', which holds a / \(a file name is one path component\);"
     r" fix the server's answer"),
    (lambda: _answer(url="s3://us-east-1/bucket/v1/sub%2Fapp.tar.gz"), None, RegistryError, r"'sub/app\.tar\.gz', which holds a /"),
    (lambda: _answer(url="file:///srv/v1/%2E%2E"), None, RegistryError, r"'\.\.', which is not a file name"),
    (lambda: _answer(tag=""), None, RegistryError, r"answered Current without a tag"),
    (lambda: _answer(tag="latest"), None, RegistryError, r"answered tag 'latest', which is not a semantic version"),
    (lambda: _answer(tag="v1.2.0+green"), "blue", RegistryError,
     r"--slot blue expects a version like 1\.2\.0\+blue but the server answered v1\.2\.0\+green; with gRPC the server chooses"),
    (lambda: _answer(tag="v1.2.0"), "blue", RegistryError, r"answered v1\.2\.0; with gRPC the server chooses the version"),
    (lambda: _answer(url="", age=timedelta(minutes=5)), None, ArtifactNotReady, r"release v1\.0\.0 has no artifact_url yet \(published 30\d?s ago"),
    (lambda: _answer(url="", age=timedelta(hours=2)), None, RegistryError, r"release v1\.0\.0 has no artifact_url \(published 20"),
    (lambda: _answer(url=""), None, RegistryError, r"release v1\.0\.0 has no artifact_url; the server must answer"),
], ids=["unknown-scheme", "https-redacted", "not-a-url", "no-file-name", "slash-in-name", "slash-in-s3-name", "dotdot-name", "no-tag", "not-semver", "other-slot", "no-slot",
        "young-no-artifact", "old-no-artifact", "ageless-no-artifact"])
def test_unusable_answers_are_one_clear_error(answer, slot, error, expected) -> None:
    with GrpcServer(Scripted(answer())) as server:  # made now: created_at is relative to the test's clock
        with pytest.raises(error) as raised:
            ask(server.url, slot=slot)
    message = str(raised.value)
    assert message.startswith(server.url + ": ") and "\n" not in message
    assert re.search(expected, message), message
    assert "hunter2" not in message
    if error is RegistryError:
        assert not isinstance(raised.value, ArtifactNotReady)


def test_young_empty_artifact_url_is_not_ready_only_inside_the_upload_grace() -> None:
    with GrpcServer(Scripted(_answer(url="", age=timedelta(minutes=29)))) as server:
        with pytest.raises(ArtifactNotReady):
            ask(server.url)


def test_slot_matching_the_servers_build_metadata_deploys() -> None:
    with GrpcServer(Scripted(_answer(tag="v1.2.0+blue"))) as server:
        assert ask(server.url, slot="blue").tag == "v1.2.0+blue"


def test_deadline_exceeded_is_a_clear_error_and_the_next_call_works() -> None:
    service = Scripted()
    with GrpcServer(service) as server:
        service.hold = asyncio.Event()

        async def go():
            registry = GrpcRegistry(Url.parse(server.url + "&timeout=0.3s"))
            try:
                with pytest.raises(RegistryError) as raised:
                    await registry.current()
                server.loop.call_soon_threadsafe(service.hold.set)
                return str(raised.value), await registry.current()
            finally:
                await registry.aclose()

        message, answer = asyncio.run(go())
    assert message == (f"{server.url}&timeout=0.3s: Current: no answer from 127.0.0.1:{server.port} within 0.3s"
                       " (deadline exceeded); check the server, or allow longer with timeout= in the registry URL")
    assert answer.tag == "v1.0.0"


def test_default_deadline_is_30_seconds() -> None:
    assert GrpcRegistry(Url.parse("grpc://127.0.0.1:1?no-tls=true")).timeout == 30


def test_a_server_without_the_dewy_service_is_named() -> None:
    with GrpcServer(handlers=[grpc.method_handlers_generic_handler("other.Service", {})]) as server:
        with pytest.raises(RegistryError, match=r"does not implement dewy\.RegistryService/Current.*is it a dewy registry\?"):
            ask(server.url)


def test_malformed_answer_bytes_are_a_clear_error() -> None:
    async def current(request: bytes, context) -> bytes:
        return b"\x0a\xff\xff\xff"  # field 1, length-delimited, truncated length: not a CurrentResponse

    handler = grpc.method_handlers_generic_handler(
        "dewy.RegistryService", {"Current": grpc.unary_unary_rpc_method_handler(current)})
    with GrpcServer(handlers=[handler]) as server:
        with pytest.raises(RegistryError, match=r"malformed answer from 127\.0\.0\.1:\d+ \(not a dewy\.CurrentResponse message\)"):
            ask(server.url)


# --- TLS ----------------------------------------------------------------------------------------

def test_tls_client_refuses_a_plaintext_server(monkeypatch, pki) -> None:
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(pki.ca_file))
    with GrpcServer(Scripted()) as server:
        tls_url = server.url.removesuffix("?no-tls=true")
        with pytest.raises(RegistryError) as raised:
            ask(tls_url)
        assert "does not speak TLS" in str(raised.value) and "add no-tls=true" in str(raised.value)
        assert ask(server.url).tag == "v1.0.0"  # no-tls=true works


def test_plaintext_client_against_a_tls_server_says_to_remove_no_tls(pki) -> None:
    with GrpcServer(Scripted(), tls=pki) as server:
        with pytest.raises(RegistryError, match=r"cannot reach the gRPC registry.*\(if it uses TLS, remove no-tls=true\)"):
            ask(server.url + "?no-tls=true")


def test_untrusted_certificate_names_the_ca_setting(monkeypatch, pki, tmp_path) -> None:
    other = make_pki(tmp_path / "other")
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(other.ca_file))
    with GrpcServer(Scripted(), tls=pki) as server:
        with pytest.raises(RegistryError) as raised:
            ask(server.url)
    message = str(raised.value)
    assert "certificate of 127.0.0.1" in message and "is not trusted" in message
    assert f"trusted CAs come from {other.ca_file}" in message and "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH" in message


def test_certificate_for_another_host_is_refused(monkeypatch, tmp_path) -> None:
    elsewhere = make_pki(tmp_path / "elsewhere", hosts=("registry.example",))
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(elsewhere.ca_file))
    with GrpcServer(Scripted(), tls=elsewhere) as server:
        with pytest.raises(RegistryError, match=r"is not trusted .*Hostname Verification"):
            ask(server.url)


def test_ca_store_precedence(monkeypatch, pki, tmp_path) -> None:
    monkeypatch.delenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    system, source = root_certificates()
    assert system and b"BEGIN CERTIFICATE" in system and os.path.exists(source), "the system CA store, not grpc's bundled roots"
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    assert root_certificates() == (pki.ca_file.read_bytes(), str(pki.ca_file))
    other = make_pki(tmp_path / "other")
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(other.ca_file))
    assert root_certificates() == (other.ca_file.read_bytes(), str(other.ca_file))
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(tmp_path / "missing.pem"))
    with pytest.raises(UsageError, match=r"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=.*missing\.pem: cannot read the CA bundle"):
        GrpcRegistry(Url.parse("grpc://registry.example:443"))
    GrpcRegistry(Url.parse("grpc://registry.example:443?no-tls=true"))  # plaintext reads no CA


def test_ssl_cert_file_is_trusted_when_grpc_default_is_unset(monkeypatch, pki) -> None:
    monkeypatch.delenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    with GrpcServer(Scripted(), tls=pki) as server:
        assert ask(server.url).tag == "v1.0.0"


# --- URLs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("grpc://127.0.0.1:9000?tls=false", r"unknown query key 'tls'"),
    ("grpc://127.0.0.1:9000?no-tls=maybe", r"not a boolean"),
    ("grpc://127.0.0.1:9000/dewy", r"expected grpc://HOST:PORT\?no-tls=true"),
    ("grpc://:9000", r"expected grpc://HOST:PORT"),
    ("grpc://127.0.0.1:99999", r"bad port"),
    ("grpc://127.0.0.1:9000?timeout=0", r"timeout: '0' must be greater than zero"),
    ("grpc://user:secret@127.0.0.1:9000", r"credentials in a grpc:// URL are not supported"),
])
def test_bad_urls_refuse_to_start(url: str, expected: str) -> None:
    with pytest.raises(UsageError) as raised:
        REGISTRIES.load(REGISTRIES.url(url))
    assert re.search(expected, str(raised.value)) and "secret" not in str(raised.value)


def test_url_forms() -> None:
    assert GrpcRegistry(Url.parse("grpc://registry.example?no-tls=1")).target == "registry.example:443"
    assert GrpcRegistry(Url.parse("grpc://[::1]:9000?no-tls=true")).target == "[::1]:9000"
    registry = GrpcRegistry(Url.parse("grpc://h:1?no-tls=true&artifact=a.zip&timeout=5m"))
    assert (registry.artifact, registry.timeout, registry.no_tls) == ("a.zip", 300, True)


def test_a_release_by_tag_is_refused_in_one_line_without_asking_the_server() -> None:
    registry = GrpcRegistry(Url.parse("grpc://127.0.0.1:9?no-tls=true"))  # nothing listens: nothing is asked
    with pytest.raises(RegistryError) as caught:
        asyncio.run(registry.release("v1.0.0"))
    assert str(caught.value) == ("grpc://127.0.0.1:9?no-tls=true: cannot look up release v1.0.0: the gRPC registry "
                                 "protocol only answers the current release; pin a version kept on this host")


def test_bad_url_from_the_command_line_is_one_line_and_exit_2(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "dewy", "assets", "--registry", "grpc://127.0.0.1:9000?no-tsl=true"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dewy: error: grpc://127.0.0.1:9000?no-tsl=true: unknown query key 'no-tsl'; did you mean 'no-tls'?"]


def test_grpc_is_imported_only_for_grpc_urls() -> None:
    code = ("import sys, dewy.cli, dewy.daemon, dewy.registry, dewy.proto, dewy.store;"
            "from dewy.registry import REGISTRIES; from dewy.urls import Url;"
            "REGISTRIES.load(Url.parse('file:///tmp'));"
            "assert not [m for m in sys.modules if m == 'grpc' or m.startswith(('grpc.', 'google.protobuf'))], sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- the wire: field numbers and types, as an upstream server sees them ---------------------------

def varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def decode(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Protobuf wire format by hand: (field number, wire type, value) for varint (0) and length-delimited (2) fields."""
    fields, i = [], 0
    while i < len(data):
        key, i = varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = varint(data, i)
        elif wire_type == 2:
            length, i = varint(data, i)
            value, i = data[i:i + length], i + length
            assert len(value) == length, "truncated field"
        else:
            raise AssertionError(f"unexpected wire type {wire_type} for field {number}")
        fields.append((number, wire_type, value))
    return fields


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return encode_varint(number << 3 | 0) + encode_varint(value)
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


class RawServer:
    """A RegistryService that sees and answers raw bytes, as a server built from another copy of the schema would."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received: dict[str, list[bytes]] = {"Current": [], "Report": []}

    def handlers(self):
        async def current(request: bytes, context) -> bytes:
            self.received["Current"].append(request)
            return self.answer

        async def report(request: bytes, context) -> bytes:
            self.received["Report"].append(request)
            return b""  # google.protobuf.Empty

        return [grpc.method_handlers_generic_handler("dewy.RegistryService", {
            "Current": grpc.unary_unary_rpc_method_handler(current),
            "Report": grpc.unary_unary_rpc_method_handler(report),
        })]


def test_wire_format_matches_the_documented_schema() -> None:
    created = int(datetime.now(timezone.utc).timestamp()) - 60
    answer = (field(1, b"release-9") + field(2, b"v3.1.4") + field(3, b"s3://eu-west-1/bucket/app/v3.1.4/app.tar.gz")
              + field(4, field(1, created) + field(2, 500_000_000)))
    raw = RawServer(answer)
    with GrpcServer(handlers=raw.handlers()) as server:
        async def reports(registry, rel):
            await registry.report(rel, "server")
            await registry.report(rel, "server", "app exited with code 3")

        with_name = ask(server.url + "&artifact=app.tar.gz", then=reports)
        ask(server.url)
    # CurrentRequest: 1 arch (string), 2 os (string), 3 arifact_name (string, only when set)
    assert decode(raw.received["Current"][0]) == [(1, 2, go_arch().encode()), (2, 2, go_os().encode()), (3, 2, b"app.tar.gz")]
    assert decode(raw.received["Current"][1]) == [(1, 2, go_arch().encode()), (2, 2, go_os().encode())]
    # ReportRequest: 1 id, 2 tag, 3 command, 4 err (strings; err only on failure)
    assert decode(raw.received["Report"][0]) == [(1, 2, b"release-9"), (2, 2, b"v3.1.4"), (3, 2, b"server")]
    assert decode(raw.received["Report"][1]) == [(1, 2, b"release-9"), (2, 2, b"v3.1.4"), (3, 2, b"server"),
                                                 (4, 2, b"app exited with code 3")]
    # CurrentResponse: 1 id, 2 tag, 3 artifact_url, 4 created_at (google.protobuf.Timestamp: 1 seconds, 2 nanos)
    assert (with_name.id, with_name.tag, with_name.artifact_name) == ("release-9", "v3.1.4", "app.tar.gz")
    assert with_name.artifact_url == "s3://eu-west-1/bucket/app/v3.1.4/app.tar.gz"
    assert with_name.created_at == datetime.fromtimestamp(created + 0.5, timezone.utc)


def test_an_old_server_without_created_at_and_with_unknown_fields_still_works() -> None:
    # upstream servers before created_at answer fields 1-3 only; unknown fields from newer servers are skipped
    answer = field(1, b"") + field(2, b"1.0.0") + field(3, b"file:///srv/app.tar.gz") + field(15, b"future") + field(16, 7)
    with GrpcServer(handlers=RawServer(answer).handlers()) as server:
        got = ask(server.url)
    assert (got.id, got.tag, got.created_at, got.artifact_name) == ("", "1.0.0", None, "app.tar.gz")


def test_generated_schema_names_numbers_and_types() -> None:
    string, message = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    proto = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert proto.package == "dewy" and proto.syntax == "proto3"
    fields = {m.name: [(f.name, f.number, f.type, f.proto3_optional, f.type_name) for f in m.field] for m in proto.message_type}
    assert fields == {
        "CurrentRequest": [("arch", 1, string, False, ""), ("os", 2, string, False, ""), ("arifact_name", 3, string, True, "")],
        "CurrentResponse": [("id", 1, string, False, ""), ("tag", 2, string, False, ""), ("artifact_url", 3, string, False, ""),
                            ("created_at", 4, message, True, ".google.protobuf.Timestamp")],
        "ReportRequest": [("id", 1, string, False, ""), ("tag", 2, string, False, ""), ("command", 3, string, False, ""),
                          ("err", 4, string, True, "")],
    }
    [service] = proto.service
    assert service.name == "RegistryService"
    assert [(m.name, m.input_type, m.output_type) for m in service.method] == [
        ("Current", ".dewy.CurrentRequest", ".dewy.CurrentResponse"),
        ("Report", ".dewy.ReportRequest", ".google.protobuf.Empty"),
    ]


def test_generated_modules_match_the_shipped_proto(tmp_path) -> None:
    """dewy_pb2 was generated from dewy.proto as shipped (regenerate as dewy/proto/__init__.py says)."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "dewy.pb"
    assert protoc.main(["protoc", f"-I{ROOT}", f"-I{include}", f"--descriptor_set_out={out}", "dewy/proto/dewy.proto"]) == 0
    [compiled] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    for message in compiled.message_type:
        for f in message.field:
            f.ClearField("json_name")  # the Python generator leaves json_name out of the embedded descriptor
    assert compiled == descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)


def test_the_proto_is_installed_with_the_package() -> None:
    import importlib.resources

    text = importlib.resources.files("dewy.proto").joinpath("dewy.proto").read_text()
    assert "optional string arifact_name = 3;" in text and "package dewy;" in text


# --- the example server -------------------------------------------------------------------------

def test_example_server_runs_from_the_command_line_with_tls(tmp_path, pki, monkeypatch) -> None:
    (tmp_path / "registry").mkdir()
    release(tmp_path / "registry", "v1.0.0")
    release(tmp_path / "registry", "v1.1.0-rc.1")
    (tmp_path / "registry" / "v0.9.0").mkdir()
    (tmp_path / "cert.pem").write_bytes(pki.cert)
    (tmp_path / "key.pem").write_bytes(pki.key)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "grpc_server.py"), str(tmp_path / "registry"), "--port", str(port),
         "--tls", str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for _ in range(100):  # bounded: the first line says it is serving (or why it is not)
            line = process.stderr.readline()
            if not line or "serving" in line:
                break
        assert f"127.0.0.1:{port} (TLS)" in line, line
        monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(pki.ca_file))
        got = ask(f"grpc://localhost:{port}", then=lambda registry, rel: registry.report(rel, "server"))
        assert (got.tag, got.id, got.artifact_name) == ("v1.0.0", "v1.0.0", host_artifact())
        assert got.artifact_url == (tmp_path / "registry" / "v1.0.0" / host_artifact()).resolve().as_uri()
        assert datetime.now(timezone.utc) - got.created_at < timedelta(minutes=5)
    finally:
        process.terminate()
        rest = process.communicate(timeout=10)[1]
    assert "report from" in rest and "server v1.0.0 (id v1.0.0) ok" in rest, rest


def test_example_server_answers_an_empty_artifact_url_while_the_archive_is_missing(tmp_path) -> None:
    registry = tmp_path / "registry"
    release(registry, "v1.0.0")
    (registry / "v1.1.0").mkdir()
    (registry / "v1.1.0" / "notes.txt").write_text("uploading")
    with GrpcServer(example.DirectoryRegistryService(registry)) as server:
        with pytest.raises(ArtifactNotReady, match=r"release v1\.1\.0 has no artifact_url yet"):
            ask(server.url)
        assert ask(server.url + "&artifact=notes.txt").artifact_name == "notes.txt"
