"""Hostile bytes inside authenticated parts (a backup written by a hostile
machine is still authentic): tar headers, sparse maps and entry names that
would write outside a file or outside DEST are refused."""

from __future__ import annotations

import io
import tarfile

import pytest

from qbackup_extract.backup import check_inner_name
from qbackup_extract.errors import ExtractError
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
