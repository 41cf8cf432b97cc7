"""Every way a backup must fail: the right exit code, a journal line, nothing stored.

Simulated Qubes, REAL carrier, real sshd and shell; each test also checks
that the passphrase profile is gone and nothing reached the server's disk.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dom0.errors import QbackupExit
from dom0.profile import profile_name
from testbed.carrier import write_carrier_config
from testbed.server import free_port
from tests.dom0.conftest import CARRIER, MIB, Dom0


def backup(dom0: Dom0, *extra: str) -> int:
    return dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), *extra)


def assert_nothing_stored(dom0: Dom0) -> None:
    assert dom0.stored() == []
    assert list(dom0.sim.profile_dir.iterdir()) == []


def assert_untouched(dom0: Dom0) -> None:
    """Refused before anything happened: no carrier start, no Qubes backup call."""
    assert_nothing_stored(dom0)
    touched = {call[0] for call in dom0.sim.calls}
    assert not touched & {"start", "admin.backup.Info", "admin.backup.Execute",
                          "run_service_for_stdio"}


TEMPFAIL_OUTCOME = f"failed (exit 75): {QbackupExit.TEMPFAIL.meaning}"


def history_outcomes(dom0: Dom0) -> list[str]:
    if not dom0.history.exists():
        return []
    return [json.loads(line)["outcome"] for line in dom0.history.read_text().splitlines()]


def test_unknown_vm_is_a_qubes_error_and_touches_nothing(dom0: Dom0) -> None:
    assert backup(dom0, "work", "no-such-vm") == QbackupExit.QUBES
    assert dom0.logged("the VM to back up no-such-vm does not exist")
    assert_untouched(dom0)


def test_missing_carrier_is_a_qubes_error_and_touches_nothing(dom0: Dom0) -> None:
    dom0.sim.remove_vm(CARRIER)
    assert backup(dom0, "work") == QbackupExit.QUBES
    assert dom0.logged(f"the carrier VM {CARRIER} does not exist")
    assert_untouched(dom0)


@pytest.mark.parametrize(("mode", "content", "problem"), [
    (0o640, "secret\n", "accessible by group/others"),
    (0o604, "secret\n", "accessible by group/others"),
    (0o620, "secret\n", "accessible by group/others"),
    (0o600, "", "is empty"),
    (0o600, "\nsecret\n", "is empty"),
    (None, None, "does not exist"),
])
def test_passphrase_file_is_refused(dom0: Dom0, mode: int | None, content: str | None,
                                    problem: str) -> None:
    if mode is None:
        dom0.passfile.unlink()
    else:
        dom0.passfile.write_text(content or "")
        dom0.passfile.chmod(mode)
    assert backup(dom0, "work") == QbackupExit.USAGE
    assert dom0.logged(problem)
    assert_untouched(dom0)


def test_unparsable_command_line_still_reaches_the_journal(dom0: Dom0) -> None:
    assert dom0.run("backup", "--no-such-option") == QbackupExit.USAGE
    assert dom0.logged("invalid command line")


def test_passphrase_symlink_is_refused(dom0: Dom0) -> None:
    link = dom0.passfile.with_name("link")
    link.symlink_to(dom0.passfile)
    assert dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(link), "work") == QbackupExit.USAGE
    assert_untouched(dom0)


@pytest.mark.parametrize("prefix", [
    "", "../etc", "a b", "$(reboot)", "`id`", "x;rm -rf ~", "-rf", ".hidden", "a/../b",
    "a\nqbackup-carrier put evil", "ümlaut", "a//b", "trailing/", "x" * 190, "'quoted'",
])
def test_bad_prefix_is_refused_before_anything_runs(dom0: Dom0, prefix: str) -> None:
    assert backup(dom0, f"--prefix={prefix}", "work") == QbackupExit.USAGE
    assert dom0.logged("-f/--prefix: ")
    assert_untouched(dom0)


def test_server_full_is_reported_by_info_before_the_backup(dom0: Dom0) -> None:
    dom0.server.write_shell_config("[storage]\nreserve = 100T\n")
    try:
        assert backup(dom0, "work") == QbackupExit.NO_SPACE
    finally:
        dom0.server.write_shell_config("")
    assert dom0.logged("the server has 0 B available but the backup may need 2.0 MiB")
    assert "admin.backup.Execute" not in {call[0] for call in dom0.sim.calls}
    assert_nothing_stored(dom0)
    assert not dom0.sim.vms[CARRIER].running  # started for info, halted again


def test_unreachable_server_is_a_temporary_failure_and_retries(dom0: Dom0) -> None:
    real_port = dom0.server.port
    dom0.server.port = free_port()
    try:
        write_carrier_config(dom0.server, dom0.account, dom0.carrier_config.parent)
    finally:
        dom0.server.port = real_port
    assert backup(dom0, "--retries", "1", "--retry-delay", "0", "work") == QbackupExit.TEMPFAIL
    assert dom0.logged("unreachable")
    assert dom0.logged("retrying")
    assert history_outcomes(dom0) == [TEMPFAIL_OUTCOME] * 2
    assert dom0.logged("backup cli:laptop: 2 attempt(s) in ")
    assert_nothing_stored(dom0)


def test_carrier_dying_mid_stream_fails_the_backup_and_stores_nothing(dom0: Dom0) -> None:
    dom0.sim.interventions.kill_carrier_at = 0.5
    assert backup(dom0, "work") == QbackupExit.BACKUP_FAILED
    assert dom0.logged(f"Writing backup to VM {CARRIER} failed")
    assert dom0.logged("progress laptop-")  # it did start streaming
    assert dom0.logged("outcome: FAILED (exit 1): Writing backup to VM")
    assert dom0.logged("backup cli:laptop: 1 attempt(s) in ")
    assert history_outcomes(dom0) == [
        f"failed (exit 1): {QbackupExit.BACKUP_FAILED.meaning}"]
    assert_nothing_stored(dom0)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, QbackupExit.SIGTERM),
                                              (signal.SIGINT, QbackupExit.SIGINT)])
def test_signal_during_backup_sends_cancel_and_removes_the_profile(
        dom0: Dom0, signum: int, code: int) -> None:
    sent: list[bool] = []

    def interrupt(percent: float) -> None:
        if percent > 30 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)

    dom0.sim.interventions.on_progress = interrupt
    assert backup(dom0, "work") == code
    assert ("admin.backup.Cancel", profile_name(CARRIER)) in dom0.sim.calls
    assert dom0.logged("cancelling the backup")
    assert_nothing_stored(dom0)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_lock_held_by_another_run_exits_at_once_and_touches_nothing(dom0: Dom0) -> None:
    dom0.lock_dir.mkdir()
    with open(dom0.lock_dir / f"carrier-{CARRIER}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert backup(dom0, "work") == QbackupExit.LOCKED
    assert dom0.logged(f"another qbackup run is using carrier {CARRIER}")
    assert_untouched(dom0)
    assert backup(dom0, "work") == 0  # released: the next run works


def test_corrupted_stream_is_caught_by_verify(dom0: Dom0) -> None:
    dom0.sim.interventions.corrupt_stream_byte = MIB
    assert backup(dom0, "--verify", "work") == QbackupExit.VERIFY
    [name] = dom0.stored()
    assert dom0.logged(f"verification of {name} FAILED")


def test_verify_with_the_wrong_passphrase_fails(dom0: Dom0) -> None:
    assert backup(dom0, "work") == 0
    [name] = dom0.stored()
    wrong = dom0.passfile.with_name("wrong")
    wrong.write_text("not the passphrase\n")
    wrong.chmod(0o600)
    assert dom0.run("verify", "-t", CARRIER, "-p", str(wrong), name) == QbackupExit.VERIFY
    assert dom0.logged("wrong passphrase")


def test_stale_profile_of_a_killed_run_is_replaced(dom0: Dom0) -> None:
    dom0.sim.profile_dir.mkdir(exist_ok=True)
    stale = dom0.sim.profile_dir / f"{profile_name(CARRIER)}.conf"
    stale.write_text("passphrase_text: old\n")
    assert backup(dom0, "work") == 0
    assert not stale.exists()


def test_tampering_is_detected_by_status_remote_and_the_next_backup(dom0: Dom0) -> None:
    assert backup(dom0, "work") == 0
    [first] = dom0.stored()
    dom0.sim.vms["work"].size = MIB
    assert dom0.run("-f", "other", "-t", CARRIER, "-p", str(dom0.passfile), "work") == 0
    stored = {name: dom0.account.storage / name for name in dom0.stored()}
    [second] = [name for name in stored if name != first]
    with open(stored[first], "r+b") as handle:  # a broken or hostile server truncates
        handle.truncate(1000)
    stored[second].unlink()  # ... and deletes
    assert dom0.run("status", "--remote") == QbackupExit.VERIFY
    assert dom0.logged(f"{first}: shrank")
    assert dom0.logged(f"{second}: vanished from the server")
    before = set(dom0.stored())
    assert backup(dom0, "work") == QbackupExit.VERIFY  # backs up, then reports
    assert len(set(dom0.stored()) - before) == 1


def write_hostile_service(tmp: Path, body: str) -> Path:
    script = tmp / "qubes.BackupCarrier.hostile"
    script.write_text("#!/bin/sh\ncat >/dev/null\n" + body)
    script.chmod(0o755)
    return script


HOSTILE = {
    "huge": ("yes '{\"name\":\"a\",\"size\":1,\"sha256\":null,\"mtime\":null}' | head -c 40000000",
             0, QbackupExit.CARRIER),
    "escape-in-name": ("printf '{\"name\":\"\\033]0;pwned\\007\",\"size\":1,\"sha256\":null,"
                       "\"mtime\":null}\\n{\"end\":true,\"count\":1,\"truncated\":false}\\n'",
                       0, QbackupExit.CARRIER),
    "invalid-utf8": ("printf '\\377\\376\\033[2J\\n'", 0, QbackupExit.CARRIER),
    "escape-in-stderr": ("printf 'refused \\033[31mRED\\033[0m \\r\\nforged: qbackup ok\\377' >&2;"
                         " exit 69", 0, QbackupExit.CARRIER),
    "count-mismatch": ("printf '{\"end\":true,\"count\":5,\"truncated\":false}\\n'",
                       0, QbackupExit.CARRIER),
    "long-line": ("head -c 10000 /dev/zero | tr '\\0' 'a'; echo", 0, QbackupExit.CARRIER),
    "deep-json": ("head -c 4000 /dev/zero | tr '\\0' '['; echo", 0, QbackupExit.CARRIER),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_carrier_listing_is_refused_and_never_printed_raw(
        dom0: Dom0, tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str) -> None:
    body, _, code = HOSTILE[case]
    dom0.sim.carrier_script = write_hostile_service(tmp_path, body)
    assert dom0.run("list", "-t", CARRIER) == code
    out, err = capfd.readouterr()
    for text in [out, err, *dom0.lines()]:
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
        assert "\ufffd" not in text
        assert len(text) < 5000
    assert dom0.lines()  # the refusal is in the journal


def test_hostile_carrier_info_stops_the_backup_before_qubes_runs(
        dom0: Dom0, tmp_path: Path) -> None:
    dom0.sim.carrier_script = write_hostile_service(
        tmp_path, "printf '{\"protocol\":1,\"free\":-5}\\n'")
    assert backup(dom0, "work") == QbackupExit.CARRIER
    assert "admin.backup.Execute" not in {call[0] for call in dom0.sim.calls}
    assert_nothing_stored(dom0)


BAD_NAME = "invalid backup name: use a name `qbackup list` shows (exit 2)"


@pytest.mark.parametrize(("command", "message"), [
    (("verify", "-p", "PASSFILE", "$(reboot)"), BAD_NAME),
    (("restore", "-p", "PASSFILE", "a;b"), BAD_NAME),
    (("check", "../x"), BAD_NAME),
    (("list", "a b"), BAD_NAME),
    (("verify", "-p", "PASSFILE", "x\nqbackup-carrier put evil"), BAD_NAME),
    (("restore", "-p", "PASSFILE", "a-20261122T235959Z", "--", "--ignore-size-limit"),
     "not a VM name: '--ignore-size-limit' (exit 2)"),
    (("restore", "-p", "PASSFILE", "--exclude", "-d", "a-20261122T235959Z"),
     "invalid command line (exit 2): see qbackup --help"),
])
def test_bad_backup_names_never_reach_the_carrier(dom0: Dom0, command: tuple[str, ...],
                                                  message: str) -> None:
    argv = [str(dom0.passfile) if word == "PASSFILE" else word for word in command]
    assert dom0.run(argv[0], "-t", CARRIER, *argv[1:]) == QbackupExit.USAGE
    assert dom0.logged(message)
    assert_untouched(dom0)
    assert "qvm-backup-restore" not in {call[0] for call in dom0.sim.calls}


def test_sigterm_between_attempts_stops_cleanly(dom0: Dom0,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_port = dom0.server.port
    dom0.server.port = free_port()
    try:
        write_carrier_config(dom0.server, dom0.account, dom0.carrier_config.parent)
    finally:
        dom0.server.port = real_port
    real_sleep = time.sleep

    def terminated_while_waiting(seconds: float) -> None:
        # The signal comes exactly while the run waits its 30 s to retry.
        if seconds == 30:
            os.kill(os.getpid(), signal.SIGTERM)
        real_sleep(min(seconds, 5))

    monkeypatch.setattr(time, "sleep", terminated_while_waiting)
    code = backup(dom0, "--retries", "3", "--retry-delay", "30", "work")
    assert code == QbackupExit.SIGTERM
    assert dom0.logged("stopped by signal 15")
    # The signal came while waiting to retry: one attempt, no second one.
    assert history_outcomes(dom0) == [TEMPFAIL_OUTCOME]
    assert_nothing_stored(dom0)
    assert not dom0.sim.vms[CARRIER].running  # the finally blocks still ran


def test_config_errors_name_file_and_key_in_the_journal(dom0: Dom0) -> None:
    path = dom0.passfile.parent / "qbackup.yaml"
    path.write_text(f"jobs:\n  daily:\n    carrier: {CARRIER}\n    prefix: 'bad prefix'\n"
                    "    passphrase_file: /x\n    retries: many\n")
    assert dom0.run("backup", "--job", "daily", "--config", str(path)) == QbackupExit.USAGE
    assert dom0.logged(f"{path}:4: jobs.daily.prefix: invalid prefix")
    assert dom0.logged(f"{path}:6: jobs.daily.retries: expected an integer from 0 to 10")
    assert dom0.logged("configuration refused: 2 problem(s) (exit 2)")
    assert dom0.run("backup", "--job", "weekly", "--config", str(path)) == QbackupExit.USAGE
    assert_untouched(dom0)


def test_a_broken_carrier_config_has_its_own_code(dom0: Dom0) -> None:
    dom0.carrier_config.write_text("host: [unclosed\n")
    assert dom0.run("list", "-t", CARRIER) == QbackupExit.CARRIER_CONFIG
    assert dom0.logged("list via sys-backup: the carrier's configuration is missing or invalid:"
                       " see qbackup-carrier --help in the carrier")


def test_a_refused_login_has_its_own_code(dom0: Dom0, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    dom0.carrier_config.write_text(
        dom0.carrier_config.read_text().replace(str(dom0.server.client_key), str(stranger)))
    assert dom0.run("list", "-t", CARRIER) == QbackupExit.LOGIN_REFUSED
    assert dom0.logged("list via sys-backup: the server refused the carrier's login key:"
                       " install the carrier's public key for the backup account")


def test_a_deeply_nested_info_reply_fails_the_backup_with_a_record(dom0: Dom0,
                                                                    tmp_path: Path) -> None:
    # Before: RecursionError, a traceback, exit 1, no history record.
    dom0.sim.carrier_script = write_hostile_service(
        tmp_path, "head -c 4000 /dev/zero | tr '\\0' '['; echo")
    assert backup(dom0, "work") == QbackupExit.CARRIER
    # The first reply a backup reads is the carrier's destination list.
    assert dom0.logged("the carrier sent a malformed destination list")
    assert history_outcomes(dom0) == [
        f"failed (exit 8): {QbackupExit.CARRIER.meaning}"]
    assert_nothing_stored(dom0)


@pytest.mark.parametrize("command", [["list"], ["check", "p-20260101T000000Z"],
                                     ["verify", "p-20260101T000000Z"],
                                     ["restore", "p-20260101T000000Z"]])
def test_a_carrier_that_never_answers_meets_the_jobs_deadline(dom0: Dom0, tmp_path: Path,
                                                              command: list[str]) -> None:
    # Before: no deadline; `qbackup list` waited as long as the carrier did;
    # verify waited the default 300 s whatever the job's answer_timeout.
    dom0.sim.carrier_script = write_hostile_service(tmp_path, "sleep 600\n")
    path = tmp_path / "qbackup.yaml"
    path.write_text(f"jobs:\n  daily:\n    carrier: {CARRIER}\n    prefix: p\n"
                    f"    passphrase_file: {dom0.passfile}\n    answer_timeout: 1\n")
    assert dom0.run(*command, "--job", "daily", "--config", str(path)) == QbackupExit.TEMPFAIL
    # Each of these first asks for the listing: its deadline is the job's.
    assert dom0.logged(f"list via {CARRIER}: no answer within 1 s; stopped waiting (try again"
                       " later)")


def test_a_carrier_claiming_a_cut_listing_cannot_hide_a_vanished_backup(
        dom0: Dom0, tmp_path: Path) -> None:
    # Before: {"count":0,"end":true,"truncated":true} made status --remote say
    # all was well although the recorded backup was gone.
    dom0.history.write_text(json.dumps({
        "job": "nightly", "carrier": CARRIER, "name": "nightly-20260101T000000Z",
        "size": 1048576, "sha256": "a" * 64, "start": 1.0, "end": 2.0, "outcome": "ok"}) + "\n")
    dom0.sim.carrier_script = write_hostile_service(
        tmp_path, "printf '{\"count\":0,\"end\":true,\"truncated\":true}\\n'")
    assert dom0.run("status", "--remote") == QbackupExit.CARRIER
    assert dom0.logged("the carrier's listing claims a cut the server never makes")
