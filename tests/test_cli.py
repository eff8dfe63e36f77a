"""Startup validation: every bad input is one line on stderr and exit code 2, before anything runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dewy import __version__
from dewy.cli import parse
from dewy.errors import UsageError


def dewy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dewy", *args], capture_output=True, text=True, timeout=30, cwd=cwd)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["server", "-p", "8000", "--", "app"], "--registry"),
        (["assets", "--registry", "ftp://host/x"], "unknown registry scheme 'ftp'"),
        (["assets", "--registry", "file:///tmp/r?pre-relase=true"], "did you mean 'pre-release'"),
        (["assets", "--registry", "file:///tmp/r?colour=1"], "unknown query key 'colour'"),
        (["assets", "--registry", "file:///tmp/r?pre-release=maybe"], "not a boolean"),
        (["server", "--registry", "file:///tmp/r", "-p", "80x", "--", "app"], "--port"),
        (["server", "--registry", "file:///tmp/r", "-p", "9000-8000", "--", "app"], "--port"),
        (["server", "--registry", "file:///tmp/r", "-p", "70000", "--", "app"], "--port"),
        (["assets", "--registry", "file:///tmp/r", "-i", "0"], "greater than zero"),
        (["assets", "--registry", "file:///tmp/r", "-i", "-5"], "interval"),
        (["server", "--registry", "file:///tmp/r", "-p", "8000"], "needs the app command"),
        (["assets", "--registry", "file:///tmp/r", "--", "app"], "runs no app"),
        (["assets", "--registry", "file:///tmp/r", "--cache", "mem://"], "unknown cache scheme"),
        (["assets", "--registry", "file:///tmp/r", "--log-level", "loud"], "--log-level"),
        (["container", "--registry", "img://h/r", "-p", "8080:70000"], "--port: bad port spec '8080:70000': container port"),
        (["container", "--registry", "file:///tmp/r", "--container-port", "8080"], "img://HOST/REPO"),
        (["container", "--registry", "img://h/r", "--container-port", "0"], "--container-port"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--replicas", "0"], "--replicas"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--runtime", "lxc"], "--runtime"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--port", "80x"], "--port"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--health-path", "health"], "--health-path"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "-p", "80:80"], "-p is refused: dewy owns the host port"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--publish=80:80"], "--publish is refused"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "-d"], "-d is refused"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--privileged"], "--privileged is refused"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--name", "web"], "--name is refused"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--network=host"], "--network is refused"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--restart", "always"], "--restart is refused"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--rm"], "--rm is refused"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "-l", "dewy.app=other"], "dewy's own"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--gpus", "all"], "--gpus is not supported"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "-e"], "--env needs a value"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "--env-file", "/nonexistent/env"], "cannot read it"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--", "sh", "-c", "x"], "run options only"),
        (["bogus"], "invalid choice"),
        (["deploy", "-d", "/tmp"], "the following arguments are required: --now"),
        (["rollback"], "dewy rollback needs NAME (dewy@NAME) or -d DIR"),
        (["pin", "-d", "/tmp"], "dewy pin needs the VERSION to hold"),
        (["pause", "demo", "-d", "/tmp"], "give NAME or -d DIR, not both"),
        (["pause", "no-such-instance"], "no dewy instance 'no-such-instance'"),
        ([], "missing command"),
        # hostile or broken values: one line, never a traceback
        (["assets", "-r", "ghr://[oops"], "not a valid URL: an unmatched [ or ]"),
        (["assets", "-r", "file:///tmp/r", "-c", "redis://u:pw@[::1"], "not a valid URL"),
        (["assets", "-r", "file:///tmp/r", "--notifier", "mail://[::1/a@b"], "not a valid URL"),
        (["assets", "-r", "file:///tmp/r", "--max-archive-size", "inf"], "--max-archive-size: 'inf' is not a size"),
        (["assets", "-r", "file:///tmp/r", "--max-archive-size", "1e400"], "must be a finite number"),
        (["assets", "-r", "file:///tmp/r", "--max-archive-size", "nan"], "must be a finite number"),
        (["assets", "-r", "file:///tmp/r", "--max-archive-size", "9999999999T"], "too large (at most 1 EiB)"),
        (["assets", "-r", "file:///tmp/r", "-i", "inf"], "-i/--interval: 'inf' is not a duration"),
        (["assets", "-r", "file:///tmp/r", "-i", "nan"], "must be a finite number"),
        (["assets", "-r", "file:///tmp/r", "--hook-timeout", "1e400"], "must be a finite number"),
        (["assets", "-r", "file:///tmp/r", "--hook-timeout", "1e12"], "too large (at most a year)"),
        (["assets", "-r", "file:///tmp/r", "--max-archive-members", "0"], "--max-archive-members: 0 must be at least 1"),
        (["assets", "-r", "file:///tmp/r", "--max-archive-members", "1e9"], "is not a whole number"),
        (["assets", "-r", "file:///tmp/r", "--keep-releases", "-1"], "--keep-releases"),
        (["container", "--registry", "img://h/r", "--container-port", "8080", "--drain-time", "inf"], "--drain-time"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], expected: str, tmp_path) -> None:
    result = dewy(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dewy: error: ")
    assert expected in lines[0]
    assert not list(tmp_path.iterdir()), "a refused start must not create anything"


def test_password_in_url_is_not_echoed(tmp_path) -> None:
    result = dewy("assets", "--registry", "file:///tmp/r?token=hunter2&nope=1", cwd=tmp_path)
    assert result.returncode == 2
    assert "hunter2" not in result.stderr


def test_version_flag() -> None:
    for flag in ("-v", "--version"):
        result = dewy(flag)
        assert result.returncode == 0
        assert result.stdout.strip() == f"dewy {__version__}"


def test_ports_lists_and_ranges() -> None:
    settings = parse(["server", "--registry", "file:///r", "-p", "8000,8001", "-p", "9000-9002", "--", "app", "--flag"])
    assert [port for _, port in settings.ports] == [8000, 8001, 9000, 9001, 9002]
    assert settings.app_command == ["app", "--flag"]


def test_upstream_short_flags_and_deprecated_notify(capsys) -> None:
    settings = parse(["assets", "-r", "file:///r", "-i", "5", "-c", "memory://", "-l", "debug", "-f", "json",
                      "-s", "blue", "-d", "/srv/x", "--notify", "slack://ops"])
    assert (settings.interval, settings.cache, settings.log_level, settings.log_format, settings.slot) == (5, "memory://", "debug", "json", "blue")
    assert str(settings.dir) == "/srv/x"
    assert settings.notifiers == ["slack://ops"]
    assert "--notify is deprecated" in capsys.readouterr().err


def test_poll_backoff_max_and_name_as_upstream_spells_them() -> None:
    settings = parse(["assets", "-r", "file:///r", "--poll-backoff-max", "45s", "-n", "shop"])
    assert (settings.poll_backoff_max, settings.app_name) == (45.0, "shop")  # app_name: logs, units, labels
    assert parse(["assets", "-r", "file:///r", "--name", "shop"]).name == "shop"
    assert parse(["assets", "-r", "file:///r"]).poll_backoff_max == 300.0
    with pytest.raises(UsageError, match="--poll-backoff-max"):
        parse(["assets", "-r", "file:///r", "--poll-backoff-max", "soon"])


def test_calver_flag_becomes_the_registry_urls_calver_key_as_upstream() -> None:
    assert parse(["assets", "-r", "file:///r", "--calver", "YYYY.0M.MICRO"]).registry == "file:///r?calver=YYYY.0M.MICRO"
    assert parse(["assets", "-r", "ghr://o/r?pre-release=true", "--calver", "YY.MM"]).registry == "ghr://o/r?pre-release=true&calver=YY.MM"
    with pytest.raises(UsageError, match="--calver: calver format 'x' has no specifier"):
        parse(["assets", "-r", "file:///r", "--calver", "x"])
    with pytest.raises(UsageError, match="--calver: the registry URL has calver= already"):
        parse(["assets", "-r", "file:///r?calver=YYYY", "--calver", "YYYY"])


# upstream dewy 2.x's flags (its cli.go) as its users write them in unit files, and what each sets here;
# -i/-c/-l/-f/-s/-d, -n, --poll-backoff-max and --calver are above, --admin-port/--telemetry/--otlp-* run in test_telemetry
UPSTREAM_FLAGS = [
    (["server", "--registry", "ghr://acme/app", "-p", "8000", "--port", "8001-8002", "--", "/opt/app/current/app"],
     {"registry": "ghr://acme/app", "ports": [("", 8000), ("", 8001), ("", 8002)], "app_command": ["/opt/app/current/app"]}),
    (["assets", "--registry", "ghr://acme/site", "--notifier", "slack://deploys?title=site", "--before-deploy-hook", "pg_dump db",
      "--after-deploy-hook", "echo done"],
     {"notifiers": ["slack://deploys?title=site"], "before_deploy_hook": "pg_dump db", "after_deploy_hook": "echo done"}),
    (["container", "--registry", "img://ghcr.io/acme/app", "--port", "8080", "-p", "9090:9000", "--replicas", "3",
      "--health-path", "/health", "--health-timeout", "30", "--drain-time", "45", "--runtime", "docker",
      "--proxy-idle-timeout", "300", "--cmd", "./server", "--cmd=--fast", "--admin-port", "17539",
      "--", "-e", "DATABASE_URL=postgres://db/app", "-l", "team=web"],
     {"ports": [("", 8080, None), ("", 9090, 9000)], "container_port": None, "replicas": 3, "health_path": "/health",
      "health_timeout": 30.0, "drain_time": 45.0, "runtime": "docker", "proxy_idle_timeout": 300.0,
      "cmd": ["./server", "--fast"], "admin_port": 17539}),
    (["container", "--registry", "img://ghcr.io/acme/app", "-p", "8080", "--proxy-idle-timeout", "0", "--runtime", "podman"],
     {"proxy_idle_timeout": 0.0, "runtime": "podman", "cmd": []}),
    (["assets", "--registry", "ghr://acme/site", "--telemetry", "--otlp-endpoint", "localhost:4317", "--otlp-insecure"],
     {"telemetry": True, "otlp_endpoint": "localhost:4317", "otlp_insecure": True}),
]


@pytest.mark.parametrize(("args", "expected"), UPSTREAM_FLAGS, ids=[a[0] + " " + a[2] for a, _ in UPSTREAM_FLAGS])
def test_every_upstream_flag_is_taken_as_upstream_means_it(args: list[str], expected: dict) -> None:
    settings = parse(args)
    assert {name: getattr(settings, name) for name in expected} == expected


def test_container_command_and_labels_reach_the_replicas_options() -> None:
    """--cmd replaces the image's CMD (upstream's flag); -l after -- is a label beside dewy's own."""
    settings = parse(["container", "-r", "img://h/r", "--cmd", "./server", "--cmd=--port=3000", "--", "-l", "team=web"])
    assert settings.run_options.command == ["./server", "--port=3000"] and settings.run_options.labels == {"team": "web"}
    assert parse(["container", "-r", "img://h/r"]).run_options.command is None, "without --cmd the image's CMD runs"


def test_upstream_help_flags() -> None:
    for flag in ("-h", "--help"):
        done = dewy(flag)
        assert done.returncode == 0 and "container" in done.stdout and "--version" in done.stdout
