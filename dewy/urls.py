"""Backend URLs: parsing, query validation and redaction, shared by every plugin kind."""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from dewy.errors import UsageError
from dewy.quantities import parse_duration

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off", ""}
SECRET_KEYS = {"password", "token", "secret", "access_token"}
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
HOST_PORT = re.compile(r"(?:\[[0-9A-Za-z:.%]*\]|[^:@\[\]]*)(?::[0-9]*)?")  # an authority without credentials
# Schemes whose paths hold an "@" of their own (mail recipients, image digests): there, an "@" after a
# well-formed HOST:PORT is part of the path, not the end of a password holding an unencoded "/".
PATH_AT_SCHEMES = {"mail", "smtp", "img"}


@dataclass(frozen=True)
class Url:
    """A parsed backend URL such as ``ghr://owner/repo?pre-release=true``."""

    raw: str
    scheme: str
    netloc: str
    path: str
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str) -> Url:
        try:
            parts = urlsplit(raw)
        except ValueError as exc:
            why = "an unmatched [ or ] (an IPv6 address is written [::1])" if "IPv6" in str(exc) else "it cannot be parsed"
            raise UsageError(f"{redact(raw)!r} is not a valid URL: {why}") from None
        if not parts.scheme or "://" not in raw:
            raise UsageError(f"{redact(raw)!r} is not a URL: expected SCHEME://...")
        if has_credentials(raw) and "@" not in parts.netloc:
            raise UsageError(f"{redact(raw)}: the credentials in this URL hold a character that must be percent-encoded"
                             " (/ as %2F, ? as %3F, # as %23, @ as %40)")
        return cls(raw, parts.scheme.lower(), parts.netloc, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)))

    @property
    def host(self) -> str:
        return urlsplit(self.raw).hostname or ""

    @property
    def port(self) -> int | None:
        try:
            return urlsplit(self.raw).port
        except ValueError:
            raise UsageError(f"{self}: bad port: expected a number from 0 to 65535") from None

    @property
    def username(self) -> str | None:
        return urlsplit(self.raw).username

    @property
    def password(self) -> str | None:
        return urlsplit(self.raw).password

    def check_keys(self, allowed: set[str] | frozenset[str]) -> None:
        """Refuse query keys the backend does not know, suggesting the closest known key."""
        from dewy import upstream

        for key in self.query:
            if key not in allowed and upstream.url_key(self.scheme, key):
                raise UsageError(f"{self}: {key}= is not a key of dewy's {self.scheme}:// URLs: {upstream.url_key(self.scheme, key)}")
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(allowed)) or 'none'}"
                raise UsageError(f"{self}: unknown query key {key!r}{hint}")

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean query option (``pre-release=true``)."""
        if key not in self.query:
            return default
        value = self.query[key].strip().lower()
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        raise UsageError(f"{self}: {key}={self.query[key]!r} is not a boolean (use true or false)")

    def seconds(self, key: str, default: float | None = None) -> float | None:
        """A positive duration query option such as ``ttl=30`` or ``ttl=30s``/``5m``."""
        if key not in self.query:
            return default
        try:
            return parse_duration(self.query[key])
        except ValueError as exc:
            raise UsageError(f"{self}: {key}: {exc}") from None

    def __str__(self) -> str:
        return redact(self.raw)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address: where a plain-text or unauthenticated peer cannot be overheard."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact(raw: str) -> str:
    """``raw`` with any password, secret-looking query value and URL-valued query's password replaced by ``***``.

    Works on the text, not on a successful parse: a URL that does not parse,
    or a password holding an unencoded ``/``, is masked all the same.
    """
    end = _credentials_end(raw)
    if end is not None:
        scheme = SCHEME.match(raw)
        colon = raw.find(":", scheme.end() if scheme else 0, end)
        if colon >= 0:  # user:password@ (a user alone is no secret)
            raw = raw[: colon + 1] + "***" + raw[end:]
            end = colon + 4
    query_start = raw.find("?", end or 0)
    if query_start < 0:
        return raw
    query_end = _first_of(raw, "#", query_start)
    pairs = []
    for pair in raw[query_start + 1:query_end].split("&"):
        key, equals, value = pair.partition("=")
        if key.lower() in SECRET_KEYS and value:
            value = "***"
        elif "://" in unquote_plus(value):  # endpoint=http://KEY:SECRET@host, perhaps percent-encoded
            masked = redact(unquote_plus(value))
            value = value if masked == unquote_plus(value) else masked
        pairs.append(f"{key}{equals}{value}")
    return raw[: query_start + 1] + "&".join(pairs) + raw[query_end:]


def has_credentials(raw: str) -> bool:
    """Whether ``raw`` carries a ``user[:password]@``, however it is written (see :func:`_credentials_end`)."""
    return _credentials_end(raw) is not None


def _credentials_end(raw: str) -> int | None:
    """Where the ``user:password`` of ``raw`` ends (the index of its ``@``), or None if it has none.

    Read as an operator may have written it: a password holding an unencoded ``/``,
    ``?`` or ``#`` ends the host early for a URL parser, so an ``@`` further on
    still ends the credentials if what precedes it has the ``user:`` shape.
    """
    scheme = SCHEME.match(raw)
    start = scheme.end() if scheme else 0
    authority_end = _first_of(raw, "/?#", start)
    authority = raw[start:authority_end]
    if "@" in authority:
        return start + authority.rindex("@")
    if not authority:
        return None
    if HOST_PORT.fullmatch(authority):
        if scheme and scheme[1].lower() in PATH_AT_SCHEMES:
            return None
        at = raw.rfind("@", authority_end, _first_of(raw, "?#", authority_end))
    else:
        at = raw.rfind("@", start)  # no valid host at all: anything before the last "@" may be a password
    return at if at >= 0 and ":" in raw[start:at] else None


def _first_of(text: str, chars: str, start: int) -> int:
    """The index of the first of ``chars`` in ``text`` from ``start``, else its length."""
    found = [i for i in (text.find(c, start) for c in chars) if i >= 0]
    return min(found) if found else len(text)


class Plugins:
    """Backends of one kind (registry, artifact, cache, notifier) by URL scheme, imported on first use.

    Like fsspec's registry: the table names ``module:Class`` so that an unused
    backend (and its SDK) is never imported.
    """

    def __init__(self, kind: str, table: dict[str, str]) -> None:
        self.kind = kind
        self.table = table

    def url(self, raw: str) -> Url:
        url = Url.parse(raw)
        if url.scheme not in self.table:
            from dewy import upstream

            if upstream.scheme(self.kind, url.scheme):
                raise UsageError(f"{redact(raw)}: {upstream.scheme(self.kind, url.scheme)}")
            known = ", ".join(f"{s}://" for s in sorted(self.table)) or "none in this version"
            raise UsageError(f"{redact(raw)}: unknown {self.kind} scheme {url.scheme!r}; supported: {known}")
        return url

    def load(self, url: Url, **options):
        """Import the backend for ``url`` and construct it; the class validates its own URL."""
        module_name, _, class_name = self.table[url.scheme].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(
                f"{url}: the {url.scheme}:// {self.kind} needs the Python package {exc.name!r}, which is not installed"
            ) from None
        return getattr(module, class_name)(url, **options)
