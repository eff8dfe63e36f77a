"""Faults around dewy@demo under a real systemd (tests/system/test_service.py's Demo): the bus going away in the
middle of a deploy, `systemctl stop` in the middle of a 1 GB download, and a recorded app pid that now
belongs to a stranger. The app serves throughout, nothing is left behind, dewy recovers by itself."""

from __future__ import annotations

import json
import re
import time

from tests.conftest import host_artifact, tar_gz
from tests.faultinject import THROTTLE, FaultProxy, ZeroFilledTar
from tests.github_server import GitHubServer
from tests.harness import APP, ClientLoop, get
from tests.system.test_service import Demo, demo, start  # noqa: F401 (demo: the fixture)

TOKEN = "ghp_system_fault_secret"
STATE = "/var/lib/dewy/demo/.dewy/state.json"
LEFTOVERS = ["find", "/var/cache/dewy/demo", "/var/lib/dewy/demo", "-name", ".*", "-not", "-name", ".dewy", "-not", "-name", ".kv"]


def events(demo: Demo, *names: str, after: int = 0) -> list[dict]:
    """dewy's journal records with these events, from the ``after``-th of dewy's records on."""
    return [r for r in demo.m.journal("dewy@demo.service")[after:] if r.get("DEWY_EVENT") in names]


def seconds(span: str) -> float:
    """A systemd time span as ``systemctl show`` prints it ("1min 30s", "90s", "500ms")."""
    units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|min|h|s)", span))


def test_dbus_stopped_during_a_deploy_and_started_again(demo: Demo) -> None:
    # the before-deploy hook of v1.1.0 takes the bus away, once: between the download and the app's start
    hook = ('[ "$DEWY_VERSION" != v1.1.0 ] || [ -e /run/bus-stopped ] || '
            '{ touch /run/bus-stopped; systemctl stop dbus.socket dbus.service; }')
    start(demo, extra=f"before_deploy_hook = '{hook}'")
    dewy_pid = demo.dewy_pid()
    with ClientLoop(demo.port, max_seconds=80) as client:
        demo.release("v1.1.0")
        failure = demo.m.wait_until(lambda: events(demo, "deploy-failed", "rollback"), 40,
                                    what="dewy to report the deploy it could not finish without the bus")
        assert demo.m.is_active("dbus.service") != "active"
        assert get(demo.port)[1] == "v1.0.0", "the running version keeps serving without the bus"
        demo.m.systemctl("start", "dbus.socket", "dbus.service")
        demo.deployed("v1.1.0", timeout=60)
        assert get(demo.port)[1] == "v1.1.0"
    assert client.failures == [], f"{len(client.failures)} failed requests: {client.failures[:5]}"
    assert failure[0]["DEWY_EVENT"] != "rollback", "a bus outage is not the release's fault: no quarantine"
    assert re.search(r"d-?bus", failure[0]["MESSAGE"], re.I), f"the error line names the bus: {failure[0]['MESSAGE']}"
    assert demo.m.is_active("dewy@demo") == "active"
    if demo.dewy_pid() != dewy_pid:  # restarted by systemd (the watchdog, a crash): it must have adopted the app
        assert events(demo, "app-adopted")
    serving = demo.app_env()["env"]["SERVER_STARTER_GENERATION"]   # the start the bus refused used a number too
    assert demo.m.wait_until(lambda: demo.scopes() == [f"dewy-demo-g{serving}.scope"], 20,
                             what="only the serving generation's unit")


def test_systemctl_stop_during_a_1_gb_download_is_prompt_and_leaves_nothing(demo: Demo) -> None:
    with GitHubServer(token=TOKEN) as github, FaultProxy(("127.0.0.1", github.port), THROTTLE, rate=20 << 20) as proxy:
        github.root = github.url = proxy.origin  # the asset's redirect passes the slow proxy too
        github.add_release("acme", "demo", "v1.0.0", {host_artifact(): tar_gz({"app.py": APP.read_text(), "VERSION": "v1.0.0"})})
        demo.configure(registry_url="ghr://acme/demo", env=f"GITHUB_TOKEN={TOKEN}\nGITHUB_API_URL={proxy.origin}\n")
        demo.m.systemctl("enable", "--now", "dewy@demo", timeout=120)
        demo.deployed("v1.0.0")
        github.add_release("acme", "demo", "v1.1.0", {host_artifact(suffix=".tar"): ZeroFilledTar(1 << 30)})  # 1 GB, 20 MB/s
        demo.m.wait_until(lambda: events(demo, "deploying"), 30, what="the deploy of v1.1.0")
        proxy.wait_answered(64 << 20, 30)  # well into the download
        asked = time.monotonic()
        demo.m.systemctl("stop", "dewy@demo", timeout=120)
        took = time.monotonic() - asked
    limit = seconds(demo.m.show("dewy@demo.service", "TimeoutStopUSec")["TimeoutStopUSec"])
    shown = demo.m.show("dewy@demo.service", "ActiveState", "Result")
    assert (shown["ActiveState"], shown["Result"]) == ("inactive", "success"), shown
    assert took < 15 < limit, f"systemctl stop took {took:.1f}s"
    assert demo.scopes() == [], "the app's scope is gone with dewy"
    assert demo.m.run(LEFTOVERS).stdout.split() == []
    assert not demo.m.run(["find", "/var/cache/dewy/demo", "-name", "v1.1.0*"]).stdout.split()


def test_a_recorded_pid_now_belonging_to_a_stranger_is_neither_adopted_nor_signalled(demo: Demo) -> None:
    start(demo)
    recorded = json.loads(demo.m.read(STATE))["app"]
    demo.m.systemctl("stop", "dewy@demo", timeout=120)  # the app stops with it; its pid is free for anyone
    demo.m.run(["systemd-run", "--unit=stranger", "--property=KillMode=process", "sleep", "600"])
    stranger = demo.m.wait_until(lambda: demo.m.pid_of("stranger.service"), 10, what="the stranger's pid")
    state = json.loads(demo.m.read(STATE))
    state["app"] = {**recorded, "pid": stranger}  # as if the app had died and the pid been reused since
    demo.m.write(STATE, json.dumps(state))
    mark = len(demo.m.journal("dewy@demo.service"))
    demo.m.systemctl("start", "dewy@demo", timeout=120)
    demo.m.wait_until(lambda: events(demo, "app-ready", after=mark), 30, what="the app started from current")
    assert get(demo.port)[1] == "v1.0.0"
    assert events(demo, "app-adopted", after=mark) == [], "a stranger is no app generation"
    demo.m.systemctl("stop", "dewy@demo", timeout=120)
    assert demo.m.is_active("stranger.service") == "active", "dewy signalled a process it did not start"
    assert demo.m.pid_of("stranger.service") == stranger
