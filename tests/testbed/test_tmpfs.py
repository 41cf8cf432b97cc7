"""The test bed's small disks (testbed/tmpfs.py)."""

from __future__ import annotations

import os

from testbed.server import Account, BackupServer
from testbed.tmpfs import mounted_tmpfs


def test_mounted_tmpfs_is_small_owned_and_gone_afterwards(
    backup_server: BackupServer, account: Account
) -> None:
    path = backup_server.base / "tmpfs-under-test"
    with mounted_tmpfs(path, "1m", inodes=50, owner=(account.uid, account.gid)) as mount:
        assert os.path.ismount(mount)
        info = os.statvfs(mount)
        assert info.f_blocks * info.f_frsize == 1024 * 1024 and info.f_files == 50
        assert (mount.stat().st_uid, mount.stat().st_mode & 0o777) == (account.uid, 0o700)
    assert not path.exists()
