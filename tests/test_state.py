"""The state file: an upgraded dewy reads what the previous version wrote, and writes it back the same way."""

from __future__ import annotations

import json

import pytest

from dewy.state import AppGeneration, ReplicaSet, State

DEPLOYED = {"tag": "v1.0.0", "key": "v1.0.0--app.tgz", "release": "20260101T000000.000000Z", "at": "2026-01-01T00:00:00+00:00"}

# as dewy 1.x wrote them: the serving generation of server mode, the replicas of container mode
SERVER_APP = {"pid": 4242, "started": 123456, "boot": "5c1e8a9e-0d1f-4a43-9d1b-6f1b6c1f0a11",
              "unit": "dewy-demo-g3.scope", "generation": 3, "version": "v1.0.0",
              "release_dir": "/var/lib/dewy/demo/releases/20260101T000000.000000Z"}
CONTAINER_APP = {
    "mode": "container", "runtime": "podman", "network": "dewy-web", "aliases": ["web"], "ports": [":8080"],
    "version": "v1.0.0", "digest": "sha256:" + "a" * 64, "image": "127.0.0.1:5000/acme/web:v1.0.0",
    "replicas": [{"id": "c1", "name": "web-v1.0.0-1-abc123", "replica": 1, "version": "v1.0.0", "ip": "10.89.0.2",
                  "status": "running", "healthy": True, "reason": None}],
    "draining": [{"id": "c0", "name": "web-v0.9.0-1-fed321", "version": "v0.9.0", "until": "2026-01-01T00:00:30+00:00"}],
    "rollout": {"id": "def456", "version": "v1.1.0", "digest": "sha256:" + "b" * 64,
                "image": "127.0.0.1:5000/acme/web:v1.1.0", "started_at": "2026-01-01T00:00:10+00:00"},
}


def written(path, app) -> dict:
    data = {"current": DEPLOYED, "history": [DEPLOYED], "quarantine": {"v0.9.1--app.tgz": "exited with status 1"},
            "app": app, "last_check": "2026-01-01T00:01:00+00:00", "last_error": None}
    path.write_text(json.dumps(data, indent=2))
    return data


@pytest.mark.parametrize("app, kind", [(SERVER_APP, AppGeneration), (CONTAINER_APP, ReplicaSet), (None, type(None))],
                         ids=["server", "container", "assets"])
def test_a_state_file_of_the_previous_version_is_read_and_written_back_unchanged(tmp_path, app, kind) -> None:
    path = tmp_path / "state.json"
    before = written(path, app)
    state = State.load(path)
    assert isinstance(state.app, kind)
    assert state.current.tag == "v1.0.0" and state.quarantine == before["quarantine"]
    state.save()
    assert json.loads(path.read_text()) == before


def test_the_recorded_generation_is_what_adoption_proves(tmp_path) -> None:
    written(tmp_path / "state.json", SERVER_APP)
    app = State.load(tmp_path / "state.json").app
    assert (app.pid, app.started, app.boot, app.unit, app.generation) == (4242, 123456, SERVER_APP["boot"],
                                                                          "dewy-demo-g3.scope", 3)


def test_the_recorded_replicas_keep_their_rollout_and_drains(tmp_path) -> None:
    written(tmp_path / "state.json", CONTAINER_APP)
    app = State.load(tmp_path / "state.json").app
    assert [r.id for r in app.replicas] == ["c1"] and app.replicas[0].healthy
    assert app.draining[0].until == "2026-01-01T00:00:30+00:00"
    assert app.rollout.id == "def456" and app.rollout.version == "v1.1.0"


@pytest.mark.parametrize("app", [{"pid": 4242}, ["not", "an", "object"], {"mode": "container", "replicas": 3}],
                         ids=["incomplete", "not-an-object", "wrong-shape"])
def test_an_unreadable_app_record_adopts_nothing_and_keeps_the_rest(tmp_path, app) -> None:
    written(tmp_path / "state.json", app)
    state = State.load(tmp_path / "state.json")
    assert state.app is None  # the app is started from current, the replicas found by their labels
    assert state.current.tag == "v1.0.0" and state.history and state.quarantine
