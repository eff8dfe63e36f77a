# OS packages. Artifacts go to dist/ (DIST=...).
#   make deb          for this host's Debian: dpkg-buildpackage -us -uc -b in a temporary copy with
#                     packaging/debian as debian/, into dist/SUITE/ (DEBDIR=...), version ~debNu1
#   make deb SUITE=bookworm|trixie
#                     the same inside a clean debootstrap root of that suite (as root; cached in
#                     /var/cache/dewy-build, DEWY_BUILD_CACHE=...), then that suite's lintian
#   make rpm          rpmbuild -bb packaging/rpm/dewy.spec from a source tarball of the tree
#   make lint         lintian on the deb, rpmlint on the spec and the rpm
#   make check-files  the deb and the rpm install the same files ($(PYTHON) packaging/check-packages.py)
# Build dependencies (Debian 12 or 13): debhelper python3-venv dpkg-dev rpm rpmlint lintian;
# for SUITE=: debootstrap systemd-container.
# PyPI is needed at build time unless DEWY_WHEELHOUSE names a directory holding the wheels of
# packaging/requirements.txt (pip download -r packaging/requirements.txt -d DIR).

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' dewy/__init__.py)
DIST ?= dist
PYTHON ?= /usr/bin/python3
SHELL := /bin/sh

.PHONY: deb rpm packages lint lint-deb lint-rpm check-files clean-packages

packages: deb rpm

ifdef SUITE
deb:
	$(PYTHON) packaging/debroot.py deb $(SUITE) $(DIST)/$(SUITE)
else
deb:
	@set -e; tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/dewy-deb.XXXXXX"); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) packaging/srctree.py copy "$$tmp/dewy-$(VERSION)"; \
	cp -a packaging/debian "$$tmp/dewy-$(VERSION)/debian"; \
	$(PYTHON) packaging/debroot.py stamp "$$tmp/dewy-$(VERSION)/debian/changelog" >/dev/null; \
	out=$${DEBDIR:-$(DIST)/$$(. /etc/os-release && echo "$$VERSION_CODENAME")}; \
	(cd "$$tmp/dewy-$(VERSION)" && dpkg-buildpackage -us -uc -b); \
	mkdir -p "$$out"; \
	for f in "$$tmp"/*.deb "$$tmp"/*.buildinfo "$$tmp"/*.changes; do cp "$$f" "$$out/"; echo "$$out/$${f##*/}"; done
endif

rpm:
	@set -e; tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/dewy-rpm.XXXXXX"); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -p "$$tmp/SOURCES"; \
	$(PYTHON) packaging/srctree.py tar "$$tmp/SOURCES/dewy-$(VERSION).tar.gz" dewy-$(VERSION); \
	cp packaging/requirements.txt "$$tmp/SOURCES/"; \
	rpmbuild -bb --nodeps --define "_topdir $$tmp" packaging/rpm/dewy.spec; \
	mkdir -p $(DIST); \
	for f in "$$tmp"/RPMS/*/*.rpm; do cp "$$f" $(DIST)/; echo "$(DIST)/$${f##*/}"; done

lint: lint-deb lint-rpm

lint-deb:
	lintian --fail-on error,warning $$(ls -t $(DIST)/*/dewy_*.deb | head -n1)

lint-rpm:
	rpmlint -c packaging/rpm/rpmlint.toml -r packaging/rpm/dewy.rpmlintrc packaging/rpm/dewy.spec $$(ls -t $(DIST)/dewy-*.rpm | grep -v '\.src\.rpm$$' | head -n1)

check-files:
	$(PYTHON) packaging/check-packages.py $$(ls -t $(DIST)/*/dewy_*.deb | head -n1) $$(ls -t $(DIST)/dewy-*.rpm | grep -v '\.src\.rpm$$' | head -n1)

clean-packages:
	rm -rf $(DIST)
