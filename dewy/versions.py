"""Versions from release tags: semver or CalVer, eligibility (pre-release, slot, constraint) and the newest.

A registry URL chooses how its tags are read: by default as semantic versions
(``v1.2.3-rc.1+blue``); with ``calver=FORMAT`` (or ``--calver``) as calendar versions in
upstream dewy's format tokens (``YYYY.0M.0D.MICRO``), with the same optional ``v``, pre-release
and build-metadata (slot) parts and the same ordering rules; tags of the other scheme are
ignored. ``constraint=`` (``~1.4``, ``^2``, ``>=1.2,<2``) limits which semver versions may be
deployed, with the range rules of the semver tools (npm, Masterminds).
"""

from __future__ import annotations

import re
from urllib.parse import quote
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import semver

from dewy.errors import UsageError

T = TypeVar("T")
QUERY_KEYS = frozenset({"calver", "constraint"})  # every listing registry accepts these next to its own

CALVER_TOKENS = {  # upstream dewy's specifiers, longest first where one is a prefix of another
    "YYYY": r"(\d{4})", "0Y": r"(\d{2,3})", "YY": r"(\d{1,3})",
    "0M": r"(0[1-9]|1[0-2])", "MM": r"([1-9]|1[0-2])",
    "0W": r"(0[1-9]|[1-4]\d|5[0-3])", "WW": r"([1-9]|[1-4]\d|5[0-3])",
    "0D": r"(0[1-9]|[12]\d|3[01])", "DD": r"([1-9]|[12]\d|3[01])",
    "MICRO": r"(\d+)",
}
SUFFIX = r"(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?"


@dataclass(frozen=True)
class CalVer:
    """A calendar version; ordered by its segments, then as semver orders pre-releases."""

    segments: tuple[int, ...]
    prerelease: str | None
    build: str | None

    def precedence(self) -> tuple:
        return self.segments, _prerelease_key(self.prerelease)

    def __str__(self) -> str:
        return ".".join(map(str, self.segments)) + (f"-{self.prerelease}" if self.prerelease else "") + (
            f"+{self.build}" if self.build else "")

    @classmethod
    def from_text(cls, text: str) -> CalVer:
        """Back from :meth:`__str__` (a shared cache holds versions as text)."""
        match = re.fullmatch(r"(\d+(?:\.\d+)*)" + SUFFIX, text)
        if match is None:
            raise ValueError(f"{text!r} is not a calendar version")
        return cls(tuple(int(n) for n in match[1].split(".")), match[2], match[3])


def _prerelease_key(prerelease: str | None) -> tuple:
    """Semver's rule: a release above its pre-releases; identifiers numeric below alphanumeric, fewer below more."""
    if not prerelease:
        return (1,)
    return (0, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in prerelease.split(".")))


class CalVerFormat:
    def __init__(self, text: str) -> None:
        parts, tokens, rest = [], 0, text
        while rest:
            token = next((t for t in CALVER_TOKENS if rest.startswith(t)), None)
            if token:
                parts.append(CALVER_TOKENS[token])
                tokens += 1
                rest = rest[len(token):]
            else:
                parts.append(re.escape(rest[0]))
                rest = rest[1:]
        if not tokens:
            raise ValueError(f"calver format {text!r} has no specifier (use YYYY, YY, 0Y, MM, 0M, WW, 0W, DD, 0D, MICRO)")
        self.text = text
        self.pattern = re.compile(r"v?" + "".join(parts) + SUFFIX)

    def parse(self, tag: str) -> CalVer | None:
        match = self.pattern.fullmatch(tag)
        if match is None:
            return None
        *segments, prerelease, build = match.groups()
        return CalVer(tuple(int(s) for s in segments), prerelease, build)


def parse_tag(tag: str) -> semver.Version | None:
    """The semver of a tag like ``v1.2.3`` or ``1.2.3-rc.1+blue``; None for anything else."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def same_tag(tag: str, given: str) -> bool:
    """``v1.2.0`` and ``1.2.0`` name the same version."""
    return tag == given or tag.lstrip("vV") == given.lstrip("vV")


def with_calver(registry: str, text: str) -> str:
    """``--calver FORMAT`` as upstream passes it on: the registry URL's ``calver=`` key (ValueError if bad)."""
    CalVerFormat(text)
    if re.search(r"[?&]calver=", registry):
        raise ValueError("the registry URL has calver= already")
    return f"{registry}{'&' if '?' in registry else '?'}calver={quote(text)}"


def version_from_text(text: str) -> semver.Version | CalVer:
    """A version written by ``str()``: semver, else a calendar version."""
    return parse_tag(text) or CalVer.from_text(text)


class Constraint:
    """``~1.4``, ``^2``, ``1.x``, ``>=1.2,<2`` (``,`` or a space: and; ``||``: or) over semver precedence.

    As npm and Masterminds read them, a pre-release matches only a range that names a pre-release of
    the same major.minor.patch: ``<2`` does not admit ``2.0.0-rc.1``.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.alternatives = [self._clauses(part) for part in text.split("||")]

    def _clauses(self, text: str) -> list[tuple[str, semver.Version]]:
        words = [w for w in re.split(r"[,\s]+", text.strip()) if w]
        if not words:
            raise ValueError(f"constraint {self.text!r} has an empty alternative")
        return [c for word in words for c in _comparators(word, self.text)]

    def allows(self, version: semver.Version) -> bool:
        version = version.replace(build=None)
        return any(self._within(version, clauses) for clauses in self.alternatives)

    @staticmethod
    def _within(version: semver.Version, clauses: list[tuple[str, semver.Version]]) -> bool:
        if version.prerelease and not any(b.prerelease and b.replace(prerelease=None) == version.replace(prerelease=None)
                                          for _, b in clauses):
            return False
        checks = {">=": lambda c: c >= 0, ">": lambda c: c > 0, "<": lambda c: c < 0, "<=": lambda c: c <= 0,
                  "=": lambda c: c == 0, "!=": lambda c: c != 0}
        return all(checks[op](version.compare(bound)) for op, bound in clauses)


def _comparators(word: str, whole: str) -> list[tuple[str, semver.Version]]:
    """One range word as (operator, bound) pairs."""
    match = re.fullmatch(r"(\^|~>?|>=|<=|>|<|=|!=)?v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:-([0-9A-Za-z.-]+))?", word)
    if match is None:
        raise ValueError(f"constraint {whole!r}: {word!r} is not a version range (like ~1.4, ^2, >=1.2,<2)")
    op, *numbers, prerelease = match.groups()
    given = [int(n) for n in _until_wildcard(numbers)]
    if not given:
        return [] if op in (None, "=", ">=", "<=") else [("<", semver.Version(0, 0, 0, "0"))]
    low = semver.Version(*given, *[0] * (3 - len(given)), prerelease=prerelease)
    if op in (None, "=") and len(given) == 3:
        return [("=", low)]
    if op == "!=":
        return [("!=", low)]
    if op in (">=", "<", ">", "<=") and len(given) == 3:
        return [(op, low if op != "<" or prerelease else low.replace(prerelease="0"))]
    if op == ">":  # >1.2: above every 1.2.x
        return [(">=", _bump(given, len(given) - 1))]
    if op == "<=":  # <=1.2: up to every 1.2.x
        return [("<", _below(given, len(given) - 1))]
    if op == ">=":
        return [(">=", low)]
    if op == "<":
        return [("<", low.replace(prerelease="0"))]
    if op == "^":  # the leftmost non-zero part stays
        place = next((i for i, n in enumerate(given) if n), len(given) - 1)
        return [(">=", low), ("<", _below(given, place))]
    if op in ("~", "~>"):  # the patch (or, with major only, the minor) may grow
        return [(">=", low), ("<", _below(given, 0 if len(given) == 1 else 1))]
    return [(">=", low), ("<", _below(given, len(given) - 1))]  # 1.2 / 1.2.x: every 1.2.x


def _until_wildcard(numbers: list[str | None]) -> list[str]:
    out = []
    for n in numbers:
        if n is None or not n.isdigit():
            break
        out.append(n)
    return out


def _bump(given: list[int], place: int) -> semver.Version:
    """The lowest release above every version that keeps ``given[:place + 1]``: 1.2 at place 1 -> 1.3.0."""
    parts = given[:place + 1]
    parts[place] += 1
    return semver.Version(*parts, *[0] * (3 - len(parts)))


def _below(given: list[int], place: int) -> semver.Version:
    """An exclusive upper bound below the pre-releases of :func:`_bump` too (``<2`` is ``<2.0.0-0``)."""
    return _bump(given, place).replace(prerelease="0")


@dataclass(frozen=True)
class Selection:
    """How a registry reads its tags and which it may deploy."""

    prerelease: bool = False
    slot: str | None = None
    calver: CalVerFormat | None = None
    constraint: Constraint | None = None

    @classmethod
    def of(cls, url, *, prerelease: bool, slot: str | None) -> Selection:
        """From a registry URL's ``calver=`` and ``constraint=``; UsageError naming the URL if either is bad."""
        try:
            calver = CalVerFormat(url.query["calver"]) if url.query.get("calver") else None
            constraint = Constraint(url.query["constraint"]) if url.query.get("constraint") else None
        except ValueError as exc:
            raise UsageError(f"{url}: {exc}") from None
        if calver and constraint:
            raise UsageError(f"{url}: constraint= applies to semantic versions; with calver= it is not supported")
        return cls(prerelease, slot, calver, constraint)

    def parse(self, tag: str) -> semver.Version | CalVer | None:
        """The tag's version in this registry's scheme; None for a tag of another scheme (ignored)."""
        return self.calver.parse(tag) if self.calver else parse_tag(tag)

    def eligible(self, version: semver.Version | CalVer) -> bool:
        return self._refusal(version) is None

    def refusal(self, tag: str) -> str | None:
        """Why ``tag`` may not be deployed under these rules (a pin names it), in words; None when it may."""
        version = self.parse(tag)
        if version is None:
            return (f"not a calendar version of the form {self.calver.text}" if self.calver
                    else "not a semantic version (like v1.2.3)")
        return self._refusal(version)

    def _refusal(self, version: semver.Version | CalVer) -> str | None:
        if version.prerelease and not self.prerelease:
            return "a pre-release, and pre-releases are skipped without pre-release=true"
        if self.slot is not None and version.build != self.slot:
            return f"not of slot {self.slot!r}"
        if self.constraint is not None and not self.constraint.allows(version):
            return f"outside constraint={self.constraint.text}"
        return None

    def newest(self, items: Iterable[T], tag_of: Callable[[T], str]) -> T | None:
        """The item whose tag is the highest eligible version (build metadata only selects the slot)."""
        best: tuple[object, T] | None = None
        for item in items:
            version = self.parse(tag_of(item))
            if version is None or not self.eligible(version):
                continue
            precedence = version.precedence() if isinstance(version, CalVer) else version.replace(build=None)
            if best is None or precedence > best[0]:
                best = (precedence, item)
        return best[1] if best else None


def newest(items: Iterable[T], tag_of: Callable[[T], str], *, prerelease: bool = False, slot: str | None = None) -> T | None:
    """The item whose tag is the highest eligible semver (build metadata only selects the slot)."""
    return Selection(prerelease, slot).newest(items, tag_of)
