"""`list [PREFIX]` and `info`: what is stored, and how much room is left."""

from __future__ import annotations

import os
from collections.abc import Iterator

import qbackup_protocol as protocol

from .space import free_bytes, used_bytes
from .storage import iter_backups, open_directory, read_record


def list_backups(
    root_fd: int, prefix: str | None
) -> Iterator[protocol.BackupRecord | protocol.ListEnd]:
    """Given the root descriptor and a checked PREFIX (None = all), yield a
    BackupRecord per backup whose name starts with PREFIX, in segment order,
    at most MAX_LIST_ENTRIES of them, then one ListEnd."""
    prefix = prefix or ""
    # Walk only the directory the prefix names; the rest of the prefix
    # filters the names found there (so "2024/db" matches "2024/db-1").
    directory, _, _ = prefix.rpartition("/")
    segments = directory.split("/") if directory else []
    base = f"{directory}/" if directory else ""
    count = 0
    truncated = False
    try:
        dir_fd = open_directory(root_fd, segments, create=False)
    except FileNotFoundError:  # NoSuchBackup: an empty listing, not an error
        yield protocol.ListEnd(count=0, truncated=False)
        return
    try:
        for name, parent_fd, leaf, info in iter_backups(dir_fd, base, len(segments)):
            if not name.startswith(prefix):
                continue
            if count == protocol.MAX_LIST_ENTRIES:
                truncated = True
                break
            stored = read_record(parent_fd, leaf)
            yield protocol.BackupRecord(
                name=name,
                size=info.st_size,
                sha256=None if stored is None else stored.sha256,
                mtime=int(info.st_mtime),
            )
            count += 1
    finally:
        os.close(dir_fd)
    yield protocol.ListEnd(count=count, truncated=truncated)


def describe_space(root_fd: int, reserve: int, quota: int | None) -> protocol.ServerInfo:
    """Given the root descriptor, the reserve and the quota, return what info answers."""
    free = free_bytes(root_fd)
    available = max(0, free - reserve)
    used = None
    if quota is not None:
        used = used_bytes(root_fd)
        available = min(available, max(0, quota - used))
    return protocol.ServerInfo(
        protocol=protocol.PROTOCOL_VERSION,
        free=free,
        reserve=reserve,
        available=available,
        quota=quota,
        used=used,
    )
