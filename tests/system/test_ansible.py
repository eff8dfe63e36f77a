"""The Ansible role (packaging/ansible/roles/dewy), run by ansible-playbook against a booted machine.

ansible-playbook is the test venv's (ansible-core from the test extra) and runs on the host:
the machine has no sshd, so the connection plugin in ansible_plugins/ enters its namespaces
with nsenter. The role installs the .deb of this checkout from the host (as an operator's
controller holds dist/dewy_*.deb), and each dewy@NAME deploys from a file:// registry
directory on the host bound into the machine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import free_port
from tests.system.nspawn import Machine
from tests.system.test_service import Demo
from tests.test_ansible_role import ansible_environment, ansible_playbook

pytestmark = pytest.mark.system

CONNECTION_PLUGINS = Path(__file__).parent / "ansible_plugins" / "connection"
# Every character systemd's EnvironmentFile= treats specially, and a marker to look for in the output.
SECRET_MARKER = "s3cr3t-m4rker"
SECRET = f"{SECRET_MARKER} \"double\" 'single' $HOME ${{HOME}} `id` back\\slash #not-a-comment  "
RECAP = re.compile(r"^\S+\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.+?)\] \**$", re.M)


@dataclass
class Run:
    output: str
    changed: int
    failed: int
    changed_tasks: list[str]     # the tasks (and handlers) that reported a change, in order


class Playbook:
    """ansible-playbook applying the role to one machine, with the variables of each run as extra vars."""

    def __init__(self, machine: Machine, workdir: Path) -> None:
        self.workdir = workdir
        self.command = ansible_playbook()
        workdir.mkdir()
        (workdir / "inventory.ini").write_text(
            f"{machine.name} ansible_connection=nsenter ansible_nsenter_pid={machine.pid}"
            " ansible_python_interpreter=/usr/bin/python3\n")
        (workdir / "site.yml").write_text("- hosts: all\n  gather_facts: false\n  roles: [dewy]\n")
        self.env = {**ansible_environment(workdir), "ANSIBLE_CONNECTION_PLUGINS": str(CONNECTION_PLUGINS),
                    "ANSIBLE_PIPELINING": "true"}
        self.outputs: list[str] = []

    def run(self, variables: dict[str, Any], *, succeed: bool = True) -> Run:
        (self.workdir / "vars.json").write_text(json.dumps(variables))
        # -v --diff: every result and every file change is shown, so a secret in any would be seen
        result = subprocess.run([str(self.command), "-v", "--diff", "-i", "inventory.ini", "site.yml", "-e", "@vars.json"],
                                cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        self.outputs.append(output)
        assert (result.returncode == 0) == succeed, f"ansible-playbook exited {result.returncode}:\n{output[-8000:]}"
        recap = RECAP.findall(output)
        assert len(recap) == 1, output[-3000:]
        sections = TASK.split(output)
        changed = [name for name, body in zip(sections[1::2], sections[2::2]) if re.search(r"^changed: ", body, re.M)]
        return Run(output, int(recap[0][1]), int(recap[0][3]), changed)


def server_config(port: int) -> dict[str, Any]:
    return {"server": {"ports": [f"127.0.0.1:{port}"], "command": ["/usr/bin/python3", "current/app.py"],
                       "health_path": "/health", "settle_time": "0.5s"},
            "app": {"user": "www-data", "environment": {"GREETING": "hello \"world\""}}}


def test_the_role_installs_runs_and_converges_several_instances(machine_factory: Callable[..., Machine],
                                                                 dewy_deb: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    m = machine_factory(bind=[registry])
    demo = Demo(m, registry, free_port())
    demo.release("v1.0.0")
    ports = {"demo": demo.port, "api": free_port()}
    defaults = {"mode": "server", "registry": registry.as_uri(), "interval": "0.5s"}
    variables: dict[str, Any] = {
        "dewy_package_file": str(dewy_deb),
        "dewy_config_defaults": defaults,
        "dewy_instances": [{"name": "demo", "config": server_config(ports["demo"]), "env": {"DEWY_TEST_SECRET": SECRET}},
                           {"name": "api", "config": server_config(ports["api"])}],
    }
    playbook = Playbook(m, tmp_path / "ansible")

    def dewy_pids() -> dict[str, int]:
        return {name: m.pid_of(f"dewy@{name}.service") for name in ports}

    def env_file_mode(name: str) -> str:
        return m.run(["stat", "-c", "%a %U:%G", f"/etc/dewy/{name}.env"]).stdout.strip()

    # 1: installs the package, writes both instances' files, enables and starts both
    first = playbook.run(variables)
    assert first.changed > 0
    assert m.run(["dpkg-query", "-W", "-f", "${Version}", "dewy"]).stdout == dewy_deb.name.split("_")[1]
    for name, port in ports.items():
        m.wait_until(lambda: m.journal(f"dewy@{name}.service", DEWY_EVENT="deployed", DEWY_VERSION="v1.0.0"), 60,
                     what=f"v1.0.0 deployed by dewy@{name}")
        assert m.run(["curl", "-sf", f"http://127.0.0.1:{port}/"]).stdout == "v1.0.0"
        assert m.systemctl("is-enabled", f"dewy@{name}").stdout.strip() == "enabled"
        assert len(m.journal(f"dewy@{name}.service", DEWY_EVENT="started")) == 1, "started once, not again by the handler"
        assert tomllib.loads(m.read(f"/etc/dewy/{name}.toml")) == {**defaults, **server_config(port)}
        assert env_file_mode(name) == "600 root:root"
    environ = m.read(f"/proc/{m.pid_of('dewy@demo.service')}/environ").split("\0")
    assert f"DEWY_TEST_SECRET={SECRET}" in environ, "the secret reaches dewy verbatim through NAME.env"
    assert demo.app_env()["env"]["GREETING"] == "hello \"world\""

    # 2: the same variables again change nothing and restart nothing
    pids = dewy_pids()
    second = playbook.run(variables)
    assert (second.changed, second.changed_tasks) == (0, [])
    assert dewy_pids() == pids

    # 3: one setting of one instance changed: its file is rewritten and only that instance restarted
    app_pid = demo.app_env()["pid"]
    adopted = len(m.journal("dewy@demo.service", DEWY_EVENT="app-adopted"))
    variables["dewy_instances"][0]["config"]["interval"] = "1s"
    third = playbook.run(variables)
    assert third.changed > 0
    assert third.changed_tasks == ["dewy : Write /etc/dewy/NAME.toml", "dewy : Restart changed dewy instances"]
    assert dewy_pids()["demo"] not in (0, pids["demo"]), "dewy@demo restarted on the new configuration"
    assert dewy_pids()["api"] == pids["api"], "dewy@api, unchanged, kept running"
    assert tomllib.loads(m.read("/etc/dewy/demo.toml"))["interval"] == "1s"
    assert env_file_mode("demo") == "600 root:root"
    m.wait_until(lambda: len(m.journal("dewy@demo.service", DEWY_EVENT="app-adopted")) > adopted, 30,
                 what="the restarted dewy@demo to adopt its app")
    assert demo.app_env()["pid"] == app_pid, "the app kept running through dewy's restart"

    # 4: a typo in a setting: the play fails at that instance's restart and the app keeps serving;
    # with the setting fixed the next run brings dewy@demo back, and it adopts the app
    variables["dewy_instances"][0]["config"]["intervall"] = "2s"
    failed = playbook.run(variables, succeed=False)
    assert failed.failed == 1
    assert "Unable to restart service dewy@demo.service" in failed.output
    assert any("unknown key 'intervall'" in r.get("MESSAGE", "") for r in m.journal("dewy@demo.service")), \
        "the reason is in dewy@demo's journal (and systemctl status)"
    assert demo.app_env()["pid"] == app_pid
    adopted = len(m.journal("dewy@demo.service", DEWY_EVENT="app-adopted"))
    del variables["dewy_instances"][0]["config"]["intervall"]
    fixed = playbook.run(variables)
    assert fixed.changed_tasks == ["dewy : Write /etc/dewy/NAME.toml", "dewy : Restart changed dewy instances"]
    assert m.is_active("dewy@demo") == "active"
    m.wait_until(lambda: len(m.journal("dewy@demo.service", DEWY_EVENT="app-adopted")) > adopted, 30,
                 what="dewy@demo to adopt its app again")
    assert demo.app_env()["pid"] == app_pid

    # 5: an instance stopped (and its config changed): stopped and disabled, not restarted first,
    # its files kept; the other one untouched
    variables["dewy_instances"][1]["state"] = "stopped"
    variables["dewy_instances"][1]["config"]["interval"] = "2s"
    pids = dewy_pids()
    assert playbook.run(variables).changed_tasks == [
        "dewy : Write /etc/dewy/NAME.toml", "dewy : Enable and start dewy@NAME (stop and disable it for state stopped)"]
    assert len(m.journal("dewy@api.service", DEWY_EVENT="started")) == 1, "a stopped instance is not restarted"
    assert (m.is_active("dewy@api"), m.systemctl("is-enabled", "dewy@api", check=False).stdout.strip()) == ("inactive", "disabled")
    assert m.run(["curl", "-s", f"http://127.0.0.1:{ports['api']}/"], check=False).returncode != 0
    assert m.run(["test", "-f", "/etc/dewy/api.toml", "-a", "-f", "/etc/dewy/api.env"], check=False).returncode == 0

    # 6: an instance retired: its files are gone too
    variables["dewy_instances"][1]["state"] = "absent"
    playbook.run(variables)
    assert m.is_active("dewy@api") == "inactive"
    assert m.run(["ls", "/etc/dewy"]).stdout.split() == ["demo.env", "demo.toml", "example-assets.toml",
                                                          "example-server.toml", "example.env"]
    assert m.pid_of("dewy@demo.service") == pids["demo"]
    assert playbook.run(variables).changed == 0

    leaked = [i for i, output in enumerate(playbook.outputs, 1) if SECRET_MARKER in output]
    assert leaked == [], f"the secret appears in the output of run(s) {leaked}"
    assert SECRET_MARKER not in m.run(["journalctl", "-b", "-o", "cat", "--no-pager"]).stdout, \
        "a module logged the secret to the journal (modules log their arguments unless no_log)"
    assert m.failed_units() == []


def test_the_role_installs_dewy_by_name_from_a_configured_apt_repository(machine_factory: Callable[..., Machine],
                                                                       dewy_deb: Path, tmp_path: Path) -> None:
    """Without dewy_package_file, dewy_package_name comes from the host's repositories: here a flat
    repository holding the .deb, the only source the machine has (it has no network)."""
    repository = tmp_path / "apt"
    repository.mkdir()
    shutil.copy2(dewy_deb, repository / dewy_deb.name)
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repository, capture_output=True,
                           text=True, check=True, timeout=60).stdout
    (repository / "Packages").write_text(index)
    m = machine_factory(bind_ro=[(repository, "/srv/dewy-apt")])
    m.run("rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*")
    m.write("/etc/apt/sources.list.d/dewy.list", "deb [trusted=yes] file:/srv/dewy-apt ./\n")
    m.apt_get("update")
    playbook = Playbook(m, tmp_path / "ansible")
    first = playbook.run({})
    assert first.changed_tasks == ["dewy : Install dewy from the package repositories"]
    assert m.run(["dpkg-query", "-W", "-f", "${Version}", "dewy"]).stdout == dewy_deb.name.split("_")[1]
    assert m.run(["test", "-e", "/var/cache/dewy-package"], check=False).returncode == 1, "no package file was copied"
    assert playbook.run({}).changed == 0
