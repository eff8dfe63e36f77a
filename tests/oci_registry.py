"""A real OCI registry for tests, images pushed without podman, and a front door adding token auth and paging.

- :class:`OciRegistry`: Debian's ``docker-registry`` (CNCF Distribution 2.8) on
  127.0.0.1 with a temporary storage directory and a config of our own,
  optionally with htpasswd users (then it asks for HTTP Basic auth).
- :meth:`OciRegistry.push_image` / :meth:`OciRegistry.push_tags`: images
  written with the Distribution API (blob uploads, then one manifest PUT per
  tag), so a test can make a hundred tags in a second. An image is a config
  blob, layer tarballs and a manifest (OCI by default, Docker v2 schema 2 on
  request); :func:`tar_layer` makes a layer from a dict of files, e.g. a
  busybox-static rootfs that podman can run.
- :class:`RegistryFront`: a registry endpoint forwarding pulls to an
  :class:`OciRegistry` and adding, on request, Distribution's token
  authentication (``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
  and a token endpoint at that realm, from distribution/docs/spec/auth/token.md),
  tags list pagination (docker-registry 2.8.2 ignores ``n``), ETags on tags
  lists, token revocation, and chosen answers for the next requests (429 with
  Retry-After, 5xx, garbage).

Usage::

    with OciRegistry(tmp_path) as registry:                    # or users={"alice": "pw"}
        digest = registry.push_image("app", ["v1.0.0", "latest"])
        registry.push_tags("app", [f"v1.0.{i}" for i in range(120)])
        # img://127.0.0.1:PORT/app  ==  f"img://{registry.host}/app"
        with RegistryFront(registry, token_auth=True, users={"bob": "pw"}, page_size=20) as front:
            ...                                                # img://{front.host}/app
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import IN_CI
from tests.harness import free_port

DOCKER_REGISTRY = "docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def ensure_docker_registry() -> str:
    """The docker-registry binary, installed from Debian if missing (skipped if that fails outside CI)."""
    found = shutil.which(DOCKER_REGISTRY)
    if found:
        return found
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", DOCKER_REGISTRY],
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        message = f"docker-registry is not installed and apt-get install failed: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    found = shutil.which(DOCKER_REGISTRY)
    assert found, "apt-get installed docker-registry but it is not on PATH"
    return found


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for an htpasswd file (the only kind docker-registry accepts), cost 4 to keep tests fast.

    Python's bcrypt if installed, else libxcrypt (Debian's libcrypt1) through ctypes.
    """
    try:
        import bcrypt  # type: ignore[import-not-found]
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    except ImportError:
        pass
    libcrypt = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    libcrypt.crypt_gensalt.restype = ctypes.c_char_p
    libcrypt.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    libcrypt.crypt.restype = ctypes.c_char_p
    libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = libcrypt.crypt_gensalt(b"$2b$", 4, None, 0)
    hashed = libcrypt.crypt(password.encode(), salt)
    assert salt and hashed and hashed.startswith(b"$2b$"), "libcrypt cannot make bcrypt hashes"
    return hashed.decode()


def tar_layer(files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> bytes:
    """An uncompressed, reproducible layer tarball (mtime 0, root-owned); directories are implied by paths."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories: set[str] = set()
        for name in sorted(files):
            parts = name.strip("/").split("/")
            for i in range(1, len(parts)):
                directory = "/".join(parts[:i])
                if directory not in directories:
                    directories.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            content = files[name]
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name.strip("/"))
            info.size, info.mode = len(data), (modes or {}).get(name, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """What was pushed: the manifest bytes and digest, under which tags."""

    repository: str
    tags: list[str]
    digest: str
    manifest: bytes
    media_type: str


class OciRegistry:
    """``docker-registry serve`` on 127.0.0.1:PORT with storage under ``workdir``; stopped on exit.

    With ``users``, an htpasswd file is written and the registry demands Basic auth;
    the helper's own client then uses the first user.
    """

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        self.binary = ensure_docker_registry()
        self.dir = Path(workdir) / f"oci-registry-{secrets.token_hex(4)}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.users = dict(users or {})
        self.process: subprocess.Popen | None = None
        self._client: httpx.Client | None = None
        self._blobs: set[tuple[str, str]] = set()  # (repository, digest) known to be there

    @property
    def host(self) -> str:
        """HOST:PORT as written in image references and img:// URLs."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.dir / 'storage'}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self.users:
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text("".join(f"{user}:{bcrypt_hash(pw)}\n" for user, pw in self.users.items()))
            lines += ["auth:", "  htpasswd:", "    realm: dewy-test", f"    path: {htpasswd}"]
        return "\n".join(lines) + "\n"

    def start(self) -> OciRegistry:
        config = self.dir / "config.yml"
        config.write_text(self._config())
        self.log = open(self.dir / "registry.log", "wb")
        self.process = subprocess.Popen([self.binary, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:  # bounded readiness loop: GET /v2/ answers 200 (or 401 with auth) once it serves
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.process.returncode}: "
                                   f"{(self.dir / 'registry.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not answer on /v2/ within 30 s")
            time.sleep(0.05)  # polling interval of a bounded readiness loop

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None:
            self.log.close()
        self.process = None

    def __enter__(self) -> OciRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            auth = next(iter(self.users.items()), None)
            self._client = httpx.Client(base_url=self.url, auth=auth, timeout=30)
        return self._client

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload a blob (monolithic POST-then-PUT) unless the repository has it; its digest."""
        digest = digest_of(data)
        if (repository, digest) in self._blobs or self.client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
            self._blobs.add((repository, digest))
            return digest
        started = self.client.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, f"blob upload start: HTTP {started.status_code} {started.text}"
        location = httpx.URL(self.url).join(started.headers["Location"])
        done = self.client.put(location.copy_merge_params({"digest": digest}), content=data,
                               headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, f"blob upload: HTTP {done.status_code} {done.text}"
        self._blobs.add((repository, digest))
        return digest

    def put_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str) -> str:
        answer = self.client.put(f"/v2/{repository}/manifests/{reference}", content=manifest,
                                 headers={"Content-Type": media_type})
        assert answer.status_code == 201, f"manifest PUT {reference}: HTTP {answer.status_code} {answer.text}"
        digest = digest_of(manifest)
        assert answer.headers.get("Docker-Content-Digest") == digest
        return digest

    def push_image(self, repository: str, tags: Iterable[str], *, layers: list[bytes] | None = None,
                   config: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
                   docker: bool = False) -> Image:
        """Push one image under every tag in ``tags``.

        ``layers`` are uncompressed tarballs (default: one small file); they
        are gzipped here. ``config`` is the image's runtime config (``Cmd``,
        ``Entrypoint``, ``Env``, ``ExposedPorts``, ``Healthcheck``...);
        ``labels`` go in it too. ``docker=True`` pushes a Docker v2 schema 2
        manifest instead of an OCI one.
        """
        tags = list(tags)
        layers = layers if layers is not None else [tar_layer({"hello.txt": "hello\n"})]
        gzipped = [gzip.compress(layer, mtime=0) for layer in layers]
        runtime = dict(config or {})
        if labels:
            runtime["Labels"] = {**runtime.get("Labels", {}), **labels}
        image_config = json.dumps({
            "created": "2024-01-01T00:00:00Z",
            "architecture": GO_ARCH.get(platform.machine().lower(), platform.machine().lower()),
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "tests/oci_registry.py"} for _ in layers],
        }, sort_keys=True).encode()
        config_type, layer_type, manifest_type = ((DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST) if docker
                                                  else (OCI_CONFIG, OCI_LAYER, OCI_MANIFEST))
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": self.push_blob(repository, image_config),
                       "size": len(image_config)},
            "layers": [{"mediaType": layer_type, "digest": self.push_blob(repository, blob), "size": len(blob)}
                       for blob in gzipped],
        }, indent=3).encode()
        digest = digest_of(manifest)
        for tag in tags:
            self.put_manifest(repository, tag, manifest, manifest_type)
        return Image(repository, tags, digest, manifest, manifest_type)

    def push_tags(self, repository: str, tags: Iterable[str], **options: Any) -> dict[str, Image]:
        """One distinct image per tag (its config carries the tag as a label), sharing the layers: cheap."""
        return {tag: self.push_image(repository, [tag], labels={"org.opencontainers.image.version": tag}, **options)
                for tag in tags}

    def delete(self, repository: str, tag: str) -> None:
        """Delete the manifest a tag points at (and so every tag of that digest), as a publisher's rollback."""
        head = self.client.head(f"/v2/{repository}/manifests/{tag}",
                                headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"})
        assert head.status_code == 200, f"manifest HEAD {tag}: HTTP {head.status_code}"
        answer = self.client.delete(f"/v2/{repository}/manifests/{head.headers['Docker-Content-Digest']}")
        assert answer.status_code == 202, f"manifest DELETE {tag}: HTTP {answer.status_code} {answer.text}"

    def tags(self, repository: str) -> list[str]:
        answer = self.client.get(f"/v2/{repository}/tags/list")
        answer.raise_for_status()
        return answer.json().get("tags") or []


@dataclass
class Logged:
    """A request the front door saw; header names in lower case."""

    method: str
    path: str
    status: int
    headers: dict[str, str]


@dataclass
class _Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    times: int = 1


class RegistryFront:
    """A registry endpoint in front of an :class:`OciRegistry`, adding what docker-registry 2.8 lacks.

    - ``token_auth=True``: Distribution token authentication (from
      distribution/docs/spec/auth/token.md). ``GET /token?service=&scope=`` is
      the token server at the challenge's realm; with ``users`` it requires
      HTTP Basic credentials (else 401), otherwise it gives anonymous pull
      tokens. ``/v2/...`` without a valid bearer token for the repository
      answers 401 with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``.
      ``realm_host`` changes the host written in the realm; ``actions`` the
      actions the scope it asks for names (``repository:NAME:ACTIONS``).
    - ``page_size=N``: tags lists paginated as the Distribution spec says
      (lexical order, ``n`` capped at N, ``last``, ``Link: <...>; rel="next"``);
      docker-registry 2.8.2 ignores ``n`` and answers every tag at once.
    - ``etags=True``: tags lists carry an ETag and answer 304 to a matching If-None-Match.
    - ``digest_header=False``: manifests come without Docker-Content-Digest (some registries omit it).
    - :meth:`fail_next`: the next registry requests answer a chosen status (429, 5xx, garbage).

    Everything else is forwarded to the backend (GET and HEAD: pulls only).
    """

    SERVICE = "dewy-test-registry"

    def __init__(self, backend: OciRegistry, *, token_auth: bool = False, users: dict[str, str] | None = None,
                 page_size: int | None = None, etags: bool = False, digest_header: bool = True,
                 token_lifetime: int = 300, realm_host: str = "127.0.0.1", actions: str = "pull") -> None:
        self.backend = backend
        self.token_auth = token_auth
        self.users = dict(users or {})
        self.page_size = page_size
        self.etags = etags
        self.digest_header = digest_header
        self.token_lifetime = token_lifetime
        self.realm_host = realm_host
        self.actions = actions
        self.requests: list[Logged] = []
        self.token_requests: list[Logged] = []
        self.tokens: dict[str, set[str]] = {}  # token -> scopes
        self.faults: list[_Fault] = []
        self.pending: dict[str, Callable[[], None]] = {}  # path -> what to do before answering it (once)
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle meets delayed ACKs (40 ms a request).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                front._handle(self)

            def do_HEAD(self) -> None:
                front._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"http://{self.realm_host}:{self.port}/token"

    def __enter__(self) -> RegistryFront:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None, body: bytes | str = b"") -> None:
        """Answer the next ``times`` registry requests (not token requests) with this status."""
        with self.lock:
            self.faults.append(_Fault(status, dict(headers or {}), body.encode() if isinstance(body, str) else body, times))

    def before(self, path: str, action: Callable[[], None]) -> None:
        """Run ``action`` once before answering the next request for ``path`` (to change the registry mid-deploy)."""
        with self.lock:
            self.pending[path] = action

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    # -- protocol -----------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if request.headers.get_all("Accept"):  # Podman sends one Accept header per media type
            headers["accept"] = ", ".join(request.headers.get_all("Accept"))
        if parts.path == "/token":
            status, body, extra = self._token(parts.query, headers)
            with self.lock:
                self.token_requests.append(Logged(request.command, request.path, status, headers))
        else:
            status, body, extra = self._registry(request.command, request.path, parts.path, headers)
            with self.lock:
                self.requests.append(Logged(request.command, request.path, status, headers))
        request.send_response(status)
        extra.setdefault("Content-Type", "application/json")
        extra["Content-Length"] = extra.get("Content-Length") or str(len(body))
        for name, value in extra.items():
            request.send_header(name, value)
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def _token(self, query: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        params = parse_qs(query)
        if params.get("service") != [self.SERVICE]:
            return 400, _errors("UNSUPPORTED", "unknown service"), {}
        if self.users:
            user = _basic_user(headers.get("authorization", ""), self.users)
            if user is None:
                return 401, _errors("UNAUTHORIZED", "bad credentials"), {"WWW-Authenticate": 'Basic realm="token"'}
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = set(params.get("scope", []))
        issued = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        return 200, json.dumps({"token": token, "access_token": token, "expires_in": self.token_lifetime,
                                "issued_at": issued}).encode(), {}

    def _registry(self, method: str, raw_path: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        with self.lock:
            action = self.pending.pop(path, None)
        if action is not None:
            action()
        repository = _repository_of(path)
        if self.token_auth:
            scope = f"repository:{repository}:{self.actions}" if repository else ""
            token = headers.get("authorization", "").removeprefix("Bearer ")
            with self.lock:
                granted = self.tokens.get(token)
            if granted is None or (scope and scope not in granted):
                challenge = f'Bearer realm="{self.realm}",service="{self.SERVICE}"' + (f',scope="{scope}"' if scope else "")
                return 401, _errors("UNAUTHORIZED", "authentication required"), {"WWW-Authenticate": challenge}
        with self.lock:
            fault = self.faults[0] if self.faults else None
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.pop(0)
        if fault is not None:
            return fault.status, fault.body, dict(fault.headers)
        listing = path.endswith("/tags/list") and method == "GET"
        if listing and self.page_size:
            status, body, kept = self._forward(method, path, headers)
            if status == 200:
                status, body, kept = self._page(path, raw_path, json.loads(body))
        else:
            status, body, kept = self._forward(method, raw_path, headers)
        if listing and self.etags and status == 200:
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            kept = {k: v for k, v in kept.items() if k.lower() not in ("etag", "content-length")} | {"ETag": etag}
            if headers.get("if-none-match") == etag:
                return 304, b"", {"ETag": etag, "Content-Length": "0"}
        return status, body, kept

    def _page(self, path: str, raw_path: str, listing: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        """One page of a tags list per the spec: sorted, after ``last``, at most min(n, page_size) tags."""
        query = parse_qs(urlsplit(raw_path).query)
        assert self.page_size
        n = min(int(query["n"][0]), self.page_size) if "n" in query else self.page_size
        last = query.get("last", [""])[0]
        tags = sorted(t for t in listing.get("tags") or [] if t > last)
        page, more = tags[:n], len(tags) > n
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if more:
            headers["Link"] = f'<{path}?n={n}&last={page[-1]}>; rel="next"'
        return 200, json.dumps({"name": listing.get("name"), "tags": page}).encode(), headers

    def _forward(self, method: str, raw_path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.backend.port, timeout=30)
        try:
            forwarded = {k: v for k, v in headers.items() if k in ("accept",)}
            auth = next(iter(self.backend.users.items()), None)
            if auth:
                forwarded["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            connection.request(method, raw_path, headers=forwarded)
            response = connection.getresponse()
            body = response.read()
            kept = {k: v for k, v in response.getheaders()
                    if k.lower() in ("content-type", "docker-content-digest", "link", "etag", "content-length")
                    and (self.digest_header or k.lower() not in ("docker-content-digest", "etag"))}
        finally:
            connection.close()
        return response.status, body, kept


def _repository_of(path: str) -> str:
    """The repository named by a /v2/<name>/(tags|manifests|blobs)/... path; "" for /v2/."""
    inner = path.removeprefix("/v2/")
    for marker in ("/tags/", "/manifests/", "/blobs/"):
        if marker in inner:
            return inner.split(marker, 1)[0]
    return ""


def _basic_user(header: str, users: dict[str, str]) -> str | None:
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user if users.get(user) == password else None


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
