"""server_shell/setup-account.sh: makes a working storage account, idempotently,
and never lets the account it works on reach anything of root's."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.client import put
from testbed.server import REPO, Account, BackupServer, remove_account

SCRIPT = REPO / "server_shell" / "setup-account.sh"
DISABLED = "# disabled by qbackup setup-account.sh (not a forced-command line): "


def forced(server: BackupServer) -> str:
    """The options setup-account.sh puts before every carrier key."""
    return f'restrict,command="{server.shell_path}"'


def passwd_entry(name: str) -> bytes:
    """NAME's line of the account database, or b"" (never the whole /etc/passwd:
    other test sessions add and remove their own accounts meanwhile)."""
    return subprocess.run(["getent", "passwd", name], capture_output=True, check=False).stdout


def shadow_password(name: str) -> bytes:
    entry = subprocess.run(["getent", "shadow", name], capture_output=True, check=True).stdout
    return entry.split(b":")[1]


@pytest.fixture
def new_user(backup_server: BackupServer) -> Iterator[str]:
    """A name for an account that does not exist yet; account, home and
    /etc/shells are restored afterwards."""
    name = f"qbs-{secrets.token_hex(4)}"
    shells = Path("/etc/shells").read_bytes()
    yield name
    home = None
    try:
        home = pwd.getpwnam(name).pw_dir
    except KeyError:
        pass
    remove_account(name)
    if home and home.startswith("/home/"):
        shutil.rmtree(home, ignore_errors=True)
    Path("/etc/shells").write_bytes(shells)


def setup(
    server: BackupServer, user: str, force: bool = False, key: Path | None = None,
    check_only: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SHELL_PATH": str(server.shell_path)}
    if force:
        env["FORCE"] = "1"
    if check_only:
        env["CHECK_ONLY"] = "1"
    argv = ["sh", str(SCRIPT), user] + ([str(key)] if key else [])
    return subprocess.run(argv, capture_output=True, timeout=60, check=False, env=env)


def account_of(name: str) -> Account:
    entry = pwd.getpwnam(name)
    return Account(name=name, home=Path(entry.pw_dir), uid=entry.pw_uid, gid=entry.pw_gid)


def make_person(name: str, login_shell: str = "/bin/bash") -> Account:
    """An ordinary account as an admin would have made it (password locked by useradd)."""
    subprocess.run(["useradd", "--create-home", "--shell", login_shell, name], check=True)
    return account_of(name)


def login_key(server: BackupServer) -> str:
    return server.client_key.with_suffix(".pub").read_text().strip()


# --- a working account --------------------------------------------------------
def test_setup_account_makes_a_key_only_account_that_works(
    backup_server: BackupServer, new_user: str
) -> None:
    pub = backup_server.client_key.with_suffix(".pub")
    for _ in range(2):  # idempotent: the second run changes nothing that matters
        result = setup(backup_server, new_user, key=pub)
        assert result.returncode == 0, result.stderr
    account = account_of(new_user)
    assert pwd.getpwnam(new_user).pw_shell == str(backup_server.shell_path)
    assert Path("/etc/shells").read_text().splitlines().count(str(backup_server.shell_path)) == 1
    assert shadow_password(new_user) == b"*"  # no password, keys only
    keys = account.home / ".ssh/authorized_keys"
    for path, mode in ((account.home, 0o700), (keys.parent, 0o700), (keys, 0o600)):
        info = path.lstat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (account.uid, mode), path
    # The key line is exactly the documented one, once (a rerun adds no copy).
    lines = keys.read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        f"{forced(backup_server)} {login_key(backup_server)}"
    ]
    os.chmod(account.home.parent, 0o755)
    result = put(backup_server, account, "first", b"hello")  # through the forced command
    assert result.returncode == 0, result.stderr
    assert (account.home / "first").read_bytes() == b"hello"
    listing = backup_server.run(account, "list")
    assert listing.returncode == 0 and b'"first"' in listing.stdout


@pytest.mark.parametrize(
    "content",
    [
        "restrict,command=\"/bin/sh\" ssh-ed25519 AAAA x\n",  # options: refused, not merged
        "ssh-ed25519 AAAAC3Nza first\nssh-ed25519 AAAAC3Nza second\n",
        "not a key\n",
        "root:$6$secret:19000:0:99999:7:::\n",  # what a planted link to /etc/shadow gives
    ],
)
def test_setup_account_refuses_a_key_file_that_is_not_one_plain_key(
    backup_server: BackupServer, new_user: str, tmp_path: Path, content: str
) -> None:
    # Threat: a key path the account can write, linked to a root-only file:
    # whatever is not a key must be refused by root before anything runs as
    # the account (which could read the helper's argv).
    secret = tmp_path / "secret"
    secret.write_text(content)
    secret.chmod(0o600)
    pub = tmp_path / "carrier.pub"
    pub.symlink_to(secret)
    result = setup(backup_server, new_user, key=pub)
    assert result.returncode != 0 and b"one OpenSSH public key line" in result.stderr
    assert content.encode().strip() not in result.stderr
    assert passwd_entry(new_user) == b""  # refused before the account was even created


def test_setup_account_refuses_a_new_account_whose_home_already_exists(
    backup_server: BackupServer, new_user: str
) -> None:
    # useradd would keep a stranger's directory as the new account's home
    # without chowning it.
    home = Path("/home") / new_user
    home.mkdir()
    try:
        passwd = passwd_entry(new_user)
        result = setup(backup_server, new_user)
        assert result.returncode != 0 and b"already exists" in result.stderr
        assert passwd_entry(new_user) == passwd
    finally:
        home.rmdir()


# --- converting an existing account ---------------------------------------------
def test_setup_account_converts_an_existing_account_only_when_forced(
    backup_server: BackupServer, new_user: str
) -> None:
    # Threat: a typo in `make server user=...` silently turning a person's
    # account into a backup-only one (shell replaced, keys disabled).
    make_person(new_user)
    passwd = passwd_entry(new_user)
    result = setup(backup_server, new_user)
    assert result.returncode != 0 and b"force=1" in result.stderr
    assert passwd_entry(new_user) == passwd
    assert setup(backup_server, new_user, force=True).returncode == 0
    assert pwd.getpwnam(new_user).pw_shell == str(backup_server.shell_path)


@pytest.mark.parametrize("disabled_shell", ["/usr/sbin/nologin", "/bin/false"])
def test_setup_account_leaves_a_disabled_account_alone_unless_forced(
    backup_server: BackupServer, new_user: str, disabled_shell: str
) -> None:
    # Threat: an account an admin disabled coming back to life as a
    # backup account that someone's old key can log in to.
    make_person(new_user, login_shell=disabled_shell)
    passwd = passwd_entry(new_user)
    shells = Path("/etc/shells").read_text()
    result = setup(backup_server, new_user)
    assert result.returncode != 0 and b"force=1" in result.stderr
    assert (passwd_entry(new_user), Path("/etc/shells").read_text()) == (passwd, shells)
    assert not (Path(pwd.getpwnam(new_user).pw_dir) / ".ssh").exists()


def test_setup_account_keeps_a_locked_password_locked(
    backup_server: BackupServer, new_user: str
) -> None:
    make_person(new_user, login_shell="/usr/sbin/nologin")
    subprocess.run(["usermod", "-p", "$6$salt$hash", new_user], check=True)
    subprocess.run(["usermod", "-L", new_user], check=True)  # the admin's lock: '!$6$...'
    locked = shadow_password(new_user)
    assert locked.startswith(b"!")
    result = setup(backup_server, new_user, force=True)
    assert result.returncode == 0, result.stderr
    assert shadow_password(new_user) == locked
    assert b"locked" in result.stderr  # and the admin is told what that means for sshd


def test_setup_account_disables_old_keys_of_a_converted_account(
    backup_server: BackupServer, new_user: str
) -> None:
    # Threat: a person's login key (or a key with other options) still
    # reaching the backups without the forced command after the conversion.
    # Lines in qbackup's old documented form (`restrict KEY`) get the forced
    # command; every other key line is commented out, never rewritten.
    account = make_person(new_user)
    ssh_dir = account.home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    keys = ssh_dir / "authorized_keys"
    old_carrier = "restrict ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldCarrierKeyxxxxxxxxxxxxx old"
    lines = [
        "# a comment stays",
        login_key(backup_server),  # the person's own key, no options
        'from="10.0.0.1",no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC other',
        old_carrier,
        "",
    ]
    keys.write_text("\n".join(lines))
    for path in (ssh_dir, keys):
        os.chown(path, account.uid, account.gid)
    result = setup(backup_server, new_user, force=True)
    assert result.returncode == 0, result.stderr
    assert keys.read_text().splitlines() == [
        "# a comment stays",
        DISABLED + login_key(backup_server),
        DISABLED + lines[2],
        f"{forced(backup_server)} {old_carrier.removeprefix('restrict ')}",
    ]
    assert b"1 key line(s) of the form" in result.stdout + result.stderr
    assert b"2 key line(s) without the forced command were commented out" in (
        result.stdout + result.stderr
    )
    # The person's key no longer logs in at all, for anything.
    os.chmod(account.home.parent, 0o755)
    assert backup_server.run(account, "list").returncode == 255
    # A rerun leaves the file as it is.
    before = keys.read_bytes()
    assert setup(backup_server, new_user).returncode == 0
    assert keys.read_bytes() == before


def test_setup_account_names_processes_a_converted_account_still_runs(
    backup_server: BackupServer, new_user: str
) -> None:
    # Residual risk made visible: a process of the account outlives the
    # conversion and keeps its access (it could re-add a key line).
    account = make_person(new_user)
    sleeper = subprocess.Popen(["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}",
                                "--clear-groups", "sleep", "300"])
    try:
        result = setup(backup_server, new_user, force=True)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.returncode == 0, result.stderr
    assert f"{new_user} still runs processes".encode() in result.stderr


def test_setup_account_keeps_the_last_line_of_etc_shells_without_final_newline(
    backup_server: BackupServer, new_user: str
) -> None:
    shells = Path("/etc/shells")
    text = shells.read_text().rstrip("\n")
    shells.write_text(text)  # the new fixture restores the original afterwards
    mode = stat.S_IMODE(shells.stat().st_mode)
    owner = shells.stat().st_uid
    assert setup(backup_server, new_user).returncode == 0
    assert shells.read_text() == text + "\n" + str(backup_server.shell_path) + "\n"
    assert (stat.S_IMODE(shells.stat().st_mode), shells.stat().st_uid) == (mode, owner)


# --- refusals -------------------------------------------------------------------
@pytest.mark.parametrize("system_account", ["root", "daemon", "nobody"])
def test_setup_account_refuses_system_accounts_even_when_forced(
    backup_server: BackupServer, system_account: str
) -> None:
    # Threat: `make server user=www-data` chowning /var/www and replacing a
    # service's shell. Residual risk: none for uids below UID_MIN.
    passwd = passwd_entry(system_account)
    shells = Path("/etc/shells").read_text()
    home = Path(pwd.getpwnam(system_account).pw_dir)
    before = home.stat() if home.exists() else None
    result = setup(backup_server, system_account, force=True)
    assert result.returncode != 0 and b"system account" in result.stderr
    assert passwd_entry(system_account) == passwd
    assert Path("/etc/shells").read_text() == shells  # a refused run changes nothing
    if before is not None:
        after = home.stat()
        assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


@pytest.mark.parametrize("planted", [".ssh", ".ssh/authorized_keys"])
def test_setup_account_refuses_a_planted_symlink(
    backup_server: BackupServer, new_user: str, outside: Path, planted: str
) -> None:
    account = make_person(new_user)
    (account.home / ".ssh").mkdir()
    os.chown(account.home / ".ssh", account.uid, account.gid)
    target = outside / "secret" if planted.endswith("keys") else outside
    if planted == ".ssh":
        (account.home / ".ssh").rmdir()
    (account.home / planted).symlink_to(target)
    before = target.stat()
    passwd = passwd_entry(new_user)
    result = setup(backup_server, new_user, force=True)
    assert result.returncode != 0 and b"without following links" in result.stderr
    assert passwd_entry(new_user) == passwd  # refused before the shell was changed
    after = target.stat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


# CHECK_ONLY=1 is what `make server` runs before it installs a file: every
# refusal of the real run, and no change at all.
def test_setup_account_check_only_changes_nothing(
    backup_server: BackupServer, new_user: str
) -> None:
    shells = Path("/etc/shells").read_text()
    assert setup(backup_server, new_user, check_only=True).returncode == 0
    assert passwd_entry(new_user) == b"" and Path("/etc/shells").read_text() == shells
    account = make_person(new_user)
    assert setup(backup_server, new_user, force=True, check_only=True).returncode == 0
    assert pwd.getpwnam(new_user).pw_shell == "/bin/bash"
    assert not (account.home / ".ssh").exists()
    assert Path("/etc/shells").read_text() == shells


@pytest.mark.parametrize("planted", [".ssh", ".ssh/authorized_keys"])
def test_setup_account_check_only_refuses_a_planted_symlink(
    backup_server: BackupServer, new_user: str, outside: Path, planted: str
) -> None:
    account = make_person(new_user)
    if planted == ".ssh":
        (account.home / ".ssh").symlink_to(outside)
    else:
        (account.home / ".ssh").mkdir(mode=0o700)
        os.chown(account.home / ".ssh", account.uid, account.gid)
        (account.home / planted).symlink_to(outside / "secret")
    result = setup(backup_server, new_user, force=True, check_only=True)
    assert result.returncode != 0
    assert b"without following links" in result.stderr, result.stderr
    assert result.stderr.endswith(b" (nothing was installed)\n") and result.stderr.count(b"\n") == 1
    assert pwd.getpwnam(new_user).pw_shell == "/bin/bash"


@pytest.mark.parametrize("name", ["", "-o", "Root", "a b", "x;id", "../x"])
def test_setup_account_refuses_odd_names(backup_server: BackupServer, name: str) -> None:
    shells = Path("/etc/shells").read_text()
    result = setup(backup_server, name)
    assert result.returncode != 0 and b"usage: setup-account.sh USER" in result.stderr
    assert passwd_entry(name) == b"" and Path("/etc/shells").read_text() == shells


# --- the race on ~/.ssh: root must never follow the account's symlinks ----------
# A process of the account swaps ~/.ssh and ~/.ssh/authorized_keys with
# symlinks to root's files, atomically (renameat2 RENAME_EXCHANGE), as fast as
# it can, for the WHOLE time setup-account.sh runs again and again. Before the
# fix root's `install -d -o USER ~/.ssh` and `chmod 0600 authorized_keys`
# followed such a link into root's directory and file. The verdict does not
# depend on timing: whatever interleaving happens, root's directory and file
# must end exactly as they were (owner, group, mode, content).
RACER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
swaps = 0
def stop(*_):
    print(swaps, flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
os.chdir(sys.argv[1])
print("ready", flush=True)
pairs = [(b".ssh", b".ssh-link"), (b".ssh/authorized_keys", b".ssh/keys-link")]
while True:
    for first, second in pairs:
        for _ in range(2):  # swap in, swap back
            if libc.renameat2(AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE) == 0:
                swaps += 1
"""


@dataclass
class Victims:
    directory: Path
    file: Path

    def state(self) -> list[tuple[int, int, int, bytes]]:
        found = []
        for path in (self.directory, self.file):
            info = path.lstat()
            content = path.read_bytes() if path == self.file else b""
            found.append((info.st_uid, info.st_gid, info.st_mode, content))
        return found


@pytest.fixture
def victims() -> Iterator[Victims]:
    """A root-owned directory and file the account can reach but not change
    (stand-ins for /usr/local/bin and /etc/profile.d/x.sh)."""
    base = Path(tempfile.mkdtemp(prefix="qbackup-victim-", dir="/tmp"))
    base.chmod(0o755)
    (base / "bin").mkdir(mode=0o755)
    (base / "bin/profile.sh").write_bytes(b"echo root's\n")
    (base / "bin/profile.sh").chmod(0o644)
    yield Victims(directory=base / "bin", file=base / "bin/profile.sh")
    shutil.rmtree(base)


RACE_RUNS = 80  # the unfixed script lost this race in 8 of 9 trials of 40 runs


def test_setup_account_never_follows_a_link_the_account_swaps_in(
    backup_server: BackupServer, new_user: str, victims: Victims
) -> None:
    account = make_person(new_user)
    ssh_dir = account.home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text("")
    (account.home / ".ssh-link").symlink_to(victims.directory)
    (ssh_dir / "keys-link").symlink_to(victims.file)
    for path in (ssh_dir, ssh_dir / "authorized_keys", account.home / ".ssh-link",
                 ssh_dir / "keys-link"):
        os.lchown(path, account.uid, account.gid)
    before = victims.state()
    racer = subprocess.Popen(
        ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
         "/usr/bin/python3", "-I", "-c", RACER, str(account.home)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert racer.stdout is not None
        assert racer.stdout.readline().strip() == "ready"  # racing before setup starts
        outcomes = [setup(backup_server, new_user, force=True).returncode for _ in range(RACE_RUNS)]
    finally:
        racer.send_signal(signal.SIGTERM)
        output, _ = racer.communicate(timeout=30)
    swaps = int(output.strip())
    assert swaps > 1000, "the race did not run"
    assert victims.state() == before, f"root changed its own file through a link ({outcomes})"
    # Once the race is over, ~/.ssh is either way round: put it back and the
    # next run completes the conversion.
    if (account.home / ".ssh").is_symlink():
        os.rename(account.home / ".ssh", account.home / ".ssh-tmp")
        os.rename(account.home / ".ssh-link", account.home / ".ssh")
        os.rename(account.home / ".ssh-tmp", account.home / ".ssh-link")
    keys = account.home / ".ssh/authorized_keys"
    if keys.is_symlink():
        keys.unlink()
    result = setup(backup_server, new_user, force=True)
    assert result.returncode == 0, result.stderr
    assert victims.state() == before
    assert stat.S_IMODE(keys.lstat().st_mode) == 0o600 and keys.lstat().st_uid == account.uid
