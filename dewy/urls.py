"""Backend URLs: parsing, query validation and redaction, shared by every plugin kind."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from dewy.errors import UsageError

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off", ""}
SECRET_KEYS = {"password", "token", "secret", "access_token"}


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
        parts = urlsplit(raw)
        if not parts.scheme or "://" not in raw:
            raise UsageError(f"{redact(raw)!r} is not a URL: expected SCHEME://...")
        return cls(raw, parts.scheme.lower(), parts.netloc, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)))

    @property
    def host(self) -> str:
        return urlsplit(self.raw).hostname or ""

    @property
    def port(self) -> int | None:
        try:
            return urlsplit(self.raw).port
        except ValueError as exc:
            raise UsageError(f"{self}: bad port: {exc}") from None

    @property
    def username(self) -> str | None:
        return urlsplit(self.raw).username

    @property
    def password(self) -> str | None:
        return urlsplit(self.raw).password

    def check_keys(self, allowed: set[str] | frozenset[str]) -> None:
        """Refuse query keys the backend does not know, suggesting the closest known key."""
        for key in self.query:
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


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``1h`` or ``250ms`` to seconds; must be positive."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    factor = 1.0
    for suffix in ("ms", "s", "m", "h"):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], units[suffix]
            break
    try:
        seconds = float(value) * factor
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (examples: 30, 30s, 5m)") from None
    if not seconds > 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return seconds


def redact(raw: str) -> str:
    """The URL with any password and secret-looking query values replaced by ``***``."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(":" + parts.password + "@", ":***@", 1)
    query = "&".join(
        f"{k}=***" if k.lower() in SECRET_KEYS else (f"{k}={v}" if v or "=" in pair else k)
        for pair in parts.query.split("&") if pair
        for k, _, v in [pair.partition("=")]
    )
    redacted = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if raw.startswith(f"{parts.scheme}://") and not redacted.startswith(f"{parts.scheme}://"):
        redacted = f"{parts.scheme}://" + redacted[len(parts.scheme) + 1:]  # urlunsplit drops an empty authority
    return redacted


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
