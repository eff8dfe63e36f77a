"""Clean Debian roots made with debootstrap, cached, and throwaway copies of them to work in.

    python3 packaging/debroot.py deb SUITE DIST      build the .deb for SUITE in a clean root (make deb SUITE=)
    python3 packaging/debroot.py stamp CHANGELOG     add the entry for this host's suite (make deb)

`make deb SUITE=trixie` builds the way pbuilder and sbuild do: a minimal root of that suite with
only the build dependencies installed, a throwaway overlay of it per build, the source copied
in, `make deb` run inside (so the bundled venv is built against the suite's own python3), and
the suite's own lintian run on the result in the same root. The system tests boot roots made
by the same code (tests/system/nspawn.py), with another package list.

Layout under CACHE ($DEWY_BUILD_CACHE, default /var/cache/dewy-build):

    SUITE-<key>/           a complete root (renamed into place when debootstrap and the customisation
                           succeeded); <key> covers the suite, the package list and the revision
    SUITE-<key>.lock       flock held while building it, so parallel builds wait for one another
    debs/                  debootstrap's downloaded packages, reused when the package list changes
    pip/                   pip's download cache for the builds inside
    work/                  one directory per running build (overlay upper/work, the mounted root)

Needs root, debootstrap and systemd-nspawn (apt-get install debootstrap systemd-container).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

PACKAGING = Path(__file__).resolve().parent
REPO = PACKAGING.parent
CACHE = Path(os.environ.get("DEWY_BUILD_CACHE", "/var/cache/dewy-build"))
# The build dependencies of packaging/debian/control, plus what `make deb` and lintian run.
BUILD_INCLUDE = ("build-essential", "debhelper", "dpkg-dev", "python3", "python3-venv", "lintian",
                 "ca-certificates")
BUILD_REVISION = 1
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What a build inside may need of the host's environment to reach PyPI (a mirror, a proxy).
PASSED_ENV = ("PIP_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY",
              "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


class RootError(RuntimeError):
    """debootstrap, a mount or a command in a root failed; the message says which and where its log is."""


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted below ``path`` (debootstrap leaves /proc, /sys mounted when killed), then delete it."""
    if not os.path.lexists(path):
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", point], capture_output=True)
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if _mounts_under(path):
        raise RootError(f"cannot unmount everything under {path}: {_mounts_under(path)}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True, capture_output=True)


def root_key(suite: str, include: Sequence[str], revision: object) -> str:
    recipe = json.dumps([suite, sorted(include), revision])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def ensure_root(suite: str, include: Sequence[str], cache: Path = CACHE, *, revision: object = 0,
                customise: Callable[[Path], None] | None = None, log: Callable[[str], None] = lambda message: None,
                timeout: float = 1200) -> Path:
    """The cached minbase root of ``suite`` with ``include`` installed, built first if missing.

    ``customise(partial_root)`` runs once after debootstrap; ``revision`` is part of the cache key,
    so bump it when ``customise`` changes. Safe against parallel builders and interruptions: a root
    only appears under its final name once it is complete.
    """
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{suite}-{root_key(suite, include, revision)}"
    if final.is_dir():
        return final
    with open(cache / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # another session building the same root: wait for it
        if final.is_dir():
            return final
        for stale in cache.glob(f"{final.name}.tmp-*"):    # we hold the lock: nobody is building these
            remove_tree(stale)
        partial = cache / f"{final.name}.tmp-{os.getpid()}"
        log_path = cache / f"{final.name}.debootstrap.log"
        log(f"building the {suite} root in {final} (debootstrap, a minute or two; cached afterwards)")
        started = time.monotonic()
        debs = cache / "debs" / suite  # downloaded packages kept: a changed package list rebuilds without them
        debs.mkdir(parents=True, exist_ok=True)
        try:
            # Like pbuilder: debootstrap the bare minbase, then apt installs the packages wanted
            # (debootstrap's own --include resolves dependencies poorly and fails on large lists).
            _debootstrap(suite, partial, debs, lock, log_path, timeout)
            run_in(partial, "apt-get update -q && apt-get install -y -q --no-install-recommends "
                            "-o Dpkg::Use-Pty=0 " + " ".join(include) + " && apt-get clean",
                   binds=[(debs, "/var/cache/apt/archives", True)], log_path=log_path.with_suffix(".apt.log"),
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=timeout)
            for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            if customise:
                customise(partial)
        except BaseException:
            remove_tree(partial)
            raise
        os.rename(partial, final)
        log(f"built {final} in {time.monotonic() - started:.0f}s")
        return final


def _run_logged(cmd: Sequence[str], log_path: Path, timeout: float, *, pass_fds: Sequence[int] = ()) -> int:
    """Run ``cmd`` with its output to ``log_path``; killed with its whole process group on a
    timeout or an interruption. Returns its exit code."""
    with open(log_path, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, pass_fds=pass_fds)
        try:
            return process.wait(timeout)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise


def _debootstrap(suite: str, root: Path, debs: Path, lock: Any, log_path: Path, timeout: float) -> None:
    # The build inherits the lock: if this process is killed, the next one waits for the
    # orphaned debootstrap to finish before it removes the partial root.
    code = _run_logged(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", suite, str(root)],
                       log_path, timeout, pass_fds=[lock.fileno()])
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RootError(f"debootstrap {suite} failed ({code}); {log_path}:\n{tail}")


_overlay_works: bool | None = None


def make_writable_copy(lower: Path, directory: Path) -> tuple[Path, bool]:
    """``directory``/root: an overlay of ``lower`` (upper and work dirs beside it), or a full copy
    where overlayfs is unavailable. Returns (root, whether it is an overlay); remove_tree(directory)
    undoes either."""
    global _overlay_works
    root = directory / "root"
    root.mkdir()
    if _overlay_works is not False:
        upper, work = directory / "upper", directory / "work"
        upper.mkdir()
        work.mkdir()
        result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                                 f"lowerdir={lower},upperdir={upper},workdir={work}", str(root)],
                                capture_output=True, text=True)
        _overlay_works = result.returncode == 0
        if _overlay_works:
            return root, True
    root.rmdir()
    subprocess.run(["cp", "-a", "--reflink=auto", str(lower), str(root)], check=True, capture_output=True)
    return root, False


@contextlib.contextmanager
def scratch_root(lower: Path, cache: Path = CACHE) -> Iterator[Path]:
    """A throwaway writable copy of ``lower`` for one build, deleted afterwards."""
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{lower.name}-", dir=work))
    try:
        root, _ = make_writable_copy(lower, directory)
        yield root
    finally:
        remove_tree(directory)


def suite_of(root: Path = Path("/")) -> tuple[str, str]:
    """(codename, major version) of the Debian in ``root``, from its os-release: ("trixie", "13")."""
    fields = {}
    for name in ("etc/os-release", "usr/lib/os-release"):
        path = root / name
        if path.is_file():
            for line in path.read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key] = value.strip().strip('"')
            break
    codename, version = fields.get("VERSION_CODENAME", ""), fields.get("VERSION_ID", "").split(".")[0]
    if fields.get("ID") != "debian" or not codename or not version.isdigit():
        raise RootError(f"{root}: not a released Debian (os-release ID={fields.get('ID')!r}, "
                        f"VERSION_CODENAME={codename!r}, VERSION_ID={fields.get('VERSION_ID')!r}); "
                        "build in a clean root instead: make deb SUITE=bookworm|trixie")
    return codename, version


def run_in(root: Path, command: str, *, binds: Sequence[tuple[Path, str, bool]] = (), env: dict[str, str] | None = None,
           log_path: Path, timeout: float = 1800) -> None:
    """``/bin/sh -ec command`` in ``root`` (systemd-nspawn, no boot, the host's network), its output
    to ``log_path``. binds: (host path, path inside, writable)."""
    cmd = ["systemd-nspawn", "--quiet", "-D", str(root), f"--machine=dewy-root-{os.getpid()}", "--register=no",
           "--keep-unit", "--pipe", "--chdir=/"]
    for host, inside, writable in binds:
        cmd.append(f"--bind{'' if writable else '-ro'}={host}:{inside}")
    for key, value in (env or {}).items():
        cmd.append(f"--setenv={key}={value}")
    cmd += ["/bin/sh", "-ec", command]
    code = _run_logged(cmd, log_path, timeout)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RootError(f"in {root}: {command!r} failed ({code}); {log_path}:\n{tail}")


def build_deb(suite: str, dist: Path, cache: Path = CACHE, *, log: Callable[[str], None] = print) -> list[Path]:
    """`make deb` inside a clean ``suite`` root, then that suite's lintian; the results into ``dist``."""
    sys.path.insert(0, str(PACKAGING))
    import srctree

    root = ensure_root(suite, BUILD_INCLUDE, cache, revision=BUILD_REVISION, log=log)
    pip_cache = cache / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    env = {key: os.environ[key] for key in PASSED_ENV if os.environ.get(key)}
    env.update(PIP_CACHE_DIR="/var/cache/pip", DEBIAN_FRONTEND="noninteractive", LANG="C.UTF-8",
               PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    binds: list[tuple[Path, str, bool]] = [(pip_cache, "/var/cache/pip", True)]
    if HOST_CA_BUNDLE.is_file():        # the host may trust a CA that a fresh root does not (a proxy's)
        binds.append((HOST_CA_BUNDLE, "/etc/ssl/certs/ca-certificates.crt", False))
        env["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    if os.environ.get("DEWY_WHEELHOUSE"):
        wheelhouse = Path(os.environ["DEWY_WHEELHOUSE"]).resolve()
        binds.append((wheelhouse, "/var/cache/wheelhouse", False))
        env["DEWY_WHEELHOUSE"] = "/var/cache/wheelhouse"
    with scratch_root(root, cache) as scratch:
        srctree.copy(scratch / "build" / "dewy", REPO)
        log(f"make deb in a clean {suite} root ({root.name})")
        started = time.monotonic()
        log_path = dist / "build.log"
        dist.mkdir(parents=True, exist_ok=True)
        run_in(scratch, "cd /build/dewy; make deb DEBDIR=/build/out;"
                        " lintian --fail-on error,warning /build/out/dewy_*.deb > /build/out/lintian.log 2>&1"
                        " || { cat /build/out/lintian.log; exit 1; }",
               binds=binds, env=env, log_path=log_path)
        built = []
        for path in sorted((scratch / "build" / "out").iterdir()):
            shutil.copy2(path, dist / path.name)
            built.append(dist / path.name)
        log(f"built {', '.join(p.name for p in built if p.suffix == '.deb')} in {time.monotonic() - started:.0f}s")
        return built


def stamp_changelog(changelog: Path, suffix: str, distribution: str, change: str) -> str:
    """Prepend an entry whose version is the newest one plus ``suffix`` (0.1.0-1 -> 0.1.0-1~deb13u1),
    dated one second after that newest entry: later, as Debian requires, and derived from the tree,
    so a rebuild of the same tree is the same package. Returns the version."""
    text = changelog.read_text()
    first = text.splitlines()[0]
    match = re.match(r"^(\S+) \(([^)]+)\) ([^;]+); (.*)$", first)
    if not match:
        raise RootError(f"{changelog}: cannot parse {first!r}")
    source, version, _, urgency = match.groups()
    trailer = next(line for line in text.splitlines() if line.startswith(" -- "))
    maintainer, _, date = trailer[4:].partition("  ")
    when = email.utils.format_datetime(email.utils.parsedate_to_datetime(date) + datetime.timedelta(seconds=1))
    new = f"{version}{suffix}"
    changelog.write_text(f"{source} ({new}) {distribution}; {urgency}\n\n  * {change}\n\n"
                         f" -- {maintainer}  {when}\n\n{text}")
    return new


def stamp_for_host(changelog: Path) -> str:
    """The entry of a build for this host's Debian: ~deb12u1 for bookworm, ~deb13u1 for trixie.

    Why a suffix: one apt repository can hold both builds, and ~deb12u1 < ~deb13u1, so a host
    upgraded from Debian 12 to 13 moves to the trixie build with its own python3."""
    codename, version = suite_of()
    return stamp_changelog(changelog, f"~deb{version}u1", codename,
                           f"Build for Debian {version} ({codename}) with its python3.")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "stamp":
        try:
            print(stamp_for_host(Path(argv[1])))
        except (RootError, OSError) as exc:
            print(f"debroot: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(argv) == 3 and argv[0] == "deb":
        try:
            for path in build_deb(argv[1], Path(argv[2]).resolve(), log=lambda m: print(f"debroot: {m}", file=sys.stderr)):
                print(path)
        except (RootError, OSError, subprocess.SubprocessError) as exc:
            print(f"debroot: {exc}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
