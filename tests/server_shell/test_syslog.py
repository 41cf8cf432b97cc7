"""One syslog line per command, ident qbackup-shell; logging never fails a backup."""

from __future__ import annotations

import os

from testbed.client import put
from testbed.server import Account, BackupServer


def test_put_is_logged_with_client_account_command_outcome_bytes(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "logged/one", b"12345").returncode == 0
    lines = backup_server.syslog.wait_for(f"account={account.name} command=put logged/one")
    assert len(lines) == 1
    line = lines[0]
    assert "qbackup-shell: " in line and "client=127.0.0.1 port " in line
    assert "outcome=ok" in line and "bytes=5" in line


def test_failures_are_logged_with_their_outcome(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "dup", b"x").returncode == 0
    assert put(backup_server, account, "dup", b"y").returncode == 73
    assert backup_server.run(account, "get missing").returncode == 66
    assert backup_server.syslog.wait_for(f"account={account.name} command=put dup outcome=exists")
    assert backup_server.syslog.wait_for(
        f"account={account.name} command=get missing outcome=missing"
    )


def test_refused_commands_are_logged_without_the_input(
    backup_server: BackupServer, account: Account
) -> None:
    assert backup_server.run(account, "put ../INJECTED\x1b[2J").returncode == 64
    lines = backup_server.syslog.wait_for(
        f"account={account.name} command=(refused) outcome=refused"
    )
    assert len(lines) == 1
    assert all(
        "INJECTED" not in message and "\x1b" not in message
        for message in backup_server.syslog.messages()
    )


def test_a_missing_syslog_socket_does_not_fail_a_backup(
    shell_config: BackupServer, account: Account
) -> None:
    shell_config.config_path.write_text("[logging]\nsocket = /nonexistent/log.sock\n")
    os.chmod(shell_config.config_path, 0o644)
    result = put(shell_config, account, "unlogged", b"data")
    assert result.returncode == 0 and result.stderr == b""
    assert (account.storage / "unlogged").read_bytes() == b"data"
