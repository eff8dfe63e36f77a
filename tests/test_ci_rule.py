"""The CI rule of tests/conftest.py: under CI=true a skip (in a fixture, a mark or the test) is a failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPPING = '''
import pytest

@pytest.fixture
def podman():
    pytest.skip("podman is not installed")  # as the system fixtures skip when a component is missing

def test_in_a_fixture(podman):
    pass

@pytest.mark.skipif(True, reason="needs root")
def test_by_a_mark():
    pass

def test_in_the_test():
    pytest.skip("no registry")
'''


@pytest.mark.parametrize("ci, outcome", [("true", "1 failed, 2 errors"), ("", "3 skipped")])  # a setup failure is an error
def test_a_skip_fails_only_in_ci(tmp_path, ci: str, outcome: str) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
                             "--rootdir", str(tmp_path), str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "CI": ci}, timeout=120)
    assert outcome in result.stdout, result.stdout[-2000:]
    assert (result.returncode != 0) == bool(ci)
    if ci:
        assert "test skipped in CI (CI=true), which is a failure" in result.stdout
