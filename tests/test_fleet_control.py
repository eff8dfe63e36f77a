"""The fleet-wide commands end to end: two real ``dewy server`` processes on a real redis-server, the real CLI.

``dewy pause -d DIR --fleet`` on one host holds a new release on both until ``dewy resume --fleet``
on the other; ``dewy rollback --fleet`` takes both back to the rollout's previous release under the
default ``on-failure=halt``; each command is one ``control`` audit event on the host it was sent to.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_control import audits, dewy, status
from tests.test_fleet_processes import GOOD, fleet_host, publish, redis_server  # noqa: F401 (a fixture)

POLICY = "canary=1,wave=100%,bake=0,ttl=3s"


def test_pause_resume_and_rollback_of_the_fleet_through_one_hosts_control_channel(tmp_path, redis_server) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    publish(registry, "v1.0.0", GOOD)
    hosts, sites = [], [tmp_path / f"host{n}" / "site" for n in range(2)]
    try:
        for site in sites:
            hosts.append(fleet_host(site.parent, registry.as_uri(), redis_server.port, POLICY))
        for host in hosts:
            host.wait_for("deployed", timeout=60, version="v1.0.0")

        code, answer, _ = dewy(sites[0], "pause", "--fleet")
        assert code == 0 and answer["message"].startswith("the fleet is paused (since "), answer
        publish(registry, "v2.0.0", GOOD)
        for host in hosts:
            held = host.wait_for("fleet-waiting", timeout=30, version="v2.0.0")
            assert "the fleet's rollout is paused" in held["msg"] and "by uid 0 on" in held["msg"]
        for site in sites:
            shown = status(site)
            assert shown["version"] == "v1.0.0" and shown["fleet_paused"]["uid"] == 0
        rendered = subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(sites[1])], capture_output=True,
                                  text=True, check=True).stdout
        assert "fleet paused: since " in rendered and "until dewy resume NAME --fleet" in rendered
        config = tmp_path / "shop.toml"
        config.write_text(f'mode = "server"\nregistry = "{registry.as_uri()}"\n'
                          f'cache = "redis://127.0.0.1:{redis_server.port}/0"\nrollout = {{ canary = 1, wave = "100%", bake = "0s" }}\n'
                          f'[server]\ncommand = ["/bin/sh", "current/run"]\n')
        fleet = [sys.executable, "-m", "dewy", "fleet", "status", "--config", str(config)]
        info = json.loads(subprocess.run([*fleet, "--json"], capture_output=True, text=True, check=True).stdout)
        assert info["paused"]["uid"] == 0 and info["paused"]["host"].endswith("/host0/site")
        assert {h["state"] for h in info["hosts"]} == {"serving"}
        table = subprocess.run(fleet, capture_output=True, text=True, check=True).stdout
        assert "paused: since " in table and "no host is admitted to a new release" in table

        code, answer, _ = dewy(sites[1], "resume", "--fleet")
        assert code == 0 and answer["message"].startswith("the fleet is resumed"), answer
        for host in hosts:
            host.wait_for("deployed", timeout=60, version="v2.0.0")
        assert all(status(site)["fleet_paused"] is None for site in sites)
        code, answer, stderr = dewy(sites[1], "resume", "--fleet")
        assert (code, answer["error"]) == (1, "the fleet is not paused")

        code, answer, _ = dewy(sites[0], "rollback", "--fleet")
        assert code == 0 and (answer["from"], answer["to"]) == ("v2.0.0", "v1.0.0"), answer
        assert "the 2 host(s) on it go back" in answer["message"]
        for host in hosts:
            back = host.wait_for("fleet-rollback", timeout=30, version="v2.0.0")
            assert "(rolled back for the fleet by uid 0 on " in back["msg"] and back["msg"].endswith("going back to v1.0.0")
            host.wait_for("deployed", timeout=60, version="v1.0.0")
        table = subprocess.run(fleet, capture_output=True, text=True, check=True).stdout
        assert "quarantined: v2.0.0: rolled back for the fleet by uid 0 on " in table
        code, answer, _ = dewy(sites[1], "rollback", "--fleet")
        assert code == 1 and answer["error"].startswith("v2.0.0 is rolled back for the fleet already")
        seen = [(a["command"], a["from_version"], a["to_version"], a["outcome"]) for a in audits(hosts[0], 2)]
        assert seen == [("pause", "v1.0.0", "v1.0.0", "ok"), ("rollback", "v2.0.0", "v1.0.0", "ok")]
    finally:
        for host in hosts:
            if host.process.poll() is None:
                host.stop()


def test_a_host_its_operator_paused_is_passed_by_and_follows_once_resumed(tmp_path, redis_server) -> None:
    """``dewy pause`` on one host (its own, not ``--fleet``): the rollout's canary is another host, and the paused
    one takes the release once resumed. Its name sorts first, so the rollout would pick it as the canary if its
    heartbeat did not say it is held, and then wait for it for ever."""
    registry = tmp_path / "registry"
    registry.mkdir()
    publish(registry, "v1.0.0", GOOD)
    sites, hosts = [tmp_path / f"host{n}" / "site" for n in range(2)], []
    try:
        hosts.append(fleet_host(sites[0].parent, registry.as_uri(), redis_server.port, POLICY))
        hosts[0].wait_for("deployed", timeout=60, version="v1.0.0")
        code, answer, _ = dewy(sites[0], "pause")
        assert code == 0, answer
        publish(registry, "v2.0.0", GOOD)
        hosts[0].wait_for("held", timeout=30, version="v2.0.0")
        hosts.append(fleet_host(sites[1].parent, registry.as_uri(), redis_server.port, POLICY))
        hosts[1].wait_for("deployed", timeout=60, version="v2.0.0")
        assert status(sites[0])["version"] == "v1.0.0"
        config = tmp_path / "shop.toml"
        config.write_text(f'mode = "server"\nregistry = "{registry.as_uri()}"\n'
                          f'cache = "redis://127.0.0.1:{redis_server.port}/0"\nrollout = {{ canary = 1, bake = "0s" }}\n'
                          f'[server]\ncommand = ["/bin/sh", "current/run"]\n')
        info = json.loads(subprocess.run([sys.executable, "-m", "dewy", "fleet", "status", "--config", str(config),
                                          "--json"], capture_output=True, text=True, check=True).stdout)
        shown = {h["host"].rsplit("/", 2)[-2]: (h["version"], h["state"], h["held"]) for h in info["hosts"]}
        assert shown == {"host0": ("v1.0.0", "held", "v2.0.0"), "host1": ("v2.0.0", "serving", None)}
        assert info["rollout"]["version"] == "v2.0.0" and info["rollout"]["done"], info["rollout"]  # all that would take it

        code, answer, _ = dewy(sites[0], "resume")
        assert code == 0, answer
        hosts[0].wait_for("deployed", timeout=60, version="v2.0.0")
    finally:
        for host in hosts:
            if host.process.poll() is None:
                host.stop()
