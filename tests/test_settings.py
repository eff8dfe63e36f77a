"""The settings model: one validation for flags and config files, one size grammar, errors placed where a value was set."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from dewy.cli import parse
from dewy.config import load
from dewy.daemon import Daemon
from dewy.errors import UsageError
from dewy.host import PlainProcess
from dewy.quantities import parse_size
from dewy.runargs import parse_run_args


def refusal(call) -> str:
    with pytest.raises(UsageError) as caught:
        call()
    return str(caught.value)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# -- one validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags, config, reason", [
    (["container", "-r", "file:///r", "--container-port", "80"],
     'mode = "container"\nregistry = "file:///r"\n[container]\ncontainer_port = 80\n',
     "dewy container deploys images: use an img://HOST/REPO registry"),
    (["server", "-r", "file:///r", "--health-path", "/up", "--", "app"],
     'mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["app"]\nhealth_path = "/up"\n',
     "to check the app through"),
    (["container", "-r", "img://h/r", "--container-port", "80", "--", "--rm"],
     'mode = "container"\nregistry = "img://h/r"\n[container]\ncontainer_port = 80\nrun_args = ["--rm"]\n',
     "run argument --rm is refused: dewy removes replicas itself once they have drained"),
    (["container", "-r", "img://h/r", "--container-port", "80", "--", "-m", "0"],
     'mode = "container"\nregistry = "img://h/r"\n[container]\ncontainer_port = 80\nrun_args = ["-m", "0"]\n',
     "run argument --memory '0': '0' must be greater than zero"),
])
def test_flags_and_config_file_refuse_alike(tmp_path, flags: list[str], config: str, reason: str) -> None:
    """A mode rule is written once: the flags and the file give the same reason, each naming the setting its way."""
    from_flags = refusal(lambda: parse(flags))
    from_file = refusal(lambda: load(write(tmp_path / "demo.toml", config)))
    assert reason in from_flags and reason in from_file
    assert from_file.startswith(f"{tmp_path / 'demo.toml'}:")


def test_each_mode_needs_its_setting_from_flags_and_files(tmp_path) -> None:
    assert "dewy server needs the app command after --" in refusal(lambda: parse(["server", "-r", "file:///r"]))
    assert "needs a [server] table with the app to run" in refusal(
        lambda: load(write(tmp_path / "demo.toml", 'mode = "server"\nregistry = "file:///r"\n')))


def test_container_ports_from_flags_and_files_alike(tmp_path) -> None:
    """No --container-port: the image's EXPOSE says it (at deploy); each --port may name its own container port."""
    flags = parse(["container", "-r", "img://h/r", "-p", "8080", "--port", "127.0.0.1:9090:9000", "-p", "[::1]:7070:7000"])
    file = load(write(tmp_path / "demo.toml", 'mode = "container"\nregistry = "img://h/r"\n[container]\n'
                      'ports = [8080, "127.0.0.1:9090:9000", "[::1]:7070:7000"]\n'))
    for settings in (flags, file):
        assert settings.container_port is None
        assert settings.ports == [("", 8080, None), ("127.0.0.1", 9090, 9000), ("::1", 7070, 7000)]
    assert "needs" not in repr(parse(["container", "-r", "img://h/r"]).ports)
    assert ("--port: bad port spec '8000-8001:3000': a range of host ports cannot map to one container port 3000"
            in refusal(lambda: parse(["container", "-r", "img://h/r", "-p", "8000-8001:3000"])))
    assert (":4: container.ports[0]: bad port spec '8080:0': container port '0' is not a port number" in refusal(
        lambda: load(write(tmp_path / "bad.toml", 'mode = "container"\nregistry = "img://h/r"\n[container]\nports = ["8080:0"]\n'))))


# -- one size grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["512m", "512M", "512mb", "512MiB", "512 MiB", "0.5g", "536870912"])
def test_one_size_grammar_everywhere(tmp_path, text: str) -> None:
    """docker's 512m and systemd-style 512MiB mean the same in a flag, a config file and a docker-run option."""
    assert parse_size(text) == 512 << 20
    assert parse(["assets", "-r", "file:///r", "--max-archive-size", text]).max_archive_size == 512 << 20
    config = write(tmp_path / "demo.toml", f'mode = "server"\nregistry = "file:///r"\n[server]\ncommand = ["a"]\n'
                                           f'[app]\nmemory_max = "{text}"\n')
    assert load(config).app.memory_max == 512 << 20
    options = parse_run_args(["-m", text, "--memory-reservation", text, "--shm-size", text], environ={})
    assert options.memory == options.memory_reservation == options.shm_size == 512 << 20


@pytest.mark.parametrize("text, seconds", [("3d", 259200.0), ("72h", 259200.0), ("250ms", 0.25), ("90", 90.0)])
def test_durations_take_days_too(tmp_path, text: str, seconds: float) -> None:
    """A cooldown of days (``--min-release-age 3d``) as well as the poll interval's seconds, in flags and files."""
    assert parse(["assets", "-r", "file:///r", "--min-release-age", text]).min_release_age == seconds
    config = write(tmp_path / "demo.toml", f'mode = "assets"\nregistry = "file:///r"\nmin_release_age = "{text}"\n')
    assert load(config).min_release_age == seconds


# -- run_args and the env file: parsed once, when the settings are made -----------------------------


def test_env_file_is_read_once_when_settings_are_made(tmp_path) -> None:
    env_file = write(tmp_path / "app.env", "TZ=UTC\n")
    settings = parse(["container", "-r", "img://h/r", "--container-port", "80", "--", "--env-file", str(env_file),
                      "-e", "MODE=prod"])
    env_file.unlink()  # what the replicas get was read at startup
    assert settings.run_options.environment == {"TZ": "UTC", "MODE": "prod"}


# -- startup errors placed at the line the value came from ------------------------------------------


def test_backend_error_names_the_line_the_value_was_read_from(tmp_path, monkeypatch) -> None:
    """The origin travels with the settings: the file changed after loading does not move the error."""
    monkeypatch.delenv("SLACK_TOKEN", raising=False)
    (tmp_path / "registry").mkdir()
    config = write(tmp_path / "demo.toml", f'''\
        mode = "assets"
        registry = "file://{tmp_path}/registry"
        dir = "{tmp_path}/site"

        notifiers = [
          "slack://deploys",
        ]
        ''')
    settings = load(config)
    config.write_text("# rewritten after dewy read it\n" * 20)
    message = refusal(lambda: Daemon.from_settings(settings, PlainProcess()))
    assert message == (f"{config}:5: notifiers[0]: slack://deploys: the slack:// notifier needs SLACK_TOKEN "
                       "(a bot token with the chat:write scope)")


def test_port_in_use_names_the_ports_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "registry").mkdir()
        config = write(tmp_path / "demo.toml", f'''\
            mode = "server"
            registry = "file://{tmp_path}/registry"
            dir = "{tmp_path}/site"
            [server]
            command = ["./current/app"]
            ports = ["127.0.0.1:{port}"]
            ''')
        from_file = refusal(lambda: Daemon.from_settings(load(config), PlainProcess()))
        from_flags = refusal(lambda: Daemon.from_settings(
            parse(["server", "-r", f"file://{tmp_path}/registry", "-d", str(tmp_path / "site"), "-p", f"127.0.0.1:{port}",
                   "--", "./current/app"]), PlainProcess()))
    assert from_file == f"{config}:6: server.ports: {from_flags}"
    assert from_flags.startswith(f"cannot listen on 127.0.0.1:{port}: ")


def test_which_container_port_each_host_port_forwards_to() -> None:
    """Explicit HOST:CONTAINER, else --container-port, else the image's one EXPOSEd TCP port; health on the first."""
    from dewy.container.ports import ContainerPorts, needs_image, parse_port_mappings, resolve
    from dewy.container.runtimes import tcp_ports
    from dewy.errors import DewyError

    both = parse_port_mappings(["8080", "9090:9000"])
    assert resolve(both, 3000, None, "img") == ContainerPorts(3000, (3000, 9000))
    assert needs_image(both, None) and not needs_image(parse_port_mappings(["9090:9000"]), None)
    exposed = tcp_ports({"ExposedPorts": {"8080/tcp": {}, "53/udp": {}}})  # a UDP port cannot be proxied
    assert exposed == [8080] and resolve(both, None, exposed, "img") == ContainerPorts(8080, (8080, 9000))
    assert resolve([], None, exposed, "img") == ContainerPorts(8080, ()), "no host port: health on the exposed one"
    assert ContainerPorts.from_label(ContainerPorts(8080, (8080, 9000)).label) == ContainerPorts(8080, (8080, 9000))
    for ports, shown in (([], "exposes no TCP port (no EXPOSE)"), ([8080, 9090], "exposes 8080, 9090")):
        with pytest.raises(DewyError) as caught:
            resolve(both, None, ports, "ghcr.io/acme/app:v1.2.0")
        assert str(caught.value).startswith(f"ghcr.io/acme/app:v1.2.0 {shown}: say which port the app serves on")


# -- upstream dewy's URL keys (its registry/, cache/ and notifier/ sources), each accepted or refused with its replacement

UPSTREAM_URLS = [
    ("registry", "ghr://acme/app?artifact=app.tgz&pre-release=true&calver=YYYY.0M.MICRO", None),
    ("registry", "s3://ap-northeast-1/acme-releases/app?endpoint=http://127.0.0.1:9000&artifact=app.tgz&pre-release=true"
                 "&calver=YYYY.0M.0D", None),
    ("registry", "s3://ap-northeast-1/acme-releases/app?region=ap-northeast-1",
     "region= is not a key of dewy's s3:// URLs: the region is the URL's first part: s3://REGION/BUCKET/PREFIX"),
    ("registry", "gs://acme-releases/app?project=acme&artifact=app.tgz&pre-release=true&calver=YYYY.0M", None),
    ("registry", "gs://acme-releases/app?project=", None),  # the credentials' project
    ("registry", "grpc://localhost:9000?no-tls=true&artifact=app.tgz&calver=YYYY.0M", None),
    ("registry", "img://ghcr.io/acme/app?pre-release=true&constraint=^1", None),
    ("registry", "img://ghcr.io/acme/app?calver=YYYY.0M.MICRO", None),
    ("registry", "img://ghcr.io/acme/app:latest", "name the repository without a tag or digest (dewy picks the newest"),
    ("artifact", "s3://ap-northeast-1/acme-releases/app/v1.0.0/app.tgz?endpoint=http://127.0.0.1:9000", None),
    ("cache", "file:///var/cache/dewy", None),
    ("cache", "file:///var/cache/dewy?registry-ttl=30s", "registry-ttl= is not a key of dewy's file:// URLs: upstream's "
                                                        "registry-ttl= has no use on a local cache; dewy shares state"),
    ("cache", "redis://127.0.0.1:6379/0?registry-ttl=30s", "write ttl=SECONDS"),
    ("cache", "s3://ap-northeast-1/acme-cache/app?registry-ttl=30s", "upstream's s3:// cache: dewy shares state across a "
                                                                    "fleet through redis://"),
    ("cache", "gs://acme-cache/app", "upstream's gs:// cache: dewy shares state across a fleet through redis://"),
    ("notifier", "slack://deploys?title=app&url=https://example.com/app&quiet=true&thread=true", None),
    ("notifier", "mail://smtp.example.com:587/ops@example.com?username=dewy&password=s3cret&from=dewy@example.com"
                 "&subject=Deploys&tls=true&quiet=true", None),
    ("notifier", "smtp://smtp.example.com:587/ops@example.com", None),
    ("notifier", "mail://smtp.example.com:587/ops@example.com?to=dev@example.com",
     "to= is not a key of dewy's mail:// URLs: the recipient is the URL's path: mail://HOST:PORT/RECIPIENT"),
    ("notifier", "smtp://smtp.example.com:587/ops@example.com?host=smtp.example.com&port=25",
     "host= is not a key of dewy's smtp:// URLs: the SMTP server is the URL's host and port"),
]


@pytest.mark.parametrize(("kind", "url", "refused"), UPSTREAM_URLS, ids=[u for _, u, _ in UPSTREAM_URLS])
def test_every_upstream_url_key_is_taken_or_refused_with_what_to_write_instead(kind: str, url: str, refused: str | None,
                                                                               monkeypatch) -> None:
    from dewy.artifacts import ARTIFACTS
    from dewy.cache import CACHES
    from dewy.notifiers import NOTIFIERS
    from dewy.registry import REGISTRIES

    monkeypatch.setenv("SLACK_TOKEN", "xoxb-test")
    plugins = {"registry": REGISTRIES, "artifact": ARTIFACTS, "cache": CACHES, "notifier": NOTIFIERS}[kind]

    def build() -> None:
        plugins.load(plugins.url(url))

    if refused is None:
        build()
    else:
        message = refusal(build)
        assert refused in message and "\n" not in message and "s3cret" not in message
