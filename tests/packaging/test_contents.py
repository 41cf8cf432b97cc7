"""What `make packages` builds: the install targets' files and nothing else,
clean for lintian and rpmlint, the same bytes every time, checksummed."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from testbed.server import REPO
from tests.packaging.conftest import Dist, installed_tree, make_packages

# What the .debs add to the install targets' files: Debian's required docs.
DEB_EXTRAS = {
    "qbackup-server": {"usr/share/doc/qbackup-server", "usr/share/doc/qbackup-server/copyright",
                       "usr/share/doc/qbackup-server/changelog.gz", "usr/share/lintian",
                       "usr/share/lintian/overrides", "usr/share/lintian/overrides/qbackup-server"},
    "qbackup-carrier": {"usr/share/doc/qbackup-carrier",
                        "usr/share/doc/qbackup-carrier/copyright",
                        "usr/share/doc/qbackup-carrier/changelog.gz"},
}


def deb_paths(deb: Path) -> set[str]:
    """Given a .deb, return every path it installs, relative."""
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    names = subprocess.run(["tar", "-t"], input=listing, capture_output=True,
                           check=True).stdout.decode().split()
    return {name.removeprefix("./").rstrip("/") for name in names} - {""}


def rpm_paths(rpm: Path) -> set[str]:
    """Given an .rpm, return every path it holds, relative."""
    listing = subprocess.run(["rpm", "-qlp", str(rpm)], capture_output=True, text=True,
                             check=True).stdout
    return {line.removeprefix("/") for line in listing.splitlines()}


@pytest.mark.parametrize(("name", "part"), [("qbackup-server", "server"),
                                            ("qbackup-carrier", "carrier")])
def test_each_deb_holds_what_its_install_targets_install(
        dist: Dist, tmp_path: Path, name: str, part: str) -> None:
    deb = dist.server_deb if part == "server" else dist.carrier_deb
    # Directories the distribution owns (usr, usr/share/doc...) are in both.
    assert deb_paths(deb) == installed_tree(part, tmp_path) | DEB_EXTRAS[name] | {
        "usr/share/doc"}


@pytest.mark.parametrize("part", ["dom0", "carrier"])
def test_each_rpm_holds_what_its_install_target_installs(
        dist: Dist, tmp_path: Path, part: str) -> None:
    rpm = dist.dom0_rpm if part == "dom0" else dist.carrier_rpm
    installed = installed_tree(part, tmp_path)
    # An rpm owns its files and qbackup's own directories, never /usr/bin's.
    files_and_own_dirs = {path for path in installed
                          if not (tmp_path / path).is_dir() or "qbackup" in path}
    assert rpm_paths(rpm) == files_and_own_dirs


def test_the_debs_mark_every_file_under_etc_a_conffile(dist: Dist) -> None:
    for deb, conffiles in (
            (dist.server_deb, ["/etc/apparmor.d/usr.sbin.qbackup-shell",
                               "/etc/qbackup/qbackup-shell.conf"]),
            (dist.carrier_deb, ["/etc/qubes-rpc/qubes.BackupCarrier"])):
        listed = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"],
                                capture_output=True, text=True, check=True).stdout
        assert listed.split() == conffiles


def test_the_rpms_keep_a_changed_policy_and_replace_programs(dist: Dist) -> None:
    # %config(noreplace): an admin's edit of the policy survives an upgrade;
    # the qrexec service is a program, replaced by the next version's.
    for rpm, config in ((dist.dom0_rpm, ["/etc/qubes/policy.d/30-qbackup.policy"]),
                        (dist.carrier_rpm, [])):
        listed = subprocess.run(["rpm", "-qcp", str(rpm)], capture_output=True, text=True,
                                check=True).stdout
        assert listed.split() == config


@pytest.mark.parametrize(("rpm", "requires"), [
    ("dom0", {"python3 >= 3.11", "python3-qubesadmin", "python3-pyyaml"}),
    ("carrier", {"python3 >= 3.10", "python3-asyncssh >= 2.10", "python3-pyyaml"}),
])
def test_the_rpms_need_what_dom0_and_fedora_name_so_and_run_no_scriptlet(
        dist: Dist, rpm: str, requires: set[str]) -> None:
    path = dist.dom0_rpm if rpm == "dom0" else dist.carrier_rpm
    needs = subprocess.run(["rpm", "-qp", "--requires", str(path)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert requires <= set(needs)
    assert not any(need.startswith(("python3-yaml", "pip")) for need in needs)
    scripts = subprocess.run(["rpm", "-qp", "--scripts", str(path)], capture_output=True,
                             text=True, check=True).stdout
    assert scripts == ""


def test_the_debs_need_what_debian_names_so(dist: Dist) -> None:
    fields = {deb: subprocess.run(["dpkg-deb", "--field", str(deb), "Depends"],
                                  capture_output=True, text=True, check=True).stdout.strip()
              for deb in (dist.server_deb, dist.carrier_deb)}
    assert fields[dist.server_deb] == "python3 (>= 3.10), openssh-server, passwd"
    assert fields[dist.carrier_deb] == "python3 (>= 3.10), python3-asyncssh (>= 2.10), python3-yaml"


def test_lintian_finds_nothing_in_either_deb(dist: Dist) -> None:
    # Every tag down to the pedantic ones, overrides applied (each says why).
    result = subprocess.run(["lintian", "--pedantic", "--display-info", "--fail-on", "error",
                             str(dist.server_deb), str(dist.carrier_deb)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "", result.stdout


def test_rpmlint_finds_nothing_in_either_rpm(dist: Dist) -> None:
    # rpmlint's checks as Debian ships them, with packaging/rpm's filters (each says why).
    result = subprocess.run(["rpmlint", "-r", str(REPO / "packaging/rpm/qbackup.rpmlintrc"),
                             str(dist.dom0_rpm), str(dist.carrier_rpm)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert "0 errors, 0 warnings, 0 badness" in result.stdout, result.stdout


def test_sha256sums_checks_every_package(dist: Dist) -> None:
    sums = (dist.path / "SHA256SUMS").read_text().splitlines()
    names = sorted(path.name for path in dist.path.iterdir() if path.name != "SHA256SUMS")
    assert [line.split("  ")[1] for line in sums] == names and len(names) == 4
    for line in sums:
        digest, name = line.split("  ")
        assert hashlib.sha256((dist.path / name).read_bytes()).hexdigest() == digest


def test_make_packages_twice_gives_the_same_bytes(dist: Dist, tmp_path: Path) -> None:
    again = make_packages(REPO, tmp_path / "again")
    assert sorted(p.name for p in again.path.iterdir()) == sorted(
        p.name for p in dist.path.iterdir())
    for path in again.path.iterdir():
        assert path.read_bytes() == (dist.path / path.name).read_bytes(), path.name


def test_make_packages_outside_git_needs_a_date_and_builds_nothing(tmp_path: Path) -> None:
    # No commit, no date to build reproducibly from: refused, not guessed.
    result = subprocess.run(["make", "-s", "-C", str(REPO), "packages", f"DIST={tmp_path}/d",
                             "SOURCE_DATE_EPOCH="], capture_output=True, text=True, check=False,
                            env={**os.environ, "DESTDIR": ""})
    assert result.returncode != 0 and "SOURCE_DATE_EPOCH=SECONDS" in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("rpm", "program", "version_line"), [
    ("dom0", "usr/bin/qbackup", "qbackup {}"),
    ("carrier", "usr/bin/qbackup-carrier", "qbackup-carrier {}"),
])
def test_an_rpm_installed_into_a_scratch_root_answers_its_version(
        dist: Dist, tmp_path: Path, rpm: str, program: str, version_line: str) -> None:
    path = dist.dom0_rpm if rpm == "dom0" else dist.carrier_rpm
    root = tmp_path / "root"
    subprocess.run(["rpm", "--root", str(root), "--nodeps", "--noplugins", "-i", str(path)],
                   check=True, capture_output=True)
    launcher = (root / program).read_text()
    assert 'sys.path.insert(0, "/usr/lib/qbackup")' in launcher
    # The launcher as installed, but reading its modules below ROOT: this
    # machine's own /usr/lib/qbackup (a server package under test) is never used.
    moved = launcher.replace('"/usr/lib/qbackup"', repr(str(root / "usr/lib/qbackup")))
    result = subprocess.run(["/usr/bin/python3", "-I", "-c", moved, "--version"],
                            capture_output=True, text=True, check=False, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout == version_line.format(dist.version) + "\n"
