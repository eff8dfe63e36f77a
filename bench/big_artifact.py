"""Peak memory of dewy deploying a 1 GB artifact (a plain .tar holding one 1 GiB file).

The archive is written sparse in a moment. ``dewy assets`` first deploys a
small v1.0.0, idles, then v2.0.0 (the 1 GB .tar) is published, via ghr://
(loopback GitHub test server, streamed from the sparse file) and via file://.
Measured: VmHWM at the end minus VmRSS just before the deploy (the peak is
reset through /proc/PID/clear_refs first, so start-up peaks do not count).
Anchor: the same bytes fetched and unpacked by ``curl -sL URL | tar x`` (ghr)
and ``cp`` + ``tar x`` (file), their peak RSS (whole process) and wall time.
Target: dewy's peak RSS growth < 30 MB for each. Skipped with < 5 GB free disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SIZE = 1 << 30
GROWTH_TARGET = 30 << 20
MIN_FREE = 5 << 30


def sparse_tar(path: Path, size: int = SIZE) -> int:
    """A .tar of VERSION and a ``size``-byte file of zeros, written sparse; returns the archive's length."""
    with open(path, "wb") as out:
        version = tarfile.TarInfo("VERSION")
        version.size, version.mode, version.mtime = 6, 0o644, int(time.time())
        out.write(version.tobuf(tarfile.GNU_FORMAT) + b"v2.0.0".ljust(512, b"\0"))
        big = tarfile.TarInfo("big.bin")
        big.size, big.mode, big.mtime = size, 0o644, int(time.time())
        out.write(big.tobuf(tarfile.GNU_FORMAT))
        length = out.tell() + size + 1024  # the data (holes), then the two zero blocks that end a tar
        out.truncate(length)
    return length


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


def anchor(command: str) -> tuple[int, float]:
    """Peak RSS (largest process) and wall time of a shell pipeline, measured in a fresh process."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(['sh', '-c', sys.argv[1]]); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)")
    out = subprocess.run([c.PYTHON, "-c", probe, command], capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "0":
        raise RuntimeError(f"anchor {command!r} failed with exit {out[0]}")
    return int(out[1]) * 1024, float(out[2])


def deploy_big(kind: str, work: Path, registry_url: str, env: dict[str, str], publish_small, publish_big) -> dict:
    """Run dewy assets, deploy small v1.0.0, then measure the deploy of the 1 GB v2.0.0."""
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
        sampler = Sampler(pid)
        began = time.monotonic()
        publish_big()
        deploying = dewy.wait_for("deploying", version="v2.0.0", timeout=30)
        downloaded = dewy.wait_for("downloaded", version="v2.0.0", timeout=400)
        deployed = dewy.wait_for("deployed", version="v2.0.0", timeout=400)
        seconds = time.monotonic() - began
        after = c.proc_status(pid)
        sampled = sampler.stop()
        extracted = (home / "site" / "current" / "big.bin").stat().st_size
        if extracted != SIZE:
            raise RuntimeError(f"dewy extracted big.bin of {extracted} bytes, expected {SIZE}")
    finally:
        dewy.stop(timeout=30)
        dewy.kill()
        shutil.rmtree(home, ignore_errors=True)
    return {"before": before["VmRSS"], "hwm": after["VmHWM"], "after": after["VmRSS"], "sampled": sampled,
            "reset": reset, "seconds": seconds,
            "download": c.event_time(downloaded) - c.event_time(deploying), "extract": c.event_time(deployed) - c.event_time(downloaded), "hwm_before": before["VmHWM"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    c.banner("big_artifact")
    base = Path(tempfile.gettempdir())
    free = c.free_disk(base)
    if free < MIN_FREE:
        c.verdict("big artifact", None, f"only {free / (1 << 30):.1f} GB free in {base}; needs {MIN_FREE >> 30} GB: skipped")
        return 0

    results, rows, anchor_rows = [], [], []
    work = Path(tempfile.mkdtemp(prefix="dewy-bench-big-", dir=base))
    try:
        name = c.host_artifact(suffix=".tar")
        small = c.tar_gz({"VERSION": "v1.0.0"})
        source = work / name
        length = sparse_tar(source)
        print(f"artifact: {name}, {length} bytes (sparse on disk: {os.stat(source).st_blocks * 512} bytes allocated), "
              f"{free / (1 << 30):.0f} GB free")

        # ghr:// from the loopback GitHub test server
        with c.GitHubServer(token=c.TOKEN) as github:
            content = FileBytes(source)
            try:
                release = {}

                def small_ghr() -> None:
                    github.add_release(c.OWNER, c.REPO, "v1.0.0", {c.host_artifact(): small})

                def big_ghr() -> None:
                    release["v2"] = github.add_release(c.OWNER, c.REPO, "v2.0.0", {name: content})  # type: ignore[dict-item]

                measured = deploy_big("ghr", work, f"ghr://{c.OWNER}/{c.REPO}", c.github_env(github), small_ghr, big_ghr)
                rows.append(("dewy assets, ghr://", measured))
                url = f"{github.url}/repos/{c.OWNER}/{c.REPO}/releases/assets/{release['v2'].assets[0].id}"
                dest = work / "anchor"
                dest.mkdir()
                peak, seconds = anchor(f"curl -sfL -H 'Accept: application/octet-stream' '{url}' | tar x -C '{dest}'")
                anchor_rows.append(("curl -sL URL | tar x", peak, seconds))
                shutil.rmtree(dest)
            finally:
                content.close()

        # file:// registry
        registry = work / "registry"

        def small_file() -> None:
            (registry / "v1.0.0").mkdir(parents=True)
            (registry / "v1.0.0" / c.host_artifact()).write_bytes(small)

        def big_file() -> None:
            staged = registry / ".v2.0.0"
            staged.mkdir()
            os.link(source, staged / name)
            staged.rename(registry / "v2.0.0")

        measured = deploy_big("file", work, registry.as_uri(), {}, small_file, big_file)
        rows.append(("dewy assets, file://", measured))
        dest = work / "anchor"
        dest.mkdir()
        peak, seconds = anchor(f"cp '{source}' '{dest}/a.tar' && tar xf '{dest}/a.tar' -C '{dest}' && rm '{dest}/a.tar'")
        anchor_rows.append(("cp + tar x", peak, seconds))
        shutil.rmtree(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = []
    for label, m in rows:
        table.append((label, c.mb(m["before"]), c.mb(m["hwm"]), c.mb(m["hwm"] - m["before"]), c.mb(m["sampled"] - m["before"]),
                      c.mb(m["after"]), f"{m['seconds']:.1f} s", f"{m['download']:.1f} s", f"{m['extract']:.1f} s",
                      f"{SIZE / m['seconds'] / (1 << 20):.0f} MB/s"))
    c.table("1 GiB .tar deployed by dewy assets (publish -> deployed)", table,
            ("run", "VmRSS before", "VmHWM after", "peak growth", "sampled growth", "VmRSS after", "publish -> deployed",
             "download+sha256+fsync", "extract+switch", "throughput"))
    c.table("anchor: the same artifact with standard tools", [
        (label, c.mb(peak), f"{seconds:.1f} s", f"{SIZE / seconds / (1 << 20):.0f} MB/s") for label, peak, seconds in anchor_rows
    ], ("command", "peak RSS (largest process)", "time", "throughput"))
    print("(dewy's time includes its poll interval, sha256 and fsync of the cached artifact; the anchors do neither)")
    for label, m in rows:
        growth = m["hwm"] - m["before"]
        results.append(c.verdict(f"big artifact RSS growth, {label}", growth < GROWTH_TARGET,
                                 f"{c.mb(growth)} (target < {c.mb(GROWTH_TARGET)})"
                                 + ("" if m["reset"] else "; VmHWM could not be reset, so it includes start-up")))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
