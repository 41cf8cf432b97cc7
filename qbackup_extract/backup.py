"""One pass over a Qubes backup (format 4): authenticate the header, read
qubes.xml, then hand each backed-up file, as a stream of its inner tar, to
a handler. The source may be a pipe: nothing is read twice or out of order.

Outer archive order, as Qubes writes it:
    backup-header, backup-header.hmac, qubes.xml.000.enc,
    then VM by VM: vmNNN/private.img.000.enc, .001.enc, ..., root.img...,
    firewall.xml..., and dom0-home/USER.000.enc ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from qbackup_extract.errors import ExtractError, unsupported
from qbackup_extract.header import (
    HEADER_MAC_NAME,
    HEADER_NAME,
    BackupHeader,
    authenticate_header,
    check_version,
)
from qbackup_extract.parts import ChainContext, OuterArchive, PartChain, PartName, parse_part_name
from qbackup_extract.qubes_xml import MAX_QUBES_XML, BackedUpVM, parse_qubes_xml
from qbackup_extract.scrypt_file import KdfLimits
from qbackup_extract.tar_reader import Reader, TarEntry, TarReader

QUBES_XML = "qubes.xml"


@dataclass
class Backup:
    """An opened backup: its authenticated header and the VMs it holds."""

    archive: OuterArchive
    header: BackupHeader
    vms: list[BackedUpVM]
    context: ChainContext


class FileHandler(Protocol):
    """What a pass does with the VMs and their files."""

    def start_vm(self, vm: BackedUpVM) -> None:
        """Given a wanted VM whose first part comes next, prepare for its files."""

    def entry(self, vm: BackedUpVM, entry: TarEntry, data: TarReader) -> None:
        """Given an inner tar ENTRY of VM's and the reader of its DATA, handle it."""

    def finish_vm(self, vm: BackedUpVM) -> None:
        """Given a wanted VM whose every part was authenticated, complete it."""

    def retract_vm(self, vm: BackedUpVM) -> None:
        """Given a VM completed before, undo it: a file of it came later."""


def read_member(archive: OuterArchive, name: str, limit: int) -> bytes:
    """Given the NAME the next member must have, return its bytes; raise
    ExtractError if the archive has another member there or it is too large."""
    entry = archive.take()
    if entry is None:
        raise ExtractError("not a Qubes backup (empty archive)")
    if entry.name != name:
        if name == HEADER_NAME and entry.name.startswith(QUBES_XML):
            raise unsupported("backup format version 1 or 2 (no backup-header) is not supported")
        raise ExtractError(f"not a Qubes backup: expected {name}, found {entry.name[:100]!r}")
    if entry.size > limit:
        raise ExtractError(f"{name}: too large")
    data = b""
    while chunk := archive.tar.read(limit):
        data += chunk
    return data


def open_backup(stream: Reader, passphrase: bytes, limits: KdfLimits, label: str,
                on_bytes: Callable[[int], None]) -> Backup:
    """Given the source stream and the passphrase, return the opened Backup,
    header and qubes.xml authenticated; raise ExtractError otherwise."""
    archive = OuterArchive(TarReader(stream, label, concatenated=True))
    header_text = read_member(archive, HEADER_NAME, 4096)
    check_version(header_text)
    mac = read_member(archive, HEADER_MAC_NAME, 4096)
    header = authenticate_header(header_text, mac, passphrase, limits)
    context = ChainContext(passphrase=passphrase, backup_id=header.backup_id,
                           filter_name=header.compression_filter, limits=limits,
                           on_bytes=on_bytes)
    entry = archive.take()
    part = parse_part_name(entry.name) if entry is not None else None
    if part is None or part != PartName(QUBES_XML, 0):
        raise ExtractError("not a Qubes backup: qubes.xml does not follow the header")
    chain = PartChain(archive, part, context)
    qubes_xml = read_single_file(chain, QUBES_XML, MAX_QUBES_XML)
    return Backup(archive=archive, header=header, vms=parse_qubes_xml(qubes_xml), context=context)


def read_single_file(chain: PartChain, name: str, limit: int) -> bytes:
    """Given the chain of a file archived alone, return its bytes; raise ExtractError otherwise."""
    tar = TarReader(chain, name)
    try:
        entry = tar.next_entry()
        if entry is None or entry.name != name or not entry.is_regular or entry.size > limit:
            raise ExtractError(f"{name}: unexpected content")
        data = b""
        while chunk := tar.read(limit):
            data += chunk
        if tar.next_entry() is not None:
            raise ExtractError(f"{name}: unexpected content")
        chain.finish()
    except ExtractError as error:
        raise chain.explain(error) from None
    return data


@dataclass
class Walk:
    """Where a pass is: the VM being read, the VMs and files done."""

    current: BackedUpVM | None = None
    done_vms: set[str] = field(default_factory=set)
    done_files: set[str] = field(default_factory=set)


def vm_of(part: PartName, vms: list[BackedUpVM]) -> BackedUpVM:
    """Given a part, return the VM whose files it belongs to; raise ExtractError if none."""
    for vm in vms:
        if vm.path.endswith("/"):  # vmNNN/: one file per name inside it
            directory, _, name = part.path.rpartition("/")
            if directory + "/" == vm.path and name:
                return vm
        elif part.path == vm.path:  # dom0-home/USER: one file, a tar of the home
            return vm
    raise ExtractError(f"{part.member}: belongs to no VM of qubes.xml")


def walk_backup(backup: Backup, selected: set[str], handler: FileHandler) -> None:
    """Given an opened backup, the names of the VMs wanted and a handler, read
    every part to the end of the archive, handing the wanted VMs' files to the
    handler (the others are read past); raise ExtractError on the first damage."""
    walk = Walk()
    while (entry := backup.archive.take()) is not None:
        part = parse_part_name(entry.name)
        vm = vm_of(part, backup.vms)
        # threat: parts repeated, dropped or moved (each is authentic alone);
        # a file of a VM already finished means that VM was not complete
        if part.number != 0 or part.path in walk.done_files or vm.name in walk.done_vms:
            if vm.name in walk.done_vms and vm.name in selected:
                handler.retract_vm(vm)
            raise ExtractError(f"{part.member}: part out of order or repeated")
        if walk.current is not None and walk.current.name != vm.name:
            finish_vm(walk, walk.current, selected, handler)
        if walk.current is None:
            walk.current = vm
            if vm.name in selected:
                handler.start_vm(vm)
        if vm.name in selected:
            read_file(PartChain(backup.archive, part, backup.context), vm, handler)
        else:
            skip_parts(backup.archive, part.path)
        walk.done_files.add(part.path)
    if walk.current is not None:
        finish_vm(walk, walk.current, selected, handler)
    missing = [vm.name for vm in backup.vms if vm.name not in walk.done_vms]
    if missing:
        raise ExtractError(f"truncated: the backup ends before the files of {', '.join(missing)}")


def finish_vm(walk: Walk, vm: BackedUpVM, selected: set[str], handler: FileHandler) -> None:
    """Given the VM whose last part was read, tell the handler (if it is wanted)."""
    if vm.name in selected:
        handler.finish_vm(vm)
    walk.done_vms.add(vm.name)
    walk.current = None


def read_file(chain: PartChain, vm: BackedUpVM, handler: FileHandler) -> None:
    """Given a file's chain, hand each of its inner entries to HANDLER, then
    check the chain ended cleanly; raise ExtractError otherwise."""
    tar = TarReader(chain, chain.path)
    try:
        while (entry := tar.next_entry()) is not None:
            check_inner_name(entry.name, chain.path, vm)
            handler.entry(vm, entry, tar)
            tar.skip()
        chain.finish()
    except ExtractError as error:
        raise chain.explain(error) from None


def skip_parts(archive: OuterArchive, path: str) -> None:
    """Read past the parts of file PATH without decrypting them (a VM not wanted)."""
    while True:
        while archive.tar.read(1024 * 1024):
            pass
        following = archive.peek()
        if following is None or parse_part_name(following.name).path != path:
            return
        archive.take()


def check_inner_name(name: str, path: str, vm: BackedUpVM) -> None:
    """Given an inner entry's NAME and the file PATH it came in, return if the
    entry belongs there; raise ExtractError otherwise (threat: an inner tar
    naming another VM's file, or a path out of DEST)."""
    inside = name == path or (vm.path == path and name.startswith(path + "/"))
    if not inside or ".." in name.split("/") or "//" in name:
        raise ExtractError(f"{path}: holds an entry outside it: {name[:100]!r}")
