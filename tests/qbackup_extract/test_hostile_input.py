"""Hostile bytes inside authenticated parts (a backup written by a hostile
machine is still authentic): tar headers, sparse maps and entry names that
would write outside a file or outside DEST are refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from qbackup_extract.backup import check_inner_name
from qbackup_extract.errors import ExtractError
from qbackup_extract.output import Writer
from qbackup_extract.qubes_xml import BackedUpVM
from qbackup_extract.tar_reader import TarEntry, TarReader, check_map

WORK = BackedUpVM(name="work", klass="AppVM", size=0, path="vm5/")
HOME = BackedUpVM(name="dom0", klass="AdminVM", size=0, path="dom0-home/user")


@pytest.mark.parametrize("pairs", [
    [(0, 10), (5, 10)],  # threat: overlapping segments
    [(0, 10), (95, 10)],  # threat: beyond the real size
    [(0, -1)],
    [(0, 10)],  # stored bytes do not add up
], ids=["overlap", "beyond-size", "negative", "short"])
def test_bad_sparse_map_is_refused(pairs: list[tuple[int, int]]) -> None:
    entry = TarEntry(name="vm5/private.img", kind=b"S", mode=0o600, stored=20, size=100)
    with pytest.raises(ExtractError, match="sparse map"):
        check_map(pairs, entry, "vm5/private.img")


@pytest.mark.parametrize(("name", "path", "vm"), [
    ("vm3/private.img", "vm5/private.img", WORK),  # threat: another VM's file
    ("vm5/root.img", "vm5/private.img", WORK),
    ("dom0-home/user/../../etc/passwd", "dom0-home/user", HOME),
    ("dom0-home/other/x", "dom0-home/user", HOME),
    ("/etc/passwd", "dom0-home/user", HOME),
])
def test_inner_entry_outside_its_file_is_refused(name: str, path: str, vm: BackedUpVM) -> None:
    with pytest.raises(ExtractError, match="outside"):
        check_inner_name(name, path, vm)


def a_tar(name: str = "vm5/firewall.xml") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


def test_damaged_tar_header_is_refused() -> None:
    data = bytearray(a_tar())
    data[10] ^= 0x01
    with pytest.raises(ExtractError, match="checksum"):
        TarReader(io.BytesIO(bytes(data)), "x").next_entry()


def test_inner_tar_without_its_end_is_truncated() -> None:
    reader = TarReader(io.BytesIO(a_tar()[:1024]), "x")
    entry = reader.next_entry()
    assert entry is not None and reader.read(10) == b"abc"
    with pytest.raises(ExtractError, match="truncated"):
        reader.next_entry()


def home_tar(*members: tuple[str, bytes | None, str | None]) -> TarReader:
    """A dom0-home inner tar of (name, data or None, symlink target or None) members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if target is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = target
            elif data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data or b""))
    return TarReader(io.BytesIO(buffer.getvalue()), "dom0-home/user")


def test_a_symlink_in_dom0_home_is_never_written_through(tmp_path: Path) -> None:
    # threat: `evil -> /outside` archived, then `evil/pwned`: the file would
    # land outside DEST if the symlink were followed
    outside = tmp_path / "outside"
    outside.mkdir()
    reader = home_tar(("dom0-home/user", None, None),
                      ("dom0-home/user/evil", None, str(outside)),
                      ("dom0-home/user/evil/pwned", b"x", None))
    writer = Writer(tmp_path / "dest")
    (tmp_path / "dest").mkdir()
    writer.start_vm(HOME)
    with pytest.raises(ExtractError, match="not a directory"):
        while (entry := reader.next_entry()) is not None:
            writer.entry(HOME, entry, reader)
    writer.abort()
    assert list(outside.iterdir()) == []
    assert list((tmp_path / "dest").iterdir()) == []


def test_a_hard_link_to_a_file_not_extracted_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("dom0-home/user/shadow")
        info.type = tarfile.LNKTYPE
        info.linkname = "/etc/shadow"  # threat: a hard link to a file outside DEST
        tar.addfile(info)
    reader = TarReader(io.BytesIO(buffer.getvalue()), "dom0-home/user")
    (tmp_path / "dest").mkdir()
    writer = Writer(tmp_path / "dest")
    writer.start_vm(HOME)
    entry = reader.next_entry()
    assert entry is not None
    with pytest.raises(ExtractError, match="hard link"):
        writer.entry(HOME, entry, reader)
    writer.abort()
    assert list((tmp_path / "dest").iterdir()) == []
