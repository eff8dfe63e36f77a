"""The files the OS packages are built from, for `make deb` / `make rpm` and the package tests.

    python3 packaging/srctree.py copy DEST     copy them to DEST (a fresh directory)
    python3 packaging/srctree.py tar OUT.tar.gz PREFIX   a source tarball (rpm's Source0)
    python3 packaging/srctree.py hash          a digest of their paths, modes and contents

In a git checkout (with git installed): tracked and untracked-but-not-ignored files (so
uncommitted edits count); elsewhere every file but VCS, venvs and build output. tests/, bench/, .ci/, the Vagrantfile and
the Ansible role (packaging/ansible/) never go into a package (nor into the digest the system
tests cache builds by).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_PACKAGED = ("tests/", "bench/", "dist/", "build/", ".ci/", "Vagrantfile", "packaging/ansible/")
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".dewy"}


def files(repo: Path = REPO) -> list[str]:
    if (repo / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout.decode()
        names = {name for name in out.split("\0") if name}
    else:
        names = set()
        for top, dirs, filenames in os.walk(repo):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            for filename in filenames:
                names.add(os.path.relpath(os.path.join(top, filename), repo))
    keep = []
    for name in sorted(names):
        path = repo / name
        if name.startswith(NOT_PACKAGED) or "__pycache__" in name.split("/"):
            continue
        if path.is_symlink() or path.is_file():      # deleted-but-tracked files and submodules drop out
            keep.append(name)
    return keep


def copy(dest: Path, repo: Path = REPO) -> None:
    dest.mkdir(parents=True)
    for name in files(repo):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target, follow_symlinks=False)


def tar(out: Path, prefix: str, repo: Path = REPO) -> None:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if epoch:
            info.mtime = min(info.mtime, epoch)
        return info

    with tarfile.open(out, "w:gz") as archive:
        for name in files(repo):
            archive.add(repo / name, arcname=f"{prefix}/{name}", recursive=False, filter=clean)


def digest(repo: Path = REPO) -> str:
    h = hashlib.sha256()
    for name in files(repo):
        path = repo / name
        h.update(name.encode() + b"\0")
        if path.is_symlink():
            h.update(b"link:" + os.readlink(path).encode())
        else:
            h.update(b"x" if os.access(path, os.X_OK) else b"-")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


if __name__ == "__main__":
    if sys.argv[1:2] == ["copy"] and len(sys.argv) == 3:
        copy(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["tar"] and len(sys.argv) == 4:
        tar(Path(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:] == ["hash"]:
        print(digest())
    else:
        sys.exit(__doc__)
