"""``dewy status`` and ``dewy history`` outside systemd: read from the state file a dewy left."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import publish
from tests.harness import Dewy


def dewy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dewy", *args], capture_output=True, text=True, timeout=30)


def test_status_and_history_after_deploys(tmp_path) -> None:
    registry, site = tmp_path / "registry", tmp_path / "site"
    publish(registry, "v1.0.0", {"index.html": "one"})
    run = Dewy(["assets", "--registry", registry.as_uri(), "-i", "0.1", "-d", str(site)], cwd=tmp_path)
    try:
        run.wait_for("deployed", version="v1.0.0")
        publish(registry, "v1.1.0", {"index.html": "two"})
        run.wait_for("deployed", version="v1.1.0")
    finally:
        run.kill()
    status = json.loads(dewy("status", "-d", str(site), "--json").stdout)
    assert (status["instance"], status["version"], status["app"], status["last_error"]) == ("site", "v1.1.0", None, None)
    text = dewy("status", "-d", str(site)).stdout
    assert "version:      v1.1.0" in text
    history = json.loads(dewy("history", "-d", str(site), "--json").stdout)
    assert [(h["event"], h["version"]) for h in history] == [("deployed", "v1.0.0"), ("deployed", "v1.1.0")]
    assert len(json.loads(dewy("history", "-d", str(site), "--json", "-n", "1").stdout)) == 1


def test_status_of_nothing_is_one_line_and_exit_2(tmp_path) -> None:
    result = dewy("status", "-d", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nothing deployed by dewy" in result.stderr
