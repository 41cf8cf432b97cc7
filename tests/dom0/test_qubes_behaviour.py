"""dom0 against Qubes as it really behaves (4.2, the oldest supported release):
cancel and engine failures that leave the carrier's upload running, a halted
passphrase VM, compression filters restore refuses, restores that fail but
exit 0, and verification that first proves the stored bytes are the
committed ones. Simulated Qubes, REAL carrier, real sshd and shell.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from dom0.errors import QbackupExit
from dom0.profile import profile_name
from dom0.qubes_backup import ABORT_SERVICE
from tests.dom0.conftest import CARRIER, PASSPHRASE, Dom0

PROFILE = profile_name(CARRIER)
DRILL_LIMIT = 30.0  # seconds from the signal to the end of the run


def backup(dom0: Dom0, *extra: str) -> int:
    return dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), *extra)


def assert_nothing_left(dom0: Dom0) -> None:
    """Nothing staged or committed on the server, no profile in dom0."""
    assert dom0.stored() == []
    staged = [path for path in dom0.account.storage.rglob("*") if path.is_file()
              and ".staged" in str(path)]
    assert staged == []
    assert list(dom0.sim.profile_dir.iterdir()) == []


def restore_calls(dom0: Dom0) -> list[tuple[str, ...]]:
    return [call for call in dom0.sim.calls if call[0] == "qvm-backup-restore"]


def test_sigterm_during_the_backup_ends_within_30_s_nothing_stored_no_profile(
        dom0: Dom0) -> None:
    # The drill: qubesd does not close the stream on Cancel, so without dom0
    # ending the carrier's upload this run would hang for the server's idle
    # timeout (ten minutes) and be SIGKILLed by systemd with the profile left.
    sent: list[float] = []

    def terminate(percent: float) -> None:
        if percent > 30 and not sent:
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGTERM)

    dom0.sim.interventions.on_progress = terminate
    assert backup(dom0, "work") == QbackupExit.SIGTERM
    assert time.monotonic() - sent[0] < DRILL_LIMIT
    assert_nothing_left(dom0)
    assert ("admin.backup.Cancel", PROFILE) in dom0.sim.calls
    assert ("run_service_for_stdio", CARRIER, ABORT_SERVICE) in dom0.sim.calls
    assert not dom0.sim.vms[CARRIER].running


def test_a_carrier_without_abort_is_killed_to_end_the_upload(dom0: Dom0, tmp_path: Path) -> None:
    script = tmp_path / "service-without-abort"
    script.write_text(f'#!/bin/sh\n[ "$1" = abort ] && exit 64\nexec {dom0.sim.carrier_script}'
                      ' "$@"\n')
    script.chmod(0o755)
    dom0.sim.carrier_script = script
    dom0.sim.interventions.engine_fails_at = 0.3
    dom0.sim.interventions.on_engine_waits = lambda: os.kill(os.getpid(), signal.SIGINT)
    assert backup(dom0, "work") == QbackupExit.SIGINT
    calls = dom0.sim.calls
    assert calls.index(("run_service_for_stdio", CARRIER, ABORT_SERVICE)) < \
        calls.index(("kill", CARRIER))
    assert dom0.logged(f"killing the carrier VM {CARRIER}")
    assert_nothing_left(dom0)


def test_an_abort_that_claims_success_while_qubes_still_waits_is_backed_by_a_kill(
        dom0: Dom0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dom0.qubes_backup.EXECUTE_GRACE", 1.0)
    script = tmp_path / "service-lying-abort"
    script.write_text(f'#!/bin/sh\n[ "$1" = abort ] && exit 0\nexec {dom0.sim.carrier_script}'
                      ' "$@"\n')
    script.chmod(0o755)
    dom0.sim.carrier_script = script
    dom0.sim.interventions.engine_fails_at = 0.3
    dom0.sim.interventions.on_engine_waits = lambda: os.kill(os.getpid(), signal.SIGTERM)
    assert backup(dom0, "work") == QbackupExit.SIGTERM
    assert ("kill", CARRIER) in dom0.sim.calls
    assert dom0.logged("but Qubes' backup still waits for it after 1 s")
    assert_nothing_left(dom0)


def test_a_hanging_abort_is_cut_short_and_the_carrier_killed(
        dom0: Dom0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dom0.qubes_backup.ABORT_TIMEOUT", 1.0)
    script = tmp_path / "service-hanging-abort"
    script.write_text(f'#!/bin/sh\n[ "$1" = abort ] && exec sleep 120\n'
                      f'exec {dom0.sim.carrier_script} "$@"\n')
    script.chmod(0o755)
    dom0.sim.carrier_script = script
    dom0.sim.interventions.engine_fails_at = 0.3
    dom0.sim.interventions.on_engine_waits = lambda: os.kill(os.getpid(), signal.SIGTERM)
    started = time.monotonic()
    assert backup(dom0, "work") == QbackupExit.SIGTERM
    assert time.monotonic() - started < DRILL_LIMIT
    assert ("kill", CARRIER) in dom0.sim.calls
    assert dom0.logged("did not end its upload within 1 s")
    assert_nothing_left(dom0)


def test_an_engine_failure_mid_stream_leaves_the_upload_waiting_until_dom0_ends_it(
        dom0: Dom0) -> None:
    # qubesd's archiving fails at 40%: it waits for the carrier's put, which
    # waits for data. The timer's stop (SIGTERM) must still end the run.
    waited: list[bool] = []

    def stop() -> None:
        waited.append(dom0.sim.vms[CARRIER].running)
        os.kill(os.getpid(), signal.SIGTERM)

    dom0.sim.interventions.engine_fails_at = 0.4
    dom0.sim.interventions.on_engine_waits = stop
    assert backup(dom0, "work") == QbackupExit.SIGTERM
    assert waited == [True]
    assert_nothing_left(dom0)
    history = [json.loads(line) for line in dom0.history.read_text().splitlines()]
    assert [run["outcome"] for run in history] == [
        "failed (exit 143): terminated (SIGTERM): the run stopped cleanly"]


def test_a_halted_passphrase_vm_is_started_for_the_backup_and_halted_after(dom0: Dom0) -> None:
    # qubesd asks the passphrase VM WITHOUT starting it: a halted one failed
    # every attempt ("Domain not running").
    dom0.sim.passphrase_vms["vault"] = f"  {PASSPHRASE}  "  # qubesd strips it
    assert not dom0.sim.vms["vault"].running
    assert dom0.run("-f", "vaulted", "-t", CARRIER, "--passphrase-vm", "vault", "work") == 0
    calls = dom0.sim.calls
    assert calls.index(("start", "vault")) < calls.index(("admin.backup.Execute", PROFILE))
    assert not dom0.sim.vms["vault"].running
    [name] = dom0.stored()
    # verify asks the vault too, cleans the answer like qubesd, halts it again
    assert dom0.run("verify", "-t", CARRIER, "--passphrase-vm", "vault", name) == 0
    assert not dom0.sim.vms["vault"].running
    # ... and the same passphrase from a file opens it: the stripped one was used.
    assert dom0.run("verify", "-t", CARRIER, "-p", str(dom0.passfile), name) == 0


def test_a_passphrase_with_an_inner_newline_is_refused_for_verify(dom0: Dom0) -> None:
    assert backup(dom0, "work") == 0
    [name] = dom0.stored()
    dom0.sim.passphrase_vms["vault"] = "two\nlines"
    assert dom0.run("verify", "-t", CARRIER, "--passphrase-vm", "vault", name) == \
        QbackupExit.USAGE
    assert dom0.logged("newline inside")
    assert restore_calls(dom0) == []


def test_the_compression_filter_is_recorded_and_passed_to_verify_and_restore(
        dom0: Dom0) -> None:
    assert backup(dom0, "--compression", "zstd", "work") == 0
    [name] = dom0.stored()
    [run] = [json.loads(line) for line in dom0.history.read_text().splitlines()]
    assert run["compression"] == "zstd"
    assert dom0.run("verify", "-t", CARRIER, "-p", str(dom0.passfile), name) == 0
    dom0.sim.remove_vm("work")
    assert dom0.run("restore", "-t", CARRIER, "-p", str(dom0.passfile), name) == 0
    for call in restore_calls(dom0):
        assert call[call.index("--compression-filter") + 1] == "zstd"
    # Without it, Qubes 4.2's restore refuses the backup (the simulator does too).
    code, output = dom0.sim.backup_restore(
        ["--verify-only", "-d", CARRIER, "-p", str(dom0.passfile),
         f"qbackup-carrier get {name}"], capture=True)
    assert code == 1 and b"Unusual compression filter 'zstd'" in output


def test_a_restore_that_cannot_extract_its_data_exits_4(dom0: Dom0) -> None:
    # Damaged in transit before the carrier hashed it: the server's digest
    # matches, Qubes' own HMAC does not. A normal restore only LOGS the error.
    dom0.sim.interventions.corrupt_stream_byte = 200_000
    assert backup(dom0, "work") == 0
    [name] = dom0.stored()
    dom0.sim.remove_vm("work")
    assert dom0.run("restore", "-t", CARRIER, "-p", str(dom0.passfile), name) == \
        QbackupExit.VERIFY
    assert dom0.logged(f"restore of {name} FAILED: Error extracting data")
    assert dom0.run("verify", "-t", CARRIER, "-p", str(dom0.passfile), name) == \
        QbackupExit.VERIFY


def test_a_restore_that_creates_no_vm_exits_4(dom0: Dom0) -> None:
    assert backup(dom0, "work") == 0
    [name] = dom0.stored()
    # --rename-conflicting would restore work as work1; without any option
    # Qubes refuses the conflict, with --skip-conflicting it skips it: fine.
    assert dom0.run("restore", "-t", CARRIER, "-p", str(dom0.passfile), name) == \
        QbackupExit.VERIFY
    assert dom0.run("restore", "-t", CARRIER, "-p", str(dom0.passfile), "--skip-conflicting",
                    name) == 0


def test_verify_refuses_bytes_other_than_those_dom0_committed(dom0: Dom0) -> None:
    assert backup(dom0, "work") == 0
    [name] = dom0.stored()
    # The server (or the carrier) swapped the backup and its digest record
    # consistently: only dom0's record of the commit tells.
    runs = [json.loads(line) for line in dom0.history.read_text().splitlines()]
    runs[0]["sha256"] = "0" * 64
    dom0.history.write_text("".join(json.dumps(run) + "\n" for run in runs))
    assert dom0.run("verify", "-t", CARRIER, "-p", str(dom0.passfile), name) == \
        QbackupExit.VERIFY
    assert dom0.logged("than dom0 recorded at commit time")
    assert restore_calls(dom0) == []


def test_verify_refuses_bytes_the_server_check_finds_changed(dom0: Dom0) -> None:
    assert backup(dom0, "work") == 0
    [name] = dom0.stored()
    path = dom0.account.storage / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert dom0.run("verify", "-t", CARRIER, "-p", str(dom0.passfile), name) == \
        QbackupExit.CORRUPTED
    assert dom0.logged(f"check via {CARRIER}: the stored backup is CORRUPTED")
    assert restore_calls(dom0) == []


def test_paranoid_mode_with_a_passphrase_vm_is_refused_in_one_line(dom0: Dom0) -> None:
    dom0.sim.passphrase_vms["vault"] = PASSPHRASE
    assert dom0.run("restore", "-t", CARRIER, "--passphrase-vm", "vault", "--paranoid-mode",
                    "laptop-20261122T235959Z") == QbackupExit.USAGE
    assert dom0.logged("--paranoid-mode needs the passphrase in a file (-p FILE)")
    assert restore_calls(dom0) == []
    assert ("run_service_for_stdio", "vault",
            f"qubes.BackupPassphrase+{PROFILE}") not in dom0.sim.calls
