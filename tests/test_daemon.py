"""Daemon pieces that need no process: backoff and where the cache lives."""

from __future__ import annotations

import logging
import os

from dewy.daemon import MAX_BACKOFF, Backoff
from dewy.store import default_cache_dir


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    backoff = Backoff(interval=10)
    assert backoff.next_delay() == 10
    delays = []
    for failures in range(1, 10):
        backoff.failures = failures
        delays.append(backoff.next_delay())
    assert 8 <= delays[0] <= 12
    assert 16 <= delays[1] <= 24
    assert max(delays) <= MAX_BACKOFF * 1.2
    assert len({round(d, 6) for d in delays[-3:]}) > 1, "jitter spreads a fleet's retries"
    backoff.failures = 1
    assert backoff.next_delay(retry_after=900) == 900


def test_cache_dir_from_env_then_working_dir_then_temp(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("DEWY_CACHEDIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("DEWY_CACHEDIR")
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / ".dewy" / "cache"
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / ".dewy").write_text("not a directory")  # mkdir fails even for root
    monkeypatch.chdir(readonly)
    logging.getLogger("dewy").propagate = True
    with caplog.at_level(logging.WARNING, logger="dewy"):
        fallback = default_cache_dir()
    assert fallback.is_dir() and not str(fallback).startswith(str(readonly))
    assert "set DEWY_CACHEDIR" in caplog.text
    os.rmdir(fallback)
