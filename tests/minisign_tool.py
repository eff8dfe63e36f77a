"""The real ``minisign`` tool, for signatures made the way publishers make them (Debian package minisign)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    public: Path  # the .pub file minisign wrote
    secret: Path

    @property
    def id(self) -> str:
        """The key id minisign printed into the public key's comment."""
        return self.public.read_text().splitlines()[0].rsplit(" ", 1)[1]

    @property
    def line(self) -> str:
        """The base64 public key alone, as ``minisign -P`` takes it."""
        return self.public.read_text().splitlines()[1]


def generate(directory: Path, name: str = "key") -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.pub", directory / f"{name}.key")
    subprocess.run(["minisign", "-G", "-W", "-p", str(pair.public), "-s", str(pair.secret)],
                   check=True, capture_output=True)
    return pair


def sign(key: KeyPair, path: Path, *, legacy: bool = False, comment: str | None = None) -> Path:
    """Write ``<path>.minisig``: prehashed (minisign's default) unless ``legacy``."""
    command = ["minisign", "-S", "-s", str(key.secret), "-m", str(path)]
    command += ["-l"] if legacy else []
    command += ["-t", comment] if comment is not None else []
    subprocess.run(command, check=True, capture_output=True)
    return path.with_name(path.name + ".minisig")
