"""--deploy-window and --min-release-age: the grammar, and an in-process daemon holding an update on a fake clock."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dewy.daemon import Daemon
from dewy.host import PlainProcess
from dewy.registry import Release
from dewy.schedule import Schedule, parse_window
from dewy.state import Deployed, State
from dewy.status import render_status, status
from tests.test_daemon import settings
from tests.conftest import publish

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone=BERLIN) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


@pytest.mark.parametrize("spec", ["Mon-Fri 09:00-17:00 Europe/Berlin", "* 9-16 * * 1-5 Europe/Berlin"])
def test_both_forms_of_an_office_hours_window(spec) -> None:
    window = parse_window(spec)
    assert window.is_open(at("2026-12-01T09:00"))  # a Tuesday
    assert window.is_open(at("2026-12-01T16:59:59"))
    assert not window.is_open(at("2026-12-01T17:00"))
    assert not window.is_open(at("2026-12-01T08:59"))
    assert not window.is_open(at("2026-12-05T12:00"))  # Saturday
    assert window.is_open(at("2026-12-01T08:30", timezone.utc))  # 09:30 in Berlin
    assert window.opens(at("2026-12-04T18:00")) == at("2026-12-07T09:00")  # Friday evening: Monday
    assert window.opens(at("2026-12-01T07:00")) == at("2026-12-01T09:00")


def test_days_as_lists_ranges_and_full_names() -> None:
    assert parse_window("Sat,Sun 10:00-12:00").days == {5, 6}
    assert parse_window("Monday-Wednesday,Friday 10:00-12:00").days == {0, 1, 2, 4}
    assert parse_window("10:00-12:00").days == set(range(7))


def test_a_window_past_midnight_belongs_to_the_day_it_starts_on() -> None:
    window = parse_window("Fri-Sun 22:00-06:00 UTC")
    assert window.is_open(at("2026-12-04T23:00", timezone.utc))  # Friday night
    assert window.is_open(at("2026-12-07T05:59", timezone.utc))  # Sunday night, into Monday
    assert not window.is_open(at("2026-12-08T05:00", timezone.utc))  # Monday night, into Tuesday: no
    assert window.opens(at("2026-12-01T12:00", timezone.utc)) == at("2026-12-04T22:00", timezone.utc)


def test_a_window_follows_the_zone_across_a_dst_change() -> None:
    window = parse_window("09:00-10:00 Europe/Berlin")  # every day
    assert window.opens(at("2026-03-28T12:00")) == datetime(2026, 3, 29, 7, 0, tzinfo=timezone.utc)  # CEST: UTC+2
    assert window.opens(at("2026-03-27T12:00")) == datetime(2026, 3, 28, 8, 0, tzinfo=timezone.utc)  # CET: UTC+1


@pytest.mark.parametrize("spec, error", [
    ("Mon-Fry 09:00-17:00", "'Mon-Fry' is not a day"),
    ("Monx 09:00-17:00", "'Monx' is not a day"),
    ("Mon-Fri 09:00-25:00", "is not a time range"),
    ("Mon-Fri 09:00-09:00", "is not a time range"),
    ("09:00-17:00 Mars/Olympus", "'Mars/Olympus' is not a time zone"),
    ("office hours", "is neither [DAYS] HH:MM-HH:MM [ZONE]"),
    ("* 25 * * *", "cron expression"),
])
def test_a_bad_window_says_what_is_wrong(spec, error) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_window(spec)
    assert error in str(caught.value)


def test_flags_refuse_a_bad_window_with_exit_2(tmp_path) -> None:
    from dewy.cli import main

    assert main(["assets", "-r", tmp_path.as_uri(), "--deploy-window", "Mon-Fry 09:00-17:00"]) == 2
    assert main(["assets", "-r", tmp_path.as_uri(), "--min-release-age", "soon"]) == 2


# -- the gates in a daemon's cycle (real file:// registry, assets mode) --------------------------------


def daemon_at(tmp_path: Path, now: list[datetime], **overrides) -> Daemon:
    daemon = Daemon.from_settings(settings(tmp_path, **overrides), PlainProcess())
    daemon.schedule.clock = lambda: now[0]
    return daemon


def site(tag: str) -> dict[str, str]:
    return {"index.html": tag}


def test_outside_the_window_an_update_waits_logged_once_and_shown_then_deploys_when_it_opens(tmp_path, caplog) -> None:
    now = [at("2026-12-04T18:00")]  # Friday evening

    async def main() -> None:
        daemon = daemon_at(tmp_path, now, deploy_window="Mon-Fri 09:00-17:00 Europe/Berlin")
        publish(tmp_path / "registry", "v1.0.0", site("v1.0.0"))
        await daemon.cycle()
        assert daemon.state.current.tag == "v1.0.0", "a host with nothing deployed is not held"
        publish(tmp_path / "registry", "v1.1.0", site("v1.1.0"))
        logging.getLogger("dewy").propagate = True
        with caplog.at_level(logging.INFO, logger="dewy"):
            for _ in range(3):
                await daemon.cycle()
        assert daemon.state.current.tag == "v1.0.0"
        waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("v1.1.0 waits")]
        assert waits == ["v1.1.0 waits: outside the deploy window Mon-Fri 09:00-17:00 Europe/Berlin; "
                         "it opens 2026-12-07 09:00 CET"], "logged once, not every poll"
        assert "v1.1.0 waits: outside the deploy window" in daemon.status()
        shown = status(None, daemon.settings.dir)
        assert shown["waiting"]["version"] == "v1.1.0" and shown["waiting"]["until"] == "2026-12-07T09:00:00+01:00"
        assert "waiting:      v1.1.0 waits: outside the deploy window" in render_status(shown)
        now[0] = at("2026-12-07T09:00:05")
        await daemon.cycle()
        assert daemon.state.current.tag == "v1.1.0"
        assert daemon.state.waiting is None and status(None, daemon.settings.dir)["waiting"] is None
        await daemon._shut_down(stop_app=True)

    asyncio.run(main())


def test_the_gate_lifting_wakes_the_daemon_instead_of_waiting_for_the_interval(tmp_path) -> None:
    now = [at("2026-12-01T08:59:59.800")]

    async def main() -> None:
        daemon = daemon_at(tmp_path, now, deploy_window="Mon-Fri 09:00-17:00 Europe/Berlin")
        publish(tmp_path / "registry", "v1.0.0", site("v1.0.0"))
        await daemon.cycle()
        publish(tmp_path / "registry", "v1.1.0", site("v1.1.0"))
        await daemon.cycle()
        assert daemon.state.waiting.gate == "deploy-window"
        await asyncio.wait_for(daemon.poll_now.wait(), 5)  # 0.2 s to the window's opening, interval 10 s
        await daemon._shut_down(stop_app=True)

    asyncio.run(main())


def test_a_release_younger_than_min_release_age_waits_from_its_publish_time(tmp_path) -> None:
    async def main() -> None:
        published = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
        now = [published]
        daemon = daemon_at(tmp_path, now, min_release_age=3600.0)
        publish(tmp_path / "registry", "v1.0.0", site("v1.0.0"))
        await daemon.cycle()
        directory = publish(tmp_path / "registry", "v1.1.0", site("v1.1.0")).parent
        os.utime(directory, (published.timestamp(), published.timestamp()))  # the file:// publish time
        now[0] = published + timedelta(minutes=59)
        await daemon.cycle()
        assert daemon.state.current.tag == "v1.0.0"
        assert daemon.state.waiting.reason == ("v1.1.0 waits: published 2026-12-01 12:00 UTC, deployed once 60m old "
                                               "(--min-release-age), at 2026-12-01 13:00 UTC")
        now[0] = published + timedelta(minutes=61)
        await daemon.cycle()
        assert daemon.state.current.tag == "v1.1.0"
        await daemon._shut_down(stop_app=True)

    asyncio.run(main())


def test_without_a_publish_time_the_age_counts_from_first_seen_and_survives_a_restart(tmp_path) -> None:
    """OCI registries give no publish time: the hold counts from when this host first saw the version."""
    path = tmp_path / "state.json"
    release = Release("v2.0.0", None, "img/app:v2.0.0", "img://img/app@sha256:00", created_at=None)

    async def main() -> None:
        first = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
        state = State(path, current=Deployed("v1.0.0", "k", "img/app:v1.0.0", first.isoformat()))
        gate = Schedule(None, 1800.0, asyncio.Event(), clock=lambda: first)
        assert gate.holds(release, state)
        later = Schedule(None, 1800.0, asyncio.Event(), clock=lambda: first + timedelta(minutes=20))
        restarted = State.load(path)
        assert later.holds(release, restarted), "a restart does not make the version older"
        assert "first seen here 2026-12-01 12:00 UTC" in restarted.waiting.reason
        done = Schedule(None, 1800.0, asyncio.Event(), clock=lambda: first + timedelta(minutes=31))
        assert not done.holds(release, restarted) and State.load(path).waiting is None

    asyncio.run(main())
