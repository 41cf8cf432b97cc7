"""The test bed's server, where the tests have always imported it from (the
code lives in testbed/server.py, which bench/ shares)."""

from testbed.server import (
    ACCOUNT_PREFIX,
    REPO,
    Account,
    BackupServer,
    SyslogSink,
    free_port,
    remove_account,
    remove_stale_accounts,
)

__all__ = [
    "ACCOUNT_PREFIX",
    "REPO",
    "Account",
    "BackupServer",
    "SyslogSink",
    "free_port",
    "remove_account",
    "remove_stale_accounts",
]
