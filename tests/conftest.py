"""Shared test helpers: release archives, file:// registries, and the CI no-skip rule."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from dewy.registry import host_words

IN_CI = os.environ.get("CI", "").lower() == "true"


def host_artifact(app: str = "app", suffix: str = ".tar.gz") -> str:
    """An artifact name that dewy's auto-selection matches on this host, e.g. app_linux_amd64.tar.gz."""
    os_words, arch_words = host_words()
    return f"{app}_{os_words[0]}_{arch_words[0]}{suffix}"


def tar_gz(files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> bytes:
    """A .tar.gz holding ``files`` (name -> content); ``modes`` overrides permissions."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def publish(registry: Path, tag: str, files: dict[str, bytes | str], *, name: str | None = None,
            checksums: bool = False, checksum_override: str | None = None) -> Path:
    """Publish a release into a file:// registry directory laid out as ``<tag>/<artifact>``."""
    name = name or host_artifact()
    directory = registry / tag
    directory.mkdir(parents=True, exist_ok=True)
    data = tar_gz(files)
    staged = directory / f".{name}.uploading"  # published by rename, as a careful CI job does:
    staged.write_bytes(data)                   # dewy polling meanwhile never sees half a file
    staged.rename(directory / name)
    if checksums or checksum_override:
        digest = checksum_override or hashlib.sha256(data).hexdigest()
        (directory / "checksums.txt").write_text(f"{digest}  {name}\n")
    return directory / name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI (CI=true) a skipped test is a failure, never a silent skip: CI installs everything tests need."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"test skipped in CI (CI=true), which is a failure: {report.longrepr}"
