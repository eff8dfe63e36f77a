"""What upstream dewy (Go, 2.x) users write that dewy spells otherwise: the line telling them what to use instead.

Everything else upstream accepts, dewy accepts as it is (the README's migration table).
These few are refused, each with its replacement, where the generic "unknown query key"
or "unknown scheme" would leave an upstream user guessing.
"""

from __future__ import annotations

SHARED_CACHE = ("dewy shares state across a fleet through redis://HOST[:PORT][/DB]?ttl=SECONDS or "
                "consul://HOST:PORT?ttl=SECONDS (ttl= also shares the registry's answers, as upstream's registry-ttl=)")

#: (scheme, query key) -> what to write instead
URL_KEYS: dict[tuple[str, str], str] = {
    ("s3", "region"): "the region is the URL's first part: s3://REGION/BUCKET/PREFIX",
    **{(scheme, "to"): "the recipient is the URL's path: mail://HOST:PORT/RECIPIENT" for scheme in ("mail", "smtp")},
    **{(scheme, key): "the SMTP server is the URL's host and port: mail://HOST:PORT/RECIPIENT"
       for scheme in ("mail", "smtp") for key in ("host", "port")},
    **{(scheme, "registry-ttl"): f"upstream's registry-ttl= has no use on a local cache; {SHARED_CACHE}"
       for scheme in ("file", "memory")},
    **{(scheme, "registry-ttl"): "write ttl=SECONDS (the same: one host asks the registry per ttl)"
       for scheme in ("redis", "rediss", "consul")},
}

#: (kind, scheme) -> what to use instead
SCHEMES: dict[tuple[str, str], str] = {
    ("cache", "s3"): f"upstream's s3:// cache: {SHARED_CACHE}; each host downloads the artifacts from the registry",
    ("cache", "gs"): f"upstream's gs:// cache: {SHARED_CACHE}; each host downloads the artifacts from the registry",
}


def url_key(scheme: str, key: str) -> str | None:
    return URL_KEYS.get((scheme, key))


def scheme(kind: str, name: str) -> str | None:
    return SCHEMES.get((kind, name))
