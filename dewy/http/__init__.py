"""dewy's one HTTP layer, on httpx: every HTTP backend (``ghr://``, ``img://``, ``consul://``) goes through it.

What every backend needs and is easy to get subtly wrong lives here once:

- :class:`Session`: the client, made on first use in the event loop that uses it
  (a backend built only to check its URL holds no connection), with dewy's user
  agent and timeouts, and redirects that never carry credentials to another
  origin (a release asset redirects to a storage host; the token must stay behind).
- :class:`RateLimited` and :func:`retry_after`: a refusal for a rate limit becomes
  one error carrying how long to wait, which the daemon honours.
- :class:`Conditional`: answers kept with their validators (ETag, Last-Modified),
  so a poll of an unchanged resource is a 304 and reuses what was read.
- :mod:`dewy.http.bearer`: registry token authentication as an ``httpx.Auth``.

Backends keep the wording of their errors: they know what to tell the operator.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import httpx

from dewy import __version__, log
from dewy.errors import ArtifactError, RegistryError
from dewy.urls import redact

TIMEOUT = httpx.Timeout(30.0, connect=10.0)  # per network operation: a silent server
USER_AGENT = f"dewy/{__version__}"
MAX_REDIRECTS = 5
RATE_LIMIT_WAIT = 60.0  # a rate-limit answer that says nothing readable about when to come back
MAX_RETRY_AFTER = 3600.0  # a wait longer than this is a broken header, not advice
CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie")
READ_SIZE = 1 << 20  # one read of a response from the socket


def _larger_reads() -> None:
    """httpcore reads 64 KiB at a time, and its Python work per read halves a large download's speed (a 1 GiB
    release asset on loopback: 1.8 s, 0.9-1.3 s in 1 MiB reads); it has no option for it, only this attribute."""
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:  # another httpcore layout: its own read size
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
        AsyncHTTP11Connection.READ_NUM_BYTES = READ_SIZE


_larger_reads()
T = TypeVar("T")


class RateLimited(RegistryError, ArtifactError):
    """A server refused because of a rate limit; the daemon waits ``retry_after`` seconds before trying again.

    Both a RegistryError and an ArtifactError: polls and downloads spend the same quota.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def retry_after(headers: httpx.Headers, default: float = RATE_LIMIT_WAIT) -> float:
    """Seconds to wait before asking again, from a refusal's headers; ``default`` when they do not say.

    ``Retry-After`` in seconds or as an HTTP date, else ``X-RateLimit-Reset`` (epoch
    seconds, as GitHub sends) when ``X-RateLimit-Remaining`` is 0. Dates are measured
    against the server's own ``Date`` header, so a skewed host clock neither hammers
    the server nor waits for hours. The result lies between 1 s and MAX_RETRY_AFTER.
    """
    try:
        now = parsedate_to_datetime(headers["Date"]).timestamp() if "Date" in headers else time.time()
    except (TypeError, ValueError, IndexError):
        now = time.time()
    value = headers.get("Retry-After", "").strip()
    try:
        if value:
            try:
                wait = float(value)
            except ValueError:
                wait = parsedate_to_datetime(value).timestamp() - now
        elif headers.get("X-RateLimit-Remaining") == "0" and "X-RateLimit-Reset" in headers:
            wait = float(headers["X-RateLimit-Reset"]) - now
        else:
            return default
    except (TypeError, ValueError, IndexError, OverflowError):
        return default
    return min(max(wait, 1.0), MAX_RETRY_AFTER) if math.isfinite(wait) else default


def network_failure(exc: httpx.HTTPError, method: str, url: str | httpx.URL,
                    show: Callable[[httpx.URL], str] = lambda url: redact(str(url))) -> str:
    """``METHOD URL: Kind: what it says`` for a network failure (DNS, connection, TLS, timeout, redirects), on one line.

    It names the request that failed, which may be a redirect's or a token
    request rather than the one asked for, by the host name it was meant for;
    ``show`` writes the URL for a message (the default redacts credentials).
    """
    try:
        request: httpx.Request | None = exc.request
    except RuntimeError:  # an error raised before any request was made
        request = None
    if request is not None:
        method, url = request.method, request.url
        host = request.headers.get("Host")  # sent to a checked address: name the host, not the address
        if host and host != url.netloc.decode("ascii"):
            url = url.copy_with(netloc=host.encode("ascii"))
    return f"{method} {show(httpx.URL(url))}: {failure_detail(exc)}"


def failure_detail(exc: httpx.HTTPError) -> str:
    """What an httpx failure says, with its kind, on one line."""
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(detail.split())


def json_of(response: httpx.Response, hint: str) -> Any:
    """The JSON body of a 200 answer; ValueError saying what the answer is instead (the caller says where).

    ``hint`` says what a body that is not JSON usually means for this service.
    """
    if response.status_code != 200:
        raise ValueError(f"unexpected HTTP {response.status_code} {response.reason_phrase}".rstrip())
    try:
        return response.json()
    except ValueError:
        raise ValueError(f"the answer is not JSON ({hint})") from None


def tls_context(certificates: Iterable[Path], where: str) -> ssl.SSLContext:
    """The system CA store plus ``certificates`` (a private registry's CA); an unreadable one is skipped with a warning.

    The warning's event stays ``registry-ca``, the name operators filter on: registries are the ones with their own CAs.
    """
    context = ssl.create_default_context()
    for cert in certificates:
        try:
            context.load_verify_locations(cert)
        except (OSError, ssl.SSLError) as exc:
            log.warning("registry-ca", f"{where}: ignoring CA certificate {cert}: {exc}")
    return context


class Session:
    """One httpx client for one backend, made on first use in the running event loop.

    ``verify`` is httpx's (True: its CA bundle), or a function making the TLS context
    when the client is made (reading CA files is no work for a constructor).
    Redirects are followed here, not by httpx, so that the rule for credentials is
    dewy's: see :meth:`send`.
    """

    def __init__(self, *, auth: httpx.Auth | None = None, verify: bool | Callable[[], ssl.SSLContext] = True,
                 timeout: httpx.Timeout = TIMEOUT, headers: dict[str, str] | None = None, base_url: str = "",
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.auth = auth
        self._verify = verify
        self._options: dict[str, Any] = {"timeout": timeout, "base_url": base_url, "transport": transport,
                                         "headers": {"User-Agent": USER_AGENT, **(headers or {})}}
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        """Whether a client exists (it holds a connection pool)."""
        return self._client is not None

    @property
    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client belongs to the loop it was made in
            verify = self._verify() if callable(self._verify) else self._verify
            self._client = httpx.AsyncClient(auth=self.auth, verify=verify, follow_redirects=False, **self._options)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if self._loop is asyncio.get_running_loop():
                await client.aclose()

    async def send(self, method: str, url: str | httpx.URL, *, headers: dict[str, str] | None = None,
                   content: bytes | None = None, params: dict[str, str] | None = None, stream: bool = False,
                   follow: bool = True, credentials: Literal["same-origin", "never"] = "same-origin") -> httpx.Response:
        """One request, following up to MAX_REDIRECTS redirects of a GET or HEAD.

        A redirect keeps the credentials (the Authorization header, the session's
        auth) only while it stays on the scheme, host and port they were sent to;
        once dropped they stay dropped. With ``credentials="never"`` no redirect
        keeps them (a presigned URL refuses any Authorization, wherever it lives).
        Too many redirects raise httpx.TooManyRedirects, an httpx.HTTPError like
        any network failure.
        """
        request = self.client.build_request(method, url, headers=headers, content=content, params=params)
        origin = (request.url.scheme, request.url.host, request.url.port)
        keep = True
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.client.send(request, stream=stream, auth=httpx.USE_CLIENT_DEFAULT if keep else None)
            if not (follow and response.has_redirect_location and method in ("GET", "HEAD")):
                return response
            await response.aclose()
            target = request.url.join(response.headers["Location"])
            keep = keep and credentials == "same-origin" and (target.scheme, target.host, target.port) == origin
            dropped = {"host", "content-length", *([] if keep else [h.lower() for h in CREDENTIAL_HEADERS])}
            request = self.client.build_request(
                method, target, headers={k: v for k, v in request.headers.items() if k.lower() not in dropped})
        raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects", request=request)


class Conditional(Generic[T]):
    """What 200 answers said, per URL, with their validators: ask again conditionally, reuse the value on 304.

    A 304 costs nothing against GitHub's rate limit and little anywhere else,
    and the value is not parsed again.
    """

    def __init__(self) -> None:
        self._kept: dict[str, tuple[dict[str, str], T]] = {}

    def validators(self, url: str) -> dict[str, str]:
        """The headers making a request for ``url`` conditional (none before a 200 with validators)."""
        kept = self._kept.get(url)
        return dict(kept[0]) if kept else {}

    def answer(self, url: str, response: httpx.Response, read: Callable[[httpx.Response], T]) -> T:
        """The kept value on a 304, else ``read(response)``, kept with the answer's validators."""
        kept = self._kept.get(url)
        if response.status_code == 304 and kept is not None:
            return kept[1]
        value = read(response)
        validators = {header: response.headers[source]
                      for header, source in (("If-None-Match", "ETag"), ("If-Modified-Since", "Last-Modified"))
                      if source in response.headers}
        if validators:
            self._kept[url] = (validators, value)
        else:
            self._kept.pop(url, None)
        return value
