"""Build qbackup's packages from the trees the Makefile's install targets staged.

`make packages` installs each part into its own DESTDIR under STAGE (server/,
carrier/, dom0/) and runs this (standard library only):

    python3 packaging/build.py STAGE DIST VERSION

It writes into DIST the two .debs (dpkg-deb), the two .rpms (rpmbuild from
Debian's rpm package) and SHA256SUMS. The file list is the Makefile's, never
a second one: each package holds what its install target put in STAGE, with
the man pages compressed, and under /usr/share/doc/PACKAGE the copyright and
changelog Debian requires. Reproducible: every time and date is
SOURCE_DATE_EPOCH (from the environment), archives are sorted and gzip
writes no name or time, so the same source gives the same bytes.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAINTAINER = "qbackup maintainers <maintainers@users.noreply.h-seed-8be67314.example>"
MAN_DIR = Path("usr/share/man")
# What rpmbuild must not do on its own: compile, strip or compress (the
# staged tree is final), stamp the build's host or time into the header.
RPM_DEFINES = {
    "__os_install_post": "%{nil}",
    "debug_package": "%{nil}",
    "_build_id_links": "none",
    "_buildhost": "reproducible",
    "use_source_date_epoch_as_buildtime": "1",
    "clamp_mtime_to_source_date_epoch": "1",
    "source_date_epoch_from_changelog": "0",
    "_binary_payload": "w9.gzdio",
}


@dataclass(frozen=True)
class Deb:
    """A .deb: its name, the staged part it holds, its maintainer scripts."""

    name: str
    part: str
    scripts: tuple[str, ...]


@dataclass(frozen=True)
class Rpm:
    """An .rpm: its name, the staged part, what it needs (Fedora's names) and says."""

    name: str
    part: str
    requires: tuple[str, ...]
    summary: str
    description: str


DEBS = (
    Deb("qbackup-server", "server", ("postinst", "prerm", "postrm")),
    Deb("qbackup-carrier", "carrier", ("prerm",)),
)
# dom0: qubesadmin and PyYAML as Qubes 4.2 and 4.3 dom0 (Fedora 37, 41) name
# them; a Fedora template: its asyncssh and PyYAML.
RPMS = (
    Rpm("qbackup-dom0", "dom0", ("python3 >= 3.11", "python3-qubesadmin", "python3-pyyaml"),
        "Scheduled, encrypted, off-site Qubes backups: qbackup in dom0",
        "The qbackup command, its systemd user units, the qrexec policy that keeps\n"
        "every VM away from the carrier's service, an example job file, man pages."),
    Rpm("qbackup-carrier", "carrier",
        ("python3 >= 3.10", "python3-asyncssh >= 2.10", "python3-pyyaml"),
        "Carrier of qbackup: moves encrypted Qubes backups to the server",
        "qbackup-carrier and the qrexec service qubes.BackupCarrier, for the\n"
        "TemplateVM of the carrier AppVM."),
)


def walk(root: Path) -> list[Path]:
    """Given a tree, return every path below it, relative, sorted."""
    return sorted(path.relative_to(root) for path in root.rglob("*"))


def gzip_file(source: Path, target: Path) -> None:
    """Write SOURCE gzipped to TARGET, with no file name or time inside."""
    with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                  compresslevel=9, mtime=0) as packed:
        packed.write(source.read_bytes())
    shutil.copymode(source, target)


def compress_man_pages(root: Path) -> None:
    """Given a staged tree, replace each man page below it with PAGE.gz."""
    for relative in walk(root):
        path = root / relative
        if relative.is_relative_to(MAN_DIR) and path.is_file() and path.suffix != ".gz":
            gzip_file(path, path.with_name(path.name + ".gz"))
            path.unlink()


def set_times(root: Path, epoch: int) -> None:
    """Given a tree, set the time of everything in it to EPOCH."""
    for relative in [*walk(root), Path(".")]:
        os.utime(root / relative, (epoch, epoch), follow_symlinks=False)


def fill(template: Path, words: dict[str, str]) -> str:
    """Given a template and {WORD: text}, return it with each @WORD@ replaced."""
    text = template.read_text()
    for word, value in words.items():
        text = text.replace(f"@{word}@", value)
    return text


def debian_changelog(name: str, version: str, epoch: int) -> str:
    """Return the changelog.Debian of package NAME, dated EPOCH."""
    date = email.utils.formatdate(epoch, usegmt=True).replace("GMT", "+0000")
    return (f"{name} ({version}) unstable; urgency=medium\n\n"
            f"  * qbackup {version}: see CHANGELOG.md in the source.\n\n"
            f" -- {MAINTAINER}  {date}\n")


def installed_size(root: Path) -> int:
    """Given a package tree, return its size in KiB as dpkg-gencontrol counts
    it: each file rounded up to a KiB, each directory one."""
    sizes = [-(-(root / p).stat().st_size // 1024) if (root / p).is_file() else 1
             for p in walk(root)]
    return sum(sizes)


def build_deb(deb: Deb, stage: Path, work: Path, dist: Path, version: str, epoch: int) -> Path:
    """Given a Deb and the staged part, build it into DIST; return its path."""
    root = work / deb.name
    shutil.copytree(stage / deb.part, root, symlinks=True)
    doc = root / "usr/share/doc" / deb.name
    doc.mkdir(mode=0o755, parents=True, exist_ok=True)
    shutil.copyfile(HERE / "debian/copyright", doc / "copyright")
    changelog = work / f"{deb.name}.changelog"
    changelog.write_text(debian_changelog(deb.name, version, epoch))
    gzip_file(changelog, doc / "changelog.gz")  # a native package's name for it
    overrides = HERE / "debian" / f"{deb.name}.lintian-overrides"
    if overrides.exists():
        target = root / "usr/share/lintian/overrides"
        target.mkdir(mode=0o755, parents=True)
        shutil.copyfile(overrides, target / deb.name)
    for path in root.rglob("*"):  # not what the umask of the copies decided
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    files = [p for p in walk(root) if (root / p).is_file()]
    size = installed_size(root)
    control = root / "DEBIAN"
    control.mkdir(mode=0o755)
    (control / "control").write_text(fill(HERE / "debian" / f"{deb.name}.control", {
        "VERSION": version, "MAINTAINER": MAINTAINER, "INSTALLED_SIZE": str(size)}))
    # Everything under /etc is the admin's to edit: dpkg keeps their changes.
    conffiles = [f"/{p}\n" for p in files if p.parts[0] == "etc"]
    (control / "conffiles").write_text("".join(conffiles))
    (control / "md5sums").write_text("".join(
        f"{hashlib.md5((root / p).read_bytes(), usedforsecurity=False).hexdigest()}  {p}\n"
        for p in files))
    for script in deb.scripts:
        shutil.copyfile(HERE / "debian" / f"{deb.name}.{script}", control / script)
        (control / script).chmod(0o755)
    for path in control.iterdir():
        if path.name not in deb.scripts:
            path.chmod(0o644)
    set_times(root, epoch)
    target = dist / f"{deb.name}_{version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(target)], epoch)
    return target


def rpm_files(root: Path) -> str:
    """Given a staged tree, return the %files lines of a package of it: the
    directories of qbackup's own, every file, the ones under /etc as config
    (the admin's changes are kept) but programs (the qrexec service: its
    next version replaces it)."""
    lines = ["%defattr(-,root,root,-)"]
    for relative in walk(root):
        absolute = f"/{relative}"
        if (root / relative).is_dir():
            if "qbackup" in relative.as_posix():
                lines.append(f"%dir {absolute}")
        elif relative.parts[0] == "etc" and not os.access(root / relative, os.X_OK):
            lines.append(f"%config(noreplace) {absolute}")
        else:
            lines.append(absolute)
    return "\n".join(lines)


def build_rpm(rpm: Rpm, stage: Path, work: Path, dist: Path, version: str, epoch: int) -> Path:
    """Given an Rpm and the staged part, build it into DIST; return its path."""
    staged = stage / rpm.part
    top = work / rpm.name
    spec = work / f"{rpm.name}.spec"
    spec.write_text(fill(HERE / "rpm/package.spec.in", {
        "NAME": rpm.name, "VERSION": version, "SUMMARY": rpm.summary,
        "REQUIRES": "\n".join(f"Requires:  {need}" for need in rpm.requires),
        "DESCRIPTION": rpm.description, "FILES": rpm_files(staged),
        "DATE": time.strftime("%a %b %d %Y", time.gmtime(epoch)), "MAINTAINER": MAINTAINER}))
    defines = {**RPM_DEFINES, "_topdir": str(top), "staged": str(staged)}
    command = ["rpmbuild", "--quiet", "-bb"]
    for key, value in defines.items():
        command += ["--define", f"{key} {value}"]
    run([*command, str(spec)], epoch)
    built = top / "RPMS/noarch" / f"{rpm.name}-{version}-1.noarch.rpm"
    target = dist / f"{rpm.name}-{version}.noarch.rpm"
    shutil.copyfile(built, target)
    return target


def run(command: list[str], epoch: int) -> None:
    """Run COMMAND with SOURCE_DATE_EPOCH set; raise CalledProcessError if it fails."""
    # An argv list of this script's own (dpkg-deb, rpmbuild), never a shell.
    subprocess.run(command, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})  # noqa: S603


def write_sums(dist: Path, packages: list[Path]) -> None:
    """Write DIST/SHA256SUMS for PACKAGES, in the format of sha256sum -c."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
             for p in sorted(packages)]
    (dist / "SHA256SUMS").write_text("".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description="Build qbackup's packages (make packages).")
    parser.add_argument("stage", type=Path, help="holds server/, carrier/, dom0/")
    parser.add_argument("dist", type=Path, help="where the packages go")
    parser.add_argument("version")
    options = parser.parse_args()
    epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    for part in ("server", "carrier", "dom0"):
        compress_man_pages(options.stage / part)
        set_times(options.stage / part, epoch)
    options.dist.mkdir(parents=True, exist_ok=True)
    built = []
    with tempfile.TemporaryDirectory(prefix="qbackup-packages-") as work:
        for deb in DEBS:
            built.append(build_deb(deb, options.stage, Path(work), options.dist,
                                   options.version, epoch))
        for rpm in RPMS:
            built.append(build_rpm(rpm, options.stage, Path(work), options.dist,
                                   options.version, epoch))
    write_sums(options.dist, built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
