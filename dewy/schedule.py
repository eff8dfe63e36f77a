"""When a new version may be deployed: ``--deploy-window`` and ``--min-release-age``.

Both gates hold back an *update*: a host with nothing deployed yet deploys at once (there is
nothing serving to protect). A held version waits in the state file (``dewy status``,
STATUS=), is logged once when it starts waiting (not every poll), and a wake-up is set
for the moment the gate lifts, so it deploys then rather than at the next interval.

The window is either ``[DAYS] HH:MM-HH:MM [ZONE]`` (``Mon-Fri 09:00-17:00 Europe/Berlin``;
an end before the start runs past midnight; no days: every day) or a cron expression
with an optional zone (``* 9-16 * * 1-5 Europe/Berlin``): open in every minute it
matches. Without a zone, the host's local time, as cron and systemd timers read it.
The age of a release counts from its publish time in the registry; a backend that has
none (OCI registries) counts from when this host first saw the version.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dewy import log
from dewy.state import State, Waiting

if TYPE_CHECKING:
    from dewy.registry import Release

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
TIMES = re.compile(r"(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})")
CRON_FIELDS = 5


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Window(Protocol):
    text: str

    def is_open(self, now: datetime) -> bool:
        """Whether a deploy may start at ``now`` (an aware time)."""

    def opens(self, now: datetime) -> datetime:
        """The next moment after ``now`` the window is open."""


def _zone(name: str | None) -> tzinfo | None:
    """A ZoneInfo by IANA name; None for the host's local time."""
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone (use an IANA name such as Europe/Berlin or UTC)") from None


def _local(now: datetime, zone: tzinfo | None) -> datetime:
    return now.astimezone(zone) if zone else now.astimezone().replace(tzinfo=None)


def _aware(local: datetime, zone: tzinfo | None) -> datetime:
    """A wall-clock time of ``zone`` (naive: the host's local time) as an aware time."""
    return local.replace(tzinfo=zone) if zone else local.astimezone()


@dataclass(frozen=True)
class DayTimeWindow:
    """``Mon-Fri 09:00-17:00 Europe/Berlin``: on these days, from the start to the end (past midnight if earlier)."""

    text: str
    days: frozenset[int]  # 0 = Monday; the day a window starts on
    start: int  # minutes after midnight
    end: int  # minutes after midnight, up to 24:00
    zone: tzinfo | None

    def is_open(self, now: datetime) -> bool:
        local = _local(now, self.zone)
        minute, day = local.hour * 60 + local.minute, local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or ((day - 1) % 7 in self.days and minute < self.end)

    def opens(self, now: datetime) -> datetime:
        local = _local(now, self.zone)
        for ahead in range(8):
            date = local.date() + timedelta(days=ahead)
            if date.weekday() in self.days:
                begins = _aware(datetime.combine(date, time(self.start // 60, self.start % 60)), self.zone)
                if begins > now:
                    return begins
        raise AssertionError("a window with days opens within a week")


@dataclass(frozen=True)
class CronWindow:
    """A cron expression (cronsim): open in every minute it matches."""

    text: str
    expression: str
    zone: tzinfo | None

    def is_open(self, now: datetime) -> bool:
        minute = _local(now, self.zone).replace(second=0, microsecond=0)
        return self._after(minute - timedelta(minutes=1)) == minute

    def opens(self, now: datetime) -> datetime:
        return _aware(self._after(_local(now, self.zone)), self.zone)

    def _after(self, local: datetime) -> datetime:
        from cronsim import CronSim

        return next(CronSim(self.expression, local))


def _days(text: str) -> frozenset[int]:
    """``Mon-Fri``, ``Sat,Sun``, ``Fri-Mon`` (wrapping) to weekday numbers."""
    def day(word: str) -> int | None:
        return next((i for i, name in enumerate(DAYS) if len(word) >= 3 and name.startswith(word)), None)

    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.lower().partition("-")
        begin, stop = day(first), day(last) if last else day(first)
        if begin is None or stop is None:
            raise ValueError(f"{part!r} is not a day or a range of days (Mon, Tue, ..., Sun; Mon-Fri)")
        days.update((begin + i) % 7 for i in range((stop - begin) % 7 + 1))
    return frozenset(days)


def parse_window(spec: str) -> Window:
    """A window from ``--deploy-window``; ValueError saying what is wrong and how it is written."""
    words = spec.split()
    text = " ".join(words)
    times = next((i for i, word in enumerate(words) if TIMES.fullmatch(word)), None)
    if times is not None:
        if times > 1 or len(words) > times + 2:
            raise ValueError(f"{text!r}: expected [DAYS] HH:MM-HH:MM [ZONE], e.g. Mon-Fri 09:00-17:00 Europe/Berlin")
        h1, m1, h2, m2 = (int(g) for g in TIMES.fullmatch(words[times]).groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start == end:
            raise ValueError(f"{words[times]!r} is not a time range such as 09:00-17:00 (or 22:00-06:00)")
        days = _days(words[0]) if times == 1 else frozenset(range(7))
        return DayTimeWindow(text, days, start, end, _zone(words[times + 1] if len(words) > times + 1 else None))
    if len(words) not in (CRON_FIELDS, CRON_FIELDS + 1):
        raise ValueError(f"{text!r} is neither [DAYS] HH:MM-HH:MM [ZONE] (Mon-Fri 09:00-17:00 Europe/Berlin) "
                         "nor a cron expression with five fields and an optional zone (* 9-16 * * 1-5 Europe/Berlin)")
    from cronsim import CronSim, CronSimError

    expression = " ".join(words[:CRON_FIELDS])
    zone = _zone(words[CRON_FIELDS] if len(words) > CRON_FIELDS else None)
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"{text!r}: cron expression: {exc}") from None
    return CronWindow(text, expression, zone)


@dataclass(frozen=True)
class Hold:
    gate: str  # "min-release-age" | "deploy-window": a hold is logged when its version or gate changes
    reason: str
    until: datetime


class Schedule:
    """The gates of one daemon; ``poll_now`` is set when a held version's gate lifts."""

    def __init__(self, window: Window | None, min_age: float, poll_now: asyncio.Event,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.window = window
        self.min_age = min_age
        self.poll_now = poll_now
        self.clock = clock
        self._wake: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, window: str | None, min_age: float, poll_now: asyncio.Event) -> Schedule:
        return cls(parse_window(window) if window else None, min_age, poll_now)

    def holds(self, release: Release, state: State) -> bool:
        """Whether ``release`` must wait; records (and logs, once) that it does, or that it no longer waits."""
        now = self.clock()
        waiting = state.waiting if state.waiting and state.waiting.key == release.cache_key else None
        seen = datetime.fromisoformat(waiting.seen) if waiting else now
        hold = self._hold(release, now, seen) if state.current else None
        if hold is None:
            self.settled(state)
            return False
        if waiting is None or waiting.gate != hold.gate:
            log.info("deploy-waiting", f"{release.tag} waits: {hold.reason}", version=release.tag, gate=hold.gate,
                     until=hold.until.isoformat())
        else:
            log.debug("deploy-waiting", f"{release.tag} still waits: {hold.reason}", version=release.tag)
        state.waiting = Waiting(release.tag, release.cache_key, hold.gate, f"{release.tag} waits: {hold.reason}",
                                hold.until.isoformat(), seen.isoformat())
        if state.waiting != waiting:
            state.save()
        self._wake_at(hold.until - now)
        return True

    def settled(self, state: State) -> None:
        """Nothing waits (deployed, or no longer the newest): forget the hold."""
        if self._wake:
            self._wake.cancel()
            self._wake = None
        if state.waiting:
            state.waiting = None
            state.save()

    def _hold(self, release: Release, now: datetime, seen: datetime) -> Hold | None:
        if self.min_age:
            published = release.created_at or seen
            ready = published + timedelta(seconds=self.min_age)
            if ready > now:
                since = "published" if release.created_at else "first seen here"
                return Hold("min-release-age", f"{since} {published:%Y-%m-%d %H:%M} UTC, deployed once "
                            f"{_duration(self.min_age)} old (--min-release-age), at {ready:%Y-%m-%d %H:%M} UTC", ready)
        if self.window and not self.window.is_open(now):
            opens = self.window.opens(now)
            return Hold("deploy-window", f"outside the deploy window {self.window.text}; it opens "
                        f"{opens:%Y-%m-%d %H:%M %Z}".rstrip(), opens)
        return None

    def _wake_at(self, delay: timedelta) -> None:
        if self._wake:
            self._wake.cancel()
        self._wake = asyncio.get_running_loop().call_later(max(delay.total_seconds(), 0.0), self.poll_now.set)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
