"""Publish a release into a file:// registry: DIR/<tag>/<app>_<os>_<arch>.tar.gz plus checksums.txt.

The same layout serves s3:// and gs:// prefixes, so CI can upload what this writes.
Usage: python examples/publish.py REGISTRY_DIR TAG FILE...
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

from dewy.registry import host_words


def publish(registry: Path, tag: str, files: list[Path]) -> Path:
    os_words, arch_words = host_words()
    name = f"app_{os_words[0]}_{arch_words[0]}.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
        version = tag.encode()
        info = tarfile.TarInfo("VERSION")
        info.size = len(version)
        tar.addfile(info, io.BytesIO(version))
    directory = registry / tag
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(buffer.getvalue())
    (directory / "checksums.txt").write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  {name}\n")
    return directory / name


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    print(publish(Path(sys.argv[1]), sys.argv[2], [Path(p) for p in sys.argv[3:]]))
