"""kill -9 of dewy at any moment of a deploy: ``current`` is always a complete release, no release is half there
under its live name, the cache never holds a partial artifact under its final name, and a restarted dewy
converges with the app serving the version on record (tests/faultmatrix.py kills at 50 seeded random points)."""

from __future__ import annotations

from tests import faultmatrix

POINTS, SEED = 50, 11


def test_kill_9_at_50_random_points_of_deploys(tmp_path) -> None:
    outcome = faultmatrix.kill_9_during_deploys(tmp_path, POINTS, SEED)
    assert [e["msg"] for e in outcome.errors] == []
    assert outcome.kept_serving and outcome.leftovers == []
    assert len(outcome.killed_in) == POINTS
    assert {"deploying", "downloaded", "app-starting"} & set(outcome.killed_in), \
        f"the kills must land inside deploys: {sorted(set(outcome.killed_in))}"
