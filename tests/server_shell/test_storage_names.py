"""Names against the real storage code: whatever a client sends, nothing is
created or opened outside the root (hypothesis), and real ssh agrees."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qbackup_protocol import client, wire
from server_shell.config import Exists, Refused
from server_shell.main import parse_command
from server_shell.storage import make_dirs, open_dirs, split_name
from testbed.client import chown_tree, put, snapshot
from testbed.server import Account, BackupServer

NAME_ALPHABET = st.sampled_from(
    list("aZ09._-/") + ["..", "/..", "../", "\\", " ", "\n", "\x00", "~", "*", "é"]
)
NAMES = st.lists(NAME_ALPHABET, min_size=1, max_size=40).map("".join)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.one_of(NAMES, st.text(max_size=30)))
def test_generated_names_never_leave_the_root(name: str) -> None:
    with tempfile.TemporaryDirectory() as base:
        root = Path(base) / "root"
        root.mkdir()
        (Path(base) / "outside").mkdir()
        try:
            request = parse_command(f"put {name}")
        except Refused:
            return  # refused before touching anything
        assert request.argument is not None
        place = split_name(request.argument)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            reached = open_dirs(root_fd, place.dirs)
            dir_fd = make_dirs(reached.fd, reached.missing)
            os.close(reached.fd)
        except Exists:
            return
        finally:
            os.close(root_fd)
        try:
            created = Path(os.readlink(f"/proc/self/fd/{dir_fd}"))
        finally:
            os.close(dir_fd)
        assert created == root or root in created.parents
        assert not place.leaf.startswith(".")
        assert list((Path(base) / "outside").iterdir()) == []
        assert {p.name for p in Path(base).iterdir()} == {"root", "outside"}


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("a", True),
        ("a.b", True),
        ("a..b", True),
        ("a/b..", True),
        ("x-1_2.3/y", True),
        ("..", False),
        ("a/..", False),
        ("a/../b", False),
        ("/a", False),
        ("a/", False),
        (".a", False),
        ("a/.b", False),
        ("a b", False),
        ("a\\b", False),
        ("*", False),
        ("a" * 101, False),
        ("-x", False),  # read as an option by whatever takes the name as an argument
        ("--help", False),
        ("a/-b", False),  # put on a command line by a glob in its directory
    ],
)
def test_names_over_ssh_land_inside_the_storage_or_nowhere(
    backup_server: BackupServer, account: Account, name: str, accepted: bool
) -> None:
    base_before = snapshot(backup_server.base / "home")
    result = put(backup_server, account, name, b"n")
    assert (result.returncode == 0) == accepted, result.stderr
    after = snapshot(backup_server.base / "home")
    new = set(after) - set(base_before)
    if accepted:
        assert (account.storage / name).read_bytes() == b"n"
        assert all(path.startswith(f"{account.name}/") for path in new)
    else:
        assert new == set() and after == base_before


# Threat: backups stored before names could no longer start with '-' (or
# dropped into a converted account's old home) break the listing. They are
# left alone: never listed, never entered, and every other command works.
def test_stored_names_with_a_dash_segment_are_skipped_not_fatal(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "lap/kept", b"k").returncode == 0
    for name in ("-old", "lap/-old", "-dir/x"):
        path = account.storage / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"old")
        chown_tree(account.storage / name.split("/")[0], account)
    listing = backup_server.run(account, "list")
    assert listing.returncode == 0, listing.stderr
    lines = [client.parse_list_line(line) for line in listing.stdout.splitlines()]
    assert [line.name for line in lines if isinstance(line, wire.BackupRecord)] == ["lap/kept"]
    assert put(backup_server, account, "lap/new", b"n").returncode == 0
    assert backup_server.run(account, "get -old").returncode == 64
    assert (account.storage / "-dir/x").read_bytes() == b"old"
