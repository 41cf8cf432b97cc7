"""Real Qubes backups (format 4) for qbackup-extract's tests, built once per
test process by testbed/qubes_archive.py with GNU tar, the compressors and
the scrypt command: a TemplateVM with root.img, two AppVMs (one with
firewall.xml, its image in GNU's old sparse form), dom0's home; images cut
into several chunks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.qubes_archive import ArchiveSpec, Member, VmSpec, build_archive

PASSPHRASE = "correct horse battery staple"
CHUNK = 48 * 1024
FILTERS = ("gzip", "bzip2", "xz", None)
EXTRACT = [sys.executable, "-m", "qbackup_extract.cli"]


@dataclass(frozen=True)
class Built:
    """A built backup: the file, its outer members, and the VMs' source files."""

    path: Path
    members: list[Member]
    spec: ArchiveSpec

    def member(self, name: str) -> Member:
        return next(member for member in self.members if member.name == name)

    def source(self, vm: str, name: str) -> Path:
        return next(spec for spec in self.spec.vms if spec.name == vm).files[name]


def sparse_image(path: Path, size: int, data: list[tuple[int, int]]) -> Path:
    """Write a sparse file of SIZE with random bytes at the (offset, length) places."""
    with open(path, "wb") as image:
        image.truncate(size)
        for offset, length in data:
            image.seek(offset)
            image.write(os.urandom(length))
    return path


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> ArchiveSpec:
    """The VMs and dom0 home every test backup holds (compression set per backup)."""
    base = tmp_path_factory.mktemp("qubes-sources")
    home = base / "home" / "user"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "letter.txt").write_text("Dear ...\n")
    (home / ".bashrc").write_text("export EDITOR=vi\n")
    (home / "to-passwd").symlink_to("/etc/passwd")
    os.link(home / ".bashrc", home / "bashrc-link")
    firewall = base / "firewall.xml"
    firewall.write_text('<firewall version="2"><rules/></firewall>\n')
    return ArchiveSpec(passphrase=PASSPHRASE, chunk_size=CHUNK, home=home, vms=[
        VmSpec("debian-12", "TemplateVM", 3, {
            "root.img": sparse_image(base / "root.img", 8 << 20,
                                     [(0, 70_000), (3 << 20, 50_000), ((8 << 20) - 4096, 4096)]),
            "private.img": sparse_image(base / "t-private.img", 2 << 20, [(8192, 9000)]),
        }),
        VmSpec("work", "AppVM", 5, {
            "private.img": sparse_image(base / "work.img", 4 << 20, [(1 << 20, 130_000)]),
            "firewall.xml": firewall,
        }, gnu_sparse=True),
        VmSpec("personal", "AppVM", 7, {
            "private.img": sparse_image(base / "personal.img", 1 << 20, [(512, 1000)]),
        }),
    ])


@pytest.fixture(scope="session")
def build(sources: ArchiveSpec, tmp_path_factory: pytest.TempPathFactory
          ) -> Callable[..., Built]:
    """A function `build(**changes) -> Built`: the backup of `sources` with
    CHANGES to its spec (compression, qubes_xml, header_text, ...), built once each."""
    cache: dict[str, Built] = {}

    def make(**changes: object) -> Built:
        key = repr(sorted(changes.items()))
        if key not in cache:
            spec = ArchiveSpec(**{**sources.__dict__, **changes})  # type: ignore[arg-type]
            base = tmp_path_factory.mktemp("backup")
            members = build_archive(spec, base / "stage", base / "backup.bin")
            cache[key] = Built(path=base / "backup.bin", members=members, spec=spec)
        return cache[key]

    return make


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    return path


@dataclass(frozen=True)
class Result:
    """How a run of qbackup-extract ended."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runner:
    """Runs qbackup-extract as a user would (a process), with the passphrase file."""

    passphrase_file: Path

    def __call__(self, action: str, source: str | Path, *args: str, stdin: bytes | None = None,
                 extra: tuple[str, ...] = ()) -> Result:
        done = subprocess.run(
            [*EXTRACT, action, str(source), *args, "--passphrase-file",
             str(self.passphrase_file), *extra],
            input=stdin if stdin is not None else b"", capture_output=True, timeout=120,
            check=False, cwd=Path(__file__).resolve().parents[2],
        )
        return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
def extract_tool(passphrase_file: Path) -> Runner:
    return Runner(passphrase_file)


# The end-to-end test stores a backup through the real carrier (its fixture).
from tests.carrier_vm.conftest import carrier  # noqa: E402, F401
