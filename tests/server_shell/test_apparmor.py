"""The AppArmor profile parses, and says only what it should."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testbed.server import REPO

PROFILE = REPO / "apparmor" / "usr.sbin.qbackup-shell"


def parse(path: Path) -> subprocess.CompletedProcess[bytes]:
    """Compile PATH without loading it (-Q) or caching it (-K)."""
    return subprocess.run(
        ["apparmor_parser", "-Q", "-K", str(path)], capture_output=True, timeout=60, check=False
    )


def rules() -> list[str]:
    """The profile's lines without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in PROFILE.read_text().splitlines())
    return [line for line in lines if line]


def test_profile_compiles() -> None:
    result = parse(PROFILE)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "breakage",
    [
        lambda text: text.rsplit("}", 1)[0],  # the profile never closes
        lambda text: text.replace("rwkl,", "rwkl"),  # a rule without its comma
        lambda text: text.replace("@{QBACKUP_STORAGE}=", "@{QBACKUP_STORAGE}"),
    ],
    ids=["no-closing-brace", "missing-comma", "bad-variable"],
)
def test_a_broken_copy_does_not_compile(tmp_path: Path, breakage) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "usr.sbin.qbackup-shell"
    broken.write_text(breakage(PROFILE.read_text()))
    assert parse(broken).returncode != 0


def test_profile_attaches_to_the_installed_shell() -> None:
    assert "profile qbackup-shell /usr/sbin/qbackup-shell {" in rules()


def test_profile_executes_nothing_but_the_interpreter() -> None:
    executing = [rule for rule in rules() if re.search(r"\s[a-z]*[iupcU]x[a-z]*,$", rule)]
    assert executing == ["/usr/bin/python3* rix,"]


def test_profile_opens_no_network_sockets_but_syslog() -> None:
    network = [rule for rule in rules() if rule.startswith(("network", "unix"))]
    assert network == ["network unix dgram,", "unix (create, connect, send) type=dgram,"]


def test_profile_writes_only_under_the_storage_root_and_dev_log() -> None:
    writable = [
        rule
        for rule in rules()
        if not rule.startswith(("deny", "signal", "network", "unix"))
        and re.search(r"\s[rmkl]*w[rmkl]*,$", rule)
    ]
    assert writable == [
        "owner @{QBACKUP_STORAGE}[^.]** rwkl,",
        "owner @{QBACKUP_STORAGE}.tmp-[0-9a-f]* rwkl,",
        "owner @{QBACKUP_STORAGE}.[^.]*.sha256 rwl,",
        "owner @{QBACKUP_STORAGE}.[^.]*.pending rwkl,",
        "owner @{QBACKUP_STORAGE}.[^.]*.pending-sha256 rwl,",
        "owner @{QBACKUP_STORAGE}.[^.]*.partial rwkl,",
        "owner @{QBACKUP_STORAGE}.[^.]*.partial-state rw,",
        "owner @{QBACKUP_STORAGE}.qbackup-upload.lock rwk,",
        "owner @{QBACKUP_STORAGE}.qbackup-sessions.lock rwk,",
        "/dev/log w,",
        "/run/systemd/journal/dev-log w,",
    ]
    assert "deny @{QBACKUP_STORAGE}.ssh/** rwl," in rules()


def test_every_storage_rule_is_owner_only() -> None:
    # Threat: `@{HOMEDIRS}/*/** rwkl` covered every user's home; with `owner`
    # only the files of the account the shell runs as are reachable.
    allowing = [
        rule for rule in rules()
        if "@{QBACKUP_STORAGE}" in rule and not rule.startswith(("@{QBACKUP_STORAGE}=", "deny"))
    ]
    assert len(allowing) == 10
    assert all(rule.startswith("owner @{QBACKUP_STORAGE}") for rule in allowing)


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """Given an AppArmor path glob (the subset this profile uses), return an
    equivalent regex: ** crosses '/', * and [...] do not."""
    pattern = ""
    index = 0
    while index < len(glob):
        if glob.startswith("**", index):
            pattern += ".*"
            index += 2
        elif glob[index] == "*":
            pattern += "[^/]*"
            index += 1
        elif glob[index] == "[":
            close = glob.index("]", index)
            pattern += glob[index : close + 1]
            index = close + 1
        else:
            pattern += re.escape(glob[index])
            index += 1
    return re.compile(pattern)


HOME = "/home/backup-laptop/"


def writable_in_home(path: str) -> bool:
    """Whether the profile's owner rules let the shell write PATH (a path
    below HOME, the default storage root), deny rules winning."""
    matching = []
    for rule in rules():
        words = rule.rstrip(",").split(" ")
        if len(words) < 2 or "@{QBACKUP_STORAGE}" not in words[-2] or "w" not in words[-1]:
            continue
        glob = words[-2].replace("@{QBACKUP_STORAGE}", HOME)
        if glob_to_regex(glob).fullmatch(path):
            matching.append(words[0] == "deny")
    return bool(matching) and not any(matching)


@pytest.mark.parametrize(
    "relative",
    [
        "backup", "laptop/2026-11-23", "a/b/c/d", "a/", "a/b/",
        ".tmp-0123456789abcdef", "a/.tmp-0123456789abcdef",
        ".backup.sha256", "a/.x.sha256", ".backup.pending", ".backup.pending-sha256",
        ".a.pending.sha256", "a/.b.pending", ".qbackup-upload.lock",
        ".backup.partial", ".backup.partial-state", "a/.b.partial", ".qbackup-sessions.lock",
    ],
)
def test_profile_lets_the_shell_write_its_own_files(relative: str) -> None:
    assert writable_in_home(HOME + relative)


@pytest.mark.parametrize(
    "relative",
    [
        ".ssh/authorized_keys", ".ssh/", ".ssh/rc", ".profile", ".bashrc",
        ".bash_logout", ".config/autostart/x", ".local/bin/x", ".pam_environment",
        ".forward", ".tmp-/x", ".ssh.sha256/../.ssh/x",
    ],
)
def test_profile_keeps_the_accounts_own_dot_files_read_only(relative: str) -> None:
    # Threat: the profile allowed writing anything in the home, e.g. ~/.ssh/rc
    # (run by sshd at each login) or ~/.profile. Residual risk: write access
    # under non-dot top-level entries is by prefix, not by exact file kind.
    assert not writable_in_home(HOME + relative)


def test_profile_lets_the_shell_end_only_its_own_kind() -> None:
    # resume ends a left-behind qbackup-shell of the same account; nothing else.
    sending = [rule for rule in rules() if rule.startswith("signal (send)")]
    assert sending == ["signal (send) set=(term, kill) peer=qbackup-shell,"]


def test_profile_grants_no_capability() -> None:
    # Threat: the admin's setuid/setgid (prune) lived in the shell's profile;
    # prune now lives in qbackup-server, which sshd never runs.
    assert [rule for rule in rules() if rule.startswith("capability")] == []


def test_profile_names_every_file_kind_the_storage_module_makes() -> None:
    from server_shell import storage

    for suffix in storage.SUFFIXES.values():
        assert writable_in_home(f"{HOME}.backup{suffix}"), suffix
    for lock in (storage.UPLOAD_LOCK, storage.SESSIONS_LOCK):
        assert writable_in_home(HOME + lock), lock
