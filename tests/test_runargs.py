"""``dewy container -- RUN ARGS``: docker-run options parsed for the runtimes' APIs; refused ones named."""

from __future__ import annotations

import pytest

from dewy.container.runtimes import detect
from dewy.container.runtimes.docker import _create_kwargs as docker_kwargs
from dewy.container.runtimes.podman import _create_kwargs as podman_kwargs
from dewy.errors import UsageError
from dewy.runargs import Mount, parse_run_args


def test_accepted_options_in_every_spelling(tmp_path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\nA=from-file\n\nFROM_DEWY\nB=x=y\n")
    options = parse_run_args([
        "-e", "TZ=UTC", "--env=LANG=C.UTF-8", "-eEMPTY=", "-e", "HOME_DIR", "--env-file", str(env_file),
        "-v", "/srv/data:/data:ro,z", "--volume=cache:/cache", "--mount", "type=bind,source=/etc/app,target=/etc/app,readonly",
        "--tmpfs", "/run:size=64m", "-u", "1000:1000", "--group-add", "audio", "-w", "/app", "--entrypoint", "/app/run",
        "-m", "512m", "--memory-reservation=256m", "--cpus", "1.5", "--pids-limit", "100", "--shm-size", "64m",
        "--read-only", "--init", "--cap-drop", "ALL", "--cap-add=NET_BIND_SERVICE", "--security-opt", "no-new-privileges",
        "-l", "team=web", "--network-alias", "api", "--hostname", "web", "--add-host", "db:10.0.0.5", "--stop-signal", "SIGQUIT",
    ], environ={"HOME_DIR": "/root", "FROM_DEWY": "yes"})
    assert options.environment == {"TZ": "UTC", "LANG": "C.UTF-8", "EMPTY": "", "HOME_DIR": "/root", "A": "from-file",
                                   "FROM_DEWY": "yes", "B": "x=y"}
    assert options.mounts == [
        Mount("bind", "/data", "/srv/data", True, ["z"]),
        Mount("volume", "/cache", "cache", False, []),
        Mount("bind", "/etc/app", "/etc/app", True, []),
        Mount("tmpfs", "/run", "", False, ["size=64m"]),
    ]
    assert (options.user, options.group_add, options.workdir, options.entrypoint) == ("1000:1000", ["audio"], "/app", ["/app/run"])
    assert (options.memory, options.memory_reservation, options.nano_cpus) == (512 << 20, 256 << 20, 1_500_000_000)
    assert (options.pids_limit, options.shm_size, options.read_only, options.init) == (100, 64 << 20, True, True)
    assert (options.cap_drop, options.cap_add, options.security_opt) == (["ALL"], ["NET_BIND_SERVICE"], ["no-new-privileges"])
    assert (options.labels, options.aliases, options.hostname) == ({"team": "web"}, ["api"], "web")
    assert (options.extra_hosts, options.stop_signal) == ({"db": "10.0.0.5"}, "SIGQUIT")

    podman = podman_kwargs(options)
    assert podman["environment"]["TZ"] == "UTC" and podman["cpu_quota"] == 150_000 and podman["cpu_period"] == 100_000
    assert podman["volumes"] == {"cache": {"bind": "/cache", "mode": "rw", "extended_mode": []}}
    assert {"type": "bind", "source": "/srv/data", "target": "/data", "read_only": True, "relabel": "z"} in podman["mounts"]
    assert {"type": "tmpfs", "source": "tmpfs", "target": "/run", "size": "64m"} in podman["mounts"]
    assert podman["no_new_privileges"] is True and podman["stop_signal"] == 3 and podman["mem_limit"] == 512 << 20
    docker = docker_kwargs(options, None)
    assert docker["volumes"] == ["/srv/data:/data:ro,z", "cache:/cache:rw", "/etc/app:/etc/app:ro"]
    assert docker["tmpfs"] == {"/run": "size=64m"} and docker["nano_cpus"] == 1_500_000_000
    assert docker["security_opt"] == ["no-new-privileges"] and docker["stop_signal"] == "SIGQUIT"


@pytest.mark.parametrize("args, expected", [
    (["-p", "8080:80"], "-p is refused: dewy owns the host port"),
    (["-p8080:80"], "-p is refused"),
    (["--publish=80"], "--publish is refused"),
    (["-P"], "-P is refused"),
    (["-d"], "-d is refused: dewy always runs replicas detached"),
    (["-it"], "-it is refused: replicas run unattended"),
    (["--privileged"], "--privileged is refused"),
    (["--name=web"], "--name is refused"),
    (["--network", "host"], "--network is refused"),
    (["--net=host"], "--net is refused"),
    (["--ip", "10.0.0.2"], "--ip is refused"),
    (["--rm"], "--rm is refused"),
    (["--restart=always"], "--restart is refused"),
    (["--label-file", "x"], "--label-file is refused"),
    (["-l", "dewy.version=v9"], "dewy's own"),
    (["--label", "DEWY.app=x"], "dewy's own"),
    (["--gpus", "all"], "--gpus is not supported"),
    (["image:tag"], "run options only"),
    (["-e", "1BAD=x"], "expected NAME=VALUE"),
    (["--memory", "lots"], "'lots' is not a size"),
    (["--cpus", "0"], "greater than zero"),
    (["--cpus", "inf"], "'inf' is not a number of CPUs such as 1.5: it must be a finite number"),
    (["--cpus", "nan"], "must be a finite number"),
    (["--cpus", "1e300"], "too large"),
    (["-m", "99999999999999g"], "too large"),
    (["--pids-limit", "99999999999999999999"], "too large"),
    (["-v", "relative"], "SOURCE:/PATH"),
    (["--mount", "type=nfs,target=/x"], "type must be"),
    (["--read-only=yes"], "takes no value"),
    (["--user"], "needs a value"),
    (["--stop-signal", "SIGNOPE"], "not a signal name"),
])
def test_refused_and_bad_arguments(args: list[str], expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_run_args(args, environ={})
    assert str(caught.value).startswith("run argument ")
    assert expected in str(caught.value)


def test_runtime_detection(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("dewy.container.runtimes.PODMAN_SOCKET", str(tmp_path / "podman.sock"))
    monkeypatch.setattr("dewy.container.runtimes.DOCKER_SOCKET", str(tmp_path / "docker.sock"))
    with pytest.raises(UsageError, match="no container runtime found"):
        detect(None, {})
    assert detect("docker", {}) == ("docker", f"unix://{tmp_path / 'docker.sock'}")
    assert detect(None, {"DOCKER_HOST": "unix:///d.sock"}) == ("docker", "unix:///d.sock")
    assert detect(None, {"CONTAINER_HOST": "unix:///p.sock", "DOCKER_HOST": "unix:///d.sock"}) == ("podman", "unix:///p.sock")
    (tmp_path / "docker.sock").touch()
    assert detect(None, {})[0] == "docker"
    (tmp_path / "podman.sock").touch()
    assert detect(None, {})[0] == "podman"
