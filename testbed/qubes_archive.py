"""Builds real Qubes backups (format version 4) the way qubes-core-admin's
qubes/backup.py writes them, with the real tools and none of
qbackup-extract's code: GNU tar for the inner archives (sparse; images in
pax sparse 1.0 as Qubes' tarwriter writes them, or in GNU's old sparse form
as Qubes' own tests do), the compression program the header names, the
compressed stream cut into chunks, each chunk encrypted by the `scrypt`
command under `BACKUP_ID!PATH.NNN!PASSPHRASE`, and every piece appended to
the outer archive by its own `tar -cO --posix`. Small scrypt parameters and
chunks keep tests fast.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO
from xml.sax.saxutils import escape, quoteattr

DEFAULT_BACKUP_ID = "20261206T101500-4242"
QUBES_CHUNK_SIZE = 100 * 1024 * 1024


@dataclass(frozen=True)
class ScryptCost:
    """The parameters given to `scrypt enc` (its --logN, -r, -p)."""

    log_n: int = 10
    r: int = 8
    p: int = 1


@dataclass
class VmSpec:
    """A VM in the backup: its name, class, qid, and its files (name in the
    backup -> file on disk), in the order Qubes would write them."""

    name: str
    klass: str
    qid: int
    files: dict[str, Path] = field(default_factory=dict)
    size: int | None = None  # backup-size; None: the files' sizes
    gnu_sparse: bool = False  # images in GNU's old sparse form, not pax 1.0

    @property
    def subdir(self) -> str:
        return f"vm{self.qid}/"


@dataclass
class ArchiveSpec:
    """Everything a backup is built from."""

    passphrase: str
    vms: list[VmSpec]
    home: Path | None = None  # dom0's home directory (its name is the user's)
    compression: str | None = "gzip"  # a program name, or None: not compressed
    chunk_size: int = QUBES_CHUNK_SIZE
    backup_id: str = DEFAULT_BACKUP_ID
    cost: ScryptCost = field(default_factory=ScryptCost)
    header_text: str | None = None  # to write another header than Qubes'
    qubes_xml: bytes | None = None  # to write another qubes.xml than the VMs'


@dataclass(frozen=True)
class Member:
    """A member of the outer archive: its NAME and its bytes START..END in the file
    (its own tar, end-of-archive blocks included), for tests that damage one."""

    name: str
    start: int
    end: int


def header_text(spec: ArchiveSpec) -> str:
    """Return the backup-header qubes/backup.py writes for SPEC (version first)."""
    return (
        "version=4\nencrypted=True\n"
        f"compressed={spec.compression is not None}\n"
        f"compression-filter={spec.compression or 'gzip'}\n"
        "hmac-algorithm=scrypt\n"
        f"backup-id={spec.backup_id}\n"
    )


def scrypt_encrypt(source: Path, target: Path, passphrase: str, cost: ScryptCost) -> None:
    """Encrypt SOURCE to TARGET with the scrypt command and COST."""
    subprocess.run(
        ["scrypt", "enc", "--passphrase", "dev:stdin-once", "--logN", str(cost.log_n),
         "-r", str(cost.r), "-p", str(cost.p), str(source), str(target)],
        input=passphrase.encode(), check=True, capture_output=True,
    )


def append_member(output: BinaryIO, stage: Path, name: str) -> Member:
    """Append STAGE/NAME to OUTPUT as Qubes' SendWorker does: a tar of its own;
    return where it went."""
    output.flush()
    start = output.seek(0, 2)
    subprocess.run(["tar", "-cO", "--posix", "-C", str(stage), name], stdout=output, check=True)
    return Member(name=name, start=start, end=output.seek(0, 2))


def disk_usage(path: Path) -> int:
    if path.is_dir():
        return sum(child.stat().st_blocks * 512 for child in path.rglob("*")
                   if child.is_file() and not child.is_symlink())
    return path.stat().st_blocks * 512


def qubes_xml(spec: ArchiveSpec) -> bytes:
    """Return a qubes.xml holding SPEC's VMs with the backup-* features Qubes sets."""
    domains: list[str] = []
    vms: list[tuple[str, str, str, int]] = [
        (vm.name, vm.klass, vm.subdir,
         vm.size if vm.size is not None else sum(disk_usage(path) for path in vm.files.values()))
        for vm in spec.vms
    ]
    if spec.home is not None:
        vms.append(("dom0", "AdminVM", f"dom0-home/{spec.home.name}", disk_usage(spec.home)))
    for name, klass, path, size in vms:
        name_property = "" if klass == "AdminVM" else (
            f'<property name="name">{escape(name)}</property>')
        domains.append(
            f'<domain id="domain-{len(domains)}" class={quoteattr(klass)}><properties>'
            f'{name_property}<property name="label">red</property></properties><features>'
            '<feature name="backup-content">True</feature>'
            f'<feature name="backup-path">{escape(path)}</feature>'
            f'<feature name="backup-size">{size}</feature></features></domain>'
        )
    return ('<?xml version="1.0" encoding="utf-8"?>\n<qubes version="3.0"><labels>'
            '<label id="label-1" color="0xcc0000">red</label></labels><properties/>'
            f'<domains>{"".join(domains)}</domains></qubes>\n').encode()


def inner_tar_argv(directory: Path, name: str, subdir: str, spec: ArchiveSpec,
                   image_format: str | None) -> list[str]:
    """Return the inner tar command line of qubes/backup.py (_wrap_and_send_files)."""
    argv = ["tar", "-Pc", "--sparse", "-C", str(directory)]
    if image_format == "posix":
        argv += ["--format=posix", "--sparse-version=1.0", "--pax-option=delete=*time*"]
    if spec.compression:
        argv.append(f"--use-compress-program={spec.compression}")
    return [*argv, f"--xform=s:^{name}:{subdir}\\0:", name]


def chunks(stream: IO[bytes], size: int) -> Iterator[bytes]:
    """Yield STREAM cut into SIZE-byte chunks (the last shorter; at least one)."""
    first = True
    while True:
        chunk = stream.read(size)
        if not chunk and not first:
            return
        first = False
        yield chunk
        if len(chunk) < size:
            return


def add_file(output: BinaryIO, stage: Path, spec: ArchiveSpec, argv: list[str],
             archive_path: str) -> list[Member]:
    """Run ARGV (an inner tar), cut its output into chunks, encrypt each as
    ARCHIVE_PATH.NNN and append them; return them."""
    names = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as tar:
        assert tar.stdout is not None
        for number, chunk in enumerate(chunks(tar.stdout, spec.chunk_size)):
            plain = stage / f"{archive_path}.{number:03d}"
            plain.parent.mkdir(parents=True, exist_ok=True)
            plain.write_bytes(chunk)
            encrypted = plain.with_name(plain.name + ".enc")
            scrypt_encrypt(plain, encrypted,
                           f"{spec.backup_id}!{archive_path}.{number:03d}!{spec.passphrase}",
                           spec.cost)
            plain.unlink()
            names.append(append_member(output, stage, f"{archive_path}.{number:03d}.enc"))
            encrypted.unlink()
    assert tar.returncode == 0
    return names


def build_archive(spec: ArchiveSpec, stage: Path, output_path: Path) -> list[Member]:
    """Write the backup SPEC describes to OUTPUT_PATH, using STAGE for
    temporary files; return the outer members in order."""
    stage.mkdir(parents=True, exist_ok=True)
    with open(output_path, "wb") as output:
        header = stage / "backup-header"
        header.write_text(spec.header_text if spec.header_text is not None else header_text(spec))
        scrypt_encrypt(header, stage / "backup-header.hmac", f"backup-header!{spec.passphrase}",
                       spec.cost)
        members = [append_member(output, stage, "backup-header"),
                   append_member(output, stage, "backup-header.hmac")]
        xml_dir = stage / "xml"
        xml_dir.mkdir(exist_ok=True)
        (xml_dir / "qubes.xml").write_bytes(spec.qubes_xml or qubes_xml(spec))
        members += add_file(output, stage, spec,
                            inner_tar_argv(xml_dir, "qubes.xml", "", spec, None), "qubes.xml")
        for vm in spec.vms:
            for name, path in vm.files.items():
                image = name.endswith(".img")
                image_format = "posix" if image and not vm.gnu_sparse else None
                link = stage / "links" / vm.subdir / name  # the name Qubes gives it
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(path)
                argv = inner_tar_argv(link.parent, name, vm.subdir, spec, image_format)
                argv.insert(2, "--dereference")
                members += add_file(output, stage, spec, argv, f"{vm.subdir}{name}")
        if spec.home is not None:
            argv = inner_tar_argv(spec.home.parent, spec.home.name, "dom0-home/", spec, None)
            members += add_file(output, stage, spec, argv, f"dom0-home/{spec.home.name}")
    return members
