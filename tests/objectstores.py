"""Object-store test servers: moto (S3) and gcp-storage-emulator (GCS) as subprocesses, and a canned-answer stand-in.

Each server listens on 127.0.0.1 on a free port, is waited for by polling its
port in a bounded loop, and is stopped (SIGTERM, then SIGKILL) at teardown.
The stand-in answers every request with a response chosen by the test, for
what the real-protocol servers cannot produce (expired tokens, garbage).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dewy.artifacts import ARTIFACTS
from dewy.progress import Progress
from dewy.spool import Spool
from dewy.urls import Url
from tests.conftest import host_artifact, tar_gz
from tests.harness import APP, ClientLoop, Dewy, free_port

BIN = Path(sys.executable).parent

# Credentials for moto: any key works unless its IAM mode is on. The secret is checked never to appear in logs.
AWS_SECRET = "dewyTestSecretKey/DoNotLog+9f2c"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIADEWYTEST0000KEY1",
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "AWS_CONFIG_FILE": "/nonexistent/dewy-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/dewy-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
             "AWS_DEFAULT_REGION", "AWS_REGION")
REGION = "us-east-1"


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Return once 127.0.0.1:port accepts connections; fail if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling interval of a bounded readiness loop, not synchronisation
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def server_process(args: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def release_files(tag: str, *knobs: str) -> dict[str, bytes]:
    """The test app released as ``tag``: checksums.txt, then the archive under this host's artifact name.

    In upload order: a poll between the two uploads must not find the archive without its checksum.
    """
    data = tar_gz({"app.py": APP.read_text(), "VERSION": tag, **{k: "" for k in knobs}})
    return {"checksums.txt": f"{hashlib.sha256(data).hexdigest()}  {host_artifact()}\n".encode(), host_artifact(): data}


# ---------------------------------------------------------------- S3 (moto)


class Moto:
    """A moto server; ``s3`` is a boto3 client on it with the test credentials."""

    def __init__(self, port: int) -> None:
        import boto3
        from botocore.config import Config

        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client("s3", region_name=REGION, endpoint_url=self.endpoint,
                               aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_SECRET,
                               config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
        self._buckets = 0

    def bucket(self, name: str | None = None) -> str:
        """A new empty bucket (unique per call unless named)."""
        self._buckets += 1
        name = name or f"releases-{self._buckets}"
        self.s3.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes | str) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=data.encode() if isinstance(data, str) else data)

    def publish(self, bucket: str, prefix: str, tag: str, files: dict[str, bytes] | None = None) -> None:
        for name, data in (files if files is not None else release_files(tag)).items():
            self.put(bucket, f"{prefix}{tag}/{name}", data)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def enforce_iam(self) -> None:
        """From now on only IAM users' keys work, with their policies (moto's IAM mode)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200


@contextmanager
def moto_server() -> Iterator[Moto]:
    port = free_port()
    with server_process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port):
        yield Moto(port)


# ---------------------------------------------------------------- GCS (gcp-storage-emulator)


class GcsEmulator:
    """A gcp-storage-emulator; ``client`` is a google-cloud-storage client on it (anonymous credentials)."""

    def __init__(self, port: int) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.port = port
        self.host = f"http://127.0.0.1:{port}"
        self.client = storage.Client(project="test-project", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": self.host})
        self._buckets = 0

    def bucket(self) -> str:
        self._buckets += 1
        name = f"releases-{self._buckets}"
        self.client.create_bucket(name)
        return name

    def put(self, bucket: str, key: str, data: bytes | str) -> None:
        self.client.bucket(bucket).blob(key).upload_from_string(data)

    def publish(self, bucket: str, prefix: str, tag: str, files: dict[str, bytes] | None = None) -> None:
        for name, data in (files if files is not None else release_files(tag)).items():
            self.put(bucket, f"{prefix}{tag}/{name}", data)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return [blob.name for blob in self.client.list_blobs(bucket, prefix=prefix)]


@contextmanager
def gcs_emulator() -> Iterator[GcsEmulator]:
    port = free_port()
    with server_process([str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
                         "--in-memory", "--quiet"], port):
        yield GcsEmulator(port)


# ---------------------------------------------------------------- canned answers


Answer = tuple[int, dict[str, str], bytes]


class StandIn:
    """An HTTP server on 127.0.0.1 answering every request with ``answer(method, path)``; records what it saw."""

    def __init__(self, answer: Callable[[str, str], Answer]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stand_in.requests.append((self.command, self.path))
                status, headers, body = stand_in.answer(self.command, self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _reply

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def closed_port_url() -> str:
    """An http:// URL on 127.0.0.1 where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------- end to end, the same for every object store


def start_dewy(tmp_path: Path, port: int, registry: str, env: dict[str, str]) -> Dewy:
    return Dewy(
        ["server", "--registry", registry, "-i", "0.2", "-p", f"127.0.0.1:{port}", "--settle-time", "0.3",
         "--health-path", "/health", "--health-timeout", "5", "--stop-timeout", "5", "-d", str(tmp_path / "app"),
         "-c", (tmp_path / "cache").as_uri(), "--", sys.executable, "current/app.py"],
        cwd=tmp_path, env=env,
    )


def deploy_two_versions(tmp_path: Path, store, bucket: str, prefix: str, registry: str, env: dict[str, str]) -> list[dict]:
    """``dewy server`` on ``registry`` deploys v1.0.0, waits quietly while v1.1.0 is still being uploaded, then
    rolls v1.1.0 out under a client loop with zero failed requests; returns dewy's log records."""
    store.publish(bucket, prefix, "v1.0.0")
    port = free_port()
    dewy = start_dewy(tmp_path, port, registry, env)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        with ClientLoop(port) as client:
            store.put(bucket, f"{prefix}v1.1.0/NOTES.txt", "uploading")  # a young version directory, no artifact yet
            assert "waiting for the upload" in dewy.wait_for("waiting")["msg"]
            store.publish(bucket, prefix, "v1.1.0")
            dewy.wait_for("deployed", version="v1.1.0")
            dewy.wait_for("app-stopped", version="v1.0.0", already=True)
        assert client.failures == []
        assert client.ok > 20
        assert list(dict.fromkeys(client.bodies)) == ["v1.0.0", "v1.1.0"]
        downloads = [e for e in dewy.seen if e.get("event") == "downloaded"]
        assert [e["version"] for e in downloads] == ["v1.0.0", "v1.1.0"] and all(e["verified"] for e in downloads)
        assert not [e for e in dewy.seen if e.get("event") == "deploy-failed"]
        audit = [k.removeprefix(prefix) for k in store.keys(bucket, prefix) if "/shipped_to_" in k]
        assert sorted(k.split("/")[0] for k in audit) == ["v1.0.0", "v1.1.0"], audit
        assert all(re.fullmatch(r"v1\.[01]\.0/shipped_to_.+_server_at_\d{8}T\d{6}\.\d{9}Z\.txt", k) for k in audit)
        assert dewy.stop() == 0
        return dewy.seen
    finally:
        dewy.kill()


def progress_of_download(url: str, work: Path) -> str:
    """The progress line of v1.0.0's download of ``url`` once its bytes are in ("3 MiB of 3 MiB": the size was announced)."""
    fd, path = tempfile.mkstemp(dir=work)
    spool = Spool(Path(path), "app.tar.gz", fd)
    try:
        asyncio.run(ARTIFACTS.load(Url.parse(url)).download(spool))
    finally:
        os.close(fd)
    lines: list[str] = []
    Progress("v1.0.0", lambda line, fields: lines.append(line), quiet=0).sample(spool, None)
    return lines[0]


MEASURE_DOWNLOAD = r"""
import asyncio, sys
from dewy.artifacts import ARTIFACTS
from dewy.urls import Url

def peak_kb():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1])

artifact = ARTIFACTS.load(Url.parse(sys.argv[1]))  # imports the SDK before the baseline
before = peak_kb()
with open(sys.argv[2], "wb") as out:
    asyncio.run(artifact.download(out))
print(peak_kb() - before)
"""


def download_memory_growth(url: str, target: Path, env: dict[str, str]) -> int:
    """Download ``url`` into ``target`` in a fresh process; how much its peak RSS grew meanwhile, in bytes."""
    result = subprocess.run([sys.executable, "-c", MEASURE_DOWNLOAD, url, str(target)], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout) * 1024


def big_file(path: Path, size: int) -> Path:
    block = os.urandom(1 << 20)
    with path.open("wb") as out:
        for _ in range(size >> 20):
            out.write(block)
    return path
