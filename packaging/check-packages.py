"""Check that the deb and the rpm install the same thing.

    python3 packaging/check-packages.py dist/dewy_*.deb dist/dewy-*.rpm

Compares every file and symlink (not directories: dpkg lists /usr, /usr/bin, ... too) with its
permission bits and link target, and the configuration files. Differences that are the two
distributions' conventions, not the package's, are normalised first and printed:
  - /lib/... is /usr/lib/... (merged /usr; a deb built by Debian 12's debhelper may use /lib);
  - documentation: Debian gzips README.md and grpc.md and adds changelog.Debian.gz and
    copyright; rpm keeps them plain and puts the copyright under /usr/share/licenses/dewy;
  - /usr/share/lintian/overrides/dewy is Debian's alone;
  - certifi's CA bundle links to each distribution's CA store.
Exits 1 listing the differences, 0 printing the number of entries compared.
"""

from __future__ import annotations

import re
import subprocess
import sys

# certifi's bundle in the venv, for whichever python3.X the packages were built with
CA_LINK = re.compile(r"/usr/lib/dewy/venv/lib/python3\.\d+/site-packages/certifi/cacert\.pem")
CA_STORES = {"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"}


def normalise(path: str) -> str | None:
    """The path to compare, or None for a distribution's own documentation file."""
    if path.startswith("/lib/"):
        path = "/usr" + path
    if path in ("/usr/share/doc/dewy/changelog.Debian.gz", "/usr/share/doc/dewy/copyright",
                "/usr/share/licenses/dewy/copyright", "/usr/share/lintian/overrides/dewy"):
        return None
    if path.startswith("/usr/share/doc/dewy/") and path.endswith(".md.gz"):
        path = path[:-3]
    return path


def deb_entries(deb: str) -> tuple[dict[str, tuple[str, str]], set[str]]:
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
    listing = subprocess.run(["tar", "-tvf", "-"], input=out, check=True, capture_output=True).stdout.decode()
    entries = {}
    for line in listing.splitlines():
        perms, _owner, _size, _date, _time, rest = line.split(None, 5)
        if perms.startswith("d"):
            continue
        name, _, target = rest.partition(" -> ")
        if perms.startswith("h"):       # tar shows hard links as "name link to other"
            name = name.split(" link to ")[0]
        path = normalise(name.removeprefix("."))
        if path:
            entries[path] = (perms[1:] if not perms.startswith("l") else "link", target)
    conffiles = set(subprocess.run(["dpkg-deb", "-f", deb, "Conffiles"], capture_output=True, text=True).stdout.split())
    control = subprocess.run(["dpkg-deb", "-I", deb, "conffiles"], capture_output=True, text=True)
    conffiles = set(control.stdout.split()) if control.returncode == 0 else conffiles
    return entries, conffiles


def rpm_entries(rpm: str) -> tuple[dict[str, tuple[str, str]], set[str]]:
    fmt = "[%{FILEMODES:perms}\\t%{FILENAMES}\\t%{FILELINKTOS}\\t%{FILEFLAGS:fflags}\\n]"
    listing = subprocess.run(["rpm", "-qp", "--qf", fmt, rpm], check=True, capture_output=True, text=True).stdout
    entries, conffiles = {}, set()
    for line in listing.splitlines():
        perms, name, target, flags = line.split("\t")
        if perms.startswith("d"):
            continue
        if "c" in flags:
            conffiles.add(name)
        path = normalise(name)
        if path:
            entries[path] = (perms[1:] if not perms.startswith("l") else "link", target)
    return entries, conffiles


def main(deb: str, rpm: str) -> int:
    d, d_conf = deb_entries(deb)
    r, r_conf = rpm_entries(rpm)
    problems = []
    for path in sorted(set(d) - set(r)):
        problems.append(f"only in the deb: {path}")
    for path in sorted(set(r) - set(d)):
        problems.append(f"only in the rpm: {path}")
    for path in sorted(set(d) & set(r)):
        (d_mode, d_target), (r_mode, r_target) = d[path], r[path]
        if CA_LINK.fullmatch(path) and {d_target, r_target} <= CA_STORES and d_mode == r_mode == "link":
            continue
        if d_mode != r_mode:
            problems.append(f"{path}: mode {d_mode} in the deb, {r_mode} in the rpm")
        elif d_target != r_target:
            problems.append(f"{path}: links to {d_target} in the deb, {r_target} in the rpm")
    if d_conf != r_conf:
        problems.append(f"configuration files differ: deb {sorted(d_conf)}, rpm {sorted(r_conf)}")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"same {len(d)} files and links (modes, link targets) and {len(d_conf)} configuration files in"
          f" {deb.rsplit('/', 1)[-1]} and {rpm.rsplit('/', 1)[-1]}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
