"""server_shell/setup-account.sh: makes a working storage account, idempotently."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.server import REPO, Account, BackupServer, remove_account
from tests.server_shell.client import put

SCRIPT = REPO / "server_shell" / "setup-account.sh"


@pytest.fixture
def new_user(backup_server: BackupServer) -> Iterator[str]:
    """A name for an account that does not exist yet; account, home and the
    /etc/shells line are removed afterwards."""
    name = f"qbs-{secrets.token_hex(4)}"
    shells = Path("/etc/shells").read_text()
    yield name
    home = None
    try:
        home = pwd.getpwnam(name).pw_dir
    except KeyError:
        pass
    remove_account(name)
    if home and home.startswith("/home/"):
        shutil.rmtree(home, ignore_errors=True)
    Path("/etc/shells").write_text(shells)


def setup(
    server: BackupServer, user: str, force: bool = False
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SHELL_PATH": str(server.shell_path)}
    if force:
        env["FORCE"] = "1"
    return subprocess.run(
        ["sh", str(SCRIPT), user], capture_output=True, timeout=60, check=False, env=env
    )


def test_setup_account_makes_a_key_only_account_that_works(
    backup_server: BackupServer, new_user: str
) -> None:
    for _ in range(2):  # idempotent: the second run changes nothing that matters
        result = setup(backup_server, new_user)
        assert result.returncode == 0, result.stderr
    entry = pwd.getpwnam(new_user)
    assert entry.pw_shell == str(backup_server.shell_path)
    assert Path("/etc/shells").read_text().splitlines().count(str(backup_server.shell_path)) == 1
    shadow = subprocess.run(["getent", "shadow", new_user], capture_output=True, check=True).stdout
    assert shadow.split(b":")[1] == b"*"
    home = Path(entry.pw_dir)
    keys = home / ".ssh/authorized_keys"
    assert home.stat().st_mode & 0o777 == 0o700 and home.stat().st_uid == entry.pw_uid
    assert keys.stat().st_mode & 0o777 == 0o600 and keys.stat().st_uid == entry.pw_uid
    assert b"restrict" in keys.read_bytes()
    # Paste a key after the documented line and log in for real.
    public = backup_server.client_key.with_suffix(".pub").read_text().strip()
    with keys.open("a") as stream:
        stream.write(f"restrict {public}\n")
    os.chmod(home.parent, 0o755)
    account = Account(name=new_user, home=home, uid=entry.pw_uid, gid=entry.pw_gid)
    result = put(backup_server, account, "first", b"hello")
    assert result.returncode == 0, result.stderr
    assert (home / "first").read_bytes() == b"hello"
    assert setup(backup_server, new_user).returncode == 0
    assert f"restrict {public}" in keys.read_text()  # a rerun keeps pasted keys


def test_setup_account_converts_an_existing_account_only_when_forced(
    backup_server: BackupServer, new_user: str
) -> None:
    # Threat: a typo in `make server user=...` silently turning a person's
    # account into a backup-only one (shell replaced, home chowned 0700).
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", new_user], check=True)
    passwd = Path("/etc/passwd").read_text()
    result = setup(backup_server, new_user)
    assert result.returncode != 0 and b"force=1" in result.stderr
    assert Path("/etc/passwd").read_text() == passwd
    assert setup(backup_server, new_user, force=True).returncode == 0
    assert pwd.getpwnam(new_user).pw_shell == str(backup_server.shell_path)


@pytest.mark.parametrize("system_account", ["root", "daemon", "nobody"])
def test_setup_account_refuses_system_accounts_even_when_forced(
    backup_server: BackupServer, system_account: str
) -> None:
    # Threat: `make server user=www-data` chowning /var/www and replacing a
    # service's shell. Residual risk: none for uids below UID_MIN.
    passwd, shells = Path("/etc/passwd").read_text(), Path("/etc/shells").read_text()
    home = Path(pwd.getpwnam(system_account).pw_dir)
    before = home.stat() if home.exists() else None
    result = setup(backup_server, system_account, force=True)
    assert result.returncode != 0 and b"system account" in result.stderr
    assert Path("/etc/passwd").read_text() == passwd
    assert Path("/etc/shells").read_text() == shells  # a refused run changes nothing
    if before is not None:
        after = home.stat()
        assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


def test_setup_account_refuses_a_planted_symlink(
    backup_server: BackupServer, new_user: str, outside: Path
) -> None:
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", new_user], check=True)
    ssh_dir = Path(pwd.getpwnam(new_user).pw_dir) / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "authorized_keys").symlink_to(outside / "secret")
    before = (outside / "secret").stat()
    passwd = Path("/etc/passwd").read_text()
    result = setup(backup_server, new_user, force=True)
    assert result.returncode != 0
    assert Path("/etc/passwd").read_text() == passwd  # refused before the shell was changed
    after = (outside / "secret").stat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


@pytest.mark.parametrize("name", ["", "-o", "Root", "a b", "x;id", "../x"])
def test_setup_account_refuses_odd_names(backup_server: BackupServer, name: str) -> None:
    passwd = Path("/etc/passwd").read_text()
    assert setup(backup_server, name).returncode != 0
    assert Path("/etc/passwd").read_text() == passwd
