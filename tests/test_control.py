"""The control channel end to end: a real foreground ``dewy server``, the real CLI, a client loop.

Each command is driven the operator's way (``python -m dewy rollback -d DIR``) against a daemon
serving a real HTTP app; a real unprivileged user (created here) is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dewy.dryrun import watch
from dewy.host import PlainProcess
from dewy.settings import Settings
from tests.harness import ClientLoop, Dewy, free_port, get
from tests.test_e2e_server import release, start

OPERATOR = "dewy-control-test"  # the unprivileged user of the refusal test


def dewy(app: Path, *args: str, user: pwd.struct_passwd | None = None) -> tuple[int, dict, str]:
    """``dewy ARGS -d APP --json`` as root (or as ``user``): exit code, the answer, stderr."""
    command = [sys.executable, "-m", "dewy", *args, "-d", str(app), "--json"]
    if user:
        command = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def status(app: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(app), "--json"], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def audits(daemon: Dewy, count: int = 0) -> list[dict]:
    """The audit events dewy logged, once there are at least ``count``."""
    while len(found := [e for e in daemon.seen if e.get("event") == "control"]) < count:
        daemon.wait_for("control", 10)
    return found


@pytest.fixture
def serving_two(tmp_path: Path) -> Iterator[tuple[Dewy, Path, int]]:
    """dewy serving v1.1.0 after v1.0.0, both kept on disk."""
    port = free_port()
    registry = tmp_path / "registry"
    release(registry, "v1.0.0")
    daemon = start(tmp_path, port)
    try:
        daemon.wait_for("deployed", version="v1.0.0")
        release(registry, "v1.1.0")
        daemon.wait_for("deployed", version="v1.1.0")
        yield daemon, tmp_path / "app", port
    finally:
        daemon.kill()


def test_rollback_pin_unpin_switch_without_a_failed_request_and_each_is_audited(tmp_path, serving_two) -> None:
    daemon, app, port = serving_two
    registry = tmp_path / "registry"
    with ClientLoop(port) as client:
        code, answer, _ = dewy(app, "rollback")
        assert code == 0 and (answer["from"], answer["to"]) == ("v1.1.0", "v1.0.0"), answer
        assert client.wait_for_body("v1.0.0")
        shown = status(app)
        assert shown["version"] == "v1.0.0" and list(shown["quarantined"]) == [f"v1.1.0--{_artifact(registry)}"]
        assert (shown["pinned"]["tag"], shown["pinned"]["until"]) == ("v1.0.0", "v1.1.0")
        rendered = subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(app)], capture_output=True,
                                  text=True, check=True).stdout
        assert "pinned:       v1.0.0 until a release after v1.1.0 (rolled back) or dewy unpin (uid 0, " in rendered
        daemon.wait_for("quarantined", version="v1.1.0")  # polls go on, and the registry's v1.1.0 is not deployed

        code, answer, _ = dewy(app, "pin", "v1.1.0")
        assert code == 1 and "quarantined" in answer["error"] and "--clear v1.1.0" in answer["error"]
        code, answer, _ = dewy(app, "quarantine", "--clear", "v1.1.0")
        assert code == 0 and answer["quarantined"] == {}
        daemon.wait_for("held", version="v1.1.0")  # the rollback's pin holds: v1.1.0 is what was rolled back from

        code, answer, _ = dewy(app, "pin", "v1.1.0")
        assert code == 0 and (answer["from"], answer["to"]) == ("v1.0.0", "v1.1.0"), answer
        assert client.wait_for_body("v1.1.0")
        release(registry, "v1.2.0")
        daemon.wait_for("held", version="v1.2.0")
        assert (status(app)["pinned"]["tag"], status(app)["waiting"]["version"]) == ("v1.1.0", "v1.2.0")

        code, answer, _ = dewy(app, "unpin")
        assert code == 0
        daemon.wait_for("deployed", version="v1.2.0")
        assert client.wait_for_body("v1.2.0")

        code, answer, _ = dewy(app, "rollback", "v1.0.0")
        assert code == 0 and (answer["from"], answer["to"]) == ("v1.2.0", "v1.0.0"), answer
        assert client.wait_for_body("v1.0.0")
        release(registry, "v1.3.0")  # newer than the one rolled back from: the pin ends by itself
        daemon.wait_for("unpinned", version="v1.3.0")
        daemon.wait_for("deployed", version="v1.3.0")
        assert client.wait_for_body("v1.3.0")
    assert client.failures == []
    assert client.ok > 50
    assert status(app)["pinned"] is None
    seen = [(a["command"], a["uid"], a.get("from_version"), a.get("to_version"), a["outcome"]) for a in audits(daemon, 6)]
    assert seen == [("rollback", 0, "v1.1.0", "v1.0.0", "ok"), ("pin", 0, "v1.0.0", "v1.0.0", "refused"),
                    ("quarantine", 0, "v1.0.0", "v1.0.0", "ok"), ("pin", 0, "v1.0.0", "v1.1.0", "ok"),
                    ("unpin", 0, "v1.1.0", "v1.1.0", "ok"), ("rollback", 0, "v1.2.0", "v1.0.0", "ok")]


def test_a_pin_to_a_version_never_deployed_here_fetches_it_and_a_failed_one_changes_nothing(tmp_path: Path) -> None:
    port = free_port()
    registry, app = tmp_path / "registry", tmp_path / "app"
    for tag, knobs in (("v1.0.0", ()), ("v1.1.0", ("CRASH",)), ("v1.2.0", ())):
        release(registry, tag, *knobs)
    daemon = start(tmp_path, port)  # deploys the newest only: v1.0.0 is on no disk here
    try:
        daemon.wait_for("deployed", version="v1.2.0")
        assert [e["version"] for e in daemon.seen if e.get("event") == "deployed"] == ["v1.2.0"]
        with ClientLoop(port) as client:
            code, answer, _ = dewy(app, "pin", "1.0.0")
            assert code == 0 and (answer["from"], answer["to"]) == ("v1.2.0", "v1.0.0"), answer
            assert answer["message"] == ("pinned on v1.0.0: fetched from the registry and switched from v1.2.0; "
                                         "no other version is deployed until dewy unpin")
            assert client.wait_for_body("v1.0.0")
            daemon.wait_for("held", version="v1.2.0")

            code, answer, _ = dewy(app, "pin", "v1.9.0")
            assert (code, answer["error"]) == (1, f"{registry.as_uri()} has no release v1.9.0"), answer
            code, answer, _ = dewy(app, "pin", "v1.1.0")  # fetched, verified, does not start: undone
            assert code == 1 and answer["to"] == "v1.0.0", answer
            assert re.fullmatch(r"v1\.1\.0 did not start and was rolled back: app version v1\.1\.0 \(generation \d+, "
                                r"pid \d+\) exited with status 3 before it became ready; v1\.0\.0 keeps serving and "
                                r"v1\.1\.0 is quarantined", answer["error"]), answer
            assert client.wait_for_body("v1.0.0")
        assert client.failures == [] and client.ok > 20
        shown = status(app)
        assert (shown["version"], shown["pinned"]["tag"]) == ("v1.0.0", "v1.0.0")
        assert list(shown["quarantined"]) == [f"v1.1.0--{_artifact(registry)}"]
        assert daemon.wait_for("deployed", version="v1.0.0", already=True)["release_dir"]
        seen = [(a["command"], a.get("from_version"), a.get("to_version"), a["outcome"]) for a in audits(daemon, 3)]
        assert seen == [("pin", "v1.2.0", "v1.0.0", "ok"), ("pin", "v1.0.0", "v1.0.0", "refused"),
                        ("pin", "v1.0.0", "v1.0.0", "refused")]
    finally:
        daemon.kill()


def _artifact(registry: Path) -> str:
    return next((registry / "v1.0.0").glob("*.tar.gz")).name


def test_pause_holds_a_new_release_until_resume_and_deploy_now_polls_at_once(tmp_path: Path) -> None:
    port = free_port()
    registry, app = tmp_path / "registry", tmp_path / "app"
    release(registry, "v1.0.0")
    daemon = start(tmp_path, port, "-i", "1h")  # after the first poll, only deploy --now polls
    try:
        daemon.wait_for("deployed", version="v1.0.0")
        code, answer, _ = dewy(app, "pause")
        assert code == 0 and status(app)["paused"]["uid"] == 0
        release(registry, "v1.1.0")
        code, answer, _ = dewy(app, "deploy", "--now")
        assert code == 0 and answer["message"] == "polled: v1.0.0 is deployed; v1.1.0 waits: paused (dewy resume NAME)"
        shown = status(app)
        assert (shown["version"], shown["waiting"]["version"], shown["waiting"]["gate"]) == ("v1.0.0", "v1.1.0", "pause")
        rendered = subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(app)], capture_output=True,
                                  text=True, check=True).stdout
        assert "paused:" in rendered and "waiting:      v1.1.0 waits: paused (dewy resume NAME)" in rendered

        with ClientLoop(port) as client:
            asked = time.monotonic()
            code, answer, _ = dewy(app, "resume")
            assert code == 0
            started = daemon.wait_for("deploying", version="v1.1.0")
            assert time.monotonic() - asked < 5, "resume polls at once, not after the 1 h interval"
            daemon.wait_for("deployed", version="v1.1.0")
            assert client.wait_for_body("v1.1.0")
        assert client.failures == [] and started
        assert status(app)["paused"] is None and status(app)["waiting"] is None

        release(registry, "v1.2.0")
        code, answer, _ = dewy(app, "deploy", "--now")
        assert code == 0 and answer["message"] == "polled: v1.2.0 is deployed" and answer["to"] == "v1.2.0"
        code, answer, _ = dewy(app, "quarantine")
        assert code == 0 and answer["quarantined"] == {}
        code, answer, stderr = dewy(app, "resume")
        assert code == 1 and answer["error"] == "not paused"
        seen = [(a["command"], a["uid"], a.get("from_version"), a.get("to_version")) for a in audits(daemon, 6)]
        assert seen == [("pause", 0, "v1.0.0", "v1.0.0"), ("deploy", 0, "v1.0.0", "v1.0.0"),
                        ("resume", 0, "v1.0.0", "v1.0.0"), ("deploy", 0, "v1.1.0", "v1.2.0"),
                        ("quarantine", 0, "v1.2.0", "v1.2.0"), ("resume", 0, "v1.2.0", "v1.2.0")]
        code, answer, _ = dewy(app, "pause", "--fleet")  # a dewy without --rollout has no fleet
        assert code == 1
        assert answer["error"] == "--fleet needs a daemon started with --rollout (a [rollout] table): this one deploys alone"
        assert status(app)["paused"] is None
    finally:
        daemon.kill()


@pytest.fixture
def operator() -> Iterator[pwd.struct_passwd]:
    """A real unprivileged user, created for the test."""
    created = False
    try:
        user = pwd.getpwnam(OPERATOR)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OPERATOR], check=True)
        user, created = pwd.getpwnam(OPERATOR), True
    yield user
    if created:
        subprocess.run(["userdel", OPERATOR], check=False)


def test_a_caller_other_than_root_is_refused(operator: pwd.struct_passwd) -> None:
    with tempfile.TemporaryDirectory(prefix="dewy-control-") as where:  # not under pytest's root-only tmp
        root = Path(where)
        os.chmod(root, 0o755)
        release(root / "registry", "v1.0.0")
        port = free_port()
        daemon = start(root, port)
        try:
            daemon.wait_for("deployed", version="v1.0.0")
            app = root / "app"
            sock = app / ".dewy" / "control.sock"
            mode = os.stat(sock)
            assert (stat.S_IMODE(mode.st_mode), mode.st_uid, stat.S_ISSOCK(mode.st_mode)) == (0o600, 0, True)

            code, answer, stderr = dewy(app, "pause", user=operator)
            assert code == 1 and stderr.strip() == f"dewy: error: permission denied: {sock} (only root may control dewy)"

            os.chmod(sock, 0o666)  # past the file's mode, the daemon still asks the kernel who calls
            code, answer, _ = dewy(app, "pause", user=operator)
            assert code == 1 and answer == {"ok": False, "error": "permission denied: only root may control dewy"}
            refused = daemon.wait_for("control-refused", already=True)
            assert refused["uid"] == operator.pw_uid
            assert status(app)["paused"] is None and audits(daemon) == []
            with socket.socket(socket.AF_UNIX) as raw:  # bad input: one answer line, and dewy goes on
                raw.connect(str(sock))
                raw.sendall(b"rollback please\n")
                assert json.loads(raw.makefile().readline()) == {
                    "ok": False, "error": "not a control request: one JSON object on one line"}
            assert get(port)[1] == "v1.0.0"
        finally:
            daemon.kill()


def test_a_command_to_a_dewy_that_is_not_running_is_one_line(tmp_path: Path) -> None:
    code, answer, stderr = dewy(tmp_path / "app", "pause")
    assert (code, answer) == (1, {})
    assert stderr == f"dewy: error: dewy in {tmp_path / 'app'} is not running (no control socket at {tmp_path / 'app'}/.dewy/control.sock)\n"
    code, answer, stderr = dewy(tmp_path / "app", "rollback", "v1.0.0", "--fleet")
    assert (code, answer) == (2, {}) and stderr == ("dewy: error: dewy rollback --fleet takes no VERSION: the fleet goes "
                                                    "back to its rollout's previous release\n")


def test_dry_run_beside_the_serving_dewy_logs_what_it_would_deploy_and_changes_nothing(tmp_path: Path) -> None:
    port = free_port()
    registry, app = tmp_path / "registry", tmp_path / "app"
    release(registry, "v1.0.0")
    daemon = start(tmp_path, port)
    dry = None
    try:
        daemon.wait_for("deployed", version="v1.0.0")
        code, _, _ = dewy(app, "pause")
        assert code == 0
        before = sorted(p.name for p in (app / "releases").iterdir())
        dry = start(tmp_path, port, "--dry-run")  # the same directory and port: nothing may be bound or written
        assert dry.wait_for("dry-run")["msg"] == "v1.0.0 is deployed: nothing to do"
        release(registry, "v1.1.0")
        said = dry.wait_for("dry-run", version="v1.1.0")
        assert said["msg"] == "would deploy v1.1.0 (deployed: v1.0.0), once no longer paused"
        assert sorted(p.name for p in (app / "releases").iterdir()) == before
        assert status(app)["version"] == "v1.0.0" and get(port)[1] == "v1.0.0"
        assert dry.stop() == 0
        assert not [e for e in dry.seen if e.get("level") == "error"]
    finally:
        if dry:
            dry.kill()
        daemon.kill()


def test_a_pin_survives_a_restart_of_dewy(tmp_path, serving_two) -> None:
    daemon, app, port = serving_two
    code, answer, _ = dewy(app, "pin", "v1.0.0")
    assert code == 0 and answer["to"] == "v1.0.0"
    assert daemon.stop() == 0
    daemon = start(tmp_path, port)
    try:
        daemon.wait_for("held", version="v1.1.0")
        assert get(port)[1] == "v1.0.0"
        shown = status(app)
        assert (shown["version"], shown["pinned"]["tag"], shown["waiting"]["version"]) == ("v1.0.0", "v1.0.0", "v1.1.0")
        assert not [e for e in daemon.seen if e.get("event") == "deploying"]
    finally:
        daemon.kill()


class Recorded(PlainProcess):
    """A host that records what systemd would be told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str]] = []

    def ready(self, status: str) -> None:
        self.told.append(("ready", status))

    def status(self, text: str) -> None:
        self.told.append(("status", text))

    def watchdog_interval(self) -> float:
        return 0.01

    def ping(self) -> None:
        self.told.append(("ping", ""))


def test_a_dry_run_under_systemd_is_ready_at_once_says_its_verdict_and_pings_the_watchdog(tmp_path: Path) -> None:
    release(tmp_path / "registry", "v1.0.0")
    host = Recorded()
    settings = Settings(mode="assets", registry=(tmp_path / "registry").as_uri(), dir=tmp_path / "site", interval=0.05,
                        dry_run=True)

    async def main() -> int:
        running = asyncio.ensure_future(watch(settings, host))
        while host.told.count(("ping", "")) < 3:  # the watchdog is pinged while the dry run waits
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        return await running

    assert asyncio.run(main()) == 0
    assert host.told[0] == ("ready", "dry run: nothing is changed")
    assert host.told[1] == ("status", "dry run: would deploy v1.0.0 (deployed: nothing)")
    assert not (tmp_path / "site").exists()
