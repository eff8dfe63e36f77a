"""The OS packages (packaging/): the deb of each supported Debian release, built from this checkout
in a clean root of that release (`make deb SUITE=...`) and installed with ``apt-get install
./dewy_*.deb`` into a booted machine of the same release (systemd as PID 1 in systemd-nspawn),
and the rpm's files, scriptlets, and an install with ``rpm -i`` into a booted machine.

The debs are built once per state of the packaged sources (cached in /var/cache/dewy-tests/packages,
see nspawn.build_package); the upgrade test installs the same deb repacked under a newer version.
tests/system/test_service.py runs against the installed deb too whenever this machine can build
it (conftest.install_kind), so the whole dewy@.service scenario is proven on the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import ClientLoop, free_port, get
from tests.system import nspawn
from tests.system.nspawn import Machine
from tests.system.test_service import Demo, start

pytestmark = pytest.mark.system

REPO = nspawn.REPO
VENV = nspawn.PACKAGED_VENV
CONFFILES = ["/etc/dewy/example-assets.toml", "/etc/dewy/example-server.toml", "/etc/dewy/example.env"]

# Every backend, dewy's module and the library under it, imported by the package's
# interpreter; boto3 builds a client for every service model the package keeps (build-venv.sh).
IMPORT_EVERYTHING = r"""
import importlib, json, ssl, sys
modules = ["dewy.registry.ghr", "dewy.registry.file", "dewy.registry.s3", "dewy.artifacts.s3",
           "dewy.registry.gs", "dewy.artifacts.gs", "dewy.registry.grpc", "dewy.cache.redis",
           "dewy.cache.consul", "dewy.notifiers.slack", "dewy.notifiers.mail", "dewy.daemon",
           "dewy.registry.img", "dewy.container.runtimes.podman", "dewy.container.runtimes.docker", "podman", "docker",
           "boto3", "botocore", "google.cloud.storage", "google.auth", "grpc", "google.protobuf",
           "redis", "redis.asyncio", "slack_sdk", "dbus_next", "httpx", "semver", "certifi",
           "systemd.journal", "systemd.daemon"]
where = {name: importlib.import_module(name).__file__ for name in modules}
import boto3, certifi, grpc, httpx
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from slack_sdk import WebClient
for service in ("s3", "sts", "sso", "sso-oidc", "signin"):
    boto3.session.Session().client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
storage.Client(project="p", credentials=AnonymousCredentials())
grpc.insecure_channel("127.0.0.1:9").close()
httpx.Client().close()
WebClient(token="xoxb-test")
from dewy.proto import dewy_pb2
dewy_pb2.CurrentRequest(arch="amd64", os="linux")
print(json.dumps({"where": where, "cafile": certifi.where(), "path": sys.path, "prefix": sys.prefix}))
"""


@pytest.fixture
def packaged(machine_factory: Callable[..., Machine], tmp_path: Path) -> Demo:
    """A booted machine with the deb installed and a file:// registry directory bound in."""
    registry = tmp_path / "registry"
    registry.mkdir()
    machine = machine_factory(install="deb", bind=[registry])
    return Demo(machine, registry, free_port())


def dpkg_version(m: Machine) -> str:
    return m.run(["dpkg-query", "-W", "-f", "${Version}", "dewy"]).stdout


def system_python(m: Machine) -> tuple[str, str]:
    """(the machine's python3 by its versioned path, its X.Y): /usr/bin/python3.13, 3.13 on Debian 13."""
    path = m.run(["readlink", "-f", "/usr/bin/python3"]).stdout.strip()
    return path, path.removeprefix("/usr/bin/python")


def venv_site(m: Machine) -> str:
    return f"{VENV}/lib/python{system_python(m)[1]}/site-packages"


# The release the host's rpm and Vagrant box match: the rpm is built with this host's python3.
HOST_SUITE = nspawn.host_suite()


@pytest.mark.every_suite
def test_the_deb_installs_offline_as_debian_expects(packaged: Demo, dewy_deb: Path, suite: str) -> None:
    m = packaged.m
    assert m.run(["dpkg-query", "-W", "-f", "${Status}", "dewy"]).stdout == "install ok installed"
    assert dpkg_version(m) == dewy_deb.name.split("_")[1]
    assert dewy_deb.parent.name.endswith(f"-{suite}-deb")
    release = m.read("/etc/debian_version").split(".")[0]
    assert dpkg_version(m).endswith(f"~deb{release}u1"), "the version names the release it was built for"
    assert m.run(["dewy", "--version"]).stdout.strip() == f"dewy {_upstream_version()}"
    # the interpreter is this release's python3, with python3-systemd from the system site-packages
    python, version = system_python(m)
    assert m.run(["readlink", "-f", f"{VENV}/bin/python3"]).stdout.strip() == python
    depends = m.run(["dpkg-query", "-W", "-f", "${Depends}", "dewy"]).stdout
    major, minor = version.split(".")
    assert f"python{version}" in depends.split(", ")
    assert f"python3 (>= {version}~)" in depends and f"python3 (<< {major}.{int(minor) + 1}~)" in depends
    assert "include-system-site-packages = true" in m.read(f"{VENV}/pyvenv.cfg")
    site = venv_site(m)
    # shipped without pip, setuptools or tests; byte code written by the postinst, not shipped
    for absent in ("pip", "setuptools", "pkg_resources", "wheel", "_distutils_hack"):
        assert m.run(["test", "-e", f"{site}/{absent}"], check=False).returncode == 1, absent
    assert m.run(f"find {site} -type d -name tests | wc -l").stdout.strip() == "0"
    listed = m.run(["dpkg", "-L", "dewy"]).stdout
    assert ".pyc" not in listed and "__pycache__" not in listed
    compiled = int(m.run(f"find {VENV} -name '*.cpython-{major}{minor}.pyc' | wc -l").stdout)
    assert compiled > 1000, "the postinst byte-compiles the venv"
    m.run(["dpkg", "--verify", "dewy"])            # nothing the package shipped was changed
    # units: installed, the template neither enabled nor started
    assert m.run(["test", "-f", "/usr/lib/systemd/system/dewy@.service"], check=False).returncode == 0
    assert m.systemctl("is-enabled", "dewy@.service", check=False).stdout.strip() in ("disabled", "indirect")
    assert m.systemctl("list-units", "--all", "--plain", "--no-legend", "dewy*").stdout.strip() == ""
    assert m.failed_units() == []
    # configuration: examples as conffiles, under names that start nothing
    conffiles = m.run(["dpkg-query", "-W", "-f", "${Conffiles}", "dewy"]).stdout
    assert sorted(line.split()[0] for line in conffiles.splitlines() if line.strip()) == CONFFILES
    assert m.run(["ls", "/etc/dewy"]).stdout.split() == ["example-assets.toml", "example-server.toml", "example.env"]
    # the man page, generated from the CLI's help
    page = m.run("zcat /usr/share/man/man8/dewy.8.gz").stdout
    assert page.startswith(".TH DEWY 8") and "\\-\\-registry" in page and "\\-\\-health\\-path" in page
    size = m.run(["du", "-sk", "/usr/lib/dewy"]).stdout.split()[0]
    declared = m.run(["dpkg-query", "-W", "-f", "${Installed-Size}", "dewy"]).stdout
    print(f"\ninstalled: Installed-Size {declared} KiB; /usr/lib/dewy with byte code {size} KiB;"
          f" install took {m.install_seconds:.1f}s")


@pytest.mark.every_suite
def test_every_backend_imports_from_the_installed_package(packaged: Demo) -> None:
    m = packaged.m
    site = venv_site(m)
    result = json.loads(m.run([f"{VENV}/bin/python3", "-I", "-c", IMPORT_EVERYTHING], cwd="/tmp").stdout)
    for module, path in result["where"].items():
        expected = "/usr/lib/python3/dist-packages/systemd/" if module.startswith("systemd") else f"{site}/"
        assert path.startswith(expected), (module, path)
    assert result["prefix"] == VENV
    # certifi's bundle is the system CA store (ca-certificates), as for Debian's python3-certifi
    assert m.run(["readlink", "-f", result["cafile"]]).stdout.strip() == "/etc/ssl/certs/ca-certificates.crt"
    # /usr/bin/dewy runs isolated: a module in the working directory cannot shadow dewy's imports
    m.write("/var/tmp/shadow/semver.py", "raise SystemExit('imported from the working directory')\n")
    m.write("/var/tmp/shadow/dewy/__init__.py", "raise SystemExit('imported from the working directory')\n")
    assert m.run(["dewy", "--version"], cwd="/var/tmp/shadow").stdout.strip() == f"dewy {_upstream_version()}"


@pytest.mark.every_suite
def test_enable_now_deploys_from_a_file_registry_and_serves(packaged: Demo) -> None:
    start(packaged)                        # systemctl enable --now dewy@demo; v1.0.0 deployed
    assert get(packaged.port)[1] == "v1.0.0"
    assert packaged.scopes() == ["dewy-demo-g1.scope"]
    status = json.loads(packaged.m.run(["dewy", "status", "demo", "--json"]).stdout)
    assert status["version"] == "v1.0.0" and status["app"]["running"]
    with ClientLoop(packaged.port) as client:
        packaged.release("v1.1.0")
        packaged.deployed("v1.1.0")
    assert client.failures == [] and client.ok > 10
    assert packaged.m.systemctl("is-enabled", "dewy@demo").stdout.strip() == "enabled"


def test_s3_and_gs_registries_deploy_from_the_installed_package(packaged: Demo) -> None:
    """The bundled boto3 (with its trimmed service models) and google-cloud-storage, for real:
    dewy@s3 from moto and dewy@gs from the GCS emulator, both on the host's loopback."""
    objectstores = pytest.importorskip("tests.objectstores")
    m = packaged.m
    with objectstores.moto_server() as moto, objectstores.gcs_emulator() as gcs:
        s3_bucket, gs_bucket = moto.bucket(), gcs.bucket()
        moto.publish(s3_bucket, "apps/web/", "v1.0.0")
        gcs.publish(gs_bucket, "apps/web/", "v1.0.0")
        ports = {"s3": free_port(), "gs": free_port()}
        registries = {"s3": f"s3://{objectstores.REGION}/{s3_bucket}/apps/web?endpoint={moto.endpoint}",
                      "gs": f"gs://test-project/{gs_bucket}/apps/web"}
        envs = {"s3": "".join(f"{k}={v}\n" for k, v in objectstores.AWS_ENV.items()),
                "gs": f"STORAGE_EMULATOR_HOST={gcs.host}\n"}
        for name in ("s3", "gs"):
            m.write(f"/etc/dewy/{name}.toml", f"""
mode = "server"
registry = "{registries[name]}"
interval = "0.5s"
[server]
ports = ["127.0.0.1:{ports[name]}"]
command = ["/usr/bin/python3", "current/app.py"]
health_path = "/health"
settle_time = "0.5s"
""")
            m.write(f"/etc/dewy/{name}.env", envs[name], mode=0o600)
        m.systemctl("enable", "--now", "dewy@s3", "dewy@gs", timeout=120)
        for name in ("s3", "gs"):
            m.wait_until(lambda: m.journal(f"dewy@{name}.service", DEWY_EVENT="deployed", DEWY_VERSION="v1.0.0"),
                         60, what=f"v1.0.0 deployed by dewy@{name}")
            assert get(ports[name])[1] == "v1.0.0"
        audit = [k for k in moto.keys(s3_bucket, "apps/web/") if "/shipped_to_" in k]
        assert audit and audit[0].startswith("apps/web/v1.0.0/shipped_to_")
        assert [k for k in gcs.keys(gs_bucket, "apps/web/") if "/shipped_to_" in k]
        m.systemctl("stop", "dewy@s3", "dewy@gs", timeout=120)


@pytest.mark.every_suite
def test_upgrade_restarts_dewy_and_keeps_the_app_serving(machine_factory: Callable[..., Machine], tmp_path: Path,
                                                          dewy_deb: Path, dewy_deb_next: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    m = machine_factory(install="deb", bind=[registry], bind_ro=[(dewy_deb_next.parent, "/packages-next")])
    demo = Demo(m, registry, free_port())
    start(demo)
    m.write("/etc/dewy/example-server.toml", m.read("/etc/dewy/example-server.toml") + "# edited by the admin\n")
    dewy_pid, app = demo.dewy_pid(), demo.app_env()
    old_version = dpkg_version(m)
    adopted_before = len(m.journal("dewy@demo.service", DEWY_EVENT="app-adopted"))
    with ClientLoop(demo.port) as client:
        time.sleep(1)
        m.install_deb(f"/packages-next/{dewy_deb_next.name}")      # postinst: try-restart dewy@demo
        m.wait_until(lambda: len(m.journal("dewy@demo.service", DEWY_EVENT="app-adopted")) > adopted_before, 30,
                     what="the upgraded dewy to adopt the app")
        time.sleep(1)
    assert dpkg_version(m) != old_version and dpkg_version(m) == dewy_deb_next.name.split("_")[1]
    assert client.failures == []
    assert client.ok > 20
    assert demo.dewy_pid() not in (0, dewy_pid), "dewy itself was restarted on the new code"
    after = demo.app_env()
    assert after["pid"] == app["pid"], "the app generation kept running"
    assert after["env"]["SERVER_STARTER_GENERATION"] == app["env"]["SERVER_STARTER_GENERATION"] == "1"
    assert demo.scopes() == ["dewy-demo-g1.scope"]
    adopted = m.journal("dewy@demo.service", DEWY_EVENT="app-adopted")[-1]
    assert adopted["DEWY_PID"] == str(app["pid"])
    assert len(m.journal("dewy@demo.service", DEWY_EVENT="deployed")) == 1, "nothing was redeployed"
    # configuration kept: the admin's edit of a conffile and the admin's own file
    assert m.read("/etc/dewy/example-server.toml").endswith("# edited by the admin\n")
    assert m.run(["test", "-f", "/etc/dewy/demo.toml"], check=False).returncode == 0
    assert m.is_active("dewy@demo") == "active"
    assert m.failed_units() == []


# What purging dewy may leave: the admin's own configuration (policy: never delete what the
# admin wrote) and the journal (the host's log). Paths the package manager itself keeps.
ALLOWED_AFTER_PURGE = {"/etc/dewy", "/etc/dewy/demo.toml"}
SNAPSHOT = ("find / -xdev \\( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache/apt -o -path /var/log"
            " -o -path /var/cache/debconf -o -path /var/lib/systemd -o -path /etc/ld.so.cache \\) -prune"
            " -o -print | sort")


@pytest.mark.every_suite
def test_purge_removes_everything_dewy_created(machine_factory: Callable[..., Machine], tmp_path: Path,
                                                dewy_deb: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    m = machine_factory(bind=[registry], bind_ro=[(dewy_deb.parent, nspawn.PACKAGES_INSIDE)])
    before = set(m.run(SNAPSHOT, timeout=120).stdout.splitlines())
    m.install_deb(f"{nspawn.PACKAGES_INSIDE}/{dewy_deb.name}")
    demo = Demo(m, registry, free_port())
    start(demo)                                    # state in /var/lib/dewy/demo, downloads in /var/cache/dewy/demo
    app_pid = demo.app_env()["pid"]
    assert m.run(["test", "-d", "/var/lib/dewy/demo/releases"], check=False).returncode == 0
    m.apt_get("purge", "dewy")
    assert m.run(["dpkg-query", "-W", "-f", "${Status}", "dewy"], check=False).stdout.strip() in ("", "unknown ok not-installed")
    assert m.run(["ps", "-p", str(app_pid)], check=False).returncode != 0, "the app stopped with dewy"
    assert m.systemctl("list-units", "--all", "--plain", "--no-legend", "dewy*").stdout.strip() == ""
    with pytest.raises(OSError):
        get(demo.port, timeout=1)
    after = set(m.run(SNAPSHOT, timeout=120).stdout.splitlines())
    left = sorted(after - before - ALLOWED_AFTER_PURGE)
    assert left == [], f"left behind by the purge: {left}"
    gone = sorted(p for p in before - after if not p.startswith(("/tmp", "/var/tmp")))
    assert gone == [], f"removed by dewy's install/purge although not dewy's: {gone}"
    assert m.failed_units() == []


@pytest.mark.parametrize("suite", [HOST_SUITE], indirect=True)
def test_rpm_installs_the_same_files_with_the_same_scriptlets(dewy_deb: Path, dewy_rpm: Path) -> None:
    check = subprocess.run([sys.executable, str(REPO / "packaging" / "check-packages.py"), str(dewy_deb), str(dewy_rpm)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    print(f"\n{check.stdout.strip()}")
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(dewy_rpm)], capture_output=True, text=True,
                             check=True).stdout
    parts = dict(re.findall(r"^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet \(using|\Z)", scripts, re.S | re.M))
    assert set(parts) == {"preinstall", "postinstall", "preuninstall", "postuninstall", "posttrans"}, sorted(parts)
    # upgrade: marker in %pre, byte code and try-restart of running dewy@ instances once the old files are gone
    assert "if [ $1 -ge 2 ]" in parts["preinstall"]
    assert "compileall" in parts["posttrans"] and "try-restart $units" in parts["posttrans"]
    assert "'dewy@*.service'" in parts["posttrans"]
    # erase (and only erase) stops the instances; byte code removed in every case; daemon-reload after
    assert re.search(r"if \[ \$1 -eq 0 \].*\n.*list-units --all --type=service.*'dewy@\*\.service'", parts["preuninstall"])
    assert "__pycache__" in parts["preuninstall"]
    assert "daemon-reload" in parts["postuninstall"]
    assert "stop" not in parts["posttrans"] and "restart" not in parts["preuninstall"]
    requires = subprocess.run(["rpm", "-qp", "--requires", str(dewy_rpm)], capture_output=True, text=True, check=True).stdout
    host_python = os.path.realpath("/usr/bin/python3")
    assert {host_python, "python3-systemd", "ca-certificates"} <= set(requires.split())
    provides = subprocess.run(["rpm", "-qp", "--provides", str(dewy_rpm)], capture_output=True, text=True, check=True).stdout
    assert "bundled(python3dist(boto3))" in provides
    assert not [line for line in provides.splitlines() if line.startswith("python3dist(")], "bundled libraries leak"


@pytest.mark.parametrize("suite", [HOST_SUITE], indirect=True)
def test_the_rpm_installs_with_rpm_runs_its_scriptlets_and_deploys(machine_factory: Callable[..., Machine],
                                                                   tmp_path: Path, dewy_rpm: Path) -> None:
    """The nearest thing to an RPM system reachable here: a booted Debian machine with an rpm
    database, the rpm installed with ``rpm -i --nodeps`` (Debian's python3, python3-systemd and
    ca-certificates stand in for its Requires, which rpm cannot see in dpkg's database)."""
    registry = tmp_path / "registry"
    registry.mkdir()
    m = machine_factory(bind=[registry], bind_ro=[(dewy_rpm.parent, "/rpms")])
    m.run(["rpm", "--initdb"])
    # Debian 12's rpm refuses to install on Debian without --force-debian; Debian 13's has no such option.
    force = ["--force-debian"] if "--force-debian" in m.run(["rpm", "--help"]).stdout else []
    m.run(["rpm", "-i", "--nodeps", *force, f"/rpms/{dewy_rpm.name}"], timeout=300)
    assert m.run(["rpm", "-q", "--qf", "%{NAME} %{VERSION}", "dewy"]).stdout == f"dewy {_upstream_version()}"
    assert m.run(["rpm", "-qf", "--qf", "%{NAME}", "/usr/lib/systemd/system/dewy@.service"]).stdout == "dewy"
    _, version = system_python(m)
    compiled = int(m.run(f"find {VENV} -name '*.cpython-{version.replace('.', '')}.pyc' | wc -l").stdout)
    assert compiled > 1000, "%posttrans byte-compiles the venv"
    assert m.run(["dewy", "--version"]).stdout.strip() == f"dewy {_upstream_version()}"
    demo = Demo(m, registry, free_port())
    start(demo)                                     # systemctl enable --now dewy@demo from the rpm's unit
    assert get(demo.port)[1] == "v1.0.0"
    assert demo.scopes() == ["dewy-demo-g1.scope"]
    app_pid = demo.app_env()["pid"]
    m.run(["rpm", "-e", "--nodeps", "dewy"], timeout=120)        # %preun stops every dewy@ instance
    assert m.is_active("dewy@demo") in ("inactive", "failed") and demo.scopes() == []
    assert m.run(["ps", "-p", str(app_pid)], check=False).returncode != 0
    assert m.run(["test", "-e", "/usr/lib/dewy"], check=False).returncode == 1, "erase leaves no byte code behind"


@pytest.mark.every_suite
def test_the_releases_own_lintian_finds_no_errors_or_warnings(dewy_deb: Path) -> None:
    """`make deb SUITE=` fails when lintian, run in the clean build root, reports an error or a
    warning; this reads what that lintian said about the package the other tests install."""
    said = (dewy_deb.parent / "lintian.log").read_text()
    assert [line for line in said.splitlines() if line.startswith(("E:", "W:"))] == [], said


@pytest.mark.parametrize("suite", ["trixie"], indirect=True)
def test_a_rebuild_of_the_same_tree_is_the_same_package(dewy_deb: Path, suite: str, tmp_path: Path) -> None:
    """`make deb SUITE=` from a clean copy of the same sources gives a bit-identical .deb (the
    version suffix, its changelog date and every mtime derive from the tree, no build path stays)."""
    source = tmp_path / "dewy"
    nspawn._srctree().copy(source, REPO)
    env = {**os.environ, "DEWY_BUILD_CACHE": str(nspawn.CACHE / "build"), "PIP_CACHE_DIR": str(nspawn.CACHE / "pip")}
    result = subprocess.run(["make", "-C", str(source), "deb", f"SUITE={suite}", f"DIST={tmp_path / 'dist'}"],
                            env=env, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    again = tmp_path / "dist" / suite / dewy_deb.name
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(dewy_deb.read_bytes()).hexdigest()


def test_rpmlint_finds_no_errors_or_warnings(dewy_rpm: Path) -> None:
    rpmlint = subprocess.run(["rpmlint", "-c", "packaging/rpm/rpmlint.toml", "-r", "packaging/rpm/dewy.rpmlintrc",
                              "packaging/rpm/dewy.spec", str(dewy_rpm)], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert rpmlint.returncode == 0, rpmlint.stdout + rpmlint.stderr
    assert "0 errors, 0 warnings" in rpmlint.stdout


def _upstream_version() -> str:
    return re.search(r'^__version__ = "(.+)"$', (REPO / "dewy" / "__init__.py").read_text(), re.M).group(1)



def vagrant_provisioner() -> str:
    """The shell provisioner of the repository's Vagrantfile."""
    text = (REPO / "Vagrantfile").read_text()
    body = re.search(r'config\.vm\.provision "shell".*?<<~\'SHELL\'\n(.*?)\n\s*SHELL\n', text, re.S)
    assert body, "no shell provisioner in the Vagrantfile"
    return textwrap.dedent(body.group(1)) + "\n"


@pytest.mark.parametrize("suite", ["bookworm"], indirect=True)       # the Vagrantfile's box is Debian 12
def test_vagrantfile_validates_and_its_provisioner_runs_on_debian_12(machine_factory: Callable[..., Machine],
                                                                      tmp_path: Path, dewy_deb: Path) -> None:
    """`vagrant validate`, then the provisioner itself in a booted Debian 12 (systemd-nspawn standing
    in for the VM): /vagrant holds dist/ with the deb and the demo app, as `vagrant up` syncs them."""
    if shutil.which("vagrant"):
        validate = subprocess.run(["vagrant", "validate"], cwd=REPO, capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
        assert validate.returncode == 0, validate.stdout + validate.stderr
    else:
        pytest.fail("vagrant is not installed (scripts/test installs vagrant and vagrant-libvirt)")
    script = vagrant_provisioner()
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    # The VM's port 8000 (all its addresses, for Vagrant's port forwarding) is, in a machine that
    # shares the host's network namespace, a free loopback port.
    port = free_port()
    assert "ports = [8000]" in script
    script = script.replace("ports = [8000]", f'ports = ["127.0.0.1:{port}"]').replace("8000", str(port))
    synced = tmp_path / "vagrant"
    (synced / "dist" / "bookworm").mkdir(parents=True)
    (synced / "tests" / "apps").mkdir(parents=True)
    shutil.copy2(dewy_deb, synced / "dist" / "bookworm" / dewy_deb.name)
    shutil.copy2(REPO / "tests" / "apps" / "httpapp.py", synced / "tests" / "apps" / "httpapp.py")
    m = machine_factory(bind_ro=[(synced, "/vagrant")])
    # the machine's root already has what the deb depends on: no package lists from the network
    m.write("/usr/local/sbin/apt-get", '#!/bin/sh\n[ "$1" = update ] && exit 0\nexec /usr/bin/apt-get "$@"\n', 0o755)
    out = m.run(["/bin/bash", "-c", script], timeout=300, env={"PATH": "/usr/local/sbin:" + nspawn.CONTAINER_PATH})
    assert f"dewy@demo serves v1.1.0 on port {port}" in out.stdout, out.stdout + out.stderr
    assert get(port)[1] == "v1.1.0"
    m.run(["dewy-demo-publish", "v1.2.0"])
    m.wait_until(lambda: m.journal("dewy@demo.service", DEWY_EVENT="deployed", DEWY_VERSION="v1.2.0"), 60,
                 what="v1.2.0 deployed")
    assert get(port)[1] == "v1.2.0"
    again = m.run(["/bin/bash", "-c", script], timeout=300, env={"PATH": "/usr/local/sbin:" + nspawn.CONTAINER_PATH})
    assert "serves v1.2.0" in again.stdout, "provisioning twice keeps the demo (vagrant provision)"
