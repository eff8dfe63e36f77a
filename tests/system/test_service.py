"""dewy@.service under a real systemd (PID 1 in systemd-nspawn), each behaviour its own test.

The machine shares the host's network namespace, so the client loop runs on the host
against the app's port, and the file:// registry is a host directory bound into the
machine at the same path.

dewy is installed the session's way (conftest.install_kind): from the Debian package built
from this checkout (`apt-get install ./dewy_*.deb`) wherever the packaging tools are installed,
as in CI, so this whole module is proven on the installed package; otherwise from wheels.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import publish
from tests.github_server import GitHubServer
from tests.harness import APP, ClientLoop, free_port, get
from tests.system.nspawn import Machine

pytestmark = [pytest.mark.system, pytest.mark.every_suite]

TOKEN = "ghp_system_test_secret_1234567890"
PASSWORD = "mail-password-never-logged"


class Demo:
    """dewy@demo in a booted machine, deploying the test app from a file:// registry on the host."""

    def __init__(self, machine: Machine, registry: Path, port: int) -> None:
        self.m, self.registry, self.port = machine, registry, port

    def release(self, tag: str, *knobs: str) -> None:
        publish(self.registry, tag, {"app.py": APP.read_text(), "VERSION": tag, **{k: "" for k in knobs}}, checksums=True)

    def configure(self, registry_url: str | None = None, extra: str = "", env: str = "", watchdog: str | None = None) -> None:
        self.m.write("/etc/dewy/demo.toml", f"""
mode = "server"
registry = "{registry_url or self.registry.as_uri()}"
interval = "0.5s"
{extra}

[server]
ports = ["127.0.0.1:{self.port}"]
command = ["/usr/bin/python3", "current/app.py"]
health_path = "/health"
health_timeout = "10s"
settle_time = "0.5s"
stop_timeout = "5s"

[app]
user = "www-data"
memory_max = "256M"
tasks_max = 64
""")
        if env:
            self.m.write("/etc/dewy/demo.env", env, mode=0o600)
        if watchdog:
            self.m.write("/etc/systemd/system/dewy@demo.service.d/watchdog.conf", f"[Service]\nWatchdogSec={watchdog}\n")
            self.m.systemctl("daemon-reload")

    def deployed(self, tag: str, timeout: float = 60) -> None:
        self.m.wait_until(lambda: self.m.journal("dewy@demo.service", DEWY_EVENT="deployed", DEWY_VERSION=tag),
                          timeout, what=f"{tag} deployed")

    def app_env(self) -> dict:
        return json.loads(get(self.port, "/env")[1])

    def dewy_pid(self) -> int:
        return self.m.pid_of("dewy@demo.service")

    def scopes(self) -> list[str]:
        out = self.m.systemctl("list-units", "dewy-*", "--plain", "--no-legend", "--all").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip() and "active" in line.split()[2:3]]


@pytest.fixture
def demo(machine_factory: Callable[..., Machine], tmp_path: Path) -> Demo:
    registry = tmp_path / "registry"
    registry.mkdir()
    machine = machine_factory(install=True, bind=[registry])
    machine.run(["mkdir", "-p", "/etc/dewy"])
    return Demo(machine, registry, free_port())


def start(demo: Demo, tag: str = "v1.0.0", **configure) -> None:
    demo.release(tag)
    demo.configure(**configure)
    demo.m.systemctl("enable", "--now", "dewy@demo", timeout=120)
    demo.deployed(tag)


def test_enable_now_is_active_after_ready_and_status_names_the_version(demo: Demo) -> None:
    demo.release("v1.0.0")
    demo.configure()
    demo.m.systemctl("enable", "--now", "dewy@demo", timeout=120)  # Type=notify: returns once READY=1 arrived
    shown = demo.m.show("dewy@demo.service", "ActiveState", "SubState", "Type", "NotifyAccess", "StatusText")
    assert (shown["ActiveState"], shown["SubState"], shown["Type"], shown["NotifyAccess"]) == ("active", "running", "notify", "main")
    assert demo.m.journal("dewy@demo.service", DEWY_EVENT="started"), "READY came after dewy's configuration"
    demo.deployed("v1.0.0")
    status = demo.m.wait_until(lambda: "v1.0.0" in (s := demo.m.show("dewy@demo.service", "StatusText")["StatusText"]) and s,
                               10, what="STATUS= naming the version")
    assert re.search(r"app pid \d+, generation 1", status), status
    assert get(demo.port)[1] == "v1.0.0"


def test_the_app_runs_in_a_transient_unit_with_its_user_and_limits(demo: Demo) -> None:
    start(demo)
    assert demo.scopes() == ["dewy-demo-g1.scope"]
    scope = demo.m.show("dewy-demo-g1.scope", "MemoryMax", "TasksMax", "Slice", "ControlGroup")
    assert (scope["MemoryMax"], scope["TasksMax"], scope["Slice"]) == (str(256 << 20), "64", "dewy.slice")
    pid = demo.app_env()["pid"]
    assert scope["ControlGroup"] in demo.m.read(f"/proc/{pid}/cgroup"), "the app's process is in the scope's cgroup"
    assert demo.m.run(["ps", "-o", "user=", "-p", str(pid)]).stdout.strip() == "www-data"
    env = demo.app_env()["env"]
    assert env["LISTEN_PID"] == str(pid) and env["LISTEN_FDS"] == "1"
    said = [r["MESSAGE"] for r in demo.m.journal(identifier="demo")]
    assert f"httpapp v1.0.0 (pid {pid}) serving on 1 socket(s)" in said, "the app's output reaches the journal as 'demo'"


# What systemd gives dewy@NAME for itself: an app that saw these would notify, feed the
# watchdog or read credentials in dewy's name.
SERVICE_PLUMBING = ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "INVOCATION_ID",
                    "JOURNAL_STREAM", "STATE_DIRECTORY", "CACHE_DIRECTORY", "DEWY_CACHEDIR")


def test_the_app_gets_its_own_environment_not_dewys_service_plumbing(demo: Demo) -> None:
    demo.release("v1.0.0")
    demo.configure()
    demo.m.run("printf '\n[app.environment]\nSHOP_MODE = \"live\"\n' >> /etc/dewy/demo.toml")
    demo.m.write("/etc/dewy/demo.slack-token", "xoxb-credential-for-dewy-only\n", mode=0o600)
    demo.m.write("/etc/systemd/system/dewy@demo.service.d/credential.conf",
                 "[Service]\nLoadCredential=SLACK_TOKEN:/etc/dewy/demo.slack-token\n")
    demo.m.systemctl("daemon-reload")
    demo.m.systemctl("enable", "--now", "dewy@demo", timeout=120)
    demo.deployed("v1.0.0")
    dewy_env = demo.m.read(f"/proc/{demo.dewy_pid()}/environ").split("\0")
    assert any(item.startswith("CREDENTIALS_DIRECTORY=") for item in dewy_env), "dewy itself got the credential"
    env = demo.app_env()["env"]
    assert [name for name in SERVICE_PLUMBING if name in env] == []
    assert "SLACK_TOKEN" not in env and "xoxb-credential-for-dewy-only" not in json.dumps(env)
    assert (env["SHOP_MODE"], env["DEWY_VERSION"], env["LISTEN_FDS"]) == ("live", "v1.0.0", "1")


def test_a_configuration_error_leaves_the_unit_failed_with_its_one_line(demo: Demo) -> None:
    demo.release("v1.0.0")
    demo.configure(extra='intervall = "5s"')
    started = time.monotonic()
    demo.m.systemctl("start", "dewy@demo", check=False, timeout=60)
    demo.m.wait_until(lambda: demo.m.is_active("dewy@demo") == "failed", 10, what="dewy@demo to be failed")
    assert time.monotonic() - started < 10
    shown = demo.m.show("dewy@demo.service", "NRestarts", "ExecMainStatus", "Result")
    assert (shown["ExecMainStatus"], shown["Result"]) == ("2", "exit-code")
    assert int(shown["NRestarts"]) <= 1
    status = demo.m.systemctl("status", "dewy@demo", "--lines=5", check=False).stdout
    assert re.search(r"/etc/dewy/demo\.toml:\d+: .*intervall", status), status
    # "failed", not "activating (auto-restart)": systemd has given up, no restart is pending
    demo.configure()            # the operator fixes the file and starts it again
    demo.m.systemctl("start", "dewy@demo", timeout=120)
    demo.deployed("v1.0.0")


def test_a_restart_onto_a_bad_configuration_keeps_the_app_serving_until_it_is_fixed(demo: Demo) -> None:
    """The failed unit's fd store is emptied by systemd, but the app still serves on the sockets: the
    fixed dewy takes them back from the app (no EADDRINUSE) and adopts it, and no request fails."""
    start(demo)
    app_pid = demo.app_env()["pid"]
    with ClientLoop(demo.port) as client:
        demo.configure(extra='intervall = "5s"')
        demo.m.systemctl("restart", "dewy@demo", check=False, timeout=60)
        demo.m.wait_until(lambda: demo.m.is_active("dewy@demo") == "failed", 10, what="dewy@demo to be failed")
        assert demo.m.show("dewy@demo.service", "NFileDescriptorStore")["NFileDescriptorStore"] == "0"
        assert get(demo.port)[1] == "v1.0.0", "the app serves on while dewy@demo is failed"
        demo.configure()
        demo.m.systemctl("start", "dewy@demo", timeout=120)
        demo.m.wait_until(lambda: demo.m.journal("dewy@demo.service", DEWY_EVENT="app-adopted"), 30, what="adoption")
        demo.release("v1.1.0")          # the sockets dewy took back are the app's: a deploy stays seamless
        demo.deployed("v1.1.0")
    assert client.failures == [] and client.ok > 20
    assert demo.m.journal("dewy@demo.service", DEWY_EVENT="app-adopted")[-1]["DEWY_PID"] == str(app_pid)


def test_a_new_release_is_deployed_with_zero_failed_requests(demo: Demo) -> None:
    start(demo)
    with ClientLoop(demo.port) as client:
        demo.release("v1.1.0")
        demo.deployed("v1.1.0")
    assert client.failures == []
    assert client.ok > 20
    assert demo.m.wait_until(lambda: demo.scopes() == ["dewy-demo-g2.scope"], 20, what="the old generation's unit gone")
    assert get(demo.port)[1] == "v1.1.0"


def test_systemctl_kill_usr1_restarts_the_app_gracefully(demo: Demo) -> None:
    start(demo)
    dewy_pid, app_pid = demo.dewy_pid(), demo.app_env()["pid"]
    with ClientLoop(demo.port) as client:
        demo.m.systemctl("kill", "-s", "USR1", "dewy@demo")
        outcome = demo.m.wait_until(lambda: [r for r in demo.m.journal("dewy@demo.service")
                                             if r.get("DEWY_EVENT") in ("restarted", "restart-failed")], 60,
                                    what="the restart's outcome")
        assert outcome[0]["DEWY_EVENT"] == "restarted", outcome[0]["MESSAGE"]
        demo.m.wait_until(lambda: demo.m.journal("dewy@demo.service", DEWY_EVENT="app-stopped", DEWY_GENERATION="1"),
                          30, what="generation 1 to drain and stop")
    assert client.failures == []
    assert demo.dewy_pid() == dewy_pid
    env = demo.app_env()
    assert env["pid"] != app_pid and env["env"]["SERVER_STARTER_GENERATION"] == "2"


def test_systemctl_restart_keeps_the_app_serving_and_adopts_it(demo: Demo) -> None:
    start(demo)
    dewy_pid, app_pid = demo.dewy_pid(), demo.app_env()["pid"]
    with ClientLoop(demo.port) as client:
        demo.m.systemctl("restart", "dewy@demo", timeout=120)
        demo.m.wait_until(lambda: demo.m.journal("dewy@demo.service", DEWY_EVENT="app-adopted"), 30, what="adoption")
        demo.release("v1.1.0")  # the restarted dewy holds the sockets again: a deploy stays seamless
        demo.deployed("v1.1.0")
    assert client.failures == []
    assert demo.dewy_pid() != dewy_pid
    adopted = demo.m.journal("dewy@demo.service", DEWY_EVENT="app-adopted")[0]
    assert adopted["DEWY_PID"] == str(app_pid)


def test_a_frozen_dewy_is_restarted_by_the_watchdog(demo: Demo) -> None:
    start(demo, watchdog="3s")
    dewy_pid, app_pid = demo.dewy_pid(), demo.app_env()["pid"]
    demo.m.run(["kill", "-STOP", str(dewy_pid)])
    new_pid = demo.m.wait_until(lambda: (p := demo.dewy_pid()) not in (0, dewy_pid) and p, 20,
                                what="systemd's watchdog to restart dewy")
    assert new_pid != dewy_pid
    assert any("Watchdog timeout" in r.get("MESSAGE", "") for r in demo.m.journal("dewy@demo.service"))
    demo.m.wait_until(lambda: demo.m.journal("dewy@demo.service", DEWY_EVENT="app-adopted"), 30, what="adoption")
    assert demo.app_env()["pid"] == app_pid, "the app kept serving while dewy was frozen and restarted"


def test_the_journal_is_the_audit_log_and_dewy_history_reads_it(demo: Demo) -> None:
    start(demo)
    demo.release("v1.1.0", "CRASH")
    demo.m.wait_until(lambda: demo.m.journal("dewy@demo.service", DEWY_EVENT="rollback"), 60, what="rollback")
    demo.release("v1.2.0")
    demo.deployed("v1.2.0")
    deploys = demo.m.run(["journalctl", "-u", "dewy@demo", "DEWY_EVENT=deployed", "-o", "json"]).stdout.splitlines()
    records = [json.loads(line) for line in deploys]
    assert [r["DEWY_VERSION"] for r in records] == ["v1.0.0", "v1.2.0"]
    assert [r.get("DEWY_PREVIOUS_VERSION", "") for r in records] == ["", "v1.0.0"]
    assert len({r["MESSAGE_ID"] for r in records}) == 1
    history = json.loads(demo.m.run(["dewy", "history", "demo", "--json"]).stdout)
    assert [(h["event"], h["version"]) for h in history if h["event"] in ("deployed", "rollback")] == [
        ("deployed", "v1.0.0"), ("rollback", "v1.1.0"), ("deployed", "v1.2.0")]
    table = demo.m.run(["dewy", "history", "demo"]).stdout
    assert "v1.2.0" in table and "rollback" in table
    status = json.loads(demo.m.run(["dewy", "status", "demo", "--json"]).stdout)
    assert status["version"] == "v1.2.0" and status["app"]["running"] and "v1.1.0" in " ".join(status["quarantined"])


def test_systemctl_stop_stops_the_app_unit_and_leaves_nothing(demo: Demo) -> None:
    start(demo)
    app_pid = demo.app_env()["pid"]
    demo.m.systemctl("stop", "dewy@demo", timeout=120)
    assert demo.m.is_active("dewy@demo") == "inactive"
    assert demo.scopes() == []
    assert demo.m.run(["ps", "-p", str(app_pid)], check=False).returncode != 0
    assert "app.py" not in demo.m.run(["ps", "-eo", "args"]).stdout
    with pytest.raises(OSError):
        get(demo.port, timeout=1)


def test_no_secret_reaches_the_journal(demo: Demo) -> None:
    with GitHubServer(token=TOKEN) as github:
        demo.configure(registry_url="ghr://acme/demo",
                       extra=f'notifiers = ["mail://127.0.0.1:9/ops@example.com?username=dewy&password={PASSWORD}"]',
                       env=f"GITHUB_TOKEN=wrong-{TOKEN}\nGITHUB_API_URL={github.url}\n")
        demo.m.systemctl("enable", "--now", "dewy@demo", timeout=120)
        demo.m.wait_until(lambda: demo.m.journal("dewy@demo.service", DEWY_EVENT="deploy-failed"), 30,
                          what="a failure with the bad token")
        demo.m.write("/etc/dewy/demo.env", f"GITHUB_TOKEN={TOKEN}\nGITHUB_API_URL={github.url}\n", mode=0o600)
        demo.release("v1.0.0")
        artifact = next(demo.registry.glob("v1.0.0/*.tar.gz"))
        github.add_release("acme", "demo", "v1.0.0", {artifact.name: artifact.read_bytes()})
        demo.m.systemctl("restart", "dewy@demo", timeout=120)
        demo.deployed("v1.0.0")
        demo.m.wait_until(lambda: demo.m.journal("dewy@demo.service", DEWY_EVENT="notify-failed"), 30,
                          what="the mail notifier's failure to be logged")
    everything = demo.m.run(["journalctl", "-b", "-o", "export"]).stdout
    assert TOKEN not in everything
    assert PASSWORD not in everything


def test_operators_roll_back_and_pause_dewy_at_name_as_root_and_each_command_is_in_the_journal(demo: Demo) -> None:
    start(demo)
    demo.release("v1.1.0")
    demo.deployed("v1.1.0")
    assert demo.m.run(["stat", "-c", "%a %U %F", "/run/dewy/demo/control"]).stdout.strip() == "600 root socket"
    refused = demo.m.run(["setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups", "dewy", "pause", "demo"],
                         check=False)
    assert refused.returncode == 1 and "permission denied" in refused.stderr and "only root" in refused.stderr

    def control(*args: str) -> dict:
        return json.loads(demo.m.run(["dewy", *args, "--json"], timeout=120).stdout)

    with ClientLoop(demo.port) as client:
        answer = control("rollback", "demo")
        assert (answer["ok"], answer["from"], answer["to"]) == (True, "v1.1.0", "v1.0.0"), answer
        assert client.wait_for_body("v1.0.0")
    assert client.failures == [] and client.ok > 10
    assert control("pause", "demo")["ok"]
    demo.release("v1.2.0")
    answer = control("deploy", "demo", "--now")
    assert answer["message"] == "polled: v1.0.0 is deployed; v1.2.0 waits: paused (dewy resume NAME)", answer
    demo.m.wait_until(lambda: "; paused;" in (text := demo.m.show("dewy@demo.service", "StatusText")["StatusText"])
                      and "v1.2.0 waits: paused" in text,
                      10, what="STATUS= saying what waits")
    status = control("status", "demo")
    assert (status["version"], status["waiting"]["version"], status["paused"]["uid"]) == ("v1.0.0", "v1.2.0", 0)
    assert control("resume", "demo")["ok"]
    demo.deployed("v1.2.0")
    records = demo.m.journal("dewy@demo.service", DEWY_EVENT="control")
    assert [(r["DEWY_COMMAND"], r["DEWY_UID"], r.get("DEWY_FROM_VERSION"), r.get("DEWY_TO_VERSION")) for r in records] == [
        ("rollback", "0", "v1.1.0", "v1.0.0"), ("pause", "0", "v1.0.0", "v1.0.0"), ("deploy", "0", "v1.0.0", "v1.0.0"),
        ("resume", "0", "v1.0.0", "v1.0.0")]
    assert {r["MESSAGE_ID"] for r in records} == {"3481c1cddd765d46b3b0d42ae4f42bbf"}
    history = json.loads(demo.m.run(["dewy", "history", "demo", "--json"]).stdout)
    assert ("control", "v1.0.0", "v1.1.0") in [(h["event"], h["version"], h["previous_version"]) for h in history]
