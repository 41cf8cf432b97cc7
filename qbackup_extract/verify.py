"""`qbackup-extract verify`: every part authenticated and decompressed, every
inner tar read to its end; nothing written."""

from __future__ import annotations

from dataclasses import dataclass

from qbackup_extract.backup import Backup, walk_backup
from qbackup_extract.qubes_xml import BackedUpVM
from qbackup_extract.tar_reader import TarEntry, TarReader


@dataclass
class Counter:
    """A handler that reads every entry's data and counts it."""

    files: int = 0
    data_bytes: int = 0

    def start_vm(self, vm: BackedUpVM) -> None:
        pass

    def entry(self, vm: BackedUpVM, entry: TarEntry, data: TarReader) -> None:
        while chunk := data.read(1024 * 1024):
            self.data_bytes += len(chunk)
        self.files += 1

    def finish_vm(self, vm: BackedUpVM) -> None:
        pass

    def retract_vm(self, vm: BackedUpVM) -> None:
        pass


def run_verify(backup: Backup) -> Counter:
    """Given an opened backup, read and authenticate all of it; return what was
    counted; raise ExtractError on the first damage."""
    counter = Counter()
    walk_backup(backup, {vm.name for vm in backup.vms}, counter)
    return counter
