"""Semantic versions from release tags: parsing, eligibility and picking the newest."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import semver

T = TypeVar("T")


def parse_tag(tag: str) -> semver.Version | None:
    """The semver of a tag like ``v1.2.3`` or ``1.2.3-rc.1+blue``; None for anything else."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def eligible(version: semver.Version, *, prerelease: bool, slot: str | None) -> bool:
    if version.prerelease and not prerelease:
        return False
    if slot is not None and version.build != slot:
        return False
    return True


def newest(items: Iterable[T], tag_of: Callable[[T], str], *, prerelease: bool = False, slot: str | None = None) -> T | None:
    """The item whose tag is the highest eligible semver (build metadata only selects the slot)."""
    best: tuple[semver.Version, T] | None = None
    for item in items:
        version = parse_tag(tag_of(item))
        if version is None or not eligible(version, prerelease=prerelease, slot=slot):
            continue
        precedence = version.replace(build=None)
        if best is None or precedence > best[0]:
            best = (precedence, item)
    return best[1] if best else None
