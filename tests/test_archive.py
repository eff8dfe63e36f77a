"""dewy.archive: real archives built with tarfile/zipfile, good and hostile."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import threading
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import zstandard

from dewy import archive as dewy_archive
from dewy.archive import DEFAULT_MAX_BYTES, DEFAULT_MAX_MEMBERS
from dewy.errors import ArchiveError
from dewy.spool import WINDOW, Aborted, MemorySpool

TAR_MODES = {"app.tar.gz": "w:gz", "app.tgz": "w:gz", "app.tar.bz2": "w:bz2", "app.tar.xz": "w:xz", "app.tar.zst": "zst",
             "app.tzst": "zst", "app.tar": "w"}


# streamed through a decompressor, read in place, zstd, a plain tar from memory as it downloads: the checks hold for each
SAFETY = ["app.tar.gz", "app.tar", "app.tar.zst", "streamed.tar"]
PLAIN = ["app.tar", "streamed.tar"]


def extract(archive: Path, dest: Path, **limits: int) -> None:
    """dewy's extract; a ``streamed*`` archive is read from a MemorySpool that a thread writes it into meanwhile,
    in 64 KiB pieces, as a downloaded plain .tar is."""
    if not archive.name.startswith("streamed"):
        return dewy_archive.extract(archive, dest, **limits)
    spool = MemorySpool(archive.name)
    reader = spool.reader()

    def download() -> None:
        with archive.open("rb") as source:
            try:
                while piece := source.read(64 << 10):
                    spool.write(piece)
            except Aborted:
                return
        spool.finish()

    writer = threading.Thread(target=download)
    writer.start()
    try:
        with reader:
            dewy_archive.extract(reader, dest, **limits)
    finally:
        writer.join(30)
        assert not writer.is_alive(), "the writer was held back by a reader that is done"


# Building archives.


def reg(name: str, data: bytes = b"", mode: int = 0o644, **attrs: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info, None


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return entry(name, tarfile.SYMTYPE, target)


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return entry(name, tarfile.LNKTYPE, target)


def dirent(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes | None]:
    return entry(name, tarfile.DIRTYPE, mode=mode)


def make_tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    mode = next(m for suffix, m in TAR_MODES.items() if path.name.lower().endswith(suffix.removeprefix("app")))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w" if mode == "zst" else mode, format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(zstd(buffer.getvalue()) if mode == "zst" else buffer.getvalue())
    return path


def zstd(data: bytes) -> bytes:
    """What ``zstd`` writes by default (a content checksum included), as CI pipelines produce .tar.zst."""
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def zentry(name: str, data: bytes = b"", mode: int | None = 0o100644) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    if mode is None:
        info.create_system = 0  # made on Windows: no Unix mode
    else:
        info.external_attr = mode << 16
    return info, data


def make_zip(path: Path, *members: tuple[zipfile.ZipInfo, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for info, data in members:
            info.compress_type = compression
            zf.writestr(info, data)
    return path


# Checking that a rejection left everything outside dest alone.


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """A release directory a few levels down, so that escapes land inside tmp_path where we can see them."""
    d = tmp_path / "srv" / "releases" / "r1"
    d.mkdir(parents=True)
    (tmp_path / "srv" / "releases" / "outside.txt").write_text("keep me")
    return d


def snapshot(root: Path, skip: Path) -> dict[str, object]:
    seen: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            content = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
            seen[str(p)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_nlink, content)
    passwd = os.lstat("/etc/passwd")
    seen["/etc/passwd"] = (passwd.st_nlink, passwd.st_mode, passwd.st_mtime_ns, passwd.st_size)
    return seen


def rejected(archive: Path, dest: Path, *phrases: str, max_bytes: int = DEFAULT_MAX_BYTES,
             max_members: int = DEFAULT_MAX_MEMBERS) -> str:
    """Extract expecting ArchiveError: one line, naming the archive and each phrase; nothing outside dest changed."""
    root = dest.parents[2]
    before = snapshot(root, dest)
    with pytest.raises(ArchiveError) as raised:
        extract(archive, dest, max_bytes=max_bytes, max_members=max_members)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(archive.name), message
    for phrase in phrases:
        assert phrase in message, message
    assert snapshot(root, dest) == before
    return message


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# Good archives.


@pytest.mark.parametrize("name", [*TAR_MODES, "APP.TAR.GZ"])
def test_tar_formats_extract_content_modes_and_links(tmp_path: Path, dest: Path, name: str) -> None:
    archive = make_tar(
        tmp_path / name,
        dirent("./"),
        dirent("app"),
        reg("app/run", b"#!/bin/sh\necho hi\n", 0o755),
        reg("app/data.txt", b"data", 0o640),
        sym("app/link", "data.txt"),
        hard("app/hard", "app/data.txt"),
        reg("./top/nested/file.txt", b"implicit parents"),
        sym("top/up", "../app"),
    )
    extract(archive, dest)
    assert (dest / "app/run").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert mode_of(dest / "app/run") == 0o755
    assert mode_of(dest / "app/data.txt") == 0o640
    assert os.readlink(dest / "app/link") == "data.txt"
    assert (dest / "app/link").read_bytes() == b"data"
    assert os.path.samefile(dest / "app/hard", dest / "app/data.txt")
    assert (dest / "top/nested/file.txt").read_bytes() == b"implicit parents"
    assert (dest / "top/up/run").exists()


def test_zip_extracts_content_modes_dirs_and_symlinks(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(
        tmp_path / "App.ZIP",
        zentry("bin/", mode=0o40755),
        zentry("bin/run", b"#!/bin/sh\n", 0o100755),
        zentry("bin/secret", b"s", 0o100600),
        zentry("bin/current", b"run", 0o120777),
        zentry("windows/readme.txt", b"no unix mode", None),
        zentry("empty-dir/", mode=None),
    )
    extract(archive, dest)
    assert (dest / "bin/run").read_bytes() == b"#!/bin/sh\n"
    assert mode_of(dest / "bin/run") == 0o755
    assert mode_of(dest / "bin/secret") == 0o600
    assert os.readlink(dest / "bin/current") == "run"
    assert mode_of(dest / "windows/readme.txt") == 0o644
    assert (dest / "empty-dir").is_dir() and mode_of(dest / "empty-dir") == 0o755


def test_special_bits_stripped_exec_kept_owner_ignored_dirs_owner_writable(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(
        tmp_path / "app.tar.gz",
        dirent("ro", 0o3555),
        reg("ro/suid", b"x", 0o4755, uid=4321, gid=4321, uname="nobody", gname="nogroup"),
        reg("ro/sgid", b"x", 0o2750),
        dirent("sticky", 0o1777),
    )
    extract(archive, dest)
    assert mode_of(dest / "ro") == 0o755
    assert mode_of(dest / "ro/suid") == 0o755
    assert mode_of(dest / "ro/sgid") == 0o750
    assert mode_of(dest / "sticky") == 0o777
    assert (dest / "ro/suid").stat().st_uid == os.getuid()
    zip_dest = dest.parent / "r2"
    zip_dest.mkdir()
    extract(make_zip(tmp_path / "app.zip", zentry("suid", b"x", 0o106755)), zip_dest)
    assert mode_of(zip_dest / "suid") == 0o755


def test_later_member_replaces_earlier_file(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "app.tar", reg("f", b"old"), sym("l", "f"), reg("l", b"new"), reg("f", b"newer"))
    extract(archive, dest)
    assert not (dest / "l").is_symlink()
    assert (dest / "l").read_bytes() == b"new"
    assert (dest / "f").read_bytes() == b"newer"


# Escapes.


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("/abs/evil", "member '/abs/evil' is an absolute path"),
        ("../x", "member '../x' escapes the release directory"),
        ("a/../../x", "member 'a/../../x' escapes the release directory"),
        ("..", "member '..' escapes the release directory"),
    ],
)
@pytest.mark.parametrize("kind", SAFETY)
def test_member_paths_outside_rejected(tmp_path: Path, dest: Path, kind: str, member: str, problem: str) -> None:
    rejected(make_tar(tmp_path / kind, reg(member, b"evil")), dest, problem)


@pytest.mark.parametrize("kind", SAFETY)
def test_dotdot_inside_release_allowed(tmp_path: Path, dest: Path, kind: str) -> None:
    extract(make_tar(tmp_path / kind, reg("a/../b", b"ok")), dest)
    assert (dest / "b").read_bytes() == b"ok"


@pytest.mark.parametrize("kind", SAFETY)
def test_symlink_to_absolute_path_rejected(tmp_path: Path, dest: Path, kind: str) -> None:
    archive = make_tar(tmp_path / kind, sym("passwd", "/etc/passwd"))
    rejected(archive, dest, "member 'passwd' is a symlink to the absolute path '/etc/passwd'")


@pytest.mark.parametrize("kind", SAFETY)
def test_symlink_climbing_out_rejected(tmp_path: Path, dest: Path, kind: str) -> None:
    archive = make_tar(tmp_path / kind, sym("sub/out", "../../x"))
    rejected(archive, dest, "member 'sub/out' is a symlink to '../../x', which escapes the release directory")


@pytest.mark.parametrize("kind", SAFETY)
def test_symlink_to_parent_then_write_through_it_rejected(tmp_path: Path, dest: Path, kind: str) -> None:
    archive = make_tar(tmp_path / kind, sym("link", ".."), reg("link/evil", b"evil"))
    rejected(archive, dest, "member 'link' is a symlink to '..', which escapes the release directory")


@pytest.mark.parametrize("kind", SAFETY)
def test_write_through_inside_symlink_rejected(tmp_path: Path, dest: Path, kind: str) -> None:
    """Even a link that stays inside is never written through: only real directories are."""
    archive = make_tar(tmp_path / kind, dirent("sub"), sym("inner", "sub"), reg("inner/evil", b"x"))
    rejected(archive, dest, "member 'inner/evil' would be written through the symlink 'inner'")


@pytest.mark.parametrize("kind", SAFETY)
def test_symlink_chain_escape_found_after_later_links(tmp_path: Path, dest: Path, kind: str) -> None:
    """Each link looks harmless when made; together a -> x/y/../.. resolves two levels above dest."""
    archive = make_tar(tmp_path / kind, sym("a", "x/y/../.."), sym("x", "."), sym("y", "."))
    rejected(archive, dest, "member 'a' is a symlink to 'x/y/../..', which escapes the release directory")


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.txt"])
@pytest.mark.parametrize("kind", SAFETY)
def test_hardlink_outside_rejected(tmp_path: Path, dest: Path, kind: str, target: str) -> None:
    archive = make_tar(tmp_path / kind, hard("h", target), reg("h", b"overwrite"))
    rejected(archive, dest, f"member 'h' is a hardlink to {target!r}, outside the release directory")


@pytest.mark.parametrize("kind", SAFETY)
def test_hardlink_to_member_not_yet_extracted_rejected(tmp_path: Path, dest: Path, kind: str) -> None:
    archive = make_tar(tmp_path / kind, hard("h", "later"), reg("later", b"x"))
    rejected(archive, dest, "member 'h' is a hardlink to 'later', which is not a file extracted earlier")


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device"), (tarfile.FIFOTYPE, "a fifo")],
)
@pytest.mark.parametrize("name", SAFETY)
def test_special_files_rejected(tmp_path: Path, dest: Path, name: str, kind: bytes, what: str) -> None:
    archive = make_tar(tmp_path / name, entry("dev", kind))
    rejected(archive, dest, f"member 'dev' is {what}")
    assert not (dest / "dev").exists()


def test_unknown_member_type_rejected(tmp_path: Path, dest: Path) -> None:
    rejected(make_tar(tmp_path / "app.tar", entry("odd", b"Z")), dest, "member 'odd' has unsupported tar member type b'Z'")


def test_file_replacing_directory_rejected(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "app.tar", reg("d/f", b"x"), reg("d", b"y"))
    rejected(archive, dest, "member 'd' would replace a directory of the same name")


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (zentry("../x", b"evil"), "member '../x' escapes the release directory"),
        (zentry("/abs", b"evil"), "member '/abs' is an absolute path"),
        (zentry("up", b"../../x", 0o120777), "member 'up' is a symlink to '../../x', which escapes"),
        (zentry("pw", b"/etc/passwd", 0o120777), "member 'pw' is a symlink to the absolute path '/etc/passwd'"),
        (zentry("null", b"", 0o020666), "member 'null' is a character device"),
        (zentry("pipe", b"", 0o010644), "member 'pipe' is a fifo"),
    ],
)
def test_zip_escapes_and_special_files_rejected(
    tmp_path: Path, dest: Path, member: tuple[zipfile.ZipInfo, bytes], problem: str
) -> None:
    rejected(make_zip(tmp_path / "app.zip", member), dest, problem)


def test_zip_symlink_then_write_through_rejected(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "app.zip", zentry("link", b"..", 0o120777), zentry("link/evil", b"evil"))
    rejected(archive, dest, "member 'link' is a symlink to '..', which escapes")


# Damaged archives.


def good_tar_gz(tmp_path: Path) -> bytes:
    return make_tar(tmp_path / "good.tar.gz", reg("a", os.urandom(64 * 1024)), reg("b", b"b")).read_bytes()


def test_truncated_tar_gz_rejected(tmp_path: Path, dest: Path) -> None:
    data = good_tar_gz(tmp_path)
    archive = tmp_path / "app.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    rejected(archive, dest, "is truncated or corrupt: Compressed file ended")  # in 'a', or in the 1 MiB read ahead


@pytest.mark.parametrize("kind", PLAIN + ["app.tar.gz"])
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["ustar", "gnu", "pax"])
def test_every_header_form_extracts_as_tarfile_reads_it(tmp_path: Path, dest: Path, kind: str, fmt: int) -> None:
    """dewy parses plain headers itself and leaves the rest to tarfile: a long path (ustar's prefix field, GNU's
    long-name member, a pax header), a non-ASCII name, modes, mtimes and links come out as tarfile lists them."""
    deep = "/".join(["d" * 30] * 4) + "/leaf.txt"  # 128 characters: beyond the 100 of the name field
    members = [dirent("dir/", 0o750), reg("dir/caf\u00e9.txt", b"cafe", 0o640, mtime=1_600_000_000), reg(deep, b"deep", 0o751),
               sym("link", "dir/caf\u00e9.txt"), reg("empty", b"", 0o600, mtime=1_700_000_000), hard("hard", "dir/caf\u00e9.txt")]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    archive = tmp_path / kind
    archive.write_bytes(gzip.compress(buffer.getvalue()) if kind.endswith(".gz") else buffer.getvalue())
    extract(archive, dest)
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tf:
        listed = tf.getmembers()
    parents = {str(parent) for m in listed for parent in Path(m.name).parents if str(parent) != "."}
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == sorted({m.name for m in listed} | parents)
    for member in listed:
        path = dest / member.name
        if member.issym():
            assert os.readlink(path) == member.linkname
        elif member.islnk():
            continue  # the target's inode: checked below
        elif member.isdir():
            assert mode_of(path) == member.mode
        else:
            assert (mode_of(path), int(path.stat().st_mtime)) == (member.mode, member.mtime), member.name
    assert (dest / deep).read_bytes() == b"deep" and (dest / "hard").stat().st_ino == (dest / "dir/caf\u00e9.txt").stat().st_ino


@pytest.mark.parametrize("kind", PLAIN)
def test_a_pax_global_header_applies_to_every_member_after_it(tmp_path: Path, dest: Path, kind: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"mtime": "1234567890"}) as tf:
        for info, data in (reg("a", b"a", mtime=1_700_000_000), reg("b", b"b", mtime=1_700_000_000)):
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / kind).write_bytes(buffer.getvalue())
    extract(tmp_path / kind, dest)
    assert [int((dest / name).stat().st_mtime) for name in "ab"] == [1234567890] * 2  # as tarfile reads them


@pytest.mark.parametrize("kind", PLAIN)
def test_a_header_with_a_wrong_checksum_is_refused(tmp_path: Path, dest: Path, kind: str) -> None:
    data = bytearray(make_tar(tmp_path / "good.tar", reg("a", b"a"), reg("b", b"b")).read_bytes())
    data[1024] ^= 0x01  # the second member's name: "b" -> "c", its checksum no longer matches
    (tmp_path / kind).write_bytes(data)
    rejected(tmp_path / kind, dest, f"{kind} is truncated or corrupt: invalid header")


def test_a_tar_gz_of_several_gzip_members_and_zero_padding_extracts(tmp_path: Path, dest: Path) -> None:
    """As gzip -d reads it: members one after the other (cat a.gz b.gz), zero bytes after the last are padding."""
    tar = make_tar(tmp_path / "inner.tar", reg("a", os.urandom(300_000)), reg("b", b"b")).read_bytes()
    archive = tmp_path / "app.tar.gz"
    archive.write_bytes(gzip.compress(tar[:100_000]) + gzip.compress(tar[100_000:]) + bytes(4096))
    extract(archive, dest)
    assert (dest / "a").read_bytes() == tar[512:300_512] and (dest / "b").read_bytes() == b"b"


@pytest.mark.parametrize("name, compress", [("app.tar.bz2", bz2.compress), ("app.tar.xz", lzma.compress)])
def test_bz2_and_xz_streams_follow_one_another_and_what_is_not_a_stream_after_them_ends_the_archive(
        tmp_path: Path, dest: Path, name: str, compress) -> None:
    """As bzip2 -d and xz -d read them (cat a.xz b.xz), and as BZ2File and LZMAFile ignore what follows."""
    tar = make_tar(tmp_path / "inner.tar", reg("a", os.urandom(300_000)), reg("b", b"b")).read_bytes()
    archive = tmp_path / name
    archive.write_bytes(compress(tar[:100_000]) + compress(tar[100_000:]) + bytes(4096) + b"trailing junk")
    extract(archive, dest)
    assert (dest / "a").read_bytes() == tar[512:300_512] and (dest / "b").read_bytes() == b"b"


@pytest.mark.parametrize("name, compress", [("app.tar.bz2", bz2.compress), ("app.tar.xz", lzma.compress)])
def test_a_damaged_bz2_or_xz_stream_is_rejected_even_after_the_first(tmp_path: Path, dest: Path, name: str,
                                                                     compress) -> None:
    tar = make_tar(tmp_path / "inner.tar", reg("a", os.urandom(300_000)), reg("b", b"b")).read_bytes()
    second = bytearray(compress(tar[100_000:]))
    second[len(second) // 2] ^= 0xFF
    archive = tmp_path / name
    archive.write_bytes(compress(tar[:100_000]) + second)
    rejected(archive, dest, f"{name} is truncated or corrupt: ")


def test_gzip_crc_error_rejected(tmp_path: Path, dest: Path) -> None:
    data = bytearray(good_tar_gz(tmp_path))
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    archive = tmp_path / "app.tar.gz"
    archive.write_bytes(data)
    rejected(archive, dest, "app.tar.gz is truncated or corrupt: Error -3 while decompressing data: incorrect data check")


@pytest.mark.parametrize("name", PLAIN)
def test_tar_cut_between_members_rejected(tmp_path: Path, dest: Path, name: str) -> None:
    """tarfile itself would call this a complete one-member archive."""
    data = make_tar(tmp_path / "good.tar", reg("a", b"a" * 512), reg("b", b"b")).read_bytes()
    archive = tmp_path / name
    archive.write_bytes(data[:1024])
    rejected(archive, dest, f"{name} is truncated or corrupt: unexpected end of data")


@pytest.mark.parametrize("name", PLAIN)
def test_tar_cut_inside_member_rejected(tmp_path: Path, dest: Path, name: str) -> None:
    data = make_tar(tmp_path / "good.tar", reg("a", b"a" * 4096)).read_bytes()
    archive = tmp_path / name
    archive.write_bytes(data[:2048])
    rejected(archive, dest, f"{name}: member 'a' is truncated or corrupt: unexpected end of data")


def test_a_streamed_tar_holds_only_a_window_of_its_bytes_and_never_what_follows_its_end(tmp_path: Path, dest: Path) -> None:
    """A 48 MiB member and 32 MiB after the end-of-archive marker, downloaded into memory: the extraction holds at
    most the window (plus a piece) at any time, and, done at the marker, does not hold the rest of the download back."""
    size = 48 << 20
    archive = tmp_path / "streamed.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("big")
        info.size = size
        tf.addfile(info, io.BytesIO(os.urandom(size)))
    with archive.open("ab") as out:
        out.write(bytes(32 << 20))
    tracemalloc.start()
    try:
        extract(archive, dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (dest / "big").read_bytes() == archive.read_bytes()[512:512 + size]
    assert peak < WINDOW + (2 << 20), peak


@pytest.mark.parametrize("name", ["app.tar.gz", "app.tar.xz", "app.tar.bz2", "app.tar.zst", "app.zip", "app.tar"])
def test_garbage_and_empty_files_rejected(tmp_path: Path, dest: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"this is not an archive at all" * 40)
    rejected(archive, dest, f"{name} is truncated or corrupt: ")
    archive.write_bytes(b"")
    rejected(archive, dest, f"{name} is truncated or corrupt: ")


def test_zip_bad_crc_rejected(tmp_path: Path, dest: Path) -> None:
    data = bytearray(make_zip(tmp_path / "good.zip", zentry("f", b"hello world"), compression=zipfile.ZIP_STORED).read_bytes())
    data[data.index(b"hello world")] ^= 0xFF
    archive = tmp_path / "app.zip"
    archive.write_bytes(data)
    rejected(archive, dest, "app.zip: member 'f' is truncated or corrupt: Bad CRC-32")


def test_zip_header_lying_small_rejected(tmp_path: Path, dest: Path) -> None:
    """zipfile stops at the declared size; the CRC over the short data then fails instead of writing more."""
    data = bytearray(make_zip(tmp_path / "good.zip", zentry("f", b"z" * 100_000)).read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[local + 22 : local + 26] = (10).to_bytes(4, "little")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive = tmp_path / "app.zip"
    archive.write_bytes(data)
    rejected(archive, dest, "app.zip: member 'f' is truncated or corrupt")
    assert (dest / "f").stat().st_size <= 10


# Size limit.


@pytest.mark.parametrize("kind", SAFETY)
def test_total_over_limit_rejected_and_stops_writing(tmp_path: Path, dest: Path, kind: str) -> None:
    archive = make_tar(tmp_path / kind, *(reg(f"f{i}", b"x" * 1000) for i in range(3)))
    message = rejected(archive, dest, "member 'f2' exceeds the unpacked size limit of 2500 bytes", max_bytes=2500)
    assert "--max-archive-size" in message
    assert sum(p.stat().st_size for p in dest.iterdir()) <= 2500


def test_zip_bomb_stops_at_limit(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "app.zip", zentry("bomb", bytes(8 * 1024 * 1024)))
    assert archive.stat().st_size < 100_000
    rejected(archive, dest, "member 'bomb' exceeds the unpacked size limit of 1 MiB; raise it with --max-archive-size", max_bytes=1024 * 1024)
    assert (dest / "bomb").stat().st_size <= 1024 * 1024


def test_limit_exactly_reached_is_fine(tmp_path: Path, dest: Path) -> None:
    extract(make_tar(tmp_path / "app.tar.gz", reg("a", b"x" * 1000), reg("b", b"y" * 1000)), dest, max_bytes=2000)
    assert (dest / "b").read_bytes() == b"y" * 1000


def test_limit_in_message_reads_like_the_flag(tmp_path: Path, dest: Path) -> None:
    assert DEFAULT_MAX_BYTES == 4 * 1024**3
    archive = make_tar(tmp_path / "app.tar", reg("a", b"x" * 2000))
    rejected(archive, dest, "exceeds the unpacked size limit of 1 KiB", max_bytes=1024)
    rejected(archive, dest, "exceeds the unpacked size limit of 0 bytes", max_bytes=0)


@pytest.mark.parametrize(("name", "compress"), [("app.tar.gz", lambda data: gzip.compress(data, compresslevel=1)),
                                               ("app.tar.zst", zstd)])
def test_data_after_end_of_tar_counts_against_limit(tmp_path: Path, dest: Path, name: str, compress) -> None:
    """The trailer is read to verify the gzip CRC / zstd checksum; a bomb hidden there must not run for hours."""
    tar = make_tar(tmp_path / "inner.tar", reg("a", b"a")).read_bytes()
    archive = tmp_path / name
    archive.write_bytes(compress(tar + bytes(4 * 1024 * 1024)))
    rejected(archive, dest, f"{name} exceeds the unpacked size limit of 1 MiB", max_bytes=1024 * 1024)


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.99])
def test_truncated_tar_zst_rejected(tmp_path: Path, dest: Path, cut: float) -> None:
    """The zstandard package ends quietly at a cut-off frame: the missing end of the tar is what fails it."""
    data = make_tar(tmp_path / "good.tar.zst", reg("a", os.urandom(64 * 1024)), reg("b", b"b")).read_bytes()
    archive = tmp_path / "app.tar.zst"
    archive.write_bytes(data[: int(len(data) * cut)])
    rejected(archive, dest, "is truncated or corrupt: ")


def test_zstd_checksum_error_rejected(tmp_path: Path, dest: Path) -> None:
    data = bytearray(make_tar(tmp_path / "good.tar.zst", reg("a", os.urandom(64 * 1024))).read_bytes())
    data[-1] ^= 0xFF  # the frame's content checksum
    archive = tmp_path / "app.tar.zst"
    archive.write_bytes(data)
    rejected(archive, dest, "is truncated or corrupt: ", "checksum")


def test_oversized_tar_extended_header_rejected(tmp_path: Path, dest: Path) -> None:
    """tarfile reads pax headers into memory whole, so their size is capped."""
    info, data = reg("a", b"a")
    info.pax_headers = {"comment": "x" * (2 * 1024 * 1024)}
    rejected(make_tar(tmp_path / "app.tar", (info, data)), dest, "app.tar is truncated or corrupt:", "extended header")


def test_write_failure_reported_as_archive_error(tmp_path: Path, dest: Path) -> None:
    rejected(make_tar(tmp_path / "app.tar", reg("n" * 300, b"x")), dest, "cannot be extracted: File name too long")


def test_memory_stays_flat_for_large_member(tmp_path: Path, dest: Path) -> None:
    size = 48 * 1024 * 1024
    with tarfile.open(tmp_path / "big.tar.gz", "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("big")
        info.size = size
        tf.addfile(info, io.BytesIO(bytes(size)))
    tracemalloc.start()
    try:
        extract(tmp_path / "big.tar.gz", dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (dest / "big").stat().st_size == size
    assert peak < 8 * 1024 * 1024


# Suffixes.


@pytest.mark.parametrize("name", ["app.rar", "app.gz", "app.zst", "app"])
def test_unsupported_suffix_rejected(tmp_path: Path, dest: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"whatever")
    message = rejected(archive, dest, f"{name}: unsupported archive type")
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tzst", ".tar", ".zip"):
        assert suffix in message


def test_file_mtimes_are_kept_for_web_server_caching(tmp_path: Path) -> None:
    when = 1_600_000_000
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("style.css")
        info.size, info.mtime = 3, when
        tar.addfile(info, io.BytesIO(b"a{}"))
    (tmp_path / "site.tar.gz").write_bytes(buffer.getvalue())
    with zipfile.ZipFile(tmp_path / "site.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("app.js", date_time=(2020, 9, 13, 12, 26, 40)), "x")
    for name, member in (("site.tar.gz", "style.css"), ("site.zip", "app.js")):
        dest = tmp_path / name.replace(".", "-")
        dest.mkdir()
        extract(tmp_path / name, dest)
        assert abs((dest / member).stat().st_mtime - when) < 86400 + 1, name  # zip stores local time


# Hostile names, member counts and empty archives.


def test_nul_byte_in_a_pax_path_is_refused(tmp_path: Path, dest: Path) -> None:
    info, data = reg("ok.txt", b"x")
    info.pax_headers = {"path": "evil\0name"}
    rejected(make_tar(tmp_path / "app.tar", (info, data)), dest, "has a NUL byte in its name")


def test_nul_byte_in_a_symlink_target_is_refused(tmp_path: Path, dest: Path) -> None:
    info, data = sym("link", "placeholder")
    info.pax_headers = {"linkpath": "index.html\0../../etc"}
    rejected(make_tar(tmp_path / "app.tar", reg("index.html", b"x"), (info, data)), dest, "target contains a NUL byte")


@pytest.mark.parametrize("kind", SAFETY)
def test_member_limit_counts_empty_members_while_extracting(tmp_path: Path, dest: Path, kind: str) -> None:
    members = [reg(f"empty-{i}") for i in range(11)]
    rejected(make_tar(tmp_path / kind, *members), dest, "has more than 10 members; raise the limit with"
             " --max-archive-members", max_members=10)
    assert len(list(dest.iterdir())) == 10, "extraction stops at the limit"
    (dest.parent / "r2").mkdir()
    rejected(make_zip(tmp_path / "app.zip", *(zentry(f"f{i}") for i in range(5))), dest.parent / "r2",
             "more than 4 members", max_members=4)


def test_member_limit_exactly_reached_is_fine_and_counts_dirs_and_links(tmp_path: Path, dest: Path) -> None:
    archive = make_tar(tmp_path / "app.tar", dirent("d/"), reg("d/a", b"1"), sym("s", "d/a"), hard("h", "d/a"))
    extract(archive, dest, max_members=4)
    assert (dest / "h").read_bytes() == b"1"
    (dest.parent / "r2").mkdir()
    rejected(archive, dest.parent / "r2", "more than 3 members", max_members=3)


def test_default_member_limit_is_the_documented_one() -> None:
    from dewy.cli import parse

    assert parse(["assets", "-r", "file:///r"]).max_archive_members == 100_000
    assert parse(["assets", "-r", "file:///r", "--max-archive-members", "5"]).max_archive_members == 5


@pytest.mark.parametrize("name", ["app.tar.gz", "app.zip"])
def test_empty_archive_is_refused(tmp_path: Path, dest: Path, name: str) -> None:
    archive = make_zip(tmp_path / name) if name.endswith(".zip") else make_tar(tmp_path / name)
    rejected(archive, dest, "is empty")


def test_archive_of_only_its_root_directory_is_refused(tmp_path: Path, dest: Path) -> None:
    rejected(make_tar(tmp_path / "app.tar.gz", dirent("./"), dirent(".")), dest, "is empty")
    make_zip(tmp_path / "app.zip", (zipfile.ZipInfo("./"), b""))
    rejected(tmp_path / "app.zip", dest, "is empty")


def test_an_empty_directory_is_something_to_deploy(tmp_path: Path, dest: Path) -> None:
    extract(make_tar(tmp_path / "app.tar", dirent("./"), dirent("uploads/")), dest)
    assert (dest / "uploads").is_dir()


def test_very_long_member_name_is_shortened_in_the_error(tmp_path: Path, dest: Path) -> None:
    message = rejected(make_tar(tmp_path / "app.tar", reg("../" + "x" * 5000)), dest, "escapes the release directory")
    assert len(message) < 400 and "5003 characters" in message
