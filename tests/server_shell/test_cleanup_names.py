"""The cleanups (stale temporaries, stale staged uploads, prune) remove only
the shell's own files, matched by their EXACT name -- never a client's backup,
record or staged upload whose name merely starts like one of them."""

from __future__ import annotations

import os
import time

from qbackup_protocol import client
from testbed.client import put, run_admin, snapshot, stage, temporaries
from testbed.server import Account, BackupServer

# Client names that look like the shell's own files once a dot is put in front.
LOOKALIKES = [
    "tmp-x",
    "tmp-x.pending",
    "tmp-x.sha256",
    "tmp-0123456789abcdef",
    "tmp-0123456789abcdef.pending",
    "tmp-",
    "x.partial",
    "x.partial-state",
    "tmp-x.partial",
]


def age_everything(account: Account, seconds: float) -> None:
    """Make every file below the storage look SECONDS old."""
    old = time.time() - seconds
    for directory, _dirs, files in os.walk(account.storage):
        for name in files:
            os.utime(os.path.join(directory, name), (old, old), follow_symlinks=False)


# Threat: the stale-temporary cleanup matched the prefix `.tmp-`, so the next
# put in the directory deleted the digest record `.tmp-X.sha256` of a client
# backup named `tmp-X` (making it unverifiable: get refuses it) and staged
# uploads `.tmp-X.pending` long before pending_max_age. Residual risk: none
# known; a temporary is `.tmp-` + exactly 16 lowercase hex digits, a shape no
# record or staged upload can have (they always end in a suffix).
def test_a_later_put_keeps_records_and_staged_uploads_of_tmp_lookalike_names(
    backup_server: BackupServer, account: Account
) -> None:
    for leaf in LOOKALIKES:
        assert put(backup_server, account, f"d/{leaf}", b"published").returncode == 0
        assert stage(backup_server, account, f"s/{leaf}", b"staged").returncode == 0
    # Ten minutes later: past the stale age of temporaries (2 min), long
    # before pending_max_age (24 h).
    age_everything(account, 600)
    before = snapshot(account.storage)
    assert put(backup_server, account, "d/other", b"x").returncode == 0
    assert put(backup_server, account, "s/other", b"x").returncode == 0
    after = snapshot(account.storage)
    assert [path for path in before if path not in after] == []
    for leaf in LOOKALIKES:
        check = backup_server.run(account, f"check d/{leaf}")
        assert check.returncode == 0 and client.parse_check(check.stdout).ok
        assert backup_server.run(account, f"commit s/{leaf}").returncode == 0
        assert (account.storage / "s" / leaf).read_bytes() == b"staged"


def test_prune_keeps_records_and_staged_uploads_of_tmp_lookalike_names(
    backup_server: BackupServer, account: Account
) -> None:
    for leaf in LOOKALIKES:
        assert put(backup_server, account, f"d/{leaf}", b"published").returncode == 0
        assert stage(backup_server, account, f"s/{leaf}", b"staged").returncode == 0
    age_everything(account, 600)
    before = snapshot(account.storage)
    result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "1")
    assert result.returncode == 0, result.stderr
    assert snapshot(account.storage) == before
    assert temporaries(account.storage) == []
