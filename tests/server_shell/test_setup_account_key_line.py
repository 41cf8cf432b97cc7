"""The key line setup-account.sh writes (`restrict,command="…/qbackup-shell" KEY`)
lets only qbackup's protocol through, whatever sshd's sftp subsystem is.

Threat: with `Subsystem sftp internal-sftp` sshd serves sftp
itself and never runs the login shell; a `restrict` key line does not stop
sftp, so a client could delete a committed backup or plant a symlink. The
forced command makes sshd run qbackup-shell for EVERY request (subsystems
included) with the client's request in SSH_ORIGINAL_COMMAND, which the shell
refuses unless it is a protocol command. Each sshd here is a real one of our
own, configured with one of the two subsystem lines.
Residual risk: an sshd_config `ForceCommand internal-sftp` (Match block)
overrides a key's command=; don't match the backup accounts with one.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import openssh
from testbed.client import put, snapshot
from testbed.server import Account, BackupServer, remove_account

SCRIPT = Path(__file__).resolve().parents[2] / "server_shell" / "setup-account.sh"
SUBSYSTEMS = ["/usr/lib/openssh/sftp-server", "internal-sftp"]
COMMITTED = b"a committed backup\n"


@pytest.fixture(scope="module", params=SUBSYSTEMS)
def sftp_server(request: pytest.FixtureRequest) -> Iterator[BackupServer]:
    """The harness's server (installed shell, keys, syslog) with an sshd whose
    sftp subsystem is the parameter."""
    server = BackupServer.create()
    server.sftp_subsystem = request.param
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def storage(sftp_server: BackupServer) -> Iterator[Account]:
    """An account made by setup-account.sh with the server's client key, holding
    one committed backup."""
    name = f"qbs-{secrets.token_hex(4)}"
    shells = Path("/etc/shells").read_bytes()
    pub = sftp_server.client_key.with_suffix(".pub")
    result = subprocess.run(
        ["sh", str(SCRIPT), name, str(pub)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SHELL_PATH": str(sftp_server.shell_path)},
        capture_output=True,
        check=False,
    )
    try:
        assert result.returncode == 0, result.stderr
        entry = pwd.getpwnam(name)
        account = Account(name=name, home=Path(entry.pw_dir), uid=entry.pw_uid, gid=entry.pw_gid)
        stored = put(sftp_server, account, "committed", COMMITTED)
        assert stored.returncode == 0, stored.stderr
        yield account
    finally:
        remove_account(name)
        shutil.rmtree(Path("/home") / name, ignore_errors=True)
        Path("/etc/shells").write_bytes(shells)


def client_options(server: BackupServer, port_flag: str) -> list[str]:
    return [port_flag, str(server.port), *openssh.client_options(server.endpoint)]


def sftp(server: BackupServer, account: Account, batch: str, cwd: Path) -> int:
    (cwd / "batch").write_text(batch)
    argv = ["sftp", "-b", str(cwd / "batch"), *client_options(server, "-P")]
    argv.append(f"{account.name}@127.0.0.1")
    return subprocess.run(argv, capture_output=True, timeout=30, check=False, cwd=cwd).returncode


def test_the_key_line_is_the_forced_command_line(
    sftp_server: BackupServer, storage: Account
) -> None:
    public = sftp_server.client_key.with_suffix(".pub").read_text().strip()
    keys = (storage.home / ".ssh/authorized_keys").read_text().splitlines()
    assert [line for line in keys if not line.startswith("#")] == [
        f'restrict,command="{sftp_server.shell_path}" {public}'
    ]


def test_put_and_list_work_through_the_forced_command(
    sftp_server: BackupServer, storage: Account
) -> None:
    result = put(sftp_server, storage, "through-forced-command", b"data")
    assert result.returncode == 0, result.stderr
    listing = sftp_server.run(storage, "list")
    assert listing.returncode == 0
    assert b'"through-forced-command"' in listing.stdout and b'"committed"' in listing.stdout


def test_sftp_is_refused(sftp_server: BackupServer, storage: Account, tmp_path: Path) -> None:
    (tmp_path / "payload").write_bytes(b"planted")
    before = snapshot(storage.home)
    batch = (
        "get committed\n"
        "-rm committed\n"
        "-put payload planted\n"
        "-symlink /etc etc\n"
        "-rename committed moved\n"
    )
    assert sftp(sftp_server, storage, batch, tmp_path) != 0
    assert not (tmp_path / "committed").exists()
    assert snapshot(storage.home) == before


@pytest.mark.parametrize("mode", ["-O", "-s"])  # legacy scp protocol, scp over sftp
def test_scp_is_refused(
    sftp_server: BackupServer, storage: Account, tmp_path: Path, mode: str
) -> None:
    (tmp_path / "payload").write_bytes(b"planted")
    before = snapshot(storage.home)
    scp = ["scp", mode, *client_options(sftp_server, "-P")]
    remote = f"{storage.name}@127.0.0.1:"
    for source, target in ((str(tmp_path / "payload"), remote + "planted"),
                           (remote + "committed", str(tmp_path / "fetched"))):
        result = subprocess.run([*scp, source, target], capture_output=True, timeout=30)
        assert result.returncode != 0
    assert not (tmp_path / "fetched").exists()
    assert snapshot(storage.home) == before


def test_rsync_is_refused(sftp_server: BackupServer, storage: Account, tmp_path: Path) -> None:
    (tmp_path / "payload").write_bytes(b"planted")
    before = snapshot(storage.home)
    ssh = " ".join(["ssh", *client_options(sftp_server, "-p")])
    remote = f"{storage.name}@127.0.0.1:"
    for source, target in ((str(tmp_path / "payload"), remote + "planted"),
                           (remote + "committed", str(tmp_path / "fetched")),
                           (str(tmp_path / "payload"), remote + "committed")):
        result = subprocess.run(
            ["rsync", "-e", ssh, source, target], capture_output=True, timeout=30, check=False
        )
        assert result.returncode != 0
    assert not (tmp_path / "fetched").exists()
    assert snapshot(storage.home) == before


def test_without_the_forced_command_only_internal_sftp_gets_through(
    sftp_server: BackupServer, tmp_path: Path
) -> None:
    # The control: the same sftp probe against a key line with `restrict`
    # only. With sftp-server sshd runs the login shell, which refuses; with
    # internal-sftp the probe gets the file — the hole the forced command
    # closes, and proof that the refusals above are not the probe failing.
    account = sftp_server.add_account(authorized_options="restrict")
    os.chmod(account.home.parent, 0o755)
    (account.home / "committed").write_bytes(COMMITTED)
    served = sftp(sftp_server, account, "get committed\n", tmp_path) == 0
    assert served == (sftp_server.sftp_subsystem == "internal-sftp")
    assert (tmp_path / "committed").exists() == served
