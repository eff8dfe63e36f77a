"""Faults injected around a real ``dewy server`` (tests/faultmatrix.py): the app serves throughout (a client loop
counts every failed request), nothing is lost or left half-done, and dewy recovers by itself once the fault clears.

The disk faults mount a small tmpfs (root). An I/O error from a device-mapper ``error`` target is not
among them: this kernel has no device-mapper, and a test that skips is a failure in CI.
"""

from __future__ import annotations

import os
import re

import pytest

from dewy.daemon import MAX_BACKOFF
from dewy.faults import DiskError
from dewy.notifiers import ERROR_LIMIT
from dewy.state import State
from tests import faultmatrix
from tests.faultinject import HANG, TRICKLE, TinyFs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def assert_one_line_each(errors: list[dict]) -> None:
    """Every error dewy logged is one line, none a traceback or an internal error."""
    assert errors, "dewy logged no error for the fault"
    for record in errors:
        assert record.get("event") not in ("non-json", "internal-error"), record
        assert "\n" not in record["msg"] and "Traceback" not in record["msg"], record


def assert_survived(outcome: faultmatrix.Outcome) -> None:
    assert outcome.failed == [], f"{len(outcome.failed)} of {outcome.requests} requests failed: {outcome.failed[:5]}"
    assert outcome.requests > 10
    assert outcome.kept_serving, "the old version did not keep serving while the fault lasted"
    assert outcome.recovered_in is not None
    assert outcome.leftovers == []


@needs_root
@pytest.mark.parametrize("fault, during, phrase", [
    (faultmatrix.disk_full, "download", "No space left on device"),
    (faultmatrix.disk_full, "extraction", "No space left on device"),
    (faultmatrix.read_only_during_deploy, "download", "Read-only file system"),
    (faultmatrix.read_only_during_deploy, "switch", "Read-only file system"),
], ids=["disk-full-during-download", "disk-full-during-extraction", "read-only-for-download", "read-only-for-switch"])
def test_a_disk_fault_during_a_deploy_is_one_line_and_recovered_when_it_clears(tmp_path, fault, phrase, during) -> None:
    outcome = fault(tmp_path, during)
    assert_survived(outcome)
    assert_one_line_each(outcome.errors)
    failed = next(r for r in outcome.errors if r["event"] == "deploy-failed")
    assert str(tmp_path / "disk") in failed["msg"] and phrase in failed["msg"], failed["msg"]


@needs_root
def test_the_state_file_on_a_read_only_disk_is_one_error_naming_it_and_the_old_file_stays(tmp_path) -> None:
    with TinyFs(tmp_path / "site", 1 << 20) as disk:
        state = State(disk.path / ".dewy" / "state.json", last_error="before")
        state.save()
        disk.remount("ro")
        state.last_error = "after"
        with pytest.raises(DiskError) as caught:
            state.save()
        assert str(caught.value) == (f"cannot write the state file in {disk.path / '.dewy'}: Read-only file system; the "
                                     "filesystem is read-only: remount it read-write (dewy retries, the running version keeps serving)")
        assert State.load(state.path).last_error == "before"
        disk.remount("rw")
        state.save()
        assert State.load(state.path).last_error == "after" and os.listdir(disk.path / ".dewy") == ["state.json"]


@pytest.mark.parametrize("mode", [HANG, TRICKLE])
def test_a_registry_that_stops_answering_is_a_timeout_and_recovered_when_it_answers(tmp_path, mode) -> None:
    outcome = faultmatrix.registry_unresponsive(tmp_path, mode)
    assert_survived(outcome)
    assert_one_line_each(outcome.errors)
    failed = next(r for r in outcome.errors if r["event"] == "deploy-failed")
    assert re.search(r"time(d)? ?out|deadline|no (complete )?answer|stall", failed["msg"], re.I), failed["msg"]
    assert "127.0.0.1:" in failed["msg"], "the error names the registry it waited for"
    assert outcome.recovered_in < 30


def test_2000_registry_failures_in_a_row_back_off_at_the_cap_without_overflow(tmp_path) -> None:
    failures = 2000
    outcome = faultmatrix.registry_outage(tmp_path, failures)
    assert outcome.errors == [], "dewy's loop ended during the outage"
    assert outcome.kept_serving and outcome.exit_code == 0
    gaps = [b - a for a, b in zip(outcome.polls, outcome.polls[1:])]
    assert len(gaps) == failures
    assert all(MAX_BACKOFF * 0.8 <= gap <= MAX_BACKOFF * 1.2 + 1 for gap in gaps[20:]), "the delay stays at the cap"
    assert outcome.polls[-1] - outcome.polls[0] > 6 * 86400, "about a week of outage went by"
    assert outcome.error_notifications == ERROR_LIMIT
    assert outcome.recovered_in is not None and outcome.recovered_in <= MAX_BACKOFF * 1.2 + 1
    assert outcome.leftovers == []


def test_sigterm_during_a_slow_download_stops_dewy_within_seconds_and_leaves_nothing(tmp_path) -> None:
    outcome = faultmatrix.sigterm_during_download(tmp_path)
    assert outcome.exit_code == 0
    assert outcome.stop_seconds < faultmatrix.PROMPT_STOP, f"dewy took {outcome.stop_seconds:.1f}s to stop"
    assert outcome.leftovers == []
    assert outcome.served_after_stop is None, "a requested stop stops the app too"
    assert outcome.failed == [] and outcome.kept_serving
    assert outcome.recovered_in is not None
