"""kill -9 of dewy at any moment of a deploy: ``current`` is always a complete release, the cache never
holds a partial artifact under its final name, and a restarted dewy converges."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

from tests.conftest import publish
from tests.harness import Dewy

PAYLOAD = 6 << 20


def expected_release(tag: str) -> dict[str, bytes]:
    rng = random.Random(tag)
    return {"payload.bin": rng.randbytes(PAYLOAD), "VERSION": tag.encode(), "zz-last": b"complete"}


def check_invariants(tmp_path: Path, published: dict[str, dict[str, bytes]], digests: dict[str, str]) -> None:
    current = tmp_path / "site" / "current"
    if os.path.lexists(current):
        files = {p.name: p.read_bytes() for p in current.iterdir()}
        assert files == published[files["VERSION"].decode()], "current must point at a complete release"
    for artifact in (tmp_path / "cache" / "artifacts").glob("v*"):
        assert hashlib.sha256(artifact.read_bytes()).hexdigest() == digests[artifact.name.split("--")[0]], \
            f"{artifact.name} is partial under its final name"


def start(tmp_path: Path) -> Dewy:
    return Dewy(["assets", "--registry", (tmp_path / "registry").as_uri(), "-i", "0.1", "-d", str(tmp_path / "site"),
                 "-c", (tmp_path / "cache").as_uri()], cwd=tmp_path)


def test_kill_9_during_download_extraction_and_switch(tmp_path) -> None:
    published: dict[str, dict[str, bytes]] = {}
    digests: dict[str, str] = {}

    def release(tag: str) -> None:
        published[tag] = expected_release(tag)
        artifact = publish(tmp_path / "registry", tag, published[tag])
        digests[tag] = hashlib.sha256(artifact.read_bytes()).hexdigest()

    release("v1.0.0")
    dewy = start(tmp_path)
    dewy.wait_for("deployed", version="v1.0.0")
    release("v1.1.0")
    dewy.wait_for("deploying", version="v1.1.0")
    began = time.monotonic()
    dewy.wait_for("deployed", version="v1.1.0")
    span = time.monotonic() - began  # a whole deploy: kill points are spread over it
    dewy.kill()
    killed_in = set()
    for minor in range(2, 14):
        tag = f"v1.{minor}.0"
        dewy = start(tmp_path)
        dewy.wait_for(("deployed", "up-to-date"), version=f"v1.{minor - 1}.0")
        release(tag)
        dewy.wait_for("deploying", version=tag)
        time.sleep(random.uniform(0, span))  # fault injection: the kill lands somewhere in the deploy
        dewy.kill()
        killed_in.add(next(e["event"] for e in reversed(dewy.seen) if e.get("version") == tag))
        check_invariants(tmp_path, published, digests)
        dewy = start(tmp_path)
        dewy.wait_for(("deployed", "up-to-date"), version=tag)
        dewy.kill()
        check_invariants(tmp_path, published, digests)
        assert (tmp_path / "site" / "current" / "VERSION").read_text() == tag
        assert not [p for p in (tmp_path / "site" / "releases").iterdir() if p.name.startswith(".")]
    assert killed_in & {"deploying", "downloaded"}, f"no kill landed inside a deploy: {killed_in}"
