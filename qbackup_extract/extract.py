"""`qbackup-extract extract`: the chosen VMs' files written under DEST, each
VM renamed into place only once all its parts are authenticated."""

from __future__ import annotations

import os
from pathlib import Path

from qbackup_extract.backup import Backup, walk_backup
from qbackup_extract.errors import ExtractError, ExtractExit, usage_error
from qbackup_extract.output import Writer, cant_create


def select_vms(backup: Backup, names: list[str]) -> set[str]:
    """Given the VM names asked for (none: all), return them; raise ExtractError
    (usage) if the backup has no VM of such a name."""
    known = {vm.name for vm in backup.vms}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise usage_error(f"no VM named {unknown[0][:40]!r} in this backup "
                          f"(it holds: {', '.join(sorted(known))})")
    return set(names) or known


def check_dest(backup: Backup, dest: Path, selected: set[str]) -> None:
    """Return if DEST can take the selected VMs; raise ExtractError if one is
    there already or they cannot fit (threat: a size that fills the disk)."""
    for vm in backup.vms:
        if vm.name in selected and (dest / vm.output_name).exists():
            raise cant_create(f"{dest / vm.output_name} exists; nothing written")
    needed = sum(vm.size for vm in backup.vms if vm.name in selected)
    info = os.statvfs(dest)
    free = info.f_bavail * info.f_frsize
    if needed > free:
        raise cant_create(f"{dest} has {free // 2**20} MiB free, the VMs need "
                          f"{needed // 2**20} MiB; nothing written")


def run_extract(backup: Backup, dest: Path, names: list[str]) -> list[str]:
    """Given an opened backup, DEST and the VM names (none: all), write them;
    return the VMs written; raise ExtractError on the first damage (the VM
    being read is removed; VMs finished before it stay)."""
    selected = select_vms(backup, names)
    try:
        dest.mkdir(mode=0o755, exist_ok=True)
    except OSError as error:
        raise ExtractError(f"{dest}: {error.strerror}", ExtractExit.CANT_CREATE) from None
    check_dest(backup, dest, selected)
    writer = Writer(dest)
    try:
        walk_backup(backup, selected, writer)
    except ExtractError as error:
        writer.abort()
        if writer.done:
            error.args = (f"{error.args[0]} (complete: {', '.join(writer.done)})",)
        raise
    except BaseException:
        writer.abort()
        raise
    return writer.done
