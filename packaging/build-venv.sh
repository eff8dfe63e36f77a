#!/bin/sh
# Build dewy's private virtualenv for the OS packages (debian/rules and rpm/dewy.spec both call this).
#
#   packaging/build-venv.sh DESTDIR VENV
#
# creates DESTDIR/VENV (VENV: the installed path, /usr/lib/dewy/venv) holding dewy and every
# bundled dependency of packaging/requirements.txt, ready to run from VENV once installed:
#
# - built with PYTHON (default: the distribution's /usr/bin/python3 by its versioned name, e.g.
#   /usr/bin/python3.13, never a pyenv/local one): bin/python3.X is a symlink to it, so the
#   package depends on exactly that minor version;
# - built WITHOUT the system site-packages (pip must not count the build host's python3-* packages
#   as installed), then switched to include-system-site-packages = true so the installed venv
#   sees the distribution's python3-systemd (journal); the venv's own packages come first;
# - pinned wheels only (--no-deps --only-binary=:all:), then `pip check`; dewy itself from the
#   source tree. PyPI is needed at build time only; DEWY_WHEELHOUSE=DIR builds offline from
#   a directory of wheels (pip download -r packaging/requirements.txt -d DIR);
# - shipped without pip, setuptools, wheel, activate scripts, other console scripts, tests,
#   byte code (compiled by the postinst / %post) and build paths;
# - botocore's service models cut down to what dewy's s3:// backend and the AWS credential
#   chain use (s3; sts, sso, sso-oidc, signin for assumed-role, web-identity, SSO and login
#   credentials): 27 MB of the 28 MB of models describe other AWS services;
# - certifi's CA bundle replaced by a symlink to the system store (CA_BUNDLE, default Debian's
#   /etc/ssl/certs/ca-certificates.crt), as Debian's and Fedora's own python3-certifi do: every
#   HTTP stack in the venv (httpx, requests, botocore) trusts what the host trusts.
set -eu

[ $# -eq 2 ] || { echo "usage: $0 DESTDIR VENV" >&2; exit 2; }
destdir=$1
venv=$2
python=${PYTHON:-$(readlink -f /usr/bin/python3)}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
src=$(cd "$(dirname "$0")/.." && pwd)
root=$destdir$venv

case $venv in /*) ;; *) echo "$0: VENV must be absolute: $venv" >&2; exit 2 ;; esac
rm -rf "$root"
mkdir -p "$(dirname "$root")"
"$python" -m venv "$root"
py=$root/bin/python
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

pip() { "$py" -m pip --disable-pip-version-check --no-input --no-cache-dir "$@"; }
if [ -n "${PIP_CACHE_DIR:-}" ]; then pip() { "$py" -m pip --disable-pip-version-check --no-input "$@"; }; fi
index=""
[ -n "${DEWY_WHEELHOUSE:-}" ] && index="--no-index --find-links=$DEWY_WHEELHOUSE"
# shellcheck disable=SC2086
pip install --quiet --no-compile --no-deps --only-binary=:all: $index -r "$src/packaging/requirements.txt"
# dewy from the source tree, built by a pinned setuptools (which has bdist_wheel built in; Python
# 3.12+'s ensurepip brings no setuptools, 3.11's an older one), removed below with pip
# shellcheck disable=SC2086
pip install --quiet --no-compile --no-deps --only-binary=:all: $index "setuptools==80.9.0"
pip install --quiet --no-compile --no-deps --no-build-isolation "$src"
pip check
pip uninstall --quiet --yes setuptools pip
rm -rf "$site/_distutils_hack" "$site/distutils-precedence.pth" "$site/pkg_resources" "$site"/wheel "$site"/wheel-*.dist-info

# bin: the interpreter symlinks only. /usr/bin/dewy is packaging/dewy.sh, which runs
# `python3 -I -m dewy` (isolated: neither the working directory nor PYTHON* variables
# reach sys.path), so no script carries a shebang into the venv.
for f in "$root"/bin/*; do
    case ${f##*/} in python|python3|python3.*) ;; *) rm -f "$f" ;; esac
done
# ... and their lines in the RECORD files (the hashes of scripts whose shebang named the build
# directory: left in, two builds of the same tree would differ)
sed -i '\#^\.\./\.\./\.\./bin/#d' "$site"/*.dist-info/RECORD
rm -rf "$root/include"
# Python 3.13's venv writes a .gitignore (for checkouts), which has no place in a package
rm -f "$root/.gitignore"

# the installed venv sees the distribution's python3-systemd; no build path in pyvenv.cfg
sed -i -e 's/^include-system-site-packages = .*/include-system-site-packages = true/' -e '/^command = /d' "$root/pyvenv.cfg"
# pip's record of where dewy was installed from (the build directory)
rm -f "$site"/dewy-*.dist-info/direct_url.json
sed -i '\#/direct_url\.json,#d' "$site"/dewy-*.dist-info/RECORD

# botocore: only the service models that dewy's code paths load
data=$site/botocore/data
[ -d "$data/s3" ] || { echo "$0: no botocore service models in $data" >&2; exit 1; }
for d in "$data"/*/; do
    case $(basename "$d") in s3|sts|sso|sso-oidc|signin) ;; *) rm -rf "$d" ;; esac
done

# tests shipped inside libraries, byte code, editor and build leftovers
find "$site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
find "$root" -type f \( -name '*.pyc' -o -name '*.pyo' \) -delete
# library files are data: some wheels (protobuf) ship them executable; modules are imported,
# never run, so their "#!/usr/bin/env python" lines go too
find "$site" -type f -exec chmod 0644 {} +
find "$site" -type d -exec chmod 0755 {} +
find "$site" -type f -name '*.py' -exec sed -i '1{/^#!/d}' {} +

# shared objects stripped here, for both packages (rpm's brp-strip only strips executable files)
find "$site" -type f \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
# the system CA store instead of certifi's copy
cacert=$("$py" -c 'import certifi, sys; sys.stdout.write(certifi.where())')
rm -f "$cacert"
ln -s "$ca_bundle" "$cacert"
find "$root" -type d -name __pycache__ -exec rm -rf {} +

# nothing may point into the build tree
set -- -e "$src"
[ -n "$destdir" ] && set -- "$@" -e "$destdir"
if grep -rIl --exclude=RECORD "$@" "$root" >/dev/null 2>&1; then
    echo "$0: build paths left in:" >&2
    grep -rIl --exclude=RECORD "$@" "$root" >&2
    exit 1
fi
echo "build-venv: $(du -sh "$root" | cut -f1) in $root" >&2
