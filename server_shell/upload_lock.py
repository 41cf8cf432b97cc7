"""One upload per account at a time: an exclusive flock on a lock file in
the storage root, held for the whole put.

Why: the space guard measures the quota and the free space once when a put
starts. Puts running side by side would each spend the full allowance (four
parallel 8 MiB puts under a 10 MiB quota all succeeded), so a second put
while one is running is refused at once instead -- dom0 runs one backup at a
time anyway. The lock is released by the kernel when the put's process ends,
however it ends (kill -9 included), so a crash never leaves it held.
"""

from __future__ import annotations

import fcntl
import os
import stat

from .errors import StorageError, UploadBusy
from .storage import FILE_MODE, UPLOAD_LOCK_NAME

# O_NOFOLLOW: a symlink planted at the lock's name is never followed out of
# the storage; O_NONBLOCK: a FIFO planted there cannot hang the open.
LOCK_FLAGS = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
BUSY_MESSAGE = "another upload to this account is in progress; retry when it has ended"


def lock_uploads(root_fd: int) -> int:
    """Given the storage root's descriptor, return the descriptor of the
    account's upload lock, exclusively flocked (creating the file 0600 if it
    is missing); raise UploadBusy if another put holds it, StorageError if
    something other than our own regular file sits at its name."""
    try:
        fd = os.open(UPLOAD_LOCK_NAME, LOCK_FLAGS, FILE_MODE, dir_fd=root_fd)
    except OSError as error:
        reason = os.strerror(error.errno or 0)
        raise StorageError(f"cannot open the upload lock ({reason}); tell the admin") from None
    try:
        info = os.fstat(fd)
        # Only our own regular file: a file another account owns could be
        # held locked by it forever.
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise StorageError("the upload lock is not this account's regular file; tell the admin")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UploadBusy(BUSY_MESSAGE) from None
    except BaseException:
        os.close(fd)
        raise
    return fd
