"""Writing extracted files under DEST: each VM into a fresh hidden staging
directory, renamed to DEST/NAME only when its last part is authenticated;
removed on any failure. Paths are walked from directory descriptors with
O_NOFOLLOW and files created with O_EXCL, so no entry (a symlink in dom0's
home, a repeated name) can write outside the staging directory."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from qbackup_extract.errors import ExtractError, ExtractExit
from qbackup_extract.qubes_xml import BackedUpVM
from qbackup_extract.tar_reader import DIRECTORY, HARDLINK, SYMLINK, TarEntry, TarReader

READ_SIZE = 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def cant_create(message: str) -> ExtractError:
    """Given a message, return the ExtractError of a DEST that cannot take the files."""
    return ExtractError(message, ExtractExit.CANT_CREATE)


@dataclass
class Staging:
    """One VM being written: its staging directory and what is in it."""

    vm: BackedUpVM
    path: Path
    files: set[str] = field(default_factory=set)
    modes: list[tuple[str, int]] = field(default_factory=list)


def relative_parts(name: str, vm: BackedUpVM) -> list[str]:
    """Given an inner entry's name, return its path under DEST/OUTPUT_NAME as components."""
    # A VM's file `vmNNN/private.img` -> private.img; dom0's `dom0-home/USER/x` -> USER/x.
    base = vm.path if vm.path.endswith("/") else vm.path.rsplit("/", 1)[0] + "/"
    parts = name[len(base):].split("/")
    # threat: '.', '..' or empty components taking a path elsewhere
    if any(part in ("", ".", "..") for part in parts):
        raise ExtractError(f"{vm.name}: unsafe entry name {name[:100]!r}")
    return parts


class Writer:
    """Writes the VMs of one extraction under DEST."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.current: Staging | None = None
        self.done: list[str] = []

    def start_vm(self, vm: BackedUpVM) -> None:
        """Given a VM, make its staging directory; raise ExtractError if DEST/NAME exists."""
        if (self.dest / vm.output_name).exists():
            raise cant_create(f"{self.dest / vm.output_name} exists; nothing of {vm.name} written")
        try:
            path = tempfile.mkdtemp(prefix=f".{vm.output_name}.", suffix=".partial", dir=self.dest)
        except OSError as error:
            raise cant_create(f"{self.dest}: {error.strerror}") from None
        self.current = Staging(vm=vm, path=Path(path))

    def staging(self) -> Staging:
        """Return the VM being written; raise ExtractError if none was started."""
        if self.current is None:
            raise ExtractError("internal error: an entry outside any VM")
        return self.current

    def entry(self, vm: BackedUpVM, entry: TarEntry, data: TarReader) -> None:
        """Given an inner tar ENTRY of VM's and its DATA, write it under the staging directory."""
        staging = self.staging()
        parts = relative_parts(entry.name, vm)
        root = os.open(staging.path, DIR_FLAGS)
        try:
            parent = open_parent(root, parts[:-1])
            try:
                self._write(parent, parts, entry, data)
            finally:
                os.close(parent)
        except OSError as error:
            raise cant_create(f"{vm.name}: {entry.name[:100]}: {error.strerror}") from None
        finally:
            os.close(root)

    def _write(self, parent: int, parts: list[str], entry: TarEntry, data: TarReader) -> None:
        staging = self.staging()
        name = parts[-1]
        relative = "/".join(parts)
        if entry.kind == DIRECTORY:
            if not _is_dir(parent, name):
                os.mkdir(name, 0o700, dir_fd=parent)
            staging.modes.append((relative, entry.mode & 0o777))
        elif entry.kind == SYMLINK:
            os.symlink(entry.linkname, name, dir_fd=parent)
        elif entry.kind == HARDLINK:
            self._hardlink(parent, name, entry)
        elif entry.is_regular:
            write_file(parent, name, entry, data)
            staging.files.add(entry.name)
        # Devices, fifos and the like have no place in a restore: skipped.

    def _hardlink(self, parent: int, name: str, entry: TarEntry) -> None:
        staging = self.staging()
        # threat: a link to a path outside (or through a symlink): only a
        # regular file this extraction wrote may be linked
        if entry.linkname not in staging.files:
            raise ExtractError(f"{staging.vm.name}: hard link to a file not extracted")
        source = relative_parts(entry.linkname, staging.vm)
        root = os.open(staging.path, DIR_FLAGS)
        try:
            source_parent = open_parent(root, source[:-1])
            try:
                os.link(source[-1], name, src_dir_fd=source_parent, dst_dir_fd=parent,
                        follow_symlinks=False)
            finally:
                os.close(source_parent)
        finally:
            os.close(root)

    def finish_vm(self, vm: BackedUpVM) -> None:
        """Given the VM just authenticated, set its directories' modes and rename it into place."""
        staging = self.staging()
        root = os.open(staging.path, DIR_FLAGS)
        try:
            for relative, mode in reversed(staging.modes):
                # walked as when written: no component may be a symlink
                fd = open_parent(root, relative.split("/"))
                try:
                    os.fchmod(fd, mode | 0o700)
                finally:
                    os.close(fd)
        finally:
            os.close(root)
        target = self.dest / vm.output_name
        if target.exists():
            raise cant_create(f"{target} appeared meanwhile; nothing of {vm.name} written")
        os.rename(staging.path, target)
        self.current = None
        self.done.append(vm.name)

    def retract_vm(self, vm: BackedUpVM) -> None:
        """Remove a VM this run finished: a file of it came later, out of order."""
        if vm.name in self.done:
            shutil.rmtree(self.dest / vm.output_name, ignore_errors=True)
            self.done.remove(vm.name)

    def abort(self) -> None:
        """Remove the VM being written, if any (its parts were not all authenticated)."""
        if self.current is not None:
            shutil.rmtree(self.current.path, ignore_errors=True)
            self.current = None


def _is_dir(parent: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _exists(parent: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def open_parent(root: int, directories: list[str]) -> int:
    """Given the staging directory's descriptor and directory components,
    return a descriptor of the last, creating missing ones, never following
    a symlink; raise ExtractError if a component is not a directory, OSError
    if one cannot be made."""
    current = os.dup(root)
    for part in directories:
        if not _is_dir(current, part):
            # threat: an archived symlink (or file) used as a directory, to
            # write through it outside DEST
            if _exists(current, part):
                os.close(current)
                raise ExtractError(f"unsafe path: {part[:100]!r} is not a directory")
            os.mkdir(part, 0o700, dir_fd=current)
        try:
            following = os.open(part, DIR_FLAGS, dir_fd=current)
        finally:
            os.close(current)
        current = following
    return current


def write_file(parent: int, name: str, entry: TarEntry, data: TarReader) -> None:
    """Write ENTRY's data as NAME in PARENT: sparse files with holes where the
    archive has none, all files at their exact size."""
    fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=parent)
    try:
        segments = entry.sparse_map or [(0, entry.stored)]
        for offset, length in segments:
            os.lseek(fd, offset, os.SEEK_SET)
            while length:
                chunk = data.read(min(READ_SIZE, length))
                if not chunk:
                    raise ExtractError(f"{entry.name}: truncated")
                write_all(fd, chunk)
                length -= len(chunk)
        os.ftruncate(fd, entry.size)
        os.fchmod(fd, entry.mode & 0o777 or 0o600)
    finally:
        os.close(fd)


def write_all(fd: int, chunk: bytes) -> None:
    """Write all of CHUNK to FD (os.write may write less)."""
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]
