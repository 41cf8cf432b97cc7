"""Nothing unauthenticated is written: every damage, truncation, reordering
and hostile qubes.xml ends qbackup-extract with one line naming what failed,
a non-zero exit, and no partial VM in DEST (VMs completed before stay)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from qbackup_extract.errors import ExtractExit
from testbed.qubes_archive import header_text, qubes_xml
from tests.qbackup_extract.conftest import Built, Runner
from tests.qbackup_extract.test_extract import assert_vm_extracted


def write_variant(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "damaged.bin"
    path.write_bytes(data)
    return path


def flip_in_member(built: Built, name: str, offset: int) -> bytes:
    """Return the backup with one bit flipped OFFSET bytes into member NAME's
    file content (past its tar headers)."""
    data = bytearray(built.path.read_bytes())
    member = built.member(name)
    chunk = bytes(data[member.start:member.end])
    marker = b"scrypt\x00" if name.endswith((".enc", ".hmac")) else b"version="
    start = chunk.find(marker)
    data[member.start + start + offset] ^= 0x01
    return bytes(data)


def cut_before(built: Built, name: str) -> bytes:
    return built.path.read_bytes()[: built.member(name).start]


def assert_refused(result_code: int, stderr: str, status: ExtractExit, words: str) -> None:
    assert result_code == status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], stderr


def leftovers(dest: Path) -> list[str]:
    return sorted(os.listdir(dest)) if dest.exists() else []


def test_wrong_passphrase_writes_nothing(build: Callable[..., Built], extract_tool: Runner,
                                         tmp_path: Path) -> None:
    extract_tool.passphrase_file.write_text("not the passphrase\n")
    result = extract_tool("extract", build().path, str(tmp_path / "dest"))
    assert_refused(result.returncode, result.stderr, ExtractExit.DATA, "wrong passphrase")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize(("member", "offset", "words"), [
    ("backup-header", 12, "does not match its authenticated copy"),  # threat: edited header
    ("backup-header.hmac", 130, "backup-header.hmac: not authentic"),
    ("backup-header.hmac", 20, "scrypt header is damaged"),  # the KDF parameters
    ("qubes.xml.000.enc", 120, "qubes.xml.000.enc: not authentic"),
])
def test_damaged_header_or_qubes_xml_writes_nothing_at_all(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path, member: str, offset: int,
    words: str,
) -> None:
    damaged = write_variant(tmp_path, flip_in_member(build(), member, offset))
    result = extract_tool("extract", damaged, str(tmp_path / "dest"))
    assert_refused(result.returncode, result.stderr, ExtractExit.DATA, words)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("compression", ["gzip", None], ids=["gzip", "none"])
def test_damaged_part_fails_its_vm_and_keeps_the_vms_before(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path, compression: str | None
) -> None:
    built = build(compression=compression)
    damaged = write_variant(tmp_path, flip_in_member(built, "vm5/private.img.002.enc", 400))
    dest = tmp_path / "dest"
    result = extract_tool("extract", damaged, str(dest))
    assert_refused(result.returncode, result.stderr, ExtractExit.DATA,
                   "vm5/private.img.002.enc: not authentic")
    assert leftovers(dest) == ["debian-12"]  # no work, no hidden staging directory
    assert_vm_extracted(dest, built, "debian-12")
    verify = extract_tool("verify", damaged)
    assert_refused(verify.returncode, verify.stderr, ExtractExit.DATA, "not authentic")


@pytest.mark.parametrize(("cut", "words", "kept"), [
    (lambda built: built.path.read_bytes()[: built.member("vm7/private.img.000.enc").end - 700],
     "truncated", ["debian-12", "work"]),
    (lambda built: cut_before(built, "vm5/private.img.002.enc"), "truncated", ["debian-12"]),
    (lambda built: cut_before(built, "dom0-home/user.000.enc"),
     "truncated: the backup ends before the files of dom0", ["debian-12", "personal", "work"]),
    (lambda built: cut_before(built, "vm3/root.img.000.enc"), "truncated", []),
], ids=["inside-a-part", "between-parts-of-a-file", "a-whole-vm-missing", "after-qubes-xml"])
def test_truncated_stream_is_refused(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path,
    cut: Callable[[Built], bytes], words: str, kept: list[str],
) -> None:
    built = build()
    dest = tmp_path / "dest"
    result = extract_tool("extract", write_variant(tmp_path, cut(built)), str(dest))
    assert_refused(result.returncode, result.stderr, ExtractExit.DATA, words)
    assert leftovers(dest) == kept


def reorder(built: Built, order: Callable[[list[bytes], dict[str, int]], list[bytes]]) -> bytes:
    data = built.path.read_bytes()
    pieces = [data[member.start:member.end] for member in built.members]
    index = {member.name: number for number, member in enumerate(built.members)}
    return b"".join(order(pieces, index))


def swapped(pieces: list[bytes], index: dict[str, int]) -> list[bytes]:
    first = index["vm3/root.img.001.enc"]
    second = index["vm3/root.img.002.enc"]
    pieces[first], pieces[second] = pieces[second], pieces[first]
    return pieces


def repeated(pieces: list[bytes], index: dict[str, int]) -> list[bytes]:
    place = index["vm3/root.img.001.enc"]
    return [*pieces[: place + 1], pieces[place], *pieces[place + 1:]]


def separated(pieces: list[bytes], index: dict[str, int]) -> list[bytes]:
    # a VM's file moved after another VM's files: each part still authentic
    moved = pieces.pop(index["vm3/private.img.000.enc"])
    return [*pieces[:-1], moved, pieces[-1]]


@pytest.mark.parametrize("order", [swapped, repeated, separated])
def test_part_out_of_order_or_repeated_is_refused(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path,
    order: Callable[[list[bytes], dict[str, int]], list[bytes]],
) -> None:
    dest = tmp_path / "dest"
    damaged = write_variant(tmp_path, reorder(build(), order))
    result = extract_tool("extract", damaged, str(dest))
    assert_refused(result.returncode, result.stderr, ExtractExit.DATA, "out of order or repeated")
    assert "debian-12" not in leftovers(dest)


@pytest.mark.parametrize(("old", "new", "words"), [
    ('name">work<', 'name">../work<', "not a valid Qubes VM name"),
    ('name">work<', 'name">a/b<', "not a valid Qubes VM name"),
    ('name">personal<', 'name">work<', "share a name"),
    (">vm5/<", ">../../etc/<", "work: invalid backup-path"),
    (">dom0-home/user<", ">dom0-home/../../x<", "dom0: invalid backup-path"),
    ("backup-size\">", "backup-size\">99999999999999999999", "invalid backup-size"),
], ids=["dotdot-name", "slash-name", "duplicate-name", "vm-path", "home-path", "huge-size"])
def test_hostile_qubes_xml_is_refused_before_anything_is_written(
    build: Callable[..., Built], sources: object, extract_tool: Runner, tmp_path: Path,
    old: str, new: str, words: str,
) -> None:
    hostile = qubes_xml(build().spec).decode().replace(old, new, 1)
    assert hostile != qubes_xml(build().spec).decode()
    result = extract_tool("extract", build(qubes_xml=hostile.encode()).path,
                          str(tmp_path / "dest"))
    assert_refused(result.returncode, result.stderr, ExtractExit.DATA, words)
    assert not (tmp_path / "dest").exists()


def test_vms_larger_than_the_free_space_of_dest_are_refused_before_writing(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path
) -> None:
    # threat: sizes that would fill the disk halfway through
    hostile = re.sub(r'backup-size">[0-9]+', f'backup-size">{2**49}',
                     qubes_xml(build().spec).decode(), count=1)
    built = build(qubes_xml=hostile.encode())
    result = extract_tool("extract", built.path, str(tmp_path / "dest"))
    assert_refused(result.returncode, result.stderr, ExtractExit.CANT_CREATE, "MiB free")
    assert leftovers(tmp_path / "dest") == []


def test_format_version_3_is_not_supported(build: Callable[..., Built], extract_tool: Runner,
                                           tmp_path: Path) -> None:
    text = header_text(build().spec).replace("version=4", "version=3")
    result = extract_tool("list", build(header_text=text).path)
    assert_refused(result.returncode, result.stderr, ExtractExit.UNSUPPORTED,
                   "backup format version 3 is not supported")


def test_unknown_compression_filter_is_not_supported(build: Callable[..., Built],
                                                     extract_tool: Runner) -> None:
    text = header_text(build().spec).replace("compression-filter=gzip", "compression-filter=zstd")
    result = extract_tool("list", build(header_text=text).path)
    assert_refused(result.returncode, result.stderr, ExtractExit.UNSUPPORTED,
                   "compression filter 'zstd' is not supported")


def test_kdf_memory_beyond_the_limit_is_refused(build: Callable[..., Built],
                                                extract_tool: Runner) -> None:
    # threat: a part asking for more memory than the machine should give
    result = extract_tool("list", build().path, extra=("--kdf-memory", "1"))
    assert_refused(result.returncode, result.stderr, ExtractExit.UNSUPPORTED,
                   "more than the limit of 1 MiB")


def test_absurd_kdf_parameters_are_refused_before_any_work(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path
) -> None:
    # threat: log2(N) = 40 (terabytes); the header checksum is made to fit,
    # so only the parameter check stands in the way
    built = build()
    data = bytearray(built.path.read_bytes())
    member = built.member("backup-header.hmac")
    start = member.start + bytes(data[member.start:member.end]).find(b"scrypt\x00")
    data[start + 7] = 40
    data[start + 48: start + 64] = hashlib.sha256(bytes(data[start: start + 48])).digest()[:16]
    result = extract_tool("list", write_variant(tmp_path, bytes(data)))
    assert_refused(result.returncode, result.stderr, ExtractExit.DATA, "invalid scrypt parameters")


def test_existing_vm_directory_in_dest_is_never_replaced(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path
) -> None:
    (tmp_path / "dest" / "work").mkdir(parents=True)
    result = extract_tool("extract", build().path, str(tmp_path / "dest"))
    assert_refused(result.returncode, result.stderr, ExtractExit.CANT_CREATE, "exists")
    assert leftovers(tmp_path / "dest") == ["work"]
    assert os.listdir(tmp_path / "dest" / "work") == []


def test_unknown_vm_name_is_a_usage_error(build: Callable[..., Built], extract_tool: Runner,
                                          tmp_path: Path) -> None:
    result = extract_tool("extract", build().path, str(tmp_path / "dest"), "nosuchvm")
    assert_refused(result.returncode, result.stderr, ExtractExit.USAGE, "no VM named 'nosuchvm'")
    assert leftovers(tmp_path / "dest") == []


def test_missing_source_file_is_no_input(extract_tool: Runner, tmp_path: Path) -> None:
    result = extract_tool("list", tmp_path / "nothing.bin")
    assert_refused(result.returncode, result.stderr, ExtractExit.NO_INPUT, "nothing.bin")
