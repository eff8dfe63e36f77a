"""Safe extraction of release archives.

Anyone who can publish a release can make dewy unpack an archive on the host,
often as root, so extraction trusts nothing in it: every path must stay inside
the release directory, links are checked against where they really resolve,
device files and fifos are refused, setuid/setgid/sticky bits and ownership are
dropped, and the bytes written and the members made are counted against limits
(empty members cost no bytes but an inode and time each).

tarfile/zipfile extraction is not used because its safety checks depend on the
Python patch level; only their readers are.

Speed: a plain .tar is read in place (its headers parsed, its members' bytes copied
by the kernel with copy_file_range(2) straight from the artifact, or written from the
memory they were downloaded into: :class:`~dewy.spool.MemorySpool`); a compressed tar
is decoded by the C decompressors in a thread of its own into such a memory window,
which the same in-place reader parses meanwhile (as ``gzip -d`` beside ``tar`` works).
Plain ustar/GNU headers are parsed here, in a few C-level calls; pax and GNU long-name
headers, and anything odd, are left to tarfile. The tree is made with as few system
calls per member as the checks allow (directories this extraction made are known to be
real, so their paths are not looked at again). The source may still be arriving (a
:class:`~dewy.spool.SpoolReader` or ``MemoryReader``): reads wait for its bytes.
"""

from __future__ import annotations

import bz2
import functools
import lzma
import os
import posixpath
import stat
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from dewy.errors import ArchiveError, CorruptArchive
from dewy.spool import Aborted, MemoryReader, MemorySpool, Reader, Spool, SpoolReader, write_all

DEFAULT_MAX_BYTES = 4 * 1024**3
# Members of one archive. Large real apps (a bundled node_modules) have tens of thousands of files;
# empty members extract at 6,000-14,000 a second, so 100,000 bounds one extraction at 10-20 s and as
# many inodes, where a 10 MB archive of a million empty files would take minutes.
DEFAULT_MAX_MEMBERS = 100_000

_CHUNK = 1024 * 1024
_MAX_LINK = 4096  # PATH_MAX: a longer zip "symlink" is garbage, not a link
_MAX_TAR_META = 1024 * 1024  # tarfile reads pax/GNU long-name headers into memory whole
_SHOWN_NAME = 160  # longest member name quoted whole in an error line
_COPY_CHUNK = 8 * 1024 * 1024  # bytes of a member copied between two checks of the size limit
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC  # O_EXCL never follows a symlink
_DECODED_WINDOW = 4 * 1024 * 1024  # decompressed bytes held ahead of the tar reader (more than one metadata header)


@functools.cache
def _zstd() -> tuple[Callable[[IO[bytes]], IO[bytes]] | None, tuple[type[Exception], ...]]:
    """The zstd reader: the standard library's (Python 3.14) where present, else the zstandard package;
    loaded at the first zstd archive (a daemon that never sees one does not carry the C library).

    zstandard's reader ends quietly at a cut-off frame; the strict tar header check
    still fails such an archive, as the end-of-archive block never arrives.
    """
    try:
        from compression import zstd  # type: ignore[import-not-found]

        return (lambda raw: zstd.ZstdFile(raw)), (zstd.ZstdError,)
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None, ()
    def reader(raw: IO[bytes]) -> IO[bytes]:  # read in 1 MiB pieces by the decoder thread
        return zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK, closefd=False)

    return reader, (zstandard.ZstdError,)


def _open_zstd(raw: IO[bytes]) -> IO[bytes]:
    opener, _ = _zstd()
    assert opener is not None  # extract() refuses a zstd archive first when there is no reader
    return opener(raw)


class _Gunzip:
    """gzip members decoded by zlib in large C calls (wbits=31 checks each member's CRC and size): GzipFile's
    Python work between its 128 KiB pieces would keep taking the GIL from the thread that writes the files.
    As with GzipFile, members may follow one another, and zero bytes after a member are padding."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.decoder = zlib.decompressobj(31)

    def read(self, size: int = _CHUNK) -> bytes:
        while True:
            if self.decoder.eof:
                rest = self.decoder.unused_data.lstrip(b"\0")
                while not rest:  # the next member, or the end
                    more = self.raw.read(_CHUNK)
                    if not more:
                        return b""
                    rest = more.lstrip(b"\0")
                self.decoder = zlib.decompressobj(31)
                data = rest
            elif self.decoder.unconsumed_tail:
                data = self.decoder.unconsumed_tail
            else:
                data = self.raw.read(_CHUNK // 4)
                if not data:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            out = self.decoder.decompress(data, size)
            if out:
                return out

    def __enter__(self) -> _Gunzip:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


_TAR_OPENERS: dict[str, Callable[[IO[bytes]], IO[bytes]] | None] = {
    ".tar.gz": _Gunzip,  # type: ignore[dict-item]
    ".tgz": _Gunzip,  # type: ignore[dict-item]
    ".tar.bz2": bz2.BZ2File,
    ".tar.xz": lzma.LZMAFile,
    ".tar.zst": _open_zstd,
    ".tzst": _open_zstd,
    ".tar": None,  # read in place
}
SUFFIXES = (*_TAR_OPENERS, ".zip")

_TAR_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_TAR_SPECIAL = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo"}
_ZIP_SPECIAL = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket"}
_ZIP_UNIX = 3  # ZipInfo.create_system: only then does external_attr carry a Unix mode

# The ways the decompressors and readers report a damaged archive.
# NotImplementedError: a zip compression method zipfile cannot read.
_DECODE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError, NotImplementedError)


def _decode_errors() -> tuple[type[Exception], ...]:
    """:data:`_DECODE_ERRORS`, and zstd's once a zstd reader was loaded."""
    return _DECODE_ERRORS + (_zstd()[1] if _zstd.cache_info().currsize else ())


def extract(archive: Path | Reader, dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
            max_members: int = DEFAULT_MAX_MEMBERS) -> None:
    """Extract archive (.tar.gz .tgz .tar.bz2 .tar.xz .tar.zst .tzst .tar .zip, chosen by its name,
    case-insensitive) into dest (an existing empty directory).

    Raises ArchiveError on anything unsafe or damaged (CorruptArchive when it is
    cut off or garbled), and on an archive with nothing in it: deploying one would
    empty the site. dest may then hold partial files (the caller deletes it), but
    nothing is ever written outside dest.
    """
    reader = archive if isinstance(archive, (SpoolReader, MemoryReader)) else Spool.of_file(archive).reader()
    name = reader.spool.name
    try:
        lower = name.lower()
        suffix = next((s for s in SUFFIXES if lower.endswith(s)), None)
        if suffix is None:
            raise ArchiveError(f"{name}: unsupported archive type; dewy extracts {' '.join(SUFFIXES)}")
        extractor = _Extractor(name, dest, max_bytes, max_members)
        if suffix == ".zip":
            reader.seek(0, os.SEEK_END)  # a zip's directory is at its end: wait for all of it
            extractor.zip(reader)
        elif suffix == ".tar":
            extractor.plain_tar(reader)
        else:
            opener = _TAR_OPENERS[suffix]
            if opener is _open_zstd and _zstd()[0] is None:
                raise ArchiveError(f"{name}: extracting {suffix} needs the zstandard package (pip install zstandard)")
            extractor.tar(reader, opener)
        extractor.recheck_symlinks()
        if not extractor.made:
            raise ArchiveError(f"{name} is empty (no files or directories): refusing to deploy it")
    finally:
        if reader is not archive:
            reader.close()


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
        self.dirs: set[str] = {""}  # real directories this extraction made or checked: no member can replace one
        self.symlinks: list[tuple[str, str, str]] = []  # (member name, path, target)

    def error(self, name: str | None, problem: str, kind: type[ArchiveError] = ArchiveError) -> ArchiveError:
        where = self.archive_name if name is None else f"{self.archive_name}: member {_shown(name)}"
        return kind(f"{where} {problem}")

    @contextmanager
    def reading(self, name: str | None) -> Iterator[None]:
        """Report the many ways a damaged archive fails to decode as one error."""
        try:
            yield
        except _decode_errors() as e:
            raise self.corrupt(name, e) from e

    def corrupt(self, name: str | None, e: Exception) -> ArchiveError:
        detail = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the library said
        return self.error(name, f"is truncated or corrupt: {detail}", CorruptArchive)

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """Report a failure to write a member (disk full, name too long) as an expected failure, not a bug."""
        try:
            yield
        except OSError as e:
            raise self.unwritable(name, e) from e

    def unwritable(self, name: str, e: OSError) -> ArchiveError:
        return self.error(name, f"cannot be extracted: {e.strerror or e}")

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

    def tar(self, source: SpoolReader, opener: Callable[[IO[bytes]], IO[bytes]]) -> None:
        """Decompress in a thread of its own (the C decoders release the GIL) into a window in memory that the
        plain tar reader parses and writes out: decoding overlaps the parsing and the files' system calls, as
        gzip beside tar does, and memory stays flat. Compressed data is only ever read forward."""
        decoded = MemorySpool(self.archive_name, window=_DECODED_WINDOW)
        reader = decoded.reader()
        failure: list[BaseException] = []
        decoder = threading.Thread(target=self.decode, args=(source, opener, decoded, failure), name="decompress",
                                   daemon=True)
        decoder.start()
        try:
            with reader:
                self.plain_tar(reader)
                # Read to the end so the gzip CRC / xz check is verified, counting in case of a bomb hidden there
                # (but for the rest of the last record: tar pads the archive to a multiple of it).
                reader.read(-reader.tell() % tarfile.RECORDSIZE)
                while chunk := reader.read(_CHUNK):
                    self.count(len(chunk), None)
            complete = True
        except Aborted:  # the decoder stopped: its failure, or the download's, is the one to tell
            complete = False
        finally:
            source.stop()  # if the decoder still reads (this extraction failed): its next read ends it
            decoder.join()
        if failure:
            raise failure[0]
        if not complete:
            raise Aborted()

    def decode(self, source: SpoolReader, opener: Callable[[IO[bytes]], IO[bytes]], decoded: MemorySpool,
               failure: list[BaseException]) -> None:
        """The decoder thread: ``source`` decompressed into ``decoded``; what went wrong is put in ``failure``."""
        try:
            with self.reading(None):
                raw = opener(source)
                with raw:
                    while chunk := raw.read(_CHUNK):
                        decoded.write(chunk)
        except Aborted:  # the extraction is done with it, or the download failed
            decoded.abort()
            return
        except BaseException as exc:  # told by the extraction thread
            failure.append(exc)
            decoded.abort()
            return
        decoded.finish()

    def plain_tar(self, source: Reader) -> None:
        """Read an uncompressed tar in place, members' bytes copied where they lie (by the kernel from a spool
        file, in one write each from memory). A plain header is parsed here (:func:`_plain_header`); anything
        else (pax and GNU long-name headers, the end of the archive, a damaged block) goes to tarfile, which
        is also the reader for the rest of an archive once it has seen a pax global header."""
        tf: tarfile.TarFile | None = None
        offset = 0
        decode_errors = _decode_errors()  # a try per member rather than reading(): a small file feels the difference
        while True:
            try:
                source.seek(offset)
                plain = None if tf is not None and tf.pax_headers else _plain_header(source.read(tarfile.BLOCKSIZE))
                if plain is None:
                    source.seek(offset)
                    if tf is None:
                        tf = tarfile.open(fileobj=source, mode="r:", tarinfo=_StrictTarInfo)  # type: ignore[call-overload]
                        if tf.firstmember is None:  # the end of the archive: tarfile read it as it opened
                            return
                    else:
                        tf.offset = offset
                    info = tf.next()
                    if info is None:
                        return
                    tf.members.clear()  # tarfile keeps every header read; 100,000 of them would be memory for nothing
                    offset = tf.offset
            except decode_errors as e:
                raise self.corrupt(None, e) from e
            if plain is None:
                self.member(info.name)
                with self.writing(info.name):
                    self.tar_member(info, functools.partial(self.fill_of, source, tf))
                continue
            kind, name, mode, size, mtime, link = plain
            self.member(name)
            try:
                if kind == tarfile.REGTYPE:
                    self.file(name, mode, mtime, self.copied(source, name, offset + tarfile.BLOCKSIZE, size))
                    offset += -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                elif kind == tarfile.DIRTYPE:
                    self.directory(name, mode)
                elif kind == tarfile.SYMTYPE:
                    self.symlink(name, link)
                else:
                    self.hardlink(name, link)
            except OSError as e:
                raise self.unwritable(name, e) from e
            offset += tarfile.BLOCKSIZE

    def fill_of(self, source: Reader, tf: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[int], None]:
        if info.sparse is not None:  # its data is not one run of bytes
            return self.streamed(info.name, lambda: tf.extractfile(info))  # type: ignore[arg-type, return-value]
        return self.copied(source, info.name, info.offset_data, info.size)

    def tar_member(self, info: tarfile.TarInfo, fill_of: Callable[[tarfile.TarInfo], Callable[[int], None]]) -> None:
        if info.isreg():
            self.file(info.name, info.mode, info.mtime, fill_of(info))
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

    def zip(self, source: IO[bytes]) -> None:
        with self.reading(None):
            zf = zipfile.ZipFile(source)
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
            self.file(name, mode & 0o777 or 0o644, time.mktime((*info.date_time, 0, 0, -1)),
                      self.streamed(name, lambda: zf.open(info)))
        elif stat.S_IFMT(mode) in _ZIP_SPECIAL:
            raise self.error(name, f"is {_ZIP_SPECIAL[stat.S_IFMT(mode)]}; releases may not contain special files")
        else:
            raise self.error(name, f"has unsupported file type {oct(stat.S_IFMT(mode))}")

    # Member kinds, common to both formats.

    def file(self, name: str, mode: int, mtime: float, fill: Callable[[int], None]) -> None:
        """Create the file and ``fill`` it; mode and mtime are applied to the open file, never through a path.

        The archive's mtime is kept so web servers' Last-Modified/ETag of unchanged assets survive a deploy.
        """
        rel = self.relative(name)
        fd = None
        if rel.rpartition("/")[0] in self.dirs:  # a real directory: nothing to make, only the name itself to look at
            try:
                fd = os.open(os.path.join(self.dest, rel), _NEW_FILE, 0o600)
            except FileExistsError:
                pass  # an earlier member's, or a directory: make_room decides
        if fd is None:
            fd = os.open(self.make_room(name, rel, is_dir=False), _NEW_FILE, 0o600)
        try:
            fill(fd)
            os.fchmod(fd, mode & 0o777)
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        self.files.add(rel)
        self.made += 1

    def streamed(self, name: str, open_data: Callable[[], IO[bytes]]) -> Callable[[int], None]:
        """Fill a file from a decoder in chunks, counting as we go."""
        def fill(fd: int) -> None:
            with self.reading(name):
                src = open_data()
            with src:
                while True:
                    with self.reading(name):
                        chunk = src.read(_CHUNK)
                    if not chunk:
                        return
                    self.count(len(chunk), name)
                    write_all(fd, chunk)
        return fill

    def copied(self, source: Reader, name: str, offset: int, size: int) -> Callable[[int], None]:
        """Fill a file with the member's bytes where they lie in the archive, as they arrive."""
        def fill(fd: int) -> None:
            at, left = offset, size
            while left:
                piece = min(left, _COPY_CHUNK)  # the size limit is checked between pieces
                self.count(piece, name)
                if not source.copy_to(fd, at, piece):
                    raise self.error(name, "is truncated or corrupt: unexpected end of data", CorruptArchive)
                at, left = at + piece, left - piece
        return fill

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
        self.dirs.add(rel)
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
        # A parent this extraction made or checked is still a real directory: only the last component is looked at.
        start = len(parts) - 1 if "/".join(parts[:-1]) in self.dirs else 0
        path = os.path.join(self.dest, *parts[:start])
        for i in range(start, len(parts)):
            path = os.path.join(path, parts[i])
            last = i == len(parts) - 1
            here = "/".join(parts[: i + 1])
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not last:
                    os.mkdir(path, 0o755)
                    self.dirs.add(here)
                continue
            if last:
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
            else:
                self.dirs.add(here)
        return path


_USTAR_MAGIC = (b"ustar\x0000", b"ustar  \x00")  # POSIX, GNU
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)


def _plain_header(block: bytes) -> tuple[bytes, str, int, int, int, str] | None:
    """(type, name, mode, size, mtime, link target) of a plain ustar/GNU header of a file, directory or link,
    read as tarfile reads it; tarfile's parsing is a third of the time a small file takes to extract. None for
    anything else (other types, base-256 or bad numbers, a wrong checksum, a short block, the end of the
    archive): tarfile parses that, and refuses it, as it always has."""
    kind = block[156:157]
    if len(block) != tarfile.BLOCKSIZE or block[257:265] not in _USTAR_MAGIC or kind not in _PLAIN_TYPES:
        return None
    try:
        mode, size, mtime, checksum = (_octal(block[100:108]), _octal(block[124:136]), _octal(block[136:148]),
                                       _octal(block[148:156]))
    except ValueError:
        return None
    if min(mode, size, mtime) < 0 or checksum != sum(block) - sum(block[148:156]) + 256:  # as tarfile's unsigned sum
        return None
    name, prefix = _header_text(block[:100]), _header_text(block[345:500])
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    if prefix:
        name = f"{prefix}/{name}"
    return kind, name, mode, size, mtime, _header_text(block[157:257])


def _octal(field: bytes) -> int:
    """A number field as tarfile reads one written in octal digits (a base-256 one is ValueError: tarfile reads it)."""
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _header_text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


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
