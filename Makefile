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
user ?=
force ?=

APT_PACKAGES := openssh-server openssh-client apparmor python3-venv python3-asyncssh python3-yaml

.PHONY: help deps venv test lint demo bench server server-files server-aa templatevm dom0 clean

help:
	@echo "make test                 install what the tests need, then run them all"
	@echo "make demo                 a real backup end to end on this machine (simulated dom0)"
	@echo "make bench [GIB=2] [RATE_MB=150] [FLAT_GIB=8]  throughput against plain OpenSSH"
	@echo "make server user=NAME     install qbackup-shell on a backup server and make it NAME's shell"
	@echo "                          (an existing account with a real shell needs force=1)"
	@echo "make server-aa            install and load the AppArmor profile for qbackup-shell"
	@echo "make templatevm           install the carrier in a Qubes TemplateVM"
	@echo "make dom0                 install the qbackup command and its systemd user units in dom0"

# --- development -------------------------------------------------------------
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: deps $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests
	$(MAKE) --no-print-directory lint

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy server_shell carrier_vm dom0 tests/qubes_sim qbackup_protocol.py

demo: venv
	$(PY) -m tests.demo

bench: venv
	$(PY) -m bench.run --gib $(or $(GIB),2) --rate-mb $(or $(RATE_MB),150) --flat-gib $(or $(FLAT_GIB),8)

# --- server ------------------------------------------------------------------
# Files only (what the tests install into a temporary tree, too).
server-files:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)/server_shell $(DESTDIR)$(SBINDIR) $(DESTDIR)$(CONFDIR)
	install -m 0644 qbackup_protocol.py $(DESTDIR)$(LIBDIR)/
	install -m 0644 server_shell/*.py $(DESTDIR)$(LIBDIR)/server_shell/
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@CONFDIR@|$(CONFDIR)|g' server_shell/qbackup-shell.in > $(DESTDIR)$(SBINDIR)/qbackup-shell
	chmod 0755 $(DESTDIR)$(SBINDIR)/qbackup-shell
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@CONFDIR@|$(CONFDIR)|g' -e 's|@SBINDIR@|$(SBINDIR)|g' server_shell/qbackup-server.in > $(DESTDIR)$(SBINDIR)/qbackup-server
	chmod 0755 $(DESTDIR)$(SBINDIR)/qbackup-server
	test -e $(DESTDIR)$(CONFDIR)/qbackup-shell.conf || install -m 0644 server_shell/qbackup-shell.conf.example $(DESTDIR)$(CONFDIR)/qbackup-shell.conf

server: server-files
	@if [ -z "$(DESTDIR)" ]; then \
		test -n "$(user)" || { echo "make server: give the account: make server user=NAME" >&2; exit 2; }; \
		SHELL_PATH=$(SBINDIR)/qbackup-shell FORCE=$(force) sh server_shell/setup-account.sh "$(user)"; \
	fi

server-aa:
	install -d -m 0755 $(DESTDIR)$(APPARMOR_DIR)
	install -m 0644 apparmor/usr.sbin.qbackup-shell $(DESTDIR)$(APPARMOR_DIR)/
	@if [ -z "$(DESTDIR)" ]; then apparmor_parser -r $(APPARMOR_DIR)/usr.sbin.qbackup-shell; fi

# --- carrier VM (run in the TemplateVM) ----------------------------------------
templatevm:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)/carrier_vm $(DESTDIR)$(BINDIR) $(DESTDIR)$(QUBES_RPC_DIR)
	install -m 0644 qbackup_protocol.py $(DESTDIR)$(LIBDIR)/
	install -m 0644 carrier_vm/*.py $(DESTDIR)$(LIBDIR)/carrier_vm/
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' carrier_vm/qbackup-carrier.in > $(DESTDIR)$(BINDIR)/qbackup-carrier
	chmod 0755 $(DESTDIR)$(BINDIR)/qbackup-carrier
	install -m 0755 carrier_vm/qubes-rpc/qubes.BackupCarrier $(DESTDIR)$(QUBES_RPC_DIR)/
	install -d -m 0755 $(DESTDIR)$(DOCDIR)
	install -m 0644 carrier_vm/carrier.yaml.example $(DESTDIR)$(DOCDIR)/

# --- dom0 ----------------------------------------------------------------------
dom0:
	install -d -m 0755 $(DESTDIR)$(LIBDIR)/dom0 $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMD_USER_DIR)
	install -m 0644 dom0/*.py $(DESTDIR)$(LIBDIR)/dom0/
	sed -e 's|@LIBDIR@|$(LIBDIR)|g' dom0/qbackup.in > $(DESTDIR)$(BINDIR)/qbackup
	chmod 0755 $(DESTDIR)$(BINDIR)/qbackup
	install -m 0644 dom0/systemd/qbackup@.service dom0/systemd/qbackup@.timer $(DESTDIR)$(SYSTEMD_USER_DIR)/

clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache .mypy_cache
