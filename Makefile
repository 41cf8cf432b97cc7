# qbackup — install targets, tests, demo and benchmarks.
# `make test` and `make demo` work on a fresh Debian machine as root.

SHELL := /bin/bash
PYTHON_SYSTEM ?= /usr/bin/python3
# The test venv lives outside /root: processes of other accounts may need to read it.
VENV ?= /opt/qbackup-venv
PY := $(VENV)/bin/python

DESTDIR ?=
SBINDIR ?= /usr/sbin
BINDIR ?= /usr/bin
LIBDIR ?= /usr/lib/qbackup
CONFDIR ?= /etc/qbackup
QUBES_RPC_DIR ?= /etc/qubes-rpc
SYSTEMD_USER_DIR ?= /usr/lib/systemd/user
APPARMOR_DIR ?= /etc/apparmor.d
DOCDIR ?= /usr/share/doc/qbackup
MANDIR ?= /usr/share/man
POLICY_DIR ?= /etc/qubes/policy.d
user ?=
key ?=
force ?=
DOM0_UNITS := $(wildcard dom0/systemd/*.service dom0/systemd/*.timer)
# The one version, qbackup_protocol's (`make print-version` shows it).
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' qbackup_protocol/__init__.py)

APT_PACKAGES := openssh-server openssh-client rsync apparmor python3-venv python3-asyncssh python3-yaml \
	groff-base lintian rpm rpmlint scrypt python3-cryptography xz-utils bzip2

.PHONY: FORCE help deps venv test test-pure lint demo bench man server server-files server-aa templatevm \
	templatevm-deps dom0 extract uninstall-server uninstall-templatevm uninstall-dom0 uninstall-extract \
	packages print-version clean

help:
	@echo "make test                 install what the tests need, lint, then run all the tests"
	@echo "make test-pure            the pure tests only (no root, no sshd; needs the venv of make test)"
	@echo "make demo                 a real backup end to end on this machine (simulated dom0)"
	@echo "make bench [GIB=2] [RATE_MB=150] [FLAT_GIB=8] [EXTRACT_GIB=1]  throughput against plain OpenSSH"
	@echo "make man                  render the man pages (man/) from the programs' parsers"
	@echo "make server user=NAME [key=CARRIER.pub] [force=1]"
	@echo "                          install qbackup-shell on a backup server and make it NAME's shell"
	@echo "                          (converting an existing account needs force=1)"
	@echo "make server-aa            install and load the AppArmor profile for qbackup-shell (needs AppArmor)"
	@echo "make templatevm-deps      install the carrier's packages in a TemplateVM (apt or dnf)"
	@echo "make templatevm           install the carrier in a Qubes TemplateVM (files only)"
	@echo "make dom0                 install qbackup, its systemd user units, qrexec policy, example config,"
	@echo "                          bash completion"
	@echo "make extract              install qbackup-extract (restore without Qubes) on any Linux machine"
	@echo "                          (needs python3 >= 3.11 and python3-cryptography)"
	@echo "make packages [DIST=dist]  the .debs, .rpms and SHA256SUMS of this version (dpkg-deb, rpmbuild)"
	@echo "make uninstall-server | uninstall-templatevm | uninstall-dom0 | uninstall-extract"
	@echo "                          remove what the install put; configs, accounts and backups stay"

# --- development -------------------------------------------------------------
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The venv is editable-installed from ONE checkout, named in its stamp: from
# another checkout (or after that one is gone) it is installed again, so the
# tests, the demo and the benchmarks always run the checkout they were made in.
$(VENV)/.installed: pyproject.toml $(if $(filter $(CURDIR),$(shell cat $(VENV)/.installed 2>/dev/null)),,FORCE)
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@echo "$(CURDIR)" > $@

FORCE:

venv: deps $(VENV)/.installed

# Test processes (pytest-xdist workers), each with its own sshd and accounts;
# most of a test's time is spent waiting on ssh and child processes, so more
# workers than cores pays. PYTEST_ARGS adds options, e.g. -x, -m "not system"
# (the pure tests, no root needed) or -p random_order --random-order.
TEST_WORKERS ?= 6
PYTEST_ARGS ?=

# Lint first: the last line `make test` prints is pytest's summary.
test: venv lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS) tests

# The pure tests only (parsers, protocol, names, config, docs): no root, no
# sshd, no accounts; three workers because a few of them wait on deadlines or
# start the carrier. Needs the venv `make test` made.
test-pure:
	$(PY) -m pytest -q -n 3 -m "not system" tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy server_shell carrier_vm dom0 testbed qbackup_protocol qbackup_extract man packaging/build.py

demo: venv
	$(PY) -m demo.run

# The man pages are rendered from the programs' parsers and committed (the
# install targets copy them; tests hold them to the render).
man: venv
	$(PY) -m man.render man

bench: venv
	$(PY) -m bench.run --gib $(or $(GIB),2) --rate-mb $(or $(RATE_MB),150) --flat-gib $(or $(FLAT_GIB),8) \
		--extract-gib $(or $(EXTRACT_GIB),1)

# --- what each part needs of qbackup_protocol/ ----------------------------------
# The server: the wire protocol (the login shell imports nothing else) and
# names (qbackup-server's prune); the carrier: the wire protocol, its client
# side, its contract with dom0, the text sanitiser and names (the duration
# grammar of its timeouts); dom0: all of them.
PROTOCOL_SERVER := qbackup_protocol/__init__.py qbackup_protocol/wire.py qbackup_protocol/names.py
PROTOCOL_TEMPLATEVM := qbackup_protocol/__init__.py qbackup_protocol/wire.py \
	qbackup_protocol/client.py qbackup_protocol/carrier_service.py qbackup_protocol/text.py \
	qbackup_protocol/names.py
PROTOCOL_DOM0 := $(wildcard qbackup_protocol/*.py)
# qbackup-extract: the get framing and command line, the text sanitiser.
PROTOCOL_EXTRACT := qbackup_protocol/__init__.py qbackup_protocol/wire.py \
	qbackup_protocol/client.py qbackup_protocol/text.py
# Versions before the package installed one module; the package would shadow
# it, but an upgrade must not leave it behind for an uninstall to miss.
OLD_PROTOCOL = $(DESTDIR)$(LIBDIR)/qbackup_protocol.py

# --- server ------------------------------------------------------------------
# Files only (what the tests install into a temporary tree, too).
server-files:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)/server_shell $(DESTDIR)$(SBINDIR) $(DESTDIR)$(CONFDIR) \
		$(DESTDIR)$(LIBDIR)/qbackup_protocol
	install -m 0644 $(PROTOCOL_SERVER) $(DESTDIR)$(LIBDIR)/qbackup_protocol/
	rm -f $(OLD_PROTOCOL)
	install -m 0644 server_shell/*.py $(DESTDIR)$(LIBDIR)/server_shell/
	install -m 0755 server_shell/setup-account.sh $(DESTDIR)$(LIBDIR)/server_shell/
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@CONFDIR@|$(CONFDIR)|g' server_shell/qbackup-shell.in > $(DESTDIR)$(SBINDIR)/qbackup-shell
	chmod 0755 $(DESTDIR)$(SBINDIR)/qbackup-shell
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@CONFDIR@|$(CONFDIR)|g' -e 's|@SBINDIR@|$(SBINDIR)|g' server_shell/qbackup-server.in > $(DESTDIR)$(SBINDIR)/qbackup-server
	chmod 0755 $(DESTDIR)$(SBINDIR)/qbackup-server
	test -e $(DESTDIR)$(CONFDIR)/qbackup-shell.conf || install -m 0644 server_shell/qbackup-shell.conf.example $(DESTDIR)$(CONFDIR)/qbackup-shell.conf
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 man/qbackup-shell.8 man/qbackup-server.8 $(DESTDIR)$(MANDIR)/man8/

# Without DESTDIR (a real install) the account is required, and everything
# setup-account.sh could refuse (the name, the key file, an existing account,
# not root) is checked before anything is installed (CHECK_ONLY=1); with
# DESTDIR (packaging) only files go in.
SETUP_ACCOUNT = SHELL_PATH=$(SBINDIR)/qbackup-shell FORCE=$(force) RUN_BY_MAKE=1 sh server_shell/setup-account.sh "$(user)" $(if $(key),"$(key)")
server:
	@if [ -z "$(DESTDIR)" ] && [ -z "$(user)" ]; then \
		echo "make server: give the account: make server user=NAME [key=CARRIER.pub] [force=1] (nothing was installed)" >&2; \
		exit 2; \
	fi
	@if [ -z "$(DESTDIR)" ]; then CHECK_ONLY=1 $(SETUP_ACCOUNT); fi
	@$(MAKE) --no-print-directory server-files
	@if [ -z "$(DESTDIR)" ]; then $(SETUP_ACCOUNT); fi

# Loaded only where the kernel has AppArmor and apparmor_parser is there;
# anywhere else nothing is installed (a profile no kernel enforces would only
# look like protection). With DESTDIR (packaging) the file only.
APPARMOR_ENABLED ?= /sys/module/apparmor/parameters/enabled
APPARMOR_PARSER ?= apparmor_parser
server-aa:
	@if [ -z "$(DESTDIR)" ] && [ "$$(cat $(APPARMOR_ENABLED) 2>/dev/null)" != Y ]; then \
		echo "make server-aa: this kernel has no AppArmor, or it is disabled (nothing was installed)" >&2; \
		exit 2; \
	fi
	@if [ -z "$(DESTDIR)" ] && ! command -v $(APPARMOR_PARSER) >/dev/null; then \
		echo "make server-aa: $(APPARMOR_PARSER) is missing; install the apparmor package first (nothing was installed)" >&2; \
		exit 2; \
	fi
	install -d -m 0755 $(DESTDIR)$(APPARMOR_DIR)
	install -m 0644 apparmor/usr.sbin.qbackup-shell $(DESTDIR)$(APPARMOR_DIR)/
	@if [ -z "$(DESTDIR)" ]; then $(APPARMOR_PARSER) -r $(APPARMOR_DIR)/usr.sbin.qbackup-shell; fi

# --- carrier VM (run in the TemplateVM) ----------------------------------------
# The distribution's packages only (no pip): Debian's names, or Fedora's.
PKG_TOOL ?= $(firstword $(shell command -v dnf apt-get 2>/dev/null))
TEMPLATEVM_PACKAGES = python3-asyncssh $(if $(filter dnf,$(notdir $(PKG_TOOL))),python3-pyyaml,python3-yaml)
templatevm-deps:
	@test -n "$(PKG_TOOL)" || { echo "make templatevm-deps: neither dnf nor apt-get found; install python3 >= 3.10, asyncssh and PyYAML yourself" >&2; exit 2; }
	$(PKG_TOOL) install -y $(TEMPLATEVM_PACKAGES)

templatevm:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)/carrier_vm $(DESTDIR)$(BINDIR) $(DESTDIR)$(QUBES_RPC_DIR) \
		$(DESTDIR)$(LIBDIR)/qbackup_protocol
	install -m 0644 $(PROTOCOL_TEMPLATEVM) $(DESTDIR)$(LIBDIR)/qbackup_protocol/
	rm -f $(OLD_PROTOCOL)
	install -m 0644 carrier_vm/*.py $(DESTDIR)$(LIBDIR)/carrier_vm/
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' carrier_vm/qbackup-carrier.in > $(DESTDIR)$(BINDIR)/qbackup-carrier
	chmod 0755 $(DESTDIR)$(BINDIR)/qbackup-carrier
	install -m 0755 carrier_vm/qubes-rpc/qubes.BackupCarrier $(DESTDIR)$(QUBES_RPC_DIR)/
	install -d -m 0755 $(DESTDIR)$(DOCDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 0644 carrier_vm/carrier.yaml.example $(DESTDIR)$(DOCDIR)/
	install -m 0644 man/qbackup-carrier.1 $(DESTDIR)$(MANDIR)/man1/

# --- dom0 ----------------------------------------------------------------------
# The example config goes to DOCDIR only: a config under /etc/qbackup would
# start failing (and notifying) before its jobs were edited to fit.
BASH_COMPLETION_DIR ?= /usr/share/bash-completion/completions
dom0:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)/dom0 $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMD_USER_DIR) \
		$(DESTDIR)$(LIBDIR)/qbackup_protocol
	install -m 0644 $(PROTOCOL_DOM0) $(DESTDIR)$(LIBDIR)/qbackup_protocol/
	rm -f $(OLD_PROTOCOL)
	install -m 0644 dom0/*.py $(DESTDIR)$(LIBDIR)/dom0/
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' dom0/qbackup.in > $(DESTDIR)$(BINDIR)/qbackup
	chmod 0755 $(DESTDIR)$(BINDIR)/qbackup
	install -m 0644 $(DOM0_UNITS) $(DESTDIR)$(SYSTEMD_USER_DIR)/
	install -d -m 0755 $(DESTDIR)$(POLICY_DIR) $(DESTDIR)$(DOCDIR)
	install -m 0644 dom0/qubes-policy/30-qbackup.policy $(DESTDIR)$(POLICY_DIR)/
	install -m 0644 dom0/qbackup.yaml.example $(DESTDIR)$(DOCDIR)/
	install -d -m 0755 $(DESTDIR)$(BASH_COMPLETION_DIR) $(DESTDIR)$(MANDIR)/man1
	install -m 0644 dom0/qbackup.bash-completion $(DESTDIR)$(BASH_COMPLETION_DIR)/qbackup
	install -m 0644 man/qbackup.1 $(DESTDIR)$(MANDIR)/man1/

# --- uninstall: what the targets above installed, nothing else -----------------
# Never removed: configs (/etc/qbackup, ~/.config/qbackup), SSH keys, the
# storage accounts and their backups, dom0's history. Run from the same
# version of this repository as the install.
define remove-shared
	@for part in server_shell carrier_vm dom0 qbackup_extract; do \
		[ ! -e $(DESTDIR)$(LIBDIR)/$$part ] || exit 0; \
	done; \
	rm -rf $(DESTDIR)$(LIBDIR)/qbackup_protocol $(OLD_PROTOCOL) $(DESTDIR)$(LIBDIR)/__pycache__; \
	rmdir $(DESTDIR)$(LIBDIR) 2>/dev/null || true
endef

# --- qbackup-extract (any Linux machine: restore without Qubes) -----------------
extract:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)/qbackup_extract $(DESTDIR)$(BINDIR) \
		$(DESTDIR)$(LIBDIR)/qbackup_protocol $(DESTDIR)$(MANDIR)/man1
	install -m 0644 $(PROTOCOL_EXTRACT) $(DESTDIR)$(LIBDIR)/qbackup_protocol/
	rm -f $(OLD_PROTOCOL)
	install -m 0644 qbackup_extract/*.py $(DESTDIR)$(LIBDIR)/qbackup_extract/
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' qbackup_extract/qbackup-extract.in > $(DESTDIR)$(BINDIR)/qbackup-extract
	chmod 0755 $(DESTDIR)$(BINDIR)/qbackup-extract
	install -m 0644 man/qbackup-extract.1 $(DESTDIR)$(MANDIR)/man1/

uninstall-extract:
	rm -f $(DESTDIR)$(BINDIR)/qbackup-extract $(DESTDIR)$(MANDIR)/man1/qbackup-extract.1
	rm -rf $(DESTDIR)$(LIBDIR)/qbackup_extract
	$(remove-shared)

uninstall-server:
	@if [ -z "$(DESTDIR)" ] && [ -e $(APPARMOR_DIR)/usr.sbin.qbackup-shell ] && command -v apparmor_parser >/dev/null; then \
		apparmor_parser -R $(APPARMOR_DIR)/usr.sbin.qbackup-shell || true; \
	fi
	rm -f $(DESTDIR)$(SBINDIR)/qbackup-shell $(DESTDIR)$(SBINDIR)/qbackup-server $(DESTDIR)$(APPARMOR_DIR)/usr.sbin.qbackup-shell \
		$(DESTDIR)$(MANDIR)/man8/qbackup-shell.8 $(DESTDIR)$(MANDIR)/man8/qbackup-server.8
	rm -rf $(DESTDIR)$(LIBDIR)/server_shell
	$(remove-shared)
	@if [ -z "$(DESTDIR)" ] && grep -qxF "$(SBINDIR)/qbackup-shell" /etc/shells; then \
		grep -vxF "$(SBINDIR)/qbackup-shell" /etc/shells >/etc/shells.qbackup-new || true; \
		chown --reference=/etc/shells /etc/shells.qbackup-new; \
		chmod --reference=/etc/shells /etc/shells.qbackup-new; \
		mv -f /etc/shells.qbackup-new /etc/shells; \
	fi
	@accounts=$$(getent passwd | awk -F: '$$7 == "$(SBINDIR)/qbackup-shell" { print $$1 }' | tr '\n' ' '); \
	echo "kept: $(CONFDIR)/qbackup-shell.conf and the storage accounts with their backups$${accounts:+ ($$accounts)};"; \
	echo "      remove an account you no longer need with: userdel ACCOUNT (its home holds the backups)"

uninstall-templatevm:
	rm -f $(DESTDIR)$(BINDIR)/qbackup-carrier $(DESTDIR)$(QUBES_RPC_DIR)/qubes.BackupCarrier \
		$(DESTDIR)$(DOCDIR)/carrier.yaml.example $(DESTDIR)$(MANDIR)/man1/qbackup-carrier.1
	rm -rf $(DESTDIR)$(LIBDIR)/carrier_vm
	$(remove-shared)
	@rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null || true
	@echo "kept: each AppVM's ~/.config/qbackup/carrier.yaml, SSH key and known_hosts"

# Where `systemctl --user enable` (or --global) leaves its links.
ENABLED_UNITS ?= /etc/systemd/user/*.wants/qbackup* /home/*/.config/systemd/user/*.wants/qbackup*
uninstall-dom0:
	@enabled=$$(ls -d $(ENABLED_UNITS) 2>/dev/null); \
	if [ -z "$(DESTDIR)" ] && [ -n "$$enabled" ]; then \
		echo "make uninstall-dom0: still enabled (nothing was removed):" $$enabled >&2; \
		echo "  first, as that user: systemctl --user disable --now UNIT" >&2; \
		exit 2; \
	fi
	rm -f $(DESTDIR)$(BINDIR)/qbackup $(DESTDIR)$(POLICY_DIR)/30-qbackup.policy \
		$(DESTDIR)$(DOCDIR)/qbackup.yaml.example $(DESTDIR)$(BASH_COMPLETION_DIR)/qbackup \
		$(DESTDIR)$(MANDIR)/man1/qbackup.1 \
		$(addprefix $(DESTDIR)$(SYSTEMD_USER_DIR)/,$(notdir $(DOM0_UNITS)))
	rm -rf $(DESTDIR)$(LIBDIR)/dom0
	$(remove-shared)
	@rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null || true
	@echo "kept: /etc/qbackup and ~/.config/qbackup (jobs), passphrase files, ~/.local/share/qbackup (history)"

# --- packages: the install targets above, each into a staging root ----------------
# One file list (the targets'), one version, reproducible bytes: every date is
# the last commit's (or SOURCE_DATE_EPOCH=SECONDS outside a git checkout).
DIST ?= dist
PACKAGE_STAGE ?= build/packages
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
STAGE_ROOT = $(abspath $(PACKAGE_STAGE))
packages:
	@test -n "$(SOURCE_DATE_EPOCH)" || { echo "make packages: not a git checkout: give SOURCE_DATE_EPOCH=SECONDS (nothing was built)" >&2; exit 2; }
	@for tool in dpkg-deb rpmbuild; do command -v $$tool >/dev/null || \
		{ echo "make packages: $$tool is missing: apt-get install dpkg-dev rpm (nothing was built)" >&2; exit 2; }; done
	rm -rf $(STAGE_ROOT)
	@$(MAKE) --no-print-directory -s server-files server-aa DESTDIR=$(STAGE_ROOT)/server
	@$(MAKE) --no-print-directory -s templatevm DESTDIR=$(STAGE_ROOT)/carrier
	@$(MAKE) --no-print-directory -s dom0 DESTDIR=$(STAGE_ROOT)/dom0
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(PYTHON_SYSTEM) -I packaging/build.py $(STAGE_ROOT) $(abspath $(DIST)) $(VERSION)
	rm -rf $(STAGE_ROOT)
	@cd $(DIST) && cat SHA256SUMS

print-version:
	@echo $(VERSION)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
