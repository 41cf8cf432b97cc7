"""The server .deb on this machine, the way an admin uses it: install, make
an account with the documented command, back up through sshd, upgrade to a
newer version, remove, purge. Configs follow dpkg's rules (kept on removal,
deleted on purge); accounts and backups are never touched.

It installs into the machine's own /usr/sbin, /usr/lib/qbackup and
/etc/qbackup (no other test uses those paths: theirs are temporary trees),
adds an account and changes /etc/shells: it runs alone (machine_wide, see
tests/conftest.py) and purges the package whatever happens."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.client import get, put
from testbed.server import REPO, Account, BackupServer, remove_account
from tests.packaging.conftest import Dist, make_packages

pytestmark = pytest.mark.machine_wide

PACKAGE = "qbackup-server"
SHELL = "/usr/sbin/qbackup-shell"
CONFIG = Path("/etc/qbackup/qbackup-shell.conf")
SETUP_ACCOUNT = "/usr/lib/qbackup/server_shell/setup-account.sh"  # what README documents
# What `make packages` copies into a newer version's build: the sources, not
# this checkout's builds or caches.
NOT_SOURCE = shutil.ignore_patterns(".git", "dist", "build", "__pycache__", "*.egg-info",
                                    ".*_cache", ".hypothesis")


def run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run COMMAND; fail the test (showing its output) unless it succeeded."""
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


def package_status() -> str:
    """Return dpkg's status of the package ("" if dpkg never knew it)."""
    return subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", PACKAGE],
                          capture_output=True, text=True, check=False).stdout.strip()


@pytest.fixture
def on_this_machine() -> Iterator[str]:
    """An account name for the test; afterwards the package is purged, the
    account and its home deleted and /etc/shells restored, even on failure."""
    # Never replace (then purge) a real installation.
    if package_status() not in ("", "un") or Path(SHELL).exists() or CONFIG.exists():
        pytest.fail(f"{PACKAGE} or {SHELL} is already on this machine: not touching it")
    shells = Path("/etc/shells").read_bytes()
    name = f"qbs-{secrets.token_hex(4)}"
    yield name
    subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, check=False)
    remove_account(name)
    shutil.rmtree(Path("/home") / name, ignore_errors=True)
    Path("/etc/shells").write_bytes(shells)


def newer_version(dist: Dist, work: Path) -> Dist:
    """Given this checkout's packages, build the next patch version of the
    same sources (a copy, its version raised) into WORK; return them."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    major, minor, patch = dist.version.split(".")
    init = source / "qbackup_protocol/__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{dist.version}"',
                                             f'__version__ = "{major}.{minor}.{int(patch) + 1}"'))
    epoch = run("git", "-C", str(REPO), "log", "-1", "--format=%ct").stdout.strip()
    return make_packages(source, work / "dist", f"SOURCE_DATE_EPOCH={int(epoch) + 86400}")


def test_install_upgrade_remove_purge_keep_accounts_backups_and_configs(
        dist: Dist, backup_server: BackupServer, on_this_machine: str, tmp_path: Path) -> None:
    newer = newer_version(dist, tmp_path)  # built first: a failed build changes nothing here
    run("dpkg", "--install", str(dist.server_deb))
    assert package_status() == "ii"
    assert run("qbackup-server", "--version").stdout.startswith(f"qbackup-server {dist.version} ")
    assert run(SHELL, "--version").stdout == f"qbackup-shell {dist.version}\n"
    # The admin's change to the config (where the shell logs): an upgrade keeps it.
    text = CONFIG.read_text()
    assert "#socket = /dev/log" in text
    CONFIG.write_text(text.replace("#socket = /dev/log", f"socket = {backup_server.syslog.path}"))
    edited = CONFIG.read_bytes()

    # The account, the documented way, with the test client's key as the carrier's.
    name = on_this_machine
    run(SETUP_ACCOUNT, name, str(backup_server.client_key.with_suffix(".pub")))
    entry = pwd.getpwnam(name)
    assert entry.pw_shell == SHELL and SHELL in Path("/etc/shells").read_text().split()
    account = Account(name, Path(entry.pw_dir), entry.pw_uid, entry.pw_gid)
    backup_server.syslog.clear()
    stored = put(backup_server, account, "laptop/daily-20261201T020000Z", b"ciphertext" * 1000)
    assert stored.returncode == 0, stored.stderr
    assert any(f"account={name}" in line for line in backup_server.syslog.flush())
    # Run again (harmless), it names itself as the way to add a carrier key.
    again = run(SETUP_ACCOUNT, name).stdout
    assert f"(add one with: {SETUP_ACCOUNT} {name} CARRIER_KEY.pub)" in again
    backups = sorted(p.relative_to(account.home) for p in account.home.rglob("*")
                     if p.is_file() and ".ssh" not in p.parts)

    # Upgrade: the new version runs, with the admin's config, and the backup is there.
    run("dpkg", "--install", str(newer.server_deb))
    assert run("qbackup-server", "--version").stdout.startswith(f"qbackup-server {newer.version} ")
    assert CONFIG.read_bytes() == edited
    data, _size, _digest = get(backup_server, account, "laptop/daily-20261201T020000Z")
    assert data == b"ciphertext" * 1000

    # Remove: the programs go, the config, the account and its backups stay.
    run("dpkg", "--remove", PACKAGE)
    assert package_status() == "rc"
    assert not Path(SHELL).exists() and not Path("/usr/lib/qbackup").exists()
    assert CONFIG.read_bytes() == edited
    assert SHELL not in Path("/etc/shells").read_text().split()
    assert pwd.getpwnam(name).pw_shell == SHELL
    assert sorted(p.relative_to(account.home) for p in account.home.rglob("*")
                  if p.is_file() and ".ssh" not in p.parts) == backups

    # Purge: the config goes too; the account and its backups still stay.
    run("dpkg", "--purge", PACKAGE)
    assert package_status() == ""
    assert not CONFIG.exists() and not CONFIG.parent.exists()
    assert pwd.getpwnam(name).pw_dir == str(account.home)
    assert sorted(p.relative_to(account.home) for p in account.home.rglob("*")
                  if p.is_file() and ".ssh" not in p.parts) == backups
    assert os.stat(account.home).st_uid == account.uid
