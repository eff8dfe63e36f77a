"""Large releases: dewy's publish -> deployed time beside tar's, and its memory, for 1 GiB artifacts.

Artifacts (real bytes, never sparse: a sparse file flatters every copy): a 1 GiB payload of
mixed content (1 MiB blocks, half random, half text-like, so the compressed forms compress
as real builds do) as ``.tar``, ``.tar.gz`` (gzip -6) and ``.tar.zst`` (zstd -3), and a
``.tar.gz`` release of 100,000 members (the default member limit: 99,999 small files of
200 B - 4 KiB, 100 to a directory, as a web app's assets), where per-file costs dominate. ``dewy assets -i 0.5`` first deploys a small
v1.0.0, idles, then v2.0.0 is published via file:// (a hard link renamed into the registry)
and, for .tar and .tar.gz, via ghr:// (the loopback GitHub test server, streaming from the file).

Measured: publish -> ``deployed`` (includes up to one 0.5 s poll interval), the CPU seconds dewy used
meanwhile beside the anchor's (what others' load on a shared machine hardly changes), and peak RSS
growth (VmHWM at the end minus VmRSS before; the peak is reset through /proc/PID/clear_refs first).
Anchors, same artifact, same run, flushing what they wrote as dewy must: ``tar x`` + ``sync -f``
(file://), ``curl -sL URL | tar x`` + ``sync -f`` (ghr://), and ``cp`` + ``tar x`` + ``sync -f``.
Targets: dewy <= 1.3x its anchor for the 1 GiB artifacts, <= 1.5x for 100,000 files, RSS growth
< 30 MB. Skipped with less than 12 GB free disk. Run it where nothing deleted many files in the last
minutes (a previous run's clean-up included): ext4 then looks at each recently freed inode before it
reuses one, and 100,000 creations take 5-10 times longer, for the anchors and dewy alike.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SIZE = 1 << 30
BLOCK = 1 << 20
SMALL_FILES = 100_000  # members, VERSION included: the default --max-archive-members
GROWTH_TARGET = 30 << 20
MIN_FREE = 12 << 30
TARGETS = {"big": 1.3, "small": 1.5}


def mixed_payload(path: Path, size: int = SIZE) -> None:
    """``size`` bytes in 1 MiB blocks, alternately random and text-like (log lines with varying numbers)."""
    rng = random.Random(17)
    texts = [b"".join(b"%d GET /assets/app.%08x.js 200 %d bytes in %d ms\n" % (n, rng.getrandbits(32), rng.randrange(1 << 20),
                                                                            rng.randrange(900)) for n in range(24_000))[:BLOCK]
             for _ in range(8)]
    with open(path, "wb") as out:
        for index in range(size // BLOCK):
            out.write(os.urandom(BLOCK) if index % 2 else texts[index // 2 % len(texts)])


def big_tar(work: Path) -> Path:
    payload = work / "big.bin"
    mixed_payload(payload)
    tar = work / "big.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        version = tarfile.TarInfo("VERSION")
        version.size = 6
        tf.addfile(version, io.BytesIO(b"v2.0.0"))
        tf.add(payload, arcname="big.bin")
    payload.unlink()
    return tar


def small_files_tar_gz(work: Path) -> Path:
    rng = random.Random(5)
    words = [rng.randbytes(6).hex().encode() for _ in range(500)]
    archive = work / "small.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6, format=tarfile.GNU_FORMAT) as tf:
        version = tarfile.TarInfo("VERSION")
        version.size = 6
        tf.addfile(version, io.BytesIO(b"v2.0.0"))
        for n in range(SMALL_FILES - 1):
            size = rng.randrange(200, 4096)
            data = (b" ".join(rng.choices(words, k=size // 8)) if n % 2 else rng.randbytes(size))[:size]
            info = tarfile.TarInfo(f"assets/{n // 10_000}/{n // 100 % 100:02}/f{n}.js")
            info.size, info.mtime = len(data), 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return archive


class FileBytes:
    """Just enough of ``bytes`` for the test server to serve a file's content without loading it (pread per slice)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: slice) -> bytes:
        start, stop, _ = item.indices(self.size)
        return os.pread(self.fd, stop - start, start)

    def close(self) -> None:
        os.close(self.fd)


class Sampler:
    """VmRSS of a process every 0.1 s in a thread: a cross-check of VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while not self._stop.wait(0.1) and time.monotonic() < deadline:
            try:
                self.peak = max(self.peak, c.proc_status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def anchor(command: str, dest: Path) -> tuple[float, float]:
    """Wall time and CPU seconds of a shell pipeline extracting into a fresh ``dest`` (removed afterwards, then synced)."""
    dest.mkdir()
    try:
        began, cpu = time.perf_counter(), os.times()
        subprocess.run(["sh", "-c", command], check=True)
        after = os.times()
        return time.perf_counter() - began, after.children_user + after.children_system - cpu.children_user - cpu.children_system
    finally:
        set_aside(dest)


def set_aside(path: Path) -> None:
    """Out of the next run's way, deleted once the case is measured (:func:`clear_aside`): deleting 100,000 files
    slows the filesystem's next 100,000 creations for a while (ext4, seen with the discard option), and would
    penalise whichever run comes next."""
    path.rename(path.parent / f".aside-{len(list(path.parent.glob('.aside-*')))}")
    os.sync()


def clear_aside(work: Path) -> None:
    for path in work.glob(".aside-*"):
        shutil.rmtree(path)
    os.sync()


@dataclass
class Measured:
    seconds: float  # publish -> deployed
    busy: float  # deploying -> deployed (without the poll interval)
    growth: int
    sampled: int
    cpu: float  # CPU seconds dewy used, publish -> deployed: unlike the wall time, hardly swayed by others' load


def deploy(kind: str, work: Path, registry_url: str, env: dict[str, str], publish_small, publish_big) -> Measured:
    """Run dewy assets, deploy a small v1.0.0, then measure the deploy of the big v2.0.0."""
    home = work / f"dewy-{kind}"
    home.mkdir()
    publish_small()
    dewy = c.Dewy(["assets", "--registry", registry_url, "-i", "0.5", "-d", str(home / "site"),
                   "-c", (home / "cache").as_uri()], cwd=home, env=env)
    try:
        dewy.wait_for("deployed", version="v1.0.0", timeout=60)
        dewy.wait_for("up-to-date", version="v1.0.0", timeout=30)
        time.sleep(1)
        pid = dewy.process.pid
        reset = c.reset_peak_rss(pid)
        before = c.proc_status(pid)
        cpu = cpu_seconds(pid)
        sampler = Sampler(pid)
        began = time.monotonic()
        publish_big()
        deploying = dewy.wait_for("deploying", version="v2.0.0", timeout=30)
        deployed = dewy.wait_for("deployed", version="v2.0.0", timeout=600)
        seconds = time.monotonic() - began
        cpu = cpu_seconds(pid) - cpu
        after = c.proc_status(pid)
        sampled = sampler.stop()
        if (home / "site" / "current" / "VERSION").read_text() != "v2.0.0":
            raise RuntimeError("dewy did not deploy v2.0.0 whole")
        if not reset:
            raise RuntimeError("VmHWM could not be reset: the growth would include start-up")
    finally:
        dewy.stop(timeout=30)
        dewy.kill()
        set_aside(home)
    return Measured(seconds, c.event_time(deployed) - c.event_time(deploying), after["VmHWM"] - before["VmRSS"],
                    sampled - before["VmRSS"], cpu)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread included (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def via_file(work: Path, source: Path, tag_dir: str) -> Measured:
    registry = work / f"registry-{tag_dir}"
    name = c.host_artifact(suffix=suffix_of(source))

    def small() -> None:
        (registry / "v1.0.0").mkdir(parents=True)
        (registry / "v1.0.0" / name).write_bytes(small_artifact(source))

    def big() -> None:
        staged = registry / ".v2.0.0"
        staged.mkdir()
        os.link(source, staged / name)
        staged.rename(registry / "v2.0.0")

    try:
        return deploy(f"file-{tag_dir}", work, registry.as_uri(), {}, small, big)
    finally:
        shutil.rmtree(registry)


def via_ghr(work: Path, source: Path, content: FileBytes, github: c.GitHubServer, repo: str) -> tuple[Measured, str]:
    name = c.host_artifact(suffix=suffix_of(source))
    release = {}
    measured = deploy(f"ghr-{repo}", work, f"ghr://{c.OWNER}/{repo}", c.github_env(github),
                      lambda: github.add_release(c.OWNER, repo, "v1.0.0", {name: small_artifact(source)}),
                      lambda: release.setdefault("v2", github.add_release(c.OWNER, repo, "v2.0.0", {name: content})))
    return measured, f"{github.url}/repos/{c.OWNER}/{repo}/releases/assets/{release['v2'].assets[0].id}"


def suffix_of(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.endswith((".tar.gz", ".tar.zst")) else path.suffix


def small_artifact(source: Path) -> bytes:
    """v1.0.0, in the same format as the big artifact (dewy picks its artifact by suffix)."""
    data = c.tar_gz({"VERSION": "v1.0.0"})
    if source.name.endswith(".tar"):
        return subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True).stdout
    if source.name.endswith(".tar.zst"):
        tar = subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True).stdout
        return subprocess.run(["zstd", "-q", "-c"], input=tar, capture_output=True, check=True).stdout
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cases = ["tar", "gz", "zst", "small"]
    parser.add_argument("cases", nargs="*", help=f"only these of {', '.join(cases)} (default: all)")
    wanted = set(parser.parse_args().cases or cases)
    if wanted - set(cases):
        parser.error(f"unknown case {', '.join(sorted(wanted - set(cases)))}; choose from {', '.join(cases)}")
    c.banner("big_artifact")
    base = Path(tempfile.gettempdir())
    free = c.free_disk(base)
    if free < MIN_FREE:
        c.verdict("big artifact", None, f"only {free / (1 << 30):.1f} GB free in {base}; needs {MIN_FREE >> 30} GB: skipped")
        return 0
    for tool in ("curl", "zstd", "gzip"):
        if not shutil.which(tool):
            c.verdict("big artifact", None, f"{tool} is not installed: skipped")
            return 0

    work = Path(tempfile.mkdtemp(prefix="dewy-bench-big-", dir=base))
    rows, results = [], []
    try:
        began = time.monotonic()
        tar = big_tar(work)  # only the artifacts of the cases chosen are built
        gz, zst = work / "big.tar.gz", work / "big.tar.zst"
        compress = [f"gzip -6 -c '{tar}' > '{gz}'"] * ("gz" in wanted) + [f"zstd -q -3 -T2 '{tar}' -o '{zst}'"] * ("zst" in wanted)
        if compress:
            subprocess.run(" & ".join(compress) + "; wait", shell=True, check=True)
        small = small_files_tar_gz(work) if "small" in wanted else work / "small.tar.gz"
        os.sync()
        print(f"artifacts built in {time.monotonic() - began:.0f} s: " + ", ".join(
            f"{p.name} {p.stat().st_size / (1 << 20):.0f} MiB" for p in (tar, gz, zst, small) if p.exists())
            + f"; {free >> 30} GB free")
        dest = work / "anchor"
        x = {".tar": ("tar xf", "tar x"), ".tar.gz": ("tar xzf", "tar xz"), ".tar.zst": ("tar --zstd -xf", "tar --zstd -x")}
        with c.GitHubServer(token=c.TOKEN) as github:
            for case, label, source, target, ghr in (
                    ("tar", "1 GiB .tar", tar, "big", True), ("gz", "1 GiB .tar.gz", gz, "big", True),
                    ("zst", "1 GiB .tar.zst", zst, "big", False), ("small", f"{SMALL_FILES:,} files .tar.gz", small, "small", False)):
                if case not in wanted:
                    continue
                extract, piped = x[suffix_of(source)]
                local, local_cpu = anchor(f"{extract} '{source}' -C '{dest}' && sync -f '{dest}'", dest)
                copied, _ = anchor(f"cp '{source}' '{dest}/a' && {extract} '{dest}/a' -C '{dest}' && rm '{dest}/a'"
                                f" && sync -f '{dest}'", dest)
                try:
                    measured = via_file(work, source, source.name.replace(".", "-"))
                except AssertionError as exc:  # this dewy cannot deploy it (a version without .tar.zst)
                    results.append(c.verdict(f"{label} via file://", False, f"not deployed: {str(exc)[:160]}"))
                    continue
                rows.append((label, "file://", measured, local, f"{extract} + sync -f", copied, local_cpu))
                if ghr:
                    content = FileBytes(source)
                    try:
                        measured, url = via_ghr(work, source, content, github, source.name.replace(".", "-"))
                        fetched, fetched_cpu = anchor(f"curl -sfL -H 'Accept: application/octet-stream' '{url}' | "
                                         f"{piped} -C '{dest}' && sync -f '{dest}'", dest)
                    finally:
                        content.close()
                    rows.append((label, "ghr://", measured, fetched, "curl | tar x + sync -f", copied, fetched_cpu))
                clear_aside(work)
                for row in rows[-(2 if ghr else 1):]:
                    results.append(c.verdict(f"{label} via {row[1]}", row[2].seconds <= TARGETS[target] * row[3],
                                             f"{row[2].seconds / row[3]:.2f}x {row[4]} (target <= {TARGETS[target]}x)"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    c.table("publish -> deployed, dewy assets, beside the anchors", [
        (label, scheme, f"{m.seconds:.1f} s", f"{m.busy:.1f} s", f"{anchor_s:.1f} s ({what})", f"{m.seconds / anchor_s:.2f}x",
         f"{cp_s:.1f} s", f"{m.seconds / cp_s:.2f}x", f"{m.cpu:.1f} s / {anchor_cpu:.1f} s", c.mb(m.growth), c.mb(m.sampled))
        for label, scheme, m, anchor_s, what, cp_s, anchor_cpu in rows
    ], ("artifact", "via", "dewy", "deploying->deployed", "anchor", "ratio", "cp + tar x + sync -f", "ratio",
        "CPU dewy / anchor", "peak RSS growth", "sampled growth"))
    print("(dewy's time includes its 0.5 s poll interval, sha256, keeping a compressed artifact in its cache and syncfs)")
    for label, scheme, m, *_ in rows:
        results.append(c.verdict(f"RSS growth, {label} via {scheme}", m.growth < GROWTH_TARGET,
                                 f"{c.mb(m.growth)} (target < {c.mb(GROWTH_TARGET)})"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
