"""Numbers in settings: durations, sizes, CPU percentages and counts, from flags, config files and URLs.

Every numeric setting passes through :func:`number` or :func:`count`, the one
place that refuses inf, nan, negative values and values too large for what they
end up in (timers, which overflow at a few hundred years; systemd's 64-bit
properties). Each raises ValueError with a reason that does not name the
setting: flags and config files add their own names.
"""

from __future__ import annotations

import math

MAX_SECONDS = 365 * 86400.0  # a year: a longer wait or timeout is a typo, and no timer overflows below it
MAX_BYTES = 1 << 60  # 1 EiB: beyond any disk, inside systemd's 64-bit byte limits
MAX_PERCENT = 100_000.0  # of one CPU: a thousand CPUs
MAX_COUNT = 1 << 31  # releases kept, archive members, tasks, replicas

SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def number(digits: str, *, maximum: float, most: str, what: str, shown: str, zero: bool = False) -> float:
    """``digits`` as a finite number above zero (or zero, if ``zero``) and at most ``maximum`` (``most`` in words);
    errors quote ``shown``, the setting as written (with its unit)."""
    try:
        value = float(digits)
    except (ValueError, OverflowError):
        raise ValueError(f"{shown!r} is not {what}") from None
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{shown!r} is not {what}: it must be a finite number")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{shown!r} must be {'zero or more' if zero else 'greater than zero'}")
    if value > maximum:
        raise ValueError(f"{shown!r} is too large (at most {most})")
    return value


def count(value: int, *, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """A whole number of things within bounds."""
    if value < minimum:
        raise ValueError(f"{value} must be at least {minimum}")
    if value > maximum:
        raise ValueError(f"{value} is too large (at most {maximum})")
    return value


def parse_duration(text: str, *, zero: bool = False) -> float:
    """``30``, ``30s``, ``5m``, ``1h``, ``3d`` or ``250ms`` to seconds; greater than zero unless ``zero``."""
    value = text.strip().lower()
    factor = 1.0
    for suffix in ("ms", "s", "m", "h", "d"):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], DURATION_UNITS[suffix]
            break
    return number(value, maximum=MAX_SECONDS / factor, most="a year", what="a duration (examples: 30, 30s, 5m)",
                  shown=text, zero=zero) * factor


def parse_size(text: str) -> int:
    """``500M``, ``4G``, ``512m``, ``512MiB``, ``512MB``, ``1048576`` to bytes; must be positive.

    The one size grammar of dewy: flags, config files and docker-run options (``-m 512m``). Units are
    binary whichever way they are written (``M``, ``MB`` and ``MiB`` are all 2**20), as docker reads them."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = value[-1:] if value[-1:] in SIZE_UNITS else ""
    digits = value[: len(value) - len(unit)]
    size = int(number(digits, maximum=MAX_BYTES / SIZE_UNITS[unit], most="1 EiB", what="a size (examples: 500M, 4G)",
                      shown=text) * SIZE_UNITS[unit])
    if size <= 0:  # a fraction of a byte
        raise ValueError(f"{text!r} must be greater than zero")
    return size


def parse_percent(text: str) -> float:
    """CPU time as a percentage of one CPU (systemd's CPUQuota=): ``"150%"`` is one and a half CPUs."""
    value = text.strip()
    what = 'a percentage such as "150%"'
    if not value.endswith("%"):
        raise ValueError(f"{text!r} is not {what}")
    return number(value[:-1], maximum=MAX_PERCENT, most=f"{MAX_PERCENT:g}%", what=what, shown=text)
