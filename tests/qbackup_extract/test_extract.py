"""qbackup-extract on real Qubes backups: list, verify, extract (every
compression filter, multi-chunk images, sparse and byte-exact), from a file
and from standard input."""

from __future__ import annotations

import filecmp
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from qbackup_extract.errors import ExtractExit
from tests.qbackup_extract.conftest import FILTERS, Built, Runner

VM_FILES = {
    "debian-12": ("root.img", "private.img"),
    "work": ("private.img", "firewall.xml"),
    "personal": ("private.img",),
}


def assert_vm_extracted(dest: Path, built: Built, vm: str) -> None:
    for name in VM_FILES[vm]:
        written = dest / vm / name
        source = built.source(vm, name)
        assert filecmp.cmp(written, source, shallow=False), written
        assert written.stat().st_size == source.stat().st_size
        if name.endswith(".img"):
            # sparse: no more blocks than the original (holes stay holes)
            assert written.stat().st_blocks <= source.stat().st_blocks, written


def test_images_are_cut_into_several_chunks(build: Callable[..., Built]) -> None:
    # The test backups exercise reassembly: Qubes cuts after compression.
    names = [member.name for member in build().members]
    assert "vm3/root.img.002.enc" in names and "vm5/private.img.002.enc" in names
    assert names[:3] == ["backup-header", "backup-header.hmac", "qubes.xml.000.enc"]


@pytest.mark.parametrize("compression", FILTERS, ids=lambda name: name or "none")
def test_extract_writes_every_vm_byte_exact_and_sparse(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path, compression: str | None
) -> None:
    built = build(compression=compression)
    result = extract_tool("extract", built.path, str(tmp_path / "dest"))
    assert result.returncode == ExtractExit.OK, result.stderr
    dest = tmp_path / "dest"
    for vm in VM_FILES:
        assert_vm_extracted(dest, built, vm)
    home = dest / "dom0-home" / "user"
    assert (home / "Documents" / "letter.txt").read_text() == "Dear ...\n"
    assert os.readlink(home / "to-passwd") == "/etc/passwd"
    assert (home / "bashrc-link").stat().st_ino == (home / ".bashrc").stat().st_ino
    assert sorted(os.listdir(dest)) == ["debian-12", "dom0-home", "personal", "work"]


def test_extract_only_the_vms_named(build: Callable[..., Built], extract_tool: Runner,
                                    tmp_path: Path) -> None:
    built = build()
    dest = tmp_path / "dest"
    result = extract_tool("extract", built.path, str(dest), "work", "dom0")
    assert result.returncode == ExtractExit.OK, result.stderr
    assert sorted(os.listdir(dest)) == ["dom0-home", "work"]
    assert_vm_extracted(dest, built, "work")


def test_extract_reads_standard_input(build: Callable[..., Built], extract_tool: Runner,
                                      tmp_path: Path) -> None:
    built = build()
    result = extract_tool("extract", "-", str(tmp_path), "debian-12",
                          stdin=built.path.read_bytes())
    assert result.returncode == ExtractExit.OK, result.stderr
    assert_vm_extracted(tmp_path, built, "debian-12")


def test_list_shows_name_class_and_size(build: Callable[..., Built], extract_tool: Runner) -> None:
    built = build()
    table = extract_tool("list", built.path)
    assert table.returncode == ExtractExit.OK, table.stderr
    rows = [line.split()[:2] for line in table.stdout.splitlines()]
    assert rows == [["NAME", "CLASS"], ["debian-12", "TemplateVM"], ["work", "AppVM"],
                    ["personal", "AppVM"], ["dom0", "AdminVM"]]
    listed = json.loads(extract_tool("list", built.path, "--json").stdout)
    assert listed["backup_id"] == built.spec.backup_id
    work = next(vm for vm in listed["vms"] if vm["name"] == "work")
    assert work == {"name": "work", "class": "AppVM",
                    "size": sum(path.stat().st_blocks * 512
                                for path in built.spec.vms[1].files.values())}


def test_verify_reads_everything_and_writes_nothing(
    build: Callable[..., Built], extract_tool: Runner, tmp_path: Path
) -> None:
    built = build(compression="xz")
    before = set(os.listdir(tmp_path))
    result = extract_tool("verify", built.path)
    assert result.returncode == ExtractExit.OK, result.stderr
    assert result.stdout.startswith("OK: 4 VMs, 11 files")
    assert set(os.listdir(tmp_path)) == before


def test_help_lists_every_exit_status(extract_tool: Runner) -> None:
    from qbackup_extract.cli import build_parser

    text = build_parser().format_help()
    for status in ExtractExit:
        assert f"{status.value:3}  {status.meaning}" in text
