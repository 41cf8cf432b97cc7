"""qbackup-server (prune, status, check) against real accounts and real
files: root only, only qbackup accounts, only with the owner's rights, never
through a planted link, never printing or touching a hostile name."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from qbackup_protocol import __version__
from testbed.client import chown_tree, put, run_admin, snapshot, stage
from testbed.server import Account, BackupServer

DAY = 86400


def stamp(days_ago: float) -> tuple[str, float]:
    moment = time.time() - days_ago * DAY
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(moment)), moment


def backup(server: BackupServer, account: Account, series: str, days_ago: float) -> str:
    """Put and commit a backup of SERIES named as dom0 names it, DAYS_AGO old."""
    text, moment = stamp(days_ago)
    name = f"{series}-{text}"
    assert put(server, account, name, name.encode()).returncode == 0
    os.utime(account.storage / name, (moment, moment))
    return name


@pytest.fixture
def aged(backup_server: BackupServer, account: Account) -> dict[str, list[str]]:
    """Two series under one prefix: five daily backups a day apart, two weekly."""
    return {
        "daily": [backup(backup_server, account, "lap/daily", n + 0.1) for n in range(5)],
        "weekly": [backup(backup_server, account, "lap/weekly", n * 7 + 0.2) for n in range(2)],
    }


def test_prune_applies_the_policy_per_series_and_removes_data_and_records(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "QBACKUP PRUNE OK - 1 account(s)"
    remaining = snapshot(account.storage)
    daily = aged["daily"]
    weekly = aged["weekly"]
    # Each series keeps ITS OWN two newest days: the weekly backups are not
    # counted against the daily ones (nor the other way round).
    for name in daily[:2] + weekly:
        leaf = name.split("/")[1]
        assert name in remaining and f"lap/.{leaf}.sha256" in remaining
    for name in daily[2:]:
        leaf = name.split("/")[1]
        assert name not in remaining and f"lap/.{leaf}.sha256" not in remaining
        assert f"{account.name}: removed {name}" in lines


def test_prune_dry_run_changes_nothing(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    before = snapshot(account.storage)
    result = run_admin(
        backup_server, "prune", "--account", account.name, "--keep-daily", "1", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    assert f"would remove {aged['daily'][-1]}".encode() in result.stdout
    assert snapshot(account.storage) == before


# Threat: prune aimed at an ordinary account (a /bin/bash
# user) deleted its files. Only accounts whose login shell is qbackup-shell.
def test_admin_refuses_an_account_that_is_not_a_qbackup_account(
    backup_server: BackupServer,
) -> None:
    ordinary = backup_server.add_account(login_shell=Path("/bin/bash"))
    (ordinary.home / "old-file").write_bytes(b"precious")
    old = time.time() - 100 * DAY
    os.utime(ordinary.home / "old-file", (old, old))
    before = snapshot(ordinary.home)
    for command in (["prune", "--keep-daily", "1"], ["status"], ["check"]):
        result = run_admin(backup_server, *command[:1], "--account", ordinary.name, *command[1:])
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(b"QBACKUP UNKNOWN - ")
        assert b"is not a qbackup account" in result.stderr
    assert snapshot(ordinary.home) == before
    # Without --account it is not among the accounts looked at either.
    assert ordinary.name.encode() not in run_admin(backup_server, "status").stdout


def test_admin_refuses_to_run_as_anything_but_root(
    backup_server: BackupServer, account: Account
) -> None:
    before = snapshot(account.storage)
    result = subprocess.run(
        ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
         str(backup_server.shell_path.parent / "qbackup-server"), "status"],
        capture_output=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stderr) == (
        3, b"QBACKUP UNKNOWN - qbackup-server must run as root\n")
    assert snapshot(account.storage) == before


def test_prune_without_a_keep_rule_is_refused(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    before = snapshot(account.storage)
    assert run_admin(backup_server, "prune", "--account", account.name).returncode == 3
    assert snapshot(account.storage) == before


def test_prune_never_follows_a_planted_symlink(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]], outside: Path
) -> None:
    # A link to a directory full of old "backups": prune must neither follow
    # it nor, as root, be able to delete there.
    victim = outside / "victim"
    victim.mkdir()
    text, moment = stamp(100)
    (victim / f"daily-{text}").write_bytes(b"root's file")
    os.utime(victim / f"daily-{text}", (moment, moment))
    (account.storage / "lap/link").symlink_to(victim)
    (account.storage / f"lap/daily-{stamp(50)[0]}").symlink_to(victim / f"daily-{text}")
    before_outside = snapshot(outside)
    result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "1")
    assert result.returncode == 0, result.stderr
    assert snapshot(outside) == before_outside
    assert (account.storage / "lap/link").is_symlink()


def test_prune_runs_with_the_owners_rights(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    # A root-owned 0700 directory inside the storage: only root could enter
    # it, so a prune with root's rights would remove the old backup in it.
    private = account.storage / "lap/rootonly"
    private.mkdir(mode=0o700)
    text, moment = stamp(100)
    (private / f"daily-{text}").write_bytes(b"root")
    os.utime(private / f"daily-{text}", (moment, moment))
    result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "1")
    assert result.returncode == 0, result.stderr
    assert (private / f"daily-{text}").exists()
    assert b"rootonly/daily" not in result.stdout


# Threat: names a client could never choose, planted in the storage (a
# newline, an escape, a dot-name): never printed, never removed.
def test_admin_never_prints_or_removes_a_hostile_name(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    text, moment = stamp(100)
    hostile = [f"evil\n-{text}", f"esc\x1b[2J-{text}", f".hidden-{text}", f"sp ace-{text}"]
    for name in hostile:
        path = account.storage / "lap" / name
        path.write_bytes(b"x")
        os.chown(path, account.uid, account.gid)
        os.utime(path, (moment, moment))
    for command in (["prune", "--account", account.name, "--keep-daily", "1"],
                    ["status", "--account", account.name], ["check", "--account", account.name]):
        result = run_admin(backup_server, *command)
        assert result.returncode == 0, result.stdout
        assert b"\x1b" not in result.stdout and b"evil" not in result.stdout
        assert b"hidden" not in result.stdout and b"sp ace" not in result.stdout
        # Reported, not named (the dot-file is the shell's kind: not even counted).
        assert f"{account.name}: skipped 3 file(s) whose names hold characters no name may " \
               "have" in result.stdout.decode().splitlines()
    for name in hostile:
        assert (account.storage / "lap" / name).exists()


def test_prune_removes_expired_uploads_but_not_fresh_ones(
    shell_config: BackupServer, account: Account
) -> None:
    for name in ("p/stale", "p/deep/er/stale", "p/fresh"):
        assert stage(shell_config, account, name, b"abandoned").returncode == 0
    old = time.time() - DAY - 60
    for name in ("p/.stale.pending", "p/deep/er/.stale.pending"):
        os.utime(account.storage / name, (old, old))
    (account.storage / "q").mkdir()
    for name, age in (("q/.gone.partial", 3601), ("q/.kept.partial", 60)):
        (account.storage / name).write_bytes(b"part")
        (account.storage / name.replace(".partial", ".partial-state")).write_bytes(b"{}")
        os.utime(account.storage / name, (time.time() - age, time.time() - age))
    for path in (account.storage / "q").rglob("*"):
        os.chown(path, account.uid, account.gid)
    os.chown(account.storage / "q", account.uid, account.gid)
    dry = run_admin(shell_config, "prune", "--account", account.name, "--keep-daily", "1",
                    "--dry-run")
    assert dry.returncode == 0 and b"would remove expired upload q/.gone.partial" in dry.stdout
    result = run_admin(shell_config, "prune", "--account", account.name, "--keep-daily", "1")
    assert result.returncode == 0, result.stderr
    left = sorted(n for n in snapshot(account.storage) if ".pending" in n or ".partial" in n)
    assert left == ["p/.fresh.pending", "p/.fresh.pending-sha256", "q/.kept.partial",
                    "q/.kept.partial-state"]


def status(
    server: BackupServer, account: Account, *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return run_admin(server, "status", "--account", account.name, *extra)


def test_status_is_ok_with_a_recent_backup_and_critical_without(
    backup_server: BackupServer, account: Account
) -> None:
    empty = status(backup_server, account)
    assert empty.returncode == 2
    first = empty.stdout.decode().splitlines()[0]
    assert first == f"QBACKUP STATUS CRITICAL - 1 account(s): {account.name}"
    name = backup(backup_server, account, "lap/daily", 0.5)  # 12 h old
    ok = status(backup_server, account, "--max-age", "36h")
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.splitlines()[0] == b"QBACKUP STATUS OK - 1 account(s)"
    assert f"count=1 newest={name} ".encode() in ok.stdout
    late = status(backup_server, account, "--max-age", "6h")
    assert late.returncode == 2


def test_status_warns_about_stale_uploads_and_reports_json(
    backup_server: BackupServer, account: Account
) -> None:
    name = backup(backup_server, account, "lap/daily", 0.1)
    assert stage(backup_server, account, "lap/abandoned", b"x").returncode == 0
    old = time.time() - 2 * DAY
    os.utime(account.storage / "lap/.abandoned.pending", (old, old))
    result = status(backup_server, account, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["status"] == "WARNING"
    mine = report["accounts"][account.name]
    assert (mine["newest"], mine["count"], mine["staged"], mine["stale"]) == (name, 1, 1, 1)
    assert mine["size"] == len(name) and mine["reserve"] == 1024**3
    assert mine["problems"] == [
        "1 stale upload(s), never committed or resumed (prune removes them)"]
    text = status(backup_server, account).stdout.decode().splitlines()
    assert text[:2] == [f"QBACKUP STATUS WARNING - 1 account(s): {account.name}",
                        f"{account.name}: {mine['problems'][0]}"]


def test_check_rehashes_every_backup_reports_damage_and_changes_nothing(
    backup_server: BackupServer, account: Account
) -> None:
    good = backup(backup_server, account, "a/daily", 1)
    bad = backup(backup_server, account, "b/daily", 1)
    ok = run_admin(backup_server, "check", "--account", account.name)
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.splitlines()[0] == b"QBACKUP CHECK OK - 1 account(s)"
    path = account.storage / bad
    path.write_bytes(bytes([path.read_bytes()[0] ^ 1]) + path.read_bytes()[1:])  # same size
    before = snapshot(account.storage)
    damaged = run_admin(backup_server, "check", "--account", account.name)
    assert damaged.returncode == 2
    lines = damaged.stdout.decode().splitlines()
    assert lines[0] == f"QBACKUP CHECK CRITICAL - 1 account(s): {account.name}"
    assert f"{account.name}: DAMAGED {bad} (differs)" in lines
    assert f"{account.name}: ok {good}" in lines
    assert snapshot(account.storage) == before
    assert hashlib.sha256(path.read_bytes()).hexdigest() != json.loads(
        (path.parent / f".{path.name}.sha256").read_text())["sha256"]


# Threat: a compromised carrier holds the account's key and can
# put + commit any name, e.g. one dated into a period's bucket (or the
# future), so that prune removes the REAL backup of that period. A name whose
# timestamp its file's mtime belies never counts for retention: it neither
# fills a bucket nor is pruned by policy, and status warns about it.
# Residual risk: a planted name dated within [mtime - 48 h, mtime + 1 h] of
# its own upload still counts (it can only crowd out backups of that window).
def test_prune_ignores_names_whose_timestamp_the_mtime_belies(
    backup_server: BackupServer, account: Account
) -> None:
    real = backup(backup_server, account, "lap/daily", 3)  # three days old, mtime agrees
    text, _ = stamp(3 - 0.01)  # later the same day: would win that day's bucket
    planted = f"lap/daily-{text}"
    future = f"lap/daily-{stamp(-30)[0]}"  # a month ahead: would be "newest" for ever
    for name in (planted, future):
        assert put(backup_server, account, name, b"junk").returncode == 0  # mtime: now
    result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "1")
    assert result.returncode == 0, result.stderr
    for name in (real, planted, future):
        assert (account.storage / name).exists(), name
    report = json.loads(status(backup_server, account, "--json").stdout)
    assert report["status"] == "WARNING"
    assert report["accounts"][account.name]["implausible"] == 2


def test_status_max_age_means_hours_like_qbackup_status_and_says_why(
    backup_server: BackupServer, account: Account
) -> None:
    backup(backup_server, account, "lap/daily", 0.5)  # 12 h old
    # A bare number is hours, as in dom0's `qbackup status --max-age 36`.
    assert status(backup_server, account, "--max-age", "36").returncode == 0
    late = status(backup_server, account, "--max-age", "6")
    assert late.returncode == 2
    assert f"{account.name}: newest backup 12.0h old > 6h" in late.stdout.decode().splitlines()
    assert status(backup_server, account, "--max-age", "2d").returncode == 0
    assert status(backup_server, account, "--max-age", "600m").returncode == 2


def test_status_without_a_backup_says_so(backup_server: BackupServer, account: Account) -> None:
    result = status(backup_server, account)
    assert result.returncode == 2
    assert f"{account.name}: no committed backup" in result.stdout.decode().splitlines()


TOO_LONG = "not a backup name: name longer than 200 characters"


def long_tree(account: Account, days: list[float]) -> list[str]:
    """Backups under a path longer than the 200 characters of a name (valid
    segments, 8 deep), as a converted account's old home may hold, made as
    the account; return their names, DAYS old each."""
    directory = "/".join(f"z{index}" + "x" * 25 for index in range(7))
    made = []
    for days_ago in days:
        text, moment = stamp(days_ago)
        name = f"{directory}/daily-{text}"
        path = account.storage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old home")
        os.utime(path, (moment, moment))
        made.append(name)
    chown_tree(account.storage / ("z0" + "x" * 25), account)
    assert all(len(name) > 200 for name in made)
    return made


# Threat: a stored path longer than a name may be (valid segments) killed
# the account's worker on an uncaught InvalidName: the account was UNKNOWN,
# and prune had already removed backups it never reported.
def test_prune_skips_and_reports_a_path_too_long_for_a_name_and_reports_every_removal(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    long = long_tree(account, [20, 30, 40])  # keep-daily 2 would remove the oldest
    result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.decode().splitlines()
    for name in aged["daily"][2:]:
        assert f"{account.name}: removed {name}" in lines
        assert not (account.storage / name).exists()
    for name in long:
        assert f"{account.name}: skipped {name} ({TOO_LONG})" in lines
        assert (account.storage / name).exists()


def test_check_skips_and_reports_a_path_too_long_for_a_name(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    long = long_tree(account, [20])
    result = run_admin(backup_server, "check", "--account", account.name)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "QBACKUP CHECK OK - 1 account(s)"
    assert f"{account.name}: ok {aged['daily'][0]}" in lines
    assert f"{account.name}: skipped {long[0]} ({TOO_LONG})" in lines


# Backups stored before a name's segments could no longer start with '-'.
def test_admin_skips_and_reports_stored_names_with_a_dash_segment(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    text, moment = stamp(100)
    for name in (f"lap/-daily-{text}", f"-dir/daily-{text}"):
        (account.storage / name).parent.mkdir(exist_ok=True)
        (account.storage / name).write_bytes(b"old")
        os.utime(account.storage / name, (moment, moment))
    chown_tree(account.storage / "-dir", account)
    chown_tree(account.storage / f"lap/-daily-{text}", account)
    before = {name for name in snapshot(account.storage) if "-d" in name}
    for command in (["prune", "--keep-daily", "1"], ["check"], ["status"]):
        result = run_admin(backup_server, command[0], "--account", account.name, *command[1:])
        assert result.returncode in (0, 1), result.stdout + result.stderr
        lines = result.stdout.decode().splitlines()
        assert any(line.startswith(f"{account.name}: skipped lap/-daily-{text} (")
                   for line in lines), lines
        assert any(line.startswith(f"{account.name}: skipped -dir (") for line in lines), lines
    assert {name for name in snapshot(account.storage) if "-d" in name} == before


def test_prune_is_quiet_unless_it_removes_something(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    # A filesystem's own lost+found (root's) is not the account's concern.
    (account.storage / "lost+found").mkdir(mode=0o700)
    keep_all = ["prune", "--account", account.name, "--keep-daily", "10", "--keep-weekly", "5"]
    quiet = run_admin(backup_server, *keep_all)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")  # cron mails nothing
    verbose = run_admin(backup_server, *keep_all, "-v")
    assert verbose.returncode == 0
    lines = verbose.stdout.decode().splitlines()
    assert lines[0] == "QBACKUP PRUNE OK - 1 account(s)"
    assert sorted(lines[1:]) == sorted(
        f"{account.name}: keep {name}" for name in aged["daily"] + aged["weekly"])
    removing = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "4")
    # Each series keeps its own four newest days: the two weekly ones stay.
    assert removing.stdout.decode().splitlines() == [
        "QBACKUP PRUNE OK - 1 account(s)", f"{account.name}: removed {aged['daily'][4]}"]


def test_prune_reports_json(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "3",
                       "--keep-weekly", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["status"], report["dry_run"]) == ("OK", False)
    mine = report["accounts"][account.name]
    assert mine["removed"] == sorted(aged["daily"][3:])
    assert sorted(mine["kept"]) == sorted(aged["daily"][:3] + aged["weekly"])
    assert (mine["expired"], mine["skipped"], mine["error"]) == ([], [], None)


def test_version_and_help_need_no_root(backup_server: BackupServer, account: Account) -> None:
    tool = str(backup_server.shell_path.parent / "qbackup-server")
    as_account = ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups"]
    version = f"qbackup-server {__version__} (protocol 3)\n".encode()
    for arguments, expected in ((["--version"], version),
                                (["--help"], b"exit codes:"), (["prune", "--help"], b"examples:")):
        result = subprocess.run([*as_account, tool, *arguments], capture_output=True, timeout=60,
                                check=False, env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout


# A prune cut short (here: a directory the account may not write in) still
# reports every removal it made before, and the error.
def test_a_prune_that_fails_half_way_reports_what_it_removed(
    backup_server: BackupServer, account: Account, aged: dict[str, list[str]]
) -> None:
    stuck = [backup(backup_server, account, "zz/daily", days) for days in (10.3, 11.3)]
    (account.storage / "zz").chmod(0o500)  # its owner may no longer unlink in it
    try:
        result = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "1")
    finally:
        (account.storage / "zz").chmod(0o700)
    assert result.returncode == 3, result.stdout
    lines = result.stdout.decode().splitlines()
    assert lines[0] == f"QBACKUP PRUNE UNKNOWN - 1 account(s): {account.name}"
    assert f"{account.name}: error: I/O error: Permission denied" in lines
    for name in aged["daily"][1:] + aged["weekly"][1:]:  # sorted before zz/: removed, reported
        assert f"{account.name}: removed {name}" in lines
        assert not (account.storage / name).exists()
    assert (account.storage / stuck[1]).exists()
