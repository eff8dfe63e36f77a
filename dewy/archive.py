"""Safe extraction of release archives.

Anyone who can publish a release can make dewy unpack an archive on the host,
often as root, so extraction trusts nothing in it: every path must stay inside
the release directory, links are checked against where they really resolve,
device files and fifos are refused, setuid/setgid/sticky bits and ownership are
dropped, and the bytes written and the members made are counted against limits
(empty members cost no bytes but an inode and time each).

tarfile/zipfile extraction is not used because its safety checks depend on the
Python patch level; only their readers are.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from dewy.errors import ArchiveError, CorruptArchive

DEFAULT_MAX_BYTES = 4 * 1024**3
# Members of one archive. Large real apps (a bundled node_modules) have tens of thousands of files;
# empty members extract at 6,000-14,000 a second, so 100,000 bounds one extraction at 10-20 s and as
# many inodes, where a 10 MB archive of a million empty files would take minutes.
DEFAULT_MAX_MEMBERS = 100_000

_CHUNK = 1024 * 1024
_MAX_LINK = 4096  # PATH_MAX: a longer zip "symlink" is garbage, not a link
_MAX_TAR_META = 1024 * 1024  # tarfile reads pax/GNU long-name headers into memory whole
_SHOWN_NAME = 160  # longest member name quoted whole in an error line

_TAR_OPENERS: dict[str, Callable[[Path], IO[bytes]]] = {
    ".tar.gz": gzip.open,
    ".tgz": gzip.open,
    ".tar.bz2": bz2.open,
    ".tar.xz": lzma.open,
    ".tar": lambda path: open(path, "rb"),
}
SUFFIXES = (*_TAR_OPENERS, ".zip")

_TAR_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_TAR_SPECIAL = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo"}
_ZIP_SPECIAL = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket"}
_ZIP_UNIX = 3  # ZipInfo.create_system: only then does external_attr carry a Unix mode

# The ways the decompressors and readers report a damaged archive.
# NotImplementedError: a zip compression method zipfile cannot read.
_DECODE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError, NotImplementedError)


def extract(archive: Path, dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
            max_members: int = DEFAULT_MAX_MEMBERS) -> None:
    """Extract archive (.tar.gz .tgz .tar.bz2 .tar.xz .tar .zip, chosen by its name, case-insensitive) into dest (an existing empty directory).

    Raises ArchiveError on anything unsafe or damaged (CorruptArchive when it is
    cut off or garbled), and on an archive with nothing in it: deploying one would
    empty the site. dest may then hold partial files (the caller deletes it), but
    nothing is ever written outside dest.
    """
    lower = archive.name.lower()
    suffix = next((s for s in SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        raise ArchiveError(f"{archive.name}: unsupported archive type; dewy extracts {' '.join(SUFFIXES)}")
    extractor = _Extractor(archive.name, dest, max_bytes, max_members)
    if suffix == ".zip":
        extractor.zip(archive)
    else:
        extractor.tar(archive, _TAR_OPENERS[suffix])
    extractor.recheck_symlinks()
    if not extractor.made:
        raise ArchiveError(f"{archive.name} is empty (no files or directories): refusing to deploy it")


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends the archive quietly at a missing or garbled header; a cut-off download must fail instead."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        return cls._strict(buf, lambda: super(_StrictTarInfo, cls).frombuf(buf, encoding, errors))

    if hasattr(tarfile.TarInfo, "_frombuf"):
        # Python 3.13 (and the 3.12 security releases) parse headers through _frombuf, not frombuf
        @classmethod
        def _frombuf(cls, buf: bytes, encoding: str, errors: str, **options: object) -> tarfile.TarInfo:
            return cls._strict(buf, lambda: super(_StrictTarInfo, cls)._frombuf(buf, encoding, errors, **options))

    @classmethod
    def _strict(cls, buf: bytes, parse: Callable[[], tarfile.TarInfo]) -> tarfile.TarInfo:
        try:
            info = parse()
        except tarfile.HeaderError as e:
            if buf == bytes(tarfile.BLOCKSIZE):
                raise  # the real end-of-archive marker
            problem = "unexpected end of data" if len(buf) < tarfile.BLOCKSIZE else f"invalid header: {e}"
            raise tarfile.ReadError(problem) from None
        if info.type in _TAR_META_TYPES and info.size > _MAX_TAR_META:
            raise tarfile.ReadError(f"{info.size}-byte extended header")
        return info


class _Extractor:
    """One extraction: the checks that span members (size so far, links made, files to hardlink to)."""

    def __init__(self, archive_name: str, dest: Path, max_bytes: int, max_members: int) -> None:
        self.archive_name = archive_name
        self.dest = str(dest)
        self.root = os.path.realpath(dest)
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.written = 0
        self.members = 0
        self.made = 0  # members that put something in dest ("./" does not)
        self.files: set[str] = set()  # regular files extracted so far: the only valid hardlink targets
        self.symlinks: list[tuple[str, str, str]] = []  # (member name, path, target)

    def error(self, name: str | None, problem: str, kind: type[ArchiveError] = ArchiveError) -> ArchiveError:
        where = self.archive_name if name is None else f"{self.archive_name}: member {_shown(name)}"
        return kind(f"{where} {problem}")

    @contextmanager
    def reading(self, name: str | None) -> Iterator[None]:
        """Report the many ways a damaged archive fails to decode as one error."""
        try:
            yield
        except _DECODE_ERRORS as e:
            detail = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the library said
            raise self.error(name, f"is truncated or corrupt: {detail}", CorruptArchive) from e

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """Report a failure to write a member (disk full, name too long) as an expected failure, not a bug."""
        try:
            yield
        except OSError as e:
            raise self.error(name, f"cannot be extracted: {e.strerror or e}") from e

    def count(self, size: int, name: str | None) -> None:
        """Add bytes about to be written; the actual data, not the headers, is what a bomb lies about."""
        self.written += size
        if self.written > self.max_bytes:
            raise self.error(
                name, f"exceeds the unpacked size limit of {_human(self.max_bytes)}; raise it with --max-archive-size"
            )

    def member(self, name: str) -> None:
        """Count a member before making it: a million empty files cost no bytes but minutes and inodes."""
        self.members += 1
        if self.members > self.max_members:
            raise self.error(None, f"has more than {self.max_members} members; raise the limit with --max-archive-members")

    # Archive formats: each member is checked for its type here, the rest is common.

    def tar(self, archive: Path, opener: Callable[[Path], IO[bytes]]) -> None:
        """Stream the tar: forward-only reads keep memory flat and never seek back in compressed data."""
        with opener(archive) as raw:
            with self.reading(None):
                tf = tarfile.open(fileobj=raw, mode="r|", tarinfo=_StrictTarInfo)
            with tf:
                while True:
                    with self.reading(None):
                        info = tf.next()
                    if info is None:
                        break
                    self.member(info.name)
                    with self.writing(info.name):
                        self.tar_member(tf, info)
            # Read to the end so the gzip CRC / xz check is verified, counting in case of a bomb hidden there.
            with self.reading(None):
                while chunk := raw.read(_CHUNK):
                    self.count(len(chunk), None)

    def tar_member(self, tf: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        if info.isreg():
            self.file(info.name, info.mode, lambda: tf.extractfile(info), info.mtime)  # type: ignore[arg-type, return-value]
        elif info.isdir():
            self.directory(info.name, info.mode)
        elif info.issym():
            self.symlink(info.name, info.linkname)
        elif info.islnk():
            self.hardlink(info.name, info.linkname)
        elif info.type in _TAR_SPECIAL:
            raise self.error(info.name, f"is {_TAR_SPECIAL[info.type]}; releases may not contain special files")
        else:
            raise self.error(info.name, f"has unsupported tar member type {info.type!r}")

    def zip(self, archive: Path) -> None:
        with self.reading(None):
            zf = zipfile.ZipFile(archive)
        with zf:
            for info in zf.infolist():
                self.member(info.filename)
                with self.writing(info.filename):
                    self.zip_member(zf, info)

    def zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
        name = info.filename
        mode = info.external_attr >> 16 if info.create_system == _ZIP_UNIX else 0
        if info.flag_bits & 0x1:
            raise self.error(name, "is encrypted")
        if info.is_dir() or stat.S_ISDIR(mode):
            self.directory(name, mode & 0o777 or 0o755)
        elif stat.S_ISLNK(mode):
            with self.reading(name), zf.open(info) as src:
                target = src.read(_MAX_LINK + 1)
            if len(target) > _MAX_LINK:
                raise self.error(name, f"is a symlink with a target longer than {_MAX_LINK} bytes")
            self.symlink(name, os.fsdecode(target))
        elif stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0:
            self.file(name, mode & 0o777 or 0o644, lambda: zf.open(info), time.mktime((*info.date_time, 0, 0, -1)))
        elif stat.S_IFMT(mode) in _ZIP_SPECIAL:
            raise self.error(name, f"is {_ZIP_SPECIAL[stat.S_IFMT(mode)]}; releases may not contain special files")
        else:
            raise self.error(name, f"has unsupported file type {oct(stat.S_IFMT(mode))}")

    # Member kinds, common to both formats.

    def file(self, name: str, mode: int, open_data: Callable[[], IO[bytes]], mtime: float) -> None:
        """Copy in chunks, counting as we go; mode and mtime are applied to the open file, never through a path.

        The archive's mtime is kept so web servers' Last-Modified/ETag of unchanged assets survive a deploy.
        """
        rel = self.relative(name)
        path = self.make_room(name, rel, is_dir=False)
        with self.reading(name):
            src = open_data()
        with src, open(path, "xb") as out:  # "x": O_EXCL never follows a symlink
            while True:
                with self.reading(name):
                    chunk = src.read(_CHUNK)
                if not chunk:
                    break
                self.count(len(chunk), name)
                out.write(chunk)
            os.fchmod(out.fileno(), mode & 0o777)
            out.flush()  # a write after utime would reset the mtime
            os.utime(out.fileno(), (mtime, mtime))
        self.files.add(rel)
        self.made += 1

    def directory(self, name: str, mode: int) -> None:
        """Owner rwx is forced so later members can be written and the caller can delete the release."""
        rel = self.relative(name)
        if not rel:
            return  # "./": the release directory itself, whose mode is the caller's
        path = self.make_room(name, rel, is_dir=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # make_room left only a real directory there
        os.chmod(path, mode & 0o777 | 0o700)
        self.made += 1

    def symlink(self, name: str, target: str) -> None:
        if not target:
            raise self.error(name, "is a symlink with an empty target")
        if target.startswith("/"):
            raise self.error(name, f"is a symlink to the absolute path {_shown(target)}")
        if "\0" in target:
            raise self.error(name, "is a symlink whose target contains a NUL byte")
        path = self.make_room(name, self.relative(name), is_dir=False)
        os.symlink(target, path)
        self.symlinks.append((name, path, target))
        self.check_symlink(name, path, target)
        self.made += 1

    def check_symlink(self, name: str, path: str, target: str) -> None:
        """Resolve through the links already on disk, which a lexical check of the target would miss."""
        real = os.path.realpath(path)
        if os.path.commonpath([self.root, real]) != self.root:
            raise self.error(name, f"is a symlink to {_shown(target)}, which escapes the release directory")

    def recheck_symlinks(self) -> None:
        """Links made later can redirect an earlier one (a -> x/y/../.., then x -> ., y -> .); check the final tree."""
        for name, path, target in self.symlinks:
            self.check_symlink(name, path, target)

    def hardlink(self, name: str, target: str) -> None:
        """Only a file this archive wrote may be linked: anything else could be a file outside dest."""
        linked = posixpath.normpath(target)
        if linked.startswith("/") or _escapes(linked):
            raise self.error(name, f"is a hardlink to {_shown(target)}, outside the release directory")
        if linked not in self.files:
            raise self.error(name, f"is a hardlink to {_shown(target)}, which is not a file extracted earlier from the archive")
        rel = self.relative(name)
        path = self.make_room(name, rel, is_dir=False)
        os.link(os.path.join(self.dest, linked), path, follow_symlinks=False)
        self.files.add(rel)
        self.made += 1

    # Paths.

    def relative(self, name: str) -> str:
        """The member's path relative to dest, normalised; '' is dest itself."""
        if "\0" in name:
            raise self.error(name, "has a NUL byte in its name")
        if name.startswith("/"):
            raise self.error(name, "is an absolute path")
        rel = posixpath.normpath(name)
        if _escapes(rel):
            raise self.error(name, "escapes the release directory")
        return "" if rel == "." else rel

    def make_room(self, name: str, rel: str, *, is_dir: bool) -> str:
        """Create the parent directories of rel and clear what an earlier member left at rel; return its path.

        No component may be a symlink, even one pointing inside dest: writing only
        through real directories is what makes "nothing lands outside dest" hold.
        """
        if not rel:
            raise self.error(name, "would replace the release directory itself")
        parts = rel.split("/")
        path = self.dest
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if i < len(parts) - 1:
                    os.mkdir(path, 0o755)
                continue
            here = "/".join(parts[: i + 1])
            if i == len(parts) - 1:
                if stat.S_ISDIR(st.st_mode):
                    if not is_dir:
                        raise self.error(name, "would replace a directory of the same name")
                else:
                    os.unlink(path)  # a later member wins, as with tar
                    self.files.discard(rel)
            elif stat.S_ISLNK(st.st_mode):
                raise self.error(name, f"would be written through the symlink {here!r}")
            elif not stat.S_ISDIR(st.st_mode):
                raise self.error(name, f"needs {here!r} to be a directory, but it is a file")
        return path


def _escapes(rel: str) -> bool:
    """True for a normalised relative path that climbs out of its starting directory."""
    return rel == ".." or rel.startswith("../")


def _shown(text: str) -> str:
    """A member name or link target for an error line: quoted, and shortened in the middle if very long."""
    if len(text) > _SHOWN_NAME:
        text = f"{text[:_SHOWN_NAME // 2]}...({len(text)} characters)...{text[-_SHOWN_NAME // 4:]}"
    return repr(text)


def _human(size: int) -> str:
    """4294967296 -> '4 GiB': the limit reads the way operators write it, and stays exact."""
    for scale, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if size % scale == 0 and size:
            return f"{size // scale} {unit}"
    return f"{size} bytes"
