"""Real systemd as PID 1 for system tests: a cached Debian root booted with systemd-nspawn.

The machine running the tests has no systemd of its own, so
``--register=no --keep-unit`` are required and each container gets its own cgroup here
(nspawn would otherwise put every container into the same ``/payload`` cgroup at the root
of the hierarchy, and two machines booted at once would share it).

Layout under CACHE (``$DEWY_TEST_CACHE``, default ``/var/cache/dewy-tests``):

    SUITE-<key>/            a booted machine's root, one per suite (packaging/debroot.py)
    SUITE-<key>.lock        flock held while building it
    build/                  packaging/debroot.py's cache for `make deb SUITE=...` (its clean build roots)
    packages/<digest>-<suite>-deb/, packages/<digest>-rpm/
                            `make deb SUITE=` / `make rpm` output for one state of the packaged
                            sources (tests/ and bench/ aside), so a fresh clone of unchanged code
                            reuses it; pip/ holds pip's download cache for those builds
    machines/<name>/        one booted machine: overlay upper/work dirs (or a full copy),
                            the mounted root, a ``share`` dir bound at the same path inside,
                            and ``owner`` (pytest pid) so a killed session's leftovers are reaped
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# The Debian releases dewy's packages are built and system-tested for: Debian 12 and 13.
SUITES = ("bookworm", "trixie")
DEFAULT_SUITE = SUITES[0]
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "python3-systemd",
           "procps", "iproute2", "curl",
           "rpm",              # the rpm is installed into a booted machine too
           "python3-apt")      # Ansible's apt module, for the role's test
# Units that would fire at random moments during a test (apt runs against the network, fstrim, ...).
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
                "e2scrub_all.timer", "fstrim.timer", "e2scrub_reap.service")
# Bump when the post-debootstrap customisation below changes: the cache key includes it.
IMAGE_REVISION = 2

CACHE = Path(os.environ.get("DEWY_TEST_CACHE", "/var/cache/dewy-tests"))
REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE_INSIDE = "/wheelhouse"
DEWY_VENV = "/opt/dewy"
PACKAGES_INSIDE = "/packages"
PACKAGED_VENV = "/usr/lib/dewy/venv"            # where the deb puts dewy (packaging/build-venv.sh)
PACKAGE_TOOLS = ("make", "dpkg-deb", "debootstrap", "systemd-nspawn")    # make deb SUITE=... builds in a root
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UNIT_SUFFIXES = (".service", ".socket", ".slice", ".target", ".timer", ".path", ".mount", ".scope")

T = TypeVar("T")


class MachineError(AssertionError):
    """The machine did not boot, died, or a wait ran out (an AssertionError so pytest shows it as a failure)."""


class CommandFailed(subprocess.CalledProcessError):
    """A command inside the machine exited non-zero; its str() includes the output."""

    def __init__(self, machine: str, returncode: int, cmd: Any, output: Any, stderr: Any) -> None:
        super().__init__(returncode, cmd, output, stderr)
        self.machine = machine

    def __str__(self) -> str:
        def tail(text: Any) -> str:
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            text = (text or "").rstrip()
            return text[-3000:] if text else "(empty)"
        return (f"in {self.machine}: {self.cmd!r} exited {self.returncode}\n"
                f"--- stdout\n{tail(self.output)}\n--- stderr\n{tail(self.stderr)}")


# ---------------------------------------------------------------------------------------------
# Can this machine run system tests at all?

def ensure_tools() -> None:
    """Install debootstrap and systemd-nspawn with apt when they are missing (root on Debian only)."""
    if shutil.which("systemd-nspawn") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap", "systemd-container"],
                   env=env, check=True, capture_output=True, timeout=900)


def unavailable_reason() -> str | None:
    """Why system tests cannot run here (None if they can). Installs the tools first if it may."""
    if sys.platform != "linux":
        return "system tests need Linux (systemd-nspawn)"
    if os.geteuid() != 0:
        return "system tests need root (they boot systemd in systemd-nspawn); run them as root or in CI"
    try:
        ensure_tools()
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install debootstrap/systemd-container with apt: {exc}"
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter") if not shutil.which(tool)]
    if missing:
        return f"system tests need {', '.join(missing)} (apt-get install systemd-container debootstrap util-linux)"
    return None


# ---------------------------------------------------------------------------------------------
# The cached root file systems (packaging/debroot.py builds them, as it builds the package roots)

def _debroot() -> Any:
    """packaging/debroot.py (loaded by path: a top-level ``packaging`` would be PyPI's)."""
    return _load_packaging("debroot")


def _load_packaging(name: str) -> Any:
    module = sys.modules.get(f"dewy_packaging_{name}")
    if module is None:
        spec = importlib.util.spec_from_file_location(f"dewy_packaging_{name}", REPO / "packaging" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted below ``path``, then delete it."""
    _debroot().remove_tree(path)


def _customise(root: Path) -> None:
    """Make the fresh root boot quietly and deterministically."""
    subprocess.run(["chroot", str(root), "systemctl", "mask", *MASKED_UNITS], check=True, capture_output=True)
    # Without /etc/hostname the container keeps the machine name nspawn gives it.
    (root / "etc/hostname").unlink(missing_ok=True)
    # A per-machine id is written before each boot; an empty file would mean "first boot" (preset-all).


def rootfs(suite: str = DEFAULT_SUITE, cache: Path = CACHE, *, log: Callable[[str], None] = lambda message: None) -> Path:
    """The cached debootstrap root of ``suite``, built first if missing (safe against parallel sessions)."""
    return _debroot().ensure_root(suite, INCLUDE, cache, revision=[sorted(MASKED_UNITS), IMAGE_REVISION],
                                  customise=_customise, log=log)


def host_suite() -> str:
    """This host's Debian release (codename), the one whose python3 builds the rpm; the first
    supported one on a host that is not a released Debian."""
    try:
        return _debroot().suite_of()[0]
    except _debroot().RootError:
        return DEFAULT_SUITE


def systemd_version(root: Path) -> int:
    """The version of the systemd installed in ``root`` (its libsystemd-shared-NNN.so), 0 if unknown."""
    for directory in ("usr/lib/systemd", "usr/lib/x86_64-linux-gnu/systemd", "lib/systemd"):
        for lib in (root / directory).glob("libsystemd-shared-*.so"):
            match = re.match(r"libsystemd-shared-(\d+)", lib.name)
            if match:
                return int(match.group(1))
    return 0


# ---------------------------------------------------------------------------------------------
# dewy as wheels

def _project() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _systemd_extra(project: dict[str, Any]) -> list[str]:
    """dewy's ``systemd`` extra minus systemd-python, which Debian's python3-systemd provides inside."""
    extra = project.get("optional-dependencies", {}).get("systemd", [])
    wanted = [req for req in extra if not req.lower().replace("_", "-").startswith("systemd-python")]
    return wanted or ["dbus-next"]


def _pip_wheel(dest: Path, *args: str, cwd: Path | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(dest), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    if result.returncode != 0:
        raise MachineError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def dependency_wheels(requirements: Sequence[str], cache: Path = CACHE) -> Path:
    """Wheels for ``requirements`` and pip, downloaded once per distinct list into the cache."""
    key = hashlib.sha256(json.dumps([sorted(requirements), sys.version_info[:2]]).encode()).hexdigest()[:12]
    final = cache / "wheels" / key
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        partial = final.parent / f"{key}.tmp-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            _pip_wheel(partial, *requirements, "pip")        # pip: see Machine.pip
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        os.rename(partial, final)
        return final


def _clean_copy(repo: Path, dest: Path) -> None:
    """The checkout without VCS, venvs, build output, tests and caches."""
    top = {".git", ".venv", "build", "dist", "tests", "bench", ".dewy"}

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {name for name in names if name in ("__pycache__", ".pytest_cache") or name.endswith(".egg-info")}
        return skip | (top & set(names) if Path(directory) == repo else set())

    shutil.copytree(repo, dest, ignore=ignore, symlinks=True)


def build_wheelhouse(dest: Path, repo: Path = REPO, cache: Path = CACHE) -> list[str]:
    """Wheels for this checkout's dewy, its dependencies, its systemd extra (dbus-next, ...) and pip, in ``dest``.

    Returns the requirements to install from it (pip's own wheel is there too, not among them).
    dewy is built from a clean copy of the working tree (setuptools' build/ dir could hold stale
    modules); the third-party wheels come from the cache (see dependency_wheels). All of them are
    pure Python today; a binary wheel would be cp311/manylinux, which bookworm's Python 3.11 takes too.
    """
    project = _project()
    extra = _systemd_extra(project)
    dest.mkdir(parents=True, exist_ok=True)
    for wheel in dependency_wheels([*project.get("dependencies", []), *extra], cache).iterdir():
        shutil.copy2(wheel, dest / wheel.name)
    source = dest.parent / f"{dest.name}-source"
    _clean_copy(repo.resolve(), source)
    try:
        try:        # setuptools from the test venv: much faster than an isolated build environment
            _pip_wheel(dest, "--no-deps", "--no-build-isolation", str(source))
        except MachineError:
            _pip_wheel(dest, "--no-deps", str(source))
    finally:
        shutil.rmtree(source, ignore_errors=True)
    return ["dewy", *extra]


# ---------------------------------------------------------------------------------------------
# dewy as OS packages (packaging/, `make deb` / `make rpm`)

def package_unavailable_reason(kind: str = "deb") -> str | None:
    """Why `make deb` (or `make rpm`) cannot run here; None if it can."""
    if not (REPO / "packaging" / "debian" / "rules").is_file():
        return "this checkout has no packaging/"
    tools = PACKAGE_TOOLS if kind == "deb" else ("make", "rpmbuild", "rpm")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        return f"building the {kind} needs {', '.join(missing)} (scripts/test installs the packaging tools)"
    if kind == "rpm" and subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode:
        return "building the rpm needs the distribution's python3 with venv (apt-get install python3-venv)"
    return None


def _srctree() -> Any:
    return _load_packaging("srctree")


_digests: dict[Path, str] = {}


def sources_digest(repo: Path = REPO) -> str:
    """The packaged sources' digest, taken once per test session: a deb and an rpm built in one
    session come from the same sources even if the tree is edited meanwhile."""
    if repo not in _digests:
        _digests[repo] = _srctree().digest(repo)
    return _digests[repo]


def build_package(kind: str = "deb", suite: str = DEFAULT_SUITE, cache: Path = CACHE, *,
                  log: Callable[[str], None] = lambda message: None, timeout: float = 1800, keep: int = 8) -> Path:
    """``make deb SUITE=suite`` (or ``make rpm``, on this host) of this checkout, cached under
    CACHE/packages/<digest>-<suite>-deb/ (or <digest>-rpm/).

    The digest covers the packaged sources (packaging/srctree.py: tests/ and bench/ do not count),
    so the tests of an unchanged tree on the same machine reuse the build. Builds in a copy of the
    tree; the deb's clean build roots and pip's downloads are cached in CACHE/build and CACHE/pip.
    Returns the package.
    """
    srctree = _srctree()
    key = f"{sources_digest(REPO)[:16]}-{suite + '-' if kind == 'deb' else ''}{kind}"
    base = cache / "packages"
    final = base / key
    pattern = "dewy_*.deb" if kind == "deb" else "dewy-*.rpm"

    def built() -> Path | None:
        found = sorted(final.glob(pattern)) if final.is_dir() else []
        return found[0] if found else None

    if (package := built()):
        os.utime(final)
        return package
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (package := built()):
            return package
        partial = base / f"{key}.tmp-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            source = partial / "dewy"
            srctree.copy(source, REPO)
            out = partial / (suite if kind == "deb" else "rpm")      # make deb SUITE=x writes DIST/x/
            target = [f"SUITE={suite}", f"DIST={partial}"] if kind == "deb" else [f"DIST={out}"]
            log(f"make {kind} {' '.join(target[:-1])} into {final} (cached afterwards)")
            started = time.monotonic()
            env = {**os.environ, "PIP_CACHE_DIR": str(cache / "pip"), "TMPDIR": str(partial),
                   "DEWY_BUILD_CACHE": str(cache / "build")}
            result = subprocess.run(["make", "-C", str(source), kind, *target], env=env,
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
            if result.returncode != 0:
                raise MachineError(f"make {kind} failed ({result.returncode}); last output:\n"
                                   f"{(result.stdout + result.stderr)[-4000:]}")
            (out / "make.log").write_text(result.stdout + result.stderr)
            os.rename(out, final)
            log(f"built {built().name} in {time.monotonic() - started:.0f}s")
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        for stale in sorted((p for p in base.iterdir() if p.is_dir() and ".tmp-" not in p.name),
                            key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
            shutil.rmtree(stale, ignore_errors=True)
        package = built()
        assert package is not None
        return package


def next_version(deb: Path, suffix: str, dest: Path) -> Path:
    """``deb`` repacked with its version plus ``suffix`` (0.1.0-1~deb12u1 -> ...+test1) into ``dest``:
    the same files under a newer version, i.e. an upgrade of it (seconds, not another build)."""
    dest.mkdir(parents=True, exist_ok=True)
    tree = dest / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, capture_output=True)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
    control.write_text(text.replace(f"Version: {version}\n", f"Version: {version}{suffix}\n"))
    out = dest / deb.name.replace(f"_{version}_", f"_{version}{suffix}_")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


# ---------------------------------------------------------------------------------------------
# One booted machine

def _cgroup_roots() -> list[Path]:
    """Hierarchies nspawn puts containers in: cgroup2 (unified) and the v1 name=systemd one."""
    roots = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            fstype, _source, options = (after.split() + ["", "", ""])[:3]
            point = Path(before.split()[4])
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
                roots.append(point)
    return roots


def _remove_cgroup(path: Path) -> None:
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


_names = itertools.count(1)


def unique_name(hint: str = "") -> str:
    """A machine (and host) name: dewy-<pid>-<n>[-hint], at most 63 characters of [a-z0-9-]."""
    clean = "".join(c if c.isalnum() else "-" for c in hint.lower()).strip("-")
    name = f"dewy-{os.getpid()}-{next(_names)}"
    if clean:
        name = f"{name}-{clean}"[:63].rstrip("-")
    return name


@dataclass
class Bind:
    """``host`` bound at ``inside`` (the same path by default); read-only unless ``rw``."""

    host: Path
    inside: str
    rw: bool = False

    def option(self) -> str:
        return f"--bind{'' if self.rw else '-ro'}={self.host}:{self.inside}"


def binds(paths: Iterable[Path | str | tuple[Path | str, str]], *, rw: bool) -> list[Bind]:
    out = []
    for item in paths:
        host, inside = (item if isinstance(item, tuple) else (item, None))
        host = Path(host).resolve()
        out.append(Bind(host, inside or str(host), rw))
    return out


@dataclass
class Machine:
    """A booted container: run commands in it, read its journal, wait for things, power it off."""

    name: str
    dir: Path                 # machines/<name> on the host
    root: Path                # its root file system as mounted on the host (overlay or copy)
    share: Path               # bound read-write at the same path inside
    console_log: Path
    process: subprocess.Popen = field(repr=False)
    pid: int = 0              # the container's init (systemd), in the host's pid namespace
    boot_seconds: float = 0.0
    install_seconds: float = 0.0
    install_kind: str = ""    # "wheel" (install_dewy) or "deb" (install_deb)
    dewy_python: str = ""     # the interpreter dewy runs with once installed
    overlay: bool = False
    cgroups: list[Path] = field(default_factory=list, repr=False)

    # -- running things -------------------------------------------------------------------------

    def run(self, cmd: str | Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | bytes | None = None, env: dict[str, str] | None = None, cwd: str | None = None,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run ``cmd`` (argv, or a string for /bin/sh -c) in all the machine's namespaces, as root.

        Returns the CompletedProcess with captured stdout/stderr (str unless text=False).
        check: raise CommandFailed (output included) on a non-zero exit. On timeout the command's
        process group is killed and subprocess.TimeoutExpired raised. The environment is clean
        (PATH, LANG=C.UTF-8, HOME=/root, no pager, no colours) plus ``env``. Note: the command runs
        in the container's namespaces but not in one of its units or cgroups; start anything
        long-lived with systemd-run or systemctl.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        self._check_alive()
        nsenter = ["nsenter", "-t", str(self.pid), "-a", f"--wdns={cwd or '/'}", *argv]
        environment = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
                       "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "SYSTEMD_LOG_COLOR": "0", **(env or {})}
        if isinstance(input, str) and not text:
            input = input.encode()
        elif isinstance(input, bytes) and text:
            input = input.decode()
        process = subprocess.Popen(nsenter, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text, env=environment,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr) from exc
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        if check and process.returncode != 0:
            raise CommandFailed(self.name, process.returncode, argv, stdout, stderr)
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def write(self, path: str, content: str | bytes, mode: int = 0o644, *, owner: str | None = None) -> None:
        """Create or replace the file ``path`` inside (parents created) with ``content`` and ``mode``."""
        script = 'set -e; mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"'
        if owner:
            script += '; chown "$3" "$1"'
        self.run(["/bin/sh", "-c", script, "sh", path, format(mode, "o"), owner or ""], input=content,
                 text=isinstance(content, str))

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def copy_in(self, source: Path | str, dest: str) -> None:
        """Copy a host file or directory tree to ``dest`` inside (a directory's contents go into ``dest``)."""
        source = Path(source)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            if source.is_dir():
                for child in sorted(source.iterdir()):
                    tar.add(child, arcname=child.name)
            else:
                tar.add(source, arcname=Path(dest).name)
                dest = str(Path(dest).parent)
        self.run(["/bin/sh", "-c", 'mkdir -p "$1" && tar -x -C "$1" --no-same-owner', "sh", dest],
                 input=buffer.getvalue(), text=False)

    # -- systemd --------------------------------------------------------------------------------

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit`` (all of them if none are named)."""
        args = ["show", unit] + [f"--property={p}" for p in properties]
        out = self.systemctl(*args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def pid_of(self, unit: str) -> int:
        """The unit's MainPID (0 when it has none: not running, or a scope)."""
        return int(self.show(unit, "MainPID").get("MainPID", "0") or 0)

    def is_active(self, unit: str) -> str:
        """``systemctl is-active``: active, activating, inactive, failed, ..."""
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def journal(self, unit: str | None = None, *, identifier: str | None = None, args: Sequence[str] = (),
                **fields: str | int) -> list[dict[str, Any]]:
        """This boot's journal records (``journalctl -o json``), oldest first, as dicts.

        unit: ``-u UNIT``; identifier: ``-t ID``; fields: exact matches, e.g. DEWY_EVENT="deployed".
        Values are strings; a field with several values is a list; binary values are lists of ints.
        """
        cmd = ["journalctl", "--no-pager", "-o", "json", "-b"]
        if unit:
            cmd += ["-u", unit]
        if identifier:
            cmd += ["-t", identifier]
        cmd += list(args) + [f"{key}={value}" for key, value in fields.items()]
        out = self.run(cmd).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def failed_units(self) -> list[str]:
        out = self.systemctl("list-units", "--failed", "--plain", "--no-legend", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    # -- waiting --------------------------------------------------------------------------------

    def wait_until(self, predicate: Callable[[], T], timeout: float = 30, *, interval: float = 0.1,
                   what: str | None = None) -> T:
        """Poll ``predicate`` until it returns something truthy (returned); MachineError after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            self._check_alive()
            last = predicate()
            if last:
                return last
            if time.monotonic() >= deadline:
                desc = what or getattr(predicate, "__name__", repr(predicate))
                raise MachineError(f"{self.name}: timed out after {timeout}s waiting for {desc} (last value {last!r})")
            time.sleep(interval)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _check_alive(self) -> None:
        if not self.alive:
            raise MachineError(f"{self.name}: systemd-nspawn exited ({self.process.returncode});"
                               f" console:\n{self.console_tail()}")

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console log)"

    # -- installing dewy ------------------------------------------------------------------------

    def install_dewy(self, requirements: Sequence[str] = ("dewy",), *, wheelhouse: str = WHEELHOUSE_INSIDE,
                     repo: Path = REPO) -> float:
        """Install dewy from the wheelhouse (bound at ``wheelhouse``) into the venv /opt/dewy, link
        /usr/bin/dewy, install the repository's systemd/ files and daemon-reload.

        The venv sees the system site-packages (Debian's python3-systemd). It has no pip of its own:
        ensurepip alone takes ~3 s, so pip runs from its wheel in the wheelhouse (see ``pip``).
        Returns (and records in ``install_seconds``) the seconds taken.
        """
        started = time.monotonic()
        self.run(["python3", "-m", "venv", "--system-site-packages", "--without-pip", DEWY_VENV])
        self.pip("install", "--quiet", *requirements, wheelhouse=wheelhouse, timeout=120)
        self.run(["ln", "-sf", f"{DEWY_VENV}/bin/dewy", "/usr/bin/dewy"])
        self._install_systemd_files(repo / "systemd")
        self.install_seconds = time.monotonic() - started
        self.install_kind, self.dewy_python = "wheel", f"{DEWY_VENV}/bin/python"
        return self.install_seconds

    def apt_get(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``apt-get -y -q ARGS`` without prompts. No package lists are fetched: what a local .deb
        needs must already be installed (the cached root has python3.11, python3-systemd, ...)."""
        return self.run(["apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args], timeout=timeout,
                        env={"DEBIAN_FRONTEND": "noninteractive"})

    def install_deb(self, deb: str, *, timeout: float = 300) -> float:
        """``apt-get install ./dewy_*.deb`` (a path inside the machine), as an operator would.
        Returns (and records in ``install_seconds``) the seconds taken."""
        started = time.monotonic()
        self.apt_get("install", "--no-install-recommends", deb, timeout=timeout)
        self.install_seconds = time.monotonic() - started
        self.install_kind, self.dewy_python = "deb", f"{PACKAGED_VENV}/bin/python3"
        return self.install_seconds

    def pip(self, *args: str, wheelhouse: str = WHEELHOUSE_INSIDE, timeout: float = 120) -> subprocess.CompletedProcess:
        """pip (from the wheelhouse's pip wheel) acting on /opt/dewy, offline: ``pip("install", "-U", "dewy")``."""
        pip_args = list(args)
        if pip_args and pip_args[0] in ("install", "download", "wheel"):
            pip_args[1:1] = ["--no-index", "--find-links", wheelhouse]
        script = (f'exec {DEWY_VENV}/bin/python "$(ls {wheelhouse}/pip-*.whl | tail -n1)/pip"'
                  ' --disable-pip-version-check "$@"')
        return self.run(["/bin/sh", "-c", script, "sh", *pip_args], timeout=timeout)

    def _install_systemd_files(self, source: Path) -> None:
        """Unit files (and unit drop-in dirs) to /etc/systemd/system, tmpfiles.d/ and sysusers.d/ to /etc."""
        if not source.is_dir():
            return
        installed: list[tuple[Path, str]] = []
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name.endswith(UNIT_SUFFIXES):
                installed.append((path, f"/etc/systemd/system/{path.name}"))
            elif path.is_dir() and path.name.endswith(tuple(s + ".d" for s in UNIT_SUFFIXES)):
                installed.append((path, f"/etc/systemd/system/{path.name}"))
            elif path.is_dir() and path.name in ("tmpfiles.d", "sysusers.d"):
                installed.append((path, f"/etc/{path.name}"))
        for path, dest in installed:
            self.copy_in(path, dest)
        names = {path.name for path, _ in installed}
        steps = []
        if "sysusers.d" in names:
            steps.append("systemd-sysusers")
        if "tmpfiles.d" in names:
            steps.append("systemd-tmpfiles --create")
        steps.append("systemctl daemon-reload")
        self.run(" && ".join(steps))

    # -- stopping -------------------------------------------------------------------------------

    def poweroff(self, timeout: float = 30) -> None:
        """``systemctl poweroff``, wait (bounded) for nspawn to exit, then SIGKILL whatever is left."""
        if self.alive and self.pid:
            try:
                self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=10)
            except (subprocess.SubprocessError, OSError, MachineError):
                pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self._kill()

    def _kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Killing nspawn does not end the container: its init is reparented. Killing a pid
        # namespace's init kills everything in it.
        if self.pid and _alive(self.pid):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)
        deadline = time.monotonic() + 10
        while self.pid and _alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def destroy(self) -> None:
        """Power off if needed, then unmount and delete the machine's files and cgroups."""
        if self.alive:
            self.poweroff()
        else:
            self._kill()
        remove_tree(self.dir)
        for cgroup in self.cgroups:
            _remove_cgroup(cgroup)


def _find_init(nspawn_pid: int) -> int | None:
    """The container's init: the child of the nspawn process that has exec'd systemd."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            comm = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if comm in ("systemd", "init"):
            return int(child)
    return None


def boot(lower: Path, *, name: str | None = None, bind: Iterable = (), bind_ro: Iterable = (),
         console_dir: Path | None = None, timeout: float = 90, cache: Path = CACHE,
         options: Sequence[str] = ()) -> Machine:
    """Boot a throwaway copy of ``lower`` and wait until systemd says running (or degraded).

    options: more systemd-nspawn options (e.g. ``--capability=all`` for a machine that runs
    containers or machines of its own).
    bind / bind_ro: host paths (bound at the same path inside) or (host, inside) pairs.
    The machine always has ``share``: a fresh host dir bound read-write at the same path.
    console_dir: where the boot console log goes (default: the machine dir, deleted with it).
    """
    name = name or unique_name()
    machine_dir = cache / "machines" / name
    machine_dir.mkdir(parents=True)
    (machine_dir / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    started = time.monotonic()
    process = None
    machine: Machine | None = None
    try:
        root, overlay = _debroot().make_writable_copy(lower, machine_dir)
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        share = machine_dir / "share"
        share.mkdir()
        all_binds = binds([share], rw=True) + binds(bind, rw=True) + binds(bind_ro, rw=False)
        console_log = (console_dir or machine_dir) / f"{name}.console.log"
        cgroups = [r / "dewy-tests" / name for r in _cgroup_roots()]
        for cgroup in cgroups:
            cgroup.mkdir(parents=True, exist_ok=True)

        def before_exec() -> None:
            # Its own cgroup: nspawn puts payload/ and supervisor/ below the one it starts in.
            for cg in cgroups:
                with open(cg / "cgroup.procs", "w") as procs:
                    procs.write("0")
            # If pytest dies without tearing down, nspawn gets SIGTERM: it powers the container off.
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

        cmd = ["systemd-nspawn", "--quiet", "-D", str(root), "-M", name, "--register=no", "--keep-unit",
               "--link-journal=no", "--console=read-only", *[b.option() for b in all_binds],
               # nspawn's own seccomp filter refuses pidfd_getfd, which a host's systemd allows
               # (dewy takes its listening sockets back from the app with it)
               "--system-call-filter=pidfd_getfd", *options, "-b"]
        env = {"PATH": os.environ.get("PATH", CONTAINER_PATH), "TERM": "dumb", "SYSTEMD_COLORS": "0"}
        if systemd_version(lower) >= 256:
            # systemd 256+ refuses to boot on cgroup v1 (this host's layout may be legacy or
            # hybrid): nspawn then gives it a cgroup2 of its own, without resource controllers.
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        with open(console_log, "w") as out:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True, preexec_fn=before_exec)
        (machine_dir / "nspawn.pid").write_text(f"{process.pid}\n")
        machine = Machine(name=name, dir=machine_dir, root=root, share=share, console_log=console_log,
                          process=process, overlay=overlay, cgroups=cgroups)
        deadline = started + timeout
        while not machine.pid:
            machine._check_alive()
            machine.pid = _find_init(process.pid) or 0
            if not machine.pid:
                if time.monotonic() > deadline:
                    raise MachineError(f"{name}: no init process after {timeout}s; console:\n{machine.console_tail()}")
                time.sleep(0.02)
        (machine_dir / "init.pid").write_text(f"{machine.pid}\n")
        state = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MachineError(f"{name}: not booted after {timeout}s (is-system-running: {state});"
                                   f" console:\n{machine.console_tail()}")
            try:
                state = machine.run(["systemctl", "is-system-running", "--wait"], check=False,
                                    timeout=max(remaining, 1)).stdout.strip()
            except subprocess.TimeoutExpired:
                continue
            if state in ("running", "degraded"):
                break
            if state in ("maintenance", "stopping"):
                raise MachineError(f"{name}: boot ended in {state}; console:\n{machine.console_tail()}")
            time.sleep(0.05)        # the bus is not up yet: "offline" or a connection error
        machine.boot_seconds = time.monotonic() - started
        return machine
    except BaseException:
        if machine is not None:
            machine.destroy()
        else:
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            remove_tree(machine_dir)
        raise


def reap_stale(cache: Path = CACHE) -> list[str]:
    """Kill and delete machines left behind by test sessions that died (owner pid gone)."""
    reaped = []
    base = cache / "machines"
    if not base.is_dir():
        return reaped
    for machine_dir in base.iterdir():
        try:
            owner_pid, owner_start = (machine_dir / "owner").read_text().split()
        except (OSError, ValueError):
            try:
                if time.time() - machine_dir.stat().st_mtime < 300:
                    continue                      # being created right now by another session
            except OSError:
                continue
            owner_pid, owner_start = "0", ""
        if owner_pid != "0" and _start_time(int(owner_pid)) == owner_start:
            continue                              # its session is still running
        for pid_file in ("nspawn.pid", "init.pid"):
            try:
                pid = int((machine_dir / pid_file).read_text())
                cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            except (OSError, ValueError):
                continue
            if f"/dewy-tests/{machine_dir.name}/" in cgroup:     # not some other process that reused the pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                init = int((machine_dir / "init.pid").read_text())
            except (OSError, ValueError):
                break
            if not _alive(init):
                break
            time.sleep(0.05)
        remove_tree(machine_dir)
        for root in _cgroup_roots():
            _remove_cgroup(root / "dewy-tests" / machine_dir.name)
        reaped.append(machine_dir.name)
    return reaped
