"""Fixtures for system tests: a real systemd (PID 1 in systemd-nspawn) with dewy installed.

    def test_something(dewy_machine):              # booted, dewy installed, units installed
        dewy_machine.systemctl("enable", "--now", "dewy@demo")
        dewy_machine.wait_until(lambda: dewy_machine.is_active("dewy@demo") == "active", 30)

    def test_two(machine_factory, tmp_path):       # custom binds, several machines
        a = machine_factory(bind_ro=[tmp_path / "registry"], install=True)

How dewy is installed (``install=True``): from the Debian package built from this checkout
(`make deb`, ``apt-get install ./dewy_*.deb``) when this machine can build it, as CI's can
(scripts/test installs the packaging tools); otherwise from wheels into /opt/dewy.
DEWY_SYSTEM_INSTALL=deb or =wheel forces one. ``install="wheel"`` / ``install="deb"`` pick one
for a single machine.

Every test here is marked ``system``: without root or systemd-nspawn it is skipped with
the reason, and in CI (CI=true) tests/conftest.py turns that skip into a failure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.system import nspawn
from tests.system.nspawn import Machine

_timings: list[tuple[str, str, float, float, bool, str]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/system is a system test, whether or not its module says pytestmark."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.system)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so machine teardown knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def pytest_terminal_summary(terminalreporter) -> None:
    if _timings:
        terminalreporter.section("nspawn machines")
        for test, name, boot, install, overlay, kind in _timings:
            how = "overlay" if overlay else "copy"
            installed = f", install ({kind}) {install:.1f}s" if install else ""
            terminalreporter.write_line(f"{test}: {name} ({how}) boot {boot:.1f}s{installed}")


@pytest.fixture(scope="session")
def nspawn_available() -> None:
    """Skips (a failure in CI) when this machine cannot boot containers; installs the tools if it may."""
    reason = nspawn.unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian release (suite) a test's machines run and its package is built for: the first of
    nspawn.SUITES, or each of them for a test marked ``every_suite`` (see pytest_generate_tests)."""
    return getattr(request, "param", nspawn.DEFAULT_SUITE)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.every_suite``: the test runs once per supported Debian release."""
    if metafunc.definition.get_closest_marker("every_suite") and "suite" in metafunc.fixturenames:
        metafunc.parametrize("suite", nspawn.SUITES, indirect=True)


@pytest.fixture(scope="session")
def rootfs_of(nspawn_available: None) -> Callable[[str], Path]:
    """``rootfs_of(suite)``: the cached root of that Debian release (debootstrap on first use, a minute or two)."""
    nspawn.reap_stale()
    roots: dict[str, Path] = {}

    def get(suite: str) -> Path:
        if suite not in roots:
            started = time.monotonic()
            roots[suite] = nspawn.rootfs(suite, log=_log)
            if (took := time.monotonic() - started) > 5:
                print(f"[nspawn] {suite} root file system ready after {took:.0f}s", flush=True)
        return roots[suite]

    return get


@pytest.fixture
def system_rootfs(rootfs_of: Callable[[str], Path], suite: str) -> Path:
    """The root file system this test's machines boot (a copy of it each)."""
    return rootfs_of(suite)


@pytest.fixture(scope="session")
def wheelhouse(nspawn_available: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(directory, requirements): wheels of this checkout's dewy, its deps, its systemd extra and pip."""
    directory = tmp_path_factory.mktemp("wheelhouse")
    requirements = nspawn.build_wheelhouse(directory)
    return directory, requirements


def _log(message: str) -> None:
    print(f"\n[nspawn] {message}", flush=True)


@pytest.fixture(scope="session")
def install_kind(nspawn_available: None) -> str:
    """How ``install=True`` installs dewy: "deb" when this machine can build the package, else "wheel"."""
    forced = os.environ.get("DEWY_SYSTEM_INSTALL", "").strip().lower()
    if forced in ("deb", "wheel"):
        return forced
    if forced:
        pytest.fail(f"DEWY_SYSTEM_INSTALL={forced!r}: use deb or wheel")
    return "deb" if nspawn.package_unavailable_reason("deb") is None else "wheel"


@pytest.fixture
def dewy_deb(nspawn_available: None, suite: str) -> Path:
    """The .deb of this checkout for the test's suite (`make deb SUITE=...` in a clean root of that
    release, cached while the packaged sources are unchanged)."""
    reason = nspawn.package_unavailable_reason("deb")
    if reason:
        pytest.skip(reason)
    return nspawn.build_package("deb", suite, log=_log)


@pytest.fixture
def dewy_deb_next(dewy_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same package with a newer version (+test1): an upgrade of dewy_deb."""
    return nspawn.next_version(dewy_deb, "+test1", tmp_path_factory.mktemp("next"))


@pytest.fixture(scope="session")
def dewy_rpm(nspawn_available: None) -> Path:
    """The .rpm of this checkout (`make rpm`, cached like the deb)."""
    reason = nspawn.package_unavailable_reason("rpm")
    if reason:
        pytest.skip(reason)
    return nspawn.build_package("rpm", log=_log)


@pytest.fixture
def machine_factory(system_rootfs: Path, install_kind: str, suite: str, request: pytest.FixtureRequest,
                    tmp_path: Path) -> Iterator[Callable[..., Machine]]:
    """``boot(*, bind=(), bind_ro=(), install=False, name=None, timeout=90) -> Machine``.

    Each call boots a fresh machine (bind and bind_ro take host paths, bound at the same path
    inside, or (host, inside) pairs) and, with install=True, installs dewy the session's way
    (install_kind), or as asked with install="deb" / "wheel": the package bound read-only at
    /packages and installed with apt-get, or the wheelhouse bound at /wheelhouse and pip.
    All of them are powered off and deleted after the test; the boot consoles are kept in the
    test's tmp_path.
    """
    machines: list[Machine] = []

    def boot(*, bind=(), bind_ro=(), install: bool | str = False, name: str | None = None, timeout: float = 90) -> Machine:
        kind = install_kind if install is True else install
        extra_ro: list = []
        if kind == "deb":
            deb: Path = request.getfixturevalue("dewy_deb")
            extra_ro.append((deb.parent, nspawn.PACKAGES_INSIDE))
        elif kind == "wheel":
            directory, requirements = request.getfixturevalue("wheelhouse")
            extra_ro.append((directory, nspawn.WHEELHOUSE_INSIDE))
        elif kind:
            raise ValueError(f"install={install!r}: use True, 'deb' or 'wheel'")
        m = nspawn.boot(system_rootfs, name=name or nspawn.unique_name(suite), bind=bind,
                        bind_ro=[*extra_ro, *bind_ro], console_dir=tmp_path, timeout=timeout)
        machines.append(m)
        if kind == "deb":
            m.install_deb(f"{nspawn.PACKAGES_INSIDE}/{deb.name}")
        elif kind == "wheel":
            m.install_dewy(requirements)
        return m

    try:
        yield boot
    finally:
        errors = []
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for m in machines:          # what systemd and dewy said, in the failed test's output
                try:
                    journal = m.run(["journalctl", "-b", "--no-pager", "-o", "short-precise", "-n", "150"],
                                    check=False, timeout=20).stdout
                except Exception as exc:        # the machine may be the thing that broke
                    journal = f"(no journal: {exc})"
                print(f"--- journal of {m.name}, last 150 lines\n{journal}")
        for m in reversed(machines):
            _timings.append((request.node.nodeid, m.name, m.boot_seconds, m.install_seconds, m.overlay, m.install_kind))
            try:
                m.destroy()
            except Exception as exc:       # keep tearing the others down
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def machine(machine_factory: Callable[..., Machine]) -> Machine:
    """A booted machine (systemd running), without dewy."""
    return machine_factory()


@pytest.fixture
def dewy_machine(machine_factory: Callable[..., Machine]) -> Machine:
    """A booted machine with dewy installed (``dewy`` on PATH, dewy@.service and dewy.slice), see install_kind."""
    return machine_factory(install=True)
