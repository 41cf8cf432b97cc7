"""Small filesystems for the disk-full, reserve and inode tests: the ONE place
that mounts (and unmounts) a tmpfs for the test bed."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def mounted_tmpfs(
    path: Path, size: str, inodes: int | None = None, owner: tuple[int, int] | None = None
) -> Iterator[Path]:
    """Mount a fresh tmpfs of SIZE (e.g. "64m") on PATH, created here, mode 0700,
    with at most INODES inodes if given, owned by OWNER (uid, gid) if given;
    yield PATH; then unmount it (lazily: a process of a killed test may still
    hold it) and remove PATH."""
    options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        if owner is not None:
            os.chown(path, *owner)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        with contextlib.suppress(OSError):
            path.rmdir()
