"""qbackup-server's arguments (the retention rule itself is
qbackup_protocol.names.prunable, tested in tests/dom0/test_retention.py)."""

from __future__ import annotations

import pytest

from qbackup_protocol import names
from server_shell.admin import AdminError, parse


@pytest.mark.parametrize(
    "arguments",
    [
        ["prune", "--account", "a"],
        ["prune", "--account", "a", "--keep-daily", "0"],
        ["prune", "--account", "a", "--keep-daily", "-1", "--keep-weekly", "3"],
        ["prune", "--account", "a", "--keep-daily", "x"],
        ["prune", "--account", "a", "--keep-last", "3"],  # not a rule dom0 knows
        ["prune", "--keep-daily", "1"],  # whose storage? never guessed
        ["prune", "--account", "a", "--keep-daily", "1", "--bogus"],
        ["status", "--max-age", "soon"],
        ["scrub"],
        [],
    ],
)
def test_admin_arguments_refused(arguments: list[str]) -> None:
    with pytest.raises(AdminError):
        parse(arguments)


def test_prune_arguments_become_the_shared_retention_policy() -> None:
    options = parse(["prune", "--account", "bk", "--keep-daily", "7", "--keep-yearly", "2",
                     "--dry-run"])
    assert (options.account, options.dry_run) == ("bk", True)
    assert options.policy == names.RetentionPolicy(daily=7, yearly=2)
    assert parse(["status", "--max-age", "36h", "--json"]).max_age == 36 * 3600
