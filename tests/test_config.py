"""Config files (dewy --config /etc/dewy/NAME.toml) and systemd credentials.

Every problem in a file is one line ``FILE:LINE: message`` and exit code 2, like a bad flag.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dewy.cli import parse
from dewy.config import STATE_ROOT, TOP, TABLES, key_lines, load, load_credentials
from dewy.errors import UsageError
from dewy.settings import AppLimits, Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "etc" / "dewy"

FULL = """\
# a server, every key
mode = "server"
registry = "ghr://acme/shop?pre-release=true"
interval = "30s"
cache = "file:///var/cache/dewy/shop"
notifiers = ["slack://deploys", "mail://smtp.example.com:587/ops@example.com"]
log_level = "DEBUG"
log_format = "json"
before_deploy_hook = "test -f /etc/shop.conf"
after_deploy_hook = "logger deployed"
hook_timeout = 90
slot = "blue"
max_archive_size = "1G"
keep_releases = 3

[server]
ports = [8000, "8001-8002", "127.0.0.1:9000", "[::1]:9001"]
command = ["./current/shop", "--workers", "4"]
health_path = "/healthz"
health_timeout = "1m"
settle_time = 0.5
stop_timeout = "250ms"

[app]
user = "www-data"
group = 33
memory_max = "512M"
cpu_quota = "150%"
tasks_max = 64

[app.environment]
TZ = "UTC"
APP_ENV = "production"
"""

MINIMAL = 'mode = "assets"\nregistry = "file:///srv/releases"\n'


def write(tmp_path: Path, text: str, name: str = "demo.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UsageError) as caught:
        load(path)
    return str(caught.value)


def dewy(*args: str, cwd=None, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dewy", *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd, env=env, **kwargs)


# -- a good file --------------------------------------------------------------------------


def test_full_server_file(tmp_path) -> None:
    path = write(tmp_path, FULL, "shop.toml")
    assert load(path) == Settings(
        mode="server", registry="ghr://acme/shop?pre-release=true", interval=30.0,
        cache="file:///var/cache/dewy/shop", notifiers=["slack://deploys", "mail://smtp.example.com:587/ops@example.com"],
        log_level="debug", log_format="json", before_deploy_hook="test -f /etc/shop.conf",
        after_deploy_hook="logger deployed", hook_timeout=90.0, slot="blue", dir=Path("/var/lib/dewy/shop"),
        ports=[("", 8000), ("", 8001), ("", 8002), ("127.0.0.1", 9000), ("::1", 9001)],
        app_command=["./current/shop", "--workers", "4"], health_path="/healthz", health_timeout=60.0,
        settle_time=0.5, stop_timeout=0.25, max_archive_size=1 << 30, keep_releases=3,
        name="shop", source=path,
        app=AppLimits(user="www-data", group="33", memory_max=512 << 20, cpu_quota=150.0, tasks_max=64,
                      environment={"TZ": "UTC", "APP_ENV": "production"}),
    )


def test_defaults_match_the_command_line(tmp_path) -> None:
    settings = load(write(tmp_path, MINIMAL, "site.toml"))
    flags = parse(["assets", "--registry", "file:///srv/releases"])
    for name in ("interval", "cache", "notifiers", "log_level", "log_format", "hook_timeout", "slot",
                 "max_archive_size", "keep_releases", "ports", "app_command", "health_path", "health_timeout",
                 "settle_time", "stop_timeout", "app"):
        assert getattr(settings, name) == getattr(flags, name), name
    assert settings.name == "site"
    assert settings.dir == STATE_ROOT / "site" == Path("/var/lib/dewy/site")  # dewy@site's StateDirectory


def test_dir_and_byte_sizes(tmp_path) -> None:
    settings = load(write(tmp_path, MINIMAL + 'dir = "/srv/site"\nmax_archive_size = 1048576\n'))
    assert settings.dir == Path("/srv/site")
    assert settings.max_archive_size == 1 << 20


def test_triggers_and_gates(tmp_path) -> None:
    settings = load(write(tmp_path, MINIMAL + 'webhook = "[::1]:9000"\ndeploy_window = "Mon-Fri  09:00-17:00 UTC"\n'
                                              'min_release_age = "90m"\n'))
    assert (settings.webhook, settings.deploy_window, settings.min_release_age) == \
        (("::1", 9000), "Mon-Fri 09:00-17:00 UTC", 5400.0)


def test_relative_path_is_reported_absolute(tmp_path) -> None:
    write(tmp_path, MINIMAL + "interval = 0\n")
    result = dewy("--config", "demo.toml", cwd=tmp_path)
    assert result.stderr == f"dewy: error: {tmp_path}/demo.toml:3: interval: '0' must be greater than zero\n"


# -- each kind of problem, with its line ----------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    # TOML syntax, at the line tomllib reports
    ('mode = "assets"\nregistry = "file:///r"\ninterval = \n',
     ":3: TOML syntax error: Invalid value (column 12)"),
    ('mode = "assets"\nregistry = "file:///r"\n[server\n',
     ":3: TOML syntax error: Expected ']' at the end of a table declaration (column 8)"),
    ('mode = "assets"\nregistry = "file:///r"\nslot = "a"\nslot = "b"\n',
     ":4: TOML syntax error: a key is set twice"),
    # unknown keys and tables, with suggestions
    (MINIMAL + "\nintervall = 5\n", ":4: unknown key 'intervall'; did you mean 'interval'?"),
    (MINIMAL + 'log-level = "debug"\n', ":3: unknown key 'log-level'; did you mean 'log_level'?"),
    (MINIMAL + "hue = 1\n", ":3: unknown key 'hue'; known keys: admin_address, admin_port, after_deploy_hook, app,"),
    ('mode = "server"\nregistry = "file:///r"\n\n[server]\ncommand = ["app"]\n# poll\nintervall = 5\n',
     ":7: unknown key 'intervall' in [server]; did you mean 'interval'? "
     "('interval' is a top-level key: it goes above the first [table] header)"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\nhealth_paht = "/"\n',
     ":5: unknown key 'health_paht' in [server]; did you mean 'health_path'?"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\ninterval = 5\n',
     ":5: unknown key 'interval' in [server]; 'interval' is a top-level key"),
    (MINIMAL + "ports = [8000]\n", ":3: unknown key 'ports'; 'ports' is a key of [server]: it goes after the [server] header"),
    (MINIMAL + "\n[sever]\nports = [1]\n", ":4: unknown table [sever]; did you mean [server]?"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[server.health]\npath = "/"\n',
     ":5: unknown table [server.health] in [server]"),
    # wrong types, named
    (MINIMAL + "slot = true\n", ":3: slot: expected a string, not a boolean (true)"),
    (MINIMAL + 'notifiers = "slack://ops"\n', ":3: notifiers: expected a list such as [\"slack://deploys\"], not a string"),
    (MINIMAL + "keep_releases = \"7\"\n", ":3: keep_releases: expected an integer, not a string ('7')"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = "./app --fast"\n',
     ":4: server.command: expected a list such as [\"./current/app\", \"--port\", \"8000\"], not a string"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["./app", 4]\n',
     ":4: server.command[1]: expected a string, not an integer (4)"),
    ('mode = "server"\nregistry = "file:///r"\nserver = "yes"\n', ":3: server: expected a table ([server]), not a string"),
    (MINIMAL + "interval = [1]\n", ":3: interval: expected a duration: seconds as a number, or a string such as"),
    # bad values, with the CLI's reasons
    (MINIMAL + "interval = 0\n", ":3: interval: '0' must be greater than zero"),
    (MINIMAL + 'hook_timeout = "soon"\n', ":3: hook_timeout: 'soon' is not a duration (examples: 30, 30s, 5m)"),
    (MINIMAL + 'max_archive_size = "lots"\n', ":3: max_archive_size: 'lots' is not a size (examples: 500M, 4G)"),
    (MINIMAL + "keep_releases = 0\n", ":3: keep_releases: 0 must be at least 1"),
    # hostile numbers and nesting: refused, never a traceback
    (MINIMAL + 'max_archive_size = "inf"\n', ":3: max_archive_size: 'inf' is not a size (examples: 500M, 4G): it must be a finite number"),
    (MINIMAL + "max_archive_size = 1e400\n", ":3: max_archive_size: expected a size"),
    (MINIMAL + "max_archive_members = 0\n", ":3: max_archive_members: 0 must be at least 1"),
    (MINIMAL + 'hook_timeout = "1e400"\n', ":3: hook_timeout: '1e400' is not a duration (examples: 30, 30s, 5m): it must be a finite number"),
    (MINIMAL + "interval = inf\n", ":3: interval: 'inf' is not a duration"),
    (MINIMAL + "interval = nan\n", ":3: interval: 'nan' is not a duration"),
    (MINIMAL + "interval = -1.5\n", ":3: interval: '-1.5' must be greater than zero"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\nmemory_max = "inf"\n',
     ":6: app.memory_max: 'inf' is not a size"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\ncpu_quota = "inf%"\n',
     ":6: app.cpu_quota: 'inf%' is not a percentage such as \"150%\": it must be a finite number"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\ncpu_quota = "nan%"\n',
     ":6: app.cpu_quota: 'nan%' is not a percentage"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\ntasks_max = 99999999999999999999\n',
     ":6: app.tasks_max: 99999999999999999999 is too large"),
    (MINIMAL + "slot = " + "[" * 5000 + "]" * 5000 + "\n", ": arrays or tables nested too deeply"),
    (MINIMAL + 'log_level = "loud"\n', ":3: log_level: 'loud' is not one of debug, info, warn, error"),
    (MINIMAL + 'dir = "srv/site"\n', ":3: dir: 'srv/site' must be an absolute path"),
    ('mode = "assets"\nregistry = "ftp://host/r"\n', ":2: registry: ftp://host/r: unknown registry scheme 'ftp'"),
    (MINIMAL + 'cache = "mem://x"\n', ":3: cache: mem://x: unknown cache scheme 'mem'"),
    (MINIMAL + 'notifiers = ["slack://ops",\n  "pager://x"]\n', ":3: notifiers[1]: pager://x: unknown notifier scheme 'pager'"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\nports = [\n  8000,\n  "80x",\n]\n',
     ":5: server.ports[1]: bad port spec '80x': '80x' is not a port number"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\nports = [70000]\n',
     ":5: server.ports[0]: bad port spec '70000': port 70000 is outside 1-65535"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\nports = ["8000-8001", 8001]\n',
     ":5: server.ports: bad port spec '8001': port 8001 is given twice"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\nports = [8000]\nhealth_path = "healthz"\n',
     ":6: server.health_path: 'healthz' must start with /"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\nhealth_path = "/healthz"\n',
     ":5: server.health_path needs server.ports to check the app through"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\nmemory_max = "512X"\n',
     ":6: app.memory_max: '512X' is not a size"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\ncpu_quota = 150\n',
     ":6: app.cpu_quota: expected a percentage of one CPU as a string such as \"150%\", not an integer (150)"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\ntasks_max = 0\n',
     ":6: app.tasks_max: 0 must be at least 1"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app.environment]\nA = "1"\nB = 2\n',
     ":7: app.environment.B: expected a string, not an integer (2)"),
    ('mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\n[app]\nenvironment = { "NOT-A-NAME" = "x" }\n',
     ":6: app.environment.NOT-A-NAME: 'NOT-A-NAME' is not an environment variable name"),
    # modes and what each needs
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\nports = ["80:8080", 80]\n', ":4: container.ports: bad port spec '80': 80 is given twice"),
    ('mode = "container"\nregistry = "file:///r"\n[container]\ncontainer_port = 8080\n', ":2: registry: dewy container deploys images"),
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\ncontainer_port = 70000\n', ":4: container.container_port: 70000 is not a port number"),
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\ncontainer_port = 80\nreplicas = 0\n', ":5: container.replicas: 0 must be at least 1"),
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\ncontainer_port = 80\nruntime = "lxc"\n', ":5: container.runtime: 'lxc' is not one of podman, docker, auto"),
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\ncontainer_port = 80\nrun_args = ["-p", "80:80"]\n', ":5: container.run_args: run argument -p is refused"),
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\ncontainer_port = 80\nrun_args = "-e A=1"\n', ":5: container.run_args: expected a list"),
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\ncontainer_port = 80\ncommand = ["x"]\n', ":5: unknown key 'command' in [container]"),
    ('mode = "container"\nregistry = "img://ghcr.io/acme/shop"\n[container]\ncontainer_port = 80\n[server]\ncommand = ["x"]\n', ":5: [server] applies to mode = \"server\" only"),
    (MINIMAL + '[container]\ncontainer_port = 80\n', ":3: [container] applies to mode = \"container\" only; this file has mode = \"assets\""),
    ('registry = "file:///r"\nmode = "deploy"\n', ":2: mode: 'deploy' is not one of server, assets, container"),
    ('registry = "file:///r"\n', ":1: missing key 'mode': set mode = \"server\", \"assets\" or \"container\""),
    ('# no registry\nmode = "assets"\n', ":1: missing key 'registry': where releases are listed"),
    ('mode = "server"\nregistry = "file:///r"\n', ":1: mode = \"server\" needs a [server] table with the app to run"),
    ('mode = "server"\nregistry = "file:///r"\n\n[server]\nports = [8000]\n', ":4: missing key 'command' in [server]"),
    (MINIMAL + '[server]\ncommand = ["app"]\n', ":3: [server] applies to mode = \"server\" only; this file has mode = \"assets\""),
    (MINIMAL + 'webhook = "9000"\n', ":3: webhook: '9000' is not HOST:PORT"),
    (MINIMAL + 'deploy_window = "Mon-Fry 09:00-17:00"\n', ":3: deploy_window: 'Mon-Fry' is not a day"),
    (MINIMAL + 'min_release_age = "soon"\n', ":3: min_release_age: "),
])
def test_problem_is_reported_at_its_line(tmp_path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}{expected}"), message
    assert "\n" not in message


def test_unreadable_file(tmp_path) -> None:
    assert error_of(tmp_path / "missing.toml") == f"{tmp_path}/missing.toml: cannot read the config file: No such file or directory"
    (tmp_path / "bad.toml").write_bytes(b'mode = "assets"\nslot = "\xff"\n')
    assert error_of(tmp_path / "bad.toml") == f"{tmp_path}/bad.toml:2: not UTF-8 text"


def test_secret_in_a_url_is_not_echoed(tmp_path) -> None:
    path = write(tmp_path, 'mode = "assets"\nregistry = "pager://u:hunter2@h/x"\n')
    assert "hunter2" not in error_of(path)
    path = write(tmp_path, 'mode = "assets"\nregistry = "file:///r"\nslot = ["https://u:hunter2@h/x"]\ncache = 5\n')
    assert "hunter2" not in error_of(path)


def test_key_lines_skip_strings_arrays_and_comments() -> None:
    text = textwrap.dedent('''\
        # comment = 1
        a = """
        b = 2
        """
        c = [
          "d = 3",  # e = 4
          { f = 5 },
        ]
        "quoted key" = 'x = y'
        g.h = 1
        [t]
        i = \'\'\'
        [u]
        \'\'\'
        [ "v" . w ]
        j = {k = 1}
        ''')
    assert key_lines(text) == {
        ("a",): 2, ("c",): 5, ("quoted key",): 9, ("g",): 10, ("g", "h"): 10,
        ("t",): 11, ("t", "i"): 12, ("v",): 15, ("v", "w"): 15, ("v", "w", "j"): 16,
    }


# -- the example files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["example-server.toml", "example-assets.toml", "example-container.toml"])
def test_examples_load(name: str, monkeypatch, tmp_path) -> None:
    if name == "example-container.toml":  # its run_args name an env file that only exists on a host
        monkeypatch.setattr("dewy.runargs.read_env_file", lambda path, environ: {})
    settings = load(EXAMPLES / name)
    assert settings.name == name.removesuffix(".toml")
    assert settings.dir == Path("/var/lib/dewy") / settings.name


def test_server_example_shows_every_key() -> None:
    """Each key appears in example-server.toml, set or commented out, in its table."""
    text = (EXAMPLES / "example-server.toml").read_text()
    tables = {"": TOP, **{name: keys for name, keys in TABLES.items() if name != "container"}}
    for table, keys in tables.items():
        body = re.split(r"^\[", text, flags=re.M)
        section = body[0] if not table else next(part for part in body if part.startswith(f"{table}]"))
        for key in keys:
            shown = re.search(rf"^(# )?{key} = ", section, re.M) or re.search(rf"^\[{table}\.{key}\]$", text, re.M)
            assert shown, f"{key} missing from [{table or 'top level'}]"
    settings = load(EXAMPLES / "example-server.toml")
    assert settings.registry.startswith("ghr://")
    assert settings.ports and settings.app_command and settings.health_path
    assert settings.app.user == "www-data" and settings.app.memory_max and settings.app.cpu_quota and settings.app.tasks_max


def test_container_example_shows_every_container_key(monkeypatch) -> None:
    text = (EXAMPLES / "example-container.toml").read_text()
    section = text.split("[container]", 1)[1]
    for key in TABLES["container"]:
        assert re.search(rf"^(# )?{key} = ", section, re.M), f"{key} missing from [container]"
    monkeypatch.setattr("dewy.runargs.read_env_file", lambda path, environ: {})
    settings = load(EXAMPLES / "example-container.toml")
    assert settings.mode == "container" and settings.container_port == 8080 and settings.replicas == 3
    assert settings.ports == [("127.0.0.1", 8000, None)] and settings.runtime is None and settings.drain_time == 30
    assert settings.run_args[:2] == ["-e", "TZ=UTC"]


def test_env_example_has_placeholders_only() -> None:
    path = EXAMPLES / "example.env"
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    names = [line.partition("=")[0] for line in lines]
    assert names == ["GITHUB_TOKEN", "SLACK_TOKEN"]
    assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", line) for line in lines)
    assert "0600" in path.read_text()


# -- credentials ----------------------------------------------------------------------------


def test_credentials_become_environment_variables(tmp_path) -> None:
    (tmp_path / "GITHUB_TOKEN").write_text("ghp_secret\n")
    (tmp_path / "MAIL_PASSWORD").write_bytes(b"two\nlines\n\n")  # only one trailing newline goes
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("no-newline")
    (tmp_path / "tls.key").write_text("not an env name")
    (tmp_path / "lower_case").write_text("not an env name either")
    (tmp_path / "SUBDIR").mkdir()
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "SLACK_TOKEN": "from-env-file", "GITHUB_TOKEN": "from-env-file"}
    names = load_credentials(environ=environ)
    assert names == ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "MAIL_PASSWORD"]
    assert environ["GITHUB_TOKEN"] == "ghp_secret"  # a credential wins over EnvironmentFile
    assert environ["MAIL_PASSWORD"] == "two\nlines\n"
    assert environ["AWS_SECRET_ACCESS_KEY"] == "no-newline"
    assert environ["SLACK_TOKEN"] == "from-env-file"  # untouched without a credential
    assert "tls.key" not in environ and "lower_case" not in environ and "SUBDIR" not in environ


def test_no_credentials_directory() -> None:
    environ: dict[str, str] = {}
    assert load_credentials(environ=environ) == [] and environ == {}


def test_bad_credentials(tmp_path) -> None:
    with pytest.raises(UsageError, match="CREDENTIALS_DIRECTORY=.*cannot read it"):
        load_credentials(environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "missing")})
    (tmp_path / "TOKEN").write_bytes(b"sec\0ret")
    with pytest.raises(UsageError, match="credential TOKEN contains a NUL byte") as caught:
        load_credentials(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "sec" not in str(caught.value)


def test_daemon_gets_credentials_and_never_prints_them(tmp_path) -> None:
    """dewy --config with slack:// starts only if SLACK_TOKEN arrives, here as a credential."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "SLACK_TOKEN").write_text("xoxb-credential-secret\n")
    (tmp_path / "registry").mkdir()
    config = write(tmp_path, f'''\
        mode = "assets"
        registry = "file://{tmp_path}/registry"
        cache = "memory://"
        dir = "{tmp_path}/site"
        notifiers = ["slack://deploys"]
        ''')
    env = {**os.environ, "SLACK_API_URL": "http://127.0.0.1:9/api/", "DEWY_CACHEDIR": str(tmp_path / "cache")}
    env.pop("SLACK_TOKEN", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    refused = dewy("--config", str(config), env=env)
    assert refused.returncode == 2
    assert refused.stderr == f"dewy: error: {config}:5: notifiers[0]: slack://deploys: the slack:// notifier needs SLACK_TOKEN (a bot token with the chat:write scope)\n"

    env["CREDENTIALS_DIRECTORY"] = str(credentials)
    process = subprocess.Popen([sys.executable, "-m", "dewy", "--config", str(config)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "site").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "credential-secret" not in out + err


# -- the command line ------------------------------------------------------------------------


def test_bad_config_is_one_line_and_exit_2(tmp_path) -> None:
    path = write(tmp_path, 'mode = "assets"\nregistry = "file:///r"\n\n[server]\nintervall = 5\n', "bad.toml")
    result = dewy("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"dewy: error: {path}:5: unknown key 'intervall' in [server]; did you mean 'interval'? "
                                          "('interval' is a top-level key: it goes above the first [table] header)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"], "a refused start must not create anything"


def test_backend_url_error_gets_the_line(tmp_path) -> None:
    path = write(tmp_path, 'mode = "assets"\n\nregistry = "file:///r?pre-relase=true&token=hunter2"\n')
    result = dewy("--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (f"dewy: error: {path}:3: registry: file:///r?pre-relase=true&token=***: "
                             "unknown query key 'pre-relase'; did you mean 'pre-release'?\n")


@pytest.mark.parametrize("args", [
    ["--config", "{path}", "server", "--registry", "file:///r", "--", "app"],
    ["--config", "{path}", "assets"],
    ["assets", "--registry", "file:///r", "--config", "{path}"],
    ["--config={path}", "container"],
])
def test_config_with_a_command_is_refused(tmp_path, args: list[str]) -> None:
    path = write(tmp_path, MINIMAL)
    result = dewy(*(arg.format(path=path) for arg in args), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "--config cannot be combined with dewy" in result.stderr


def test_config_with_an_app_command_is_refused(tmp_path) -> None:
    result = dewy("--config", str(write(tmp_path, MINIMAL)), "--", "./app")
    assert result.returncode == 2
    assert "set command = [...] in the file's [server] table" in result.stderr


def test_version_does_not_load_config_support() -> None:
    code = ("import sys\nfrom dewy.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('dewy.config', 'tomllib', 'dewy.daemon') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.splitlines()[-1] == "[]"


def test_help_mentions_config() -> None:
    assert "--config FILE" in dewy("--help").stdout


def test_admin_and_telemetry_keys_are_the_flags(tmp_path) -> None:
    path = write(tmp_path, MINIMAL + 'admin_port = 18000\ntelemetry = false\notlp_endpoint = "127.0.0.1:4317"\notlp_insecure = true\n', "site.toml")
    settings = load(path)
    flags = parse(["assets", "--registry", "file:///srv/releases", "--admin-port", "18000", "--otlp-endpoint", "127.0.0.1:4317",
                   "--otlp-insecure"])
    for name in ("admin_port", "admin_address", "telemetry", "otlp_endpoint", "otlp_insecure"):
        assert getattr(settings, name) == getattr(flags, name), name
    assert settings.telemetry, "an OTLP endpoint turns telemetry on, as upstream"
    with pytest.raises(UsageError, match=r"site.toml:\d+: telemetry: expected true or false"):
        load(write(tmp_path, MINIMAL + 'telemetry = "yes"\n', "site.toml"))
