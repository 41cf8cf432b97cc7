"""What a compromised carrier might try over SSH. Each test: non-zero exit,
one stderr line, and the storage (and what lies outside it) unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.client import chown_tree, frame_stream, put, snapshot, unframe
from testbed.server import Account, BackupServer

DATA = b"attacker data\n"


def assert_refused(result: subprocess.CompletedProcess[bytes], code: int) -> None:
    """The exit code, and exactly one line on stderr from the shell."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.startswith(b"qbackup-shell: ") and result.stderr.count(b"\n") == 1, (
        result.stderr
    )


# Threat: names that climb out of the storage or point at absolute paths.
@pytest.mark.parametrize(
    "name",
    [
        "../escape",
        "../../../tmp/escape",
        "a/../../escape",
        "/tmp/escape",
        "/etc/passwd",
        "..",
        ".",
        "./x",
        "a//b",
        ".ssh/authorized_keys",
        ".hidden",
        "a/.tmp-1234",
        "~/x",
        "a/",
    ],
)
def test_put_refuses_traversal_and_absolute_names(
    backup_server: BackupServer, account: Account, outside: Path, name: str
) -> None:
    before = snapshot(account.storage)
    before_outside = snapshot(outside)
    assert_refused(put(backup_server, account, name, DATA), 64)
    assert snapshot(account.storage) == before
    assert snapshot(outside) == before_outside


@pytest.mark.parametrize("verb", ["get", "check"])
@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", ".ssh/authorized_keys", "a/../b"])
def test_reads_refuse_traversal_and_absolute_names(
    backup_server: BackupServer, account: Account, verb: str, name: str
) -> None:
    result = backup_server.run(account, f"{verb} {name}")
    assert_refused(result, 64)
    assert result.stdout == b""


# Threat: shell syntax smuggled in the command line (there is no shell to run it).
@pytest.mark.parametrize(
    "command",
    [
        "put a;touch /tmp/qbackup-pwned",
        "put $(touch /tmp/qbackup-pwned)",
        "put `touch /tmp/qbackup-pwned`",
        "put a && touch /tmp/qbackup-pwned",
        "put a | touch /tmp/qbackup-pwned",
        "put a\ntouch /tmp/qbackup-pwned",
        "info; touch /tmp/qbackup-pwned",
        "list $(id)",
        "put a > /tmp/qbackup-pwned",
        "put 'a'",
        'put "a"',
        "put a\\ b",
        "put\ta",
        "put a\r",
    ],
)
def test_injection_strings_are_refused(
    backup_server: BackupServer, account: Account, command: str
) -> None:
    before = snapshot(account.storage)
    assert_refused(backup_server.run(account, command, frame_stream(DATA)), 64)
    assert not Path("/tmp/qbackup-pwned").exists()
    assert snapshot(account.storage) == before


# A NUL byte cannot reach the shell by any path: argv and the environment
# are C strings, and sshd reads the exec request's command as one too
# (sshpkt_get_cstring refuses an embedded NUL). The shell still refuses one
# (test_request.py: "put a\x00b"); no test here could exercise that.


def test_refusal_does_not_echo_the_command(backup_server: BackupServer, account: Account) -> None:
    result = backup_server.run(account, "put ../MARKER-\x1b[31m")
    assert_refused(result, 64)
    assert b"MARKER" not in result.stderr and b"\x1b" not in result.stderr


# Threat: replacing or appending to an existing backup (append-only promise).
def test_put_never_overwrites_an_existing_backup(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "keep/me", b"precious").returncode == 0
    before = snapshot(account.storage)
    assert_refused(put(backup_server, account, "keep/me", b"replacement"), 73)
    assert snapshot(account.storage) == before


def test_put_refuses_a_name_where_a_directory_is(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "dir/file", b"x").returncode == 0
    before = snapshot(account.storage)
    assert_refused(put(backup_server, account, "dir", b"y"), 73)
    assert_refused(put(backup_server, account, "dir/file/under", b"y"), 73)
    assert snapshot(account.storage) == before


# Threat: symlinks planted in the storage (by a past compromise, a careless
# admin, or anything else) that point outside it.
@pytest.fixture
def planted(account: Account, outside: Path) -> Account:
    """Storage with a file symlink, a directory symlink and a link to a dir inside."""
    (account.storage / "filelink").symlink_to(outside / "secret")
    (account.storage / "dirlink").symlink_to(outside)
    (account.storage / "real").mkdir(mode=0o700)
    (account.storage / "real/deeplink").symlink_to(outside)
    chown_tree(account.storage / "real", account)
    for link in ("filelink", "dirlink"):
        os.lchown(account.storage / link, account.uid, account.gid)
    return account


@pytest.mark.parametrize(
    "name",
    [
        "filelink",
        "dirlink/secret",
        "dirlink/new",
        "real/deeplink/new",
        "real/deeplink/secret",
        "dirlink/sub/new",
    ],
)
def test_put_through_a_planted_symlink_is_refused(
    backup_server: BackupServer, planted: Account, outside: Path, name: str
) -> None:
    before = snapshot(planted.storage)
    before_outside = snapshot(outside)
    assert_refused(put(backup_server, planted, name, DATA), 73)
    assert snapshot(planted.storage) == before
    assert snapshot(outside) == before_outside


@pytest.mark.parametrize("verb", ["get", "check"])
@pytest.mark.parametrize("name", ["filelink", "dirlink/secret", "real/deeplink/secret"])
def test_read_through_a_planted_symlink_is_refused(
    backup_server: BackupServer, planted: Account, verb: str, name: str
) -> None:
    before = snapshot(planted.storage)
    result = backup_server.run(planted, f"{verb} {name}")
    assert_refused(result, 66)
    assert b"not yours" not in result.stdout
    assert snapshot(planted.storage) == before


@pytest.mark.parametrize("prefix", ["", "dirlink/", "real/deeplink/", "real/"])
def test_list_never_follows_or_shows_symlinks(
    backup_server: BackupServer, planted: Account, prefix: str
) -> None:
    assert put(backup_server, planted, "real/ok", b"fine").returncode == 0
    result = backup_server.run(planted, f"list {prefix}".strip())
    assert result.returncode == 0, result.stderr
    assert b"secret" not in result.stdout and b"link" not in result.stdout
    expected = b'"count":1' if prefix in ("", "real/") else b'"count":0'
    assert expected in result.stdout


def test_list_hides_dot_files_and_temporaries(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "visible", b"v").returncode == 0
    (account.storage / ".tmp-deadbeef").write_bytes(b"partial")
    (account.storage / "sub").mkdir()
    (account.storage / "sub/.hidden").write_bytes(b"h")
    chown_tree(account.storage, account)
    result = backup_server.run(account, "list")
    assert result.returncode == 0
    assert (
        b"visible" in result.stdout
        and b"tmp" not in result.stdout
        and b"hidden" not in result.stdout
    )
    assert b".ssh" not in result.stdout and b'sha256":null' not in result.stdout


# Threat: a login that is not the protocol (a shell, file transfer tools).
def test_interactive_login_is_refused(backup_server: BackupServer, account: Account) -> None:
    before = snapshot(account.storage)
    result = backup_server.run(account, None, b"id\n", extra=("-T",))
    assert_refused(result, 77)
    assert snapshot(account.storage) == before


def test_interactive_login_with_a_tty_is_refused_even_without_restrict(
    backup_server: BackupServer,
) -> None:
    # Without `restrict` sshd grants the pty: the shell itself must refuse.
    unrestricted = backup_server.add_account(authorized_options="")
    result = backup_server.run(unrestricted, None, b"id\n", extra=("-tt",))
    assert result.returncode == 77
    assert b"interactive logins are not allowed" in result.stdout + result.stderr


def test_scp_is_refused(backup_server: BackupServer, account: Account, tmp_path: Path) -> None:
    source = tmp_path / "payload"
    source.write_bytes(DATA)
    before = snapshot(account.storage)
    for mode in ("-O", "-s"):  # legacy scp protocol, then scp over sftp
        argv = backup_server.scp_command(account, source, "payload", mode)
        assert subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode != 0
    assert snapshot(account.storage) == before


def test_sftp_is_refused(backup_server: BackupServer, account: Account, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    batch.write_text("ls\nget .ssh/authorized_keys\n")
    before = snapshot(account.storage)
    argv = backup_server.sftp_command(account, "-b", str(batch))
    result = subprocess.run(argv, capture_output=True, timeout=30, check=False, cwd=tmp_path)
    assert result.returncode != 0
    assert not (tmp_path / "authorized_keys").exists()
    assert snapshot(account.storage) == before


@pytest.mark.parametrize(
    "command",
    [
        "scp -t payload",
        "scp -f .ssh/authorized_keys",
        "rsync --server -logDtpre.iLsfxC . payload",
        "rsync --server --sender -logDtpre.iLsfxC . .ssh",
        "/usr/lib/openssh/sftp-server",
        "internal-sftp",
        "sh -c id",
        "/bin/bash",
        "git-receive-pack x",
        "cat .ssh/authorized_keys",
    ],
)
def test_other_programs_are_refused(
    backup_server: BackupServer, account: Account, command: str
) -> None:
    before = snapshot(account.storage)
    result = backup_server.run(account, command, DATA)
    assert_refused(result, 64)
    assert result.stdout == b""
    assert snapshot(account.storage) == before


# Threat: deleting backups through the admin's retention command.
@pytest.mark.parametrize(
    "command", ["prune --keep-last 1", "prune --keep-last 1 --dry-run", "prune"]
)
def test_prune_over_ssh_is_refused(
    backup_server: BackupServer, account: Account, command: str
) -> None:
    for name in ("p1", "p2", "p3"):
        assert put(backup_server, account, name, b"x").returncode == 0
    before = snapshot(account.storage)
    assert_refused(backup_server.run(account, command), 77)
    assert snapshot(account.storage) == before


@pytest.mark.parametrize("launcher", ["installed", "console-script"])
def test_running_as_root_is_refused(backup_server: BackupServer, launcher: str) -> None:
    # sshd would not let root log in here, but a misconfigured server might;
    # root's storage would be /root, which must stay untouched.
    program = (
        str(backup_server.shell_path)
        if launcher == "installed"
        else str(Path(sys.executable).parent / "qbackup-shell")  # the test venv's
    )
    before = sorted(os.listdir("/root"))
    result = subprocess.run(
        [program, "-c", "put qbackup-root-test"],
        input=frame_stream(DATA),
        capture_output=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SSH_CONNECTION": "127.0.0.1 1 127.0.0.1 22"},
    )
    assert_refused(result, 77)
    assert sorted(os.listdir("/root")) == before


def test_forced_command_takes_the_command_from_ssh_original_command(
    backup_server: BackupServer,
) -> None:
    # authorized_keys: restrict,command="/path/qbackup-shell" — sshd then runs
    # `qbackup-shell -c /path/qbackup-shell` with SSH_ORIGINAL_COMMAND set.
    forced = backup_server.add_account(
        authorized_options=f'restrict,command="{backup_server.shell_path}"'
    )
    assert put(backup_server, forced, "via/forced", b"ok").returncode == 0
    assert (forced.storage / "via/forced").read_bytes() == b"ok"
    ranged = backup_server.run(forced, "get via/forced 1")
    assert (ranged.returncode, unframe(ranged.stdout)[0]) == (0, b"k")
    # What a forced command must stop: sftp/scp/rsync are commands too.
    for command in ("internal-sftp", "/usr/lib/openssh/sftp-server", "scp -t x", "rsync --server"):
        assert_refused(backup_server.run(forced, command), 64)
    assert_refused(backup_server.run(forced, "put ../x", frame_stream(DATA)), 64)
    assert_refused(backup_server.run(forced, None, b"", extra=("-T",)), 77)


# Threat: something planted at the account's upload lock: a symlink out of
# the storage (would create/lock a file elsewhere), a directory. Residual
# risk: the account's uploads stop (74) until the admin removes it -- only
# someone with the account's rights can plant it.
@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_put_refuses_a_planted_upload_lock(
    backup_server: BackupServer, account: Account, outside: Path, kind: str
) -> None:
    lock = account.storage / ".qbackup-upload.lock"
    if kind == "symlink":
        lock.symlink_to(outside / "new-lock")
    else:
        lock.mkdir(mode=0o700)
    os.lchown(lock, account.uid, account.gid)
    before = snapshot(account.storage)
    before_outside = snapshot(outside)
    assert_refused(put(backup_server, account, "x", DATA), 74)
    assert snapshot(account.storage) == before
    assert snapshot(outside) == before_outside
