"""The Qubes simulator is no kinder than Qubes: what Qubes refuses, it refuses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dom0.errors import BackupEngineError, QubesError, VMNotFound
from testbed.qubes_sim import SimulatedQubes, SimulationError
from testbed.qubes_sim.stream import StreamError, build_stream, check_stream, vm_data

PROFILE = "include: [work]\ndestination_vm: carrier\ndestination_path: cat\n"


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedQubes:
    sim = SimulatedQubes(profile_dir=tmp_path, restore_dir=tmp_path / "r",
                         dom0_home=tmp_path / "home", carrier_env={"PATH": "/usr/bin:/bin"})
    sim.add_vm("work", size=1000)
    sim.add_vm("carrier")
    return sim


def write_profile(sim: SimulatedQubes, text: str, mode: int = 0o600) -> None:
    path = sim.profile_dir / "p.conf"
    path.write_text(text)
    path.chmod(mode)


# qubes/api/admin.py _load_backup_profile and backup_execute (release4.2).
@pytest.mark.parametrize(("text", "mode", "error", "message"), [
    (PROFILE + "passphrase_text: x\n", 0o644, SimulationError, "not 600"),  # our own promise
    (PROFILE, 0o600, BackupEngineError, "specify passphrase_text or passphrase_vm"),
    ("destination_vm: carrier\ndestination_path: cat\npassphrase_text: x\n", 0o600,
     BackupEngineError, "missing 'include'"),
    (PROFILE.replace("carrier", "nowhere") + "passphrase_text: x\n", 0o600, BackupEngineError,
     "Invalid destination_vm"),
    (PROFILE + "passphrase_vm: vault\n", 0o600, BackupEngineError,
     "Domain not running (either powered off or paused): 'vault'"),
])
def test_execute_refuses_bad_profiles(sim: SimulatedQubes, text: str, mode: int,
                                      error: type[Exception], message: str) -> None:
    sim.add_vm("vault")
    sim.passphrase_vms["vault"] = "secret"
    sim.vms["carrier"].running = True
    write_profile(sim, text, mode)
    with pytest.raises(error, match=re.escape(message)):
        sim.backup_execute("p", lambda _: None)


def test_info_needs_no_passphrase_and_ignores_unknown_keys_and_vms(sim: SimulatedQubes) -> None:
    # skip_passphrase=True for Info; unknown profile keys are never read; an
    # include name no VM has selects nothing (a set comprehension over domains).
    write_profile(sim, "include: [work, nope]\ndestination_vm: carrier\n"
                       "destination_path: cat\ncolour: blue\n")
    summary = sim.backup_info("p").decode()
    assert "work" in summary and "nope" not in summary
    write_profile(sim, "include: []\ndestination_vm: carrier\ndestination_path: cat\n")
    assert "work" not in sim.backup_info("p").decode()  # an empty include: no VM


def test_passphrase_text_wins_over_passphrase_vm(sim: SimulatedQubes, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    sim.vms["carrier"].running = True
    write_profile(sim, f"include: [work]\ndestination_vm: carrier\ndestination_path: {target}\n"
                       "passphrase_text: pass\npassphrase_vm: vault\n")
    sim.backup_execute("p", lambda _: None)
    [written] = list(target.iterdir())
    assert check_stream(written.read_bytes(), "pass")


@pytest.mark.parametrize(("answer", "used"), [
    ("  pass  ", "pass"),  # .strip() both sides ("echo passphrase" implementations)
    ("pass\n\n", "pass"),
])
def test_passphrase_vm_answer_is_stripped_like_qubesd(sim: SimulatedQubes, tmp_path: Path,
                                                      answer: str, used: str) -> None:
    target = tmp_path / "target"
    target.mkdir()
    sim.add_vm("vault", running=True)
    sim.passphrase_vms["vault"] = answer
    sim.vms["carrier"].running = True
    write_profile(sim, f"include: [work]\ndestination_vm: carrier\ndestination_path: {target}\n"
                       "passphrase_vm: vault\n")
    sim.backup_execute("p", lambda _: None)
    [written] = list(target.iterdir())
    assert check_stream(written.read_bytes(), used)
    assert ("qubesd asks", "vault", "qubes.BackupPassphrase+p") in sim.calls


def test_passphrase_vm_answer_with_inner_newline_is_refused(sim: SimulatedQubes) -> None:
    sim.add_vm("vault", running=True)
    sim.passphrase_vms["vault"] = "one\ntwo"
    sim.vms["carrier"].running = True
    write_profile(sim, PROFILE + "passphrase_vm: vault\n")
    with pytest.raises(BackupEngineError):
        sim.backup_execute("p", lambda _: None)


def test_cancel_without_a_running_backup_is_refused(sim: SimulatedQubes) -> None:
    with pytest.raises(QubesError):
        sim.backup_cancel("p")


def test_start_and_shutdown_are_strict(sim: SimulatedQubes) -> None:
    with pytest.raises(QubesError):
        sim.shutdown("carrier")
    sim.start("carrier")
    with pytest.raises(QubesError):
        sim.start("carrier")


def test_qrexec_arguments_and_unknown_services_are_refused(sim: SimulatedQubes) -> None:
    with pytest.raises(SimulationError):
        sim.run_service_for_stdio("carrier", "qubes.BackupCarrier+a/b")
    with pytest.raises(SimulationError):
        sim.run_service_for_stdio("carrier", "qubes.VMShell")


def test_failed_service_raises_called_process_error(sim: SimulatedQubes, tmp_path: Path) -> None:
    script = tmp_path / "service"
    script.write_text("#!/bin/sh\necho \"$1 $QREXEC_REMOTE_DOMAIN\" >&2\nexit 75\n")
    script.chmod(0o755)
    sim.carrier_script = script
    with pytest.raises(subprocess.CalledProcessError) as caught:
        sim.run_service_for_stdio("carrier", "qubes.BackupCarrier+info")
    assert caught.value.returncode == 75 and caught.value.stderr == b"info dom0\n"


def test_stream_detects_wrong_passphrase_and_any_flipped_byte() -> None:
    data = b"".join(build_stream([("work", 3000)], "pass", b"salt", True))
    assert check_stream(data, "pass") == {"work": vm_data("work", 3000)}
    with pytest.raises(StreamError):
        check_stream(data, "other")
    for index in (0, 40, len(data) // 2, len(data) - 2):
        broken = bytearray(data)
        broken[index] ^= 1
        with pytest.raises(StreamError):
            check_stream(bytes(broken), "pass")
    with pytest.raises(StreamError):
        check_stream(data[:-100], "pass")


def test_restore_refuses_unsimulated_options(sim: SimulatedQubes) -> None:
    with pytest.raises(SimulationError):
        sim.backup_restore(["--ignore-size-limit", "-d", "carrier", "-p", "f", "cmd"], True)


def test_qubes_backup_writes_into_an_existing_directory(sim: SimulatedQubes,
                                                        tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    write_profile(sim, f"include: [work]\ndestination_vm: carrier\ndestination_path: {target}\n"
                       "passphrase_text: pass\n")
    sim.vms["carrier"].running = True
    progress: list[float] = []
    sim.backup_execute("p", progress.append)
    [written] = list(target.iterdir())
    assert written.name.startswith("qubes-backup-")
    assert check_stream(written.read_bytes(), "pass") == {"work": vm_data("work", 1000)}
    assert progress and progress == sorted(progress)


@pytest.mark.parametrize("destination", ["no-such-command put x", "'false'"])
def test_a_failing_destination_command_fails_execute(sim: SimulatedQubes,
                                                     destination: str) -> None:
    write_profile(sim, f"include: [work]\ndestination_vm: carrier\n"
                       f"destination_path: {destination}\npassphrase_text: pass\n")
    sim.vms["carrier"].running = True
    with pytest.raises(BackupEngineError, match="Writing backup to VM carrier failed"):
        sim.backup_execute("p", lambda _: None)


def test_on_cancel_qubesd_waits_for_the_vm_command_before_closing_the_stream(
        sim: SimulatedQubes, tmp_path: Path) -> None:
    # qubes/backup.py backup_do (release4.2): on cancel or failure it awaits
    # the VM's process, and closes the pipe only in the `finally` after it.
    seen_eof = tmp_path / "eof"
    write_profile(sim, f"include: [work]\ndestination_vm: carrier\n"
                       f"destination_path: sh -c \"cat >/dev/null; touch {seen_eof}\"\n"
                       "passphrase_text: pass\n")
    sim.vms["carrier"].running = True
    sim.interventions.on_progress = (
        lambda _: sim.backup_cancel("p") if "p" not in sim._cancelled else None)
    stdin_open: list[bool] = []

    def end_it() -> None:
        stdin_open.append(not sim._running["p"].stdin.closed)  # type: ignore[union-attr]
        sim.kill("carrier")  # what dom0 does when the carrier cannot abort

    sim.interventions.on_engine_waits = end_it
    with pytest.raises(BackupEngineError, match="Writing backup to VM carrier failed"):
        sim.backup_execute("p", lambda _: None)
    assert stdin_open == [True]
    assert not seen_eof.exists()  # the command never saw the end of its input
    assert not sim.vms["carrier"].running


def test_cancel_after_the_vm_command_ended_by_itself_reports_cancelled(
        sim: SimulatedQubes, tmp_path: Path) -> None:
    # The command reads nothing and exits 0 once the cancel was sent: qubesd
    # then re-raises the cancellation (qubes/api/admin.py backup_execute).
    cancelled = tmp_path / "cancelled"
    write_profile(sim, PROFILE.replace(
        "cat", f"sh -c \"exec <&-; while [ ! -e {cancelled} ]; do sleep 0.05; done\"")
        + "passphrase_text: pass\n")
    sim.vms["carrier"].running = True

    def cancel(_: float) -> None:
        if "p" not in sim._cancelled:
            sim.backup_cancel("p")
            cancelled.touch()

    sim.interventions.on_progress = cancel
    with pytest.raises(BackupEngineError, match="^Backup cancelled$"):
        sim.backup_execute("p", lambda _: None)


def backup_into(sim: SimulatedQubes, directory: Path, compression: str) -> Path:
    directory.mkdir()
    write_profile(sim, f"include: [work]\ndestination_vm: carrier\ndestination_path: {directory}\n"
                       f"passphrase_text: pass\ncompression: {compression}\n")
    sim.vms["carrier"].running = True
    sim.backup_execute("p", lambda _: None)
    [written] = list(directory.iterdir())
    return written


def test_restore_runs_the_command_three_times_and_ignores_its_status(
        sim: SimulatedQubes, tmp_path: Path) -> None:
    # qubesadmin/backup/restore.py: header files, qubes.xml, then the data;
    # qubes.Restore exits with tar2qfile's status, not the command's.
    written = backup_into(sim, tmp_path / "target", "true")
    passfile = tmp_path / "pass"
    passfile.write_text("pass\n")
    location = f'sh -c "cat {written}; exit 3"'
    code, output = sim.backup_restore(["--verify-only", "-d", "carrier", "-p", str(passfile),
                                       location], capture=True)
    assert (code, sim.restore_runs) == (0, 3)
    assert b"-> Verifying work..." in output


@pytest.mark.parametrize(("compression", "options", "expected"), [
    ("gzip", [], 0), ("bzip2", [], 0), ("xz", [], 0),
    ("zstd", [], 1),  # 4.2: "Unusual compression filter" (4.3.13+ would take it)
    ("zstd", ["--compression-filter", "zstd"], 0),
    ("zstd", ["-Z", "gzip"], 1),  # forced, but the wrong program: extraction fails
    ("lz4", ["-Z", "lz4"], 1),  # not installed in the simulated dom0
])
def test_restore_refuses_the_compression_filters_qubes_4_2_refuses(
        sim: SimulatedQubes, tmp_path: Path, compression: str, options: list[str],
        expected: int) -> None:
    written = backup_into(sim, tmp_path / "target", compression)
    passfile = tmp_path / "pass"
    passfile.write_text("pass\n")
    code, _ = sim.backup_restore(["--verify-only", *options, "-d", "carrier", "-p",
                                  str(passfile), f"cat {written}"], capture=True)
    assert code == expected


def test_a_normal_restore_logs_an_extraction_error_and_exits_0(sim: SimulatedQubes,
                                                               tmp_path: Path) -> None:
    # restore_do: VMs are created first; a failed extraction is only logged.
    written = backup_into(sim, tmp_path / "target", "true")
    data = bytearray(written.read_bytes())
    data[-200] ^= 0xFF
    written.write_bytes(bytes(data))
    passfile = tmp_path / "pass"
    passfile.write_text("pass\n")
    sim.remove_vm("work")
    code, output = sim.backup_restore(["-d", "carrier", "-p", str(passfile), f"cat {written}"],
                                      capture=False)
    assert code == 0 and b"Error extracting data" in output
    assert "work" in sim.vms  # created, but without its data
    code, _ = sim.backup_restore(["--verify-only", "-d", "carrier", "-p", str(passfile),
                                  f"cat {written}"], capture=True)
    assert code == 1


def test_kill_ends_every_process_in_the_vm_and_refuses_a_halted_one(sim: SimulatedQubes) -> None:
    with pytest.raises(QubesError, match="powered off"):
        sim.kill("carrier")
    sim.vms["carrier"].running = True
    sim.kill("carrier")
    assert not sim.vms["carrier"].running


def test_engine_needs_the_profile_and_a_running_destination(sim: SimulatedQubes) -> None:
    with pytest.raises(BackupEngineError, match="does not exist"):
        sim.backup_execute("p", lambda _: None)
    write_profile(sim, PROFILE + "passphrase_text: x\n")
    # qubes.Backup is started without autostart (qubes/vm/qubesvm.py run_service).
    with pytest.raises(BackupEngineError, match="Domain not running"):
        sim.backup_execute("p", lambda _: None)


@pytest.mark.parametrize(("release", "options", "expected"), [
    ("4.2", [], 1), ("4.3", [], 0),  # 4.3.13+ takes an installed zstd from the header
    ("4.2", ["--compression-filter", "zstd"], 0), ("4.3", ["--compression-filter", "zstd"], 0),
])
def test_what_qbackup_passes_restores_zstd_on_both_releases(
        sim: SimulatedQubes, tmp_path: Path, release: str, options: list[str],
        expected: int) -> None:
    # qbackup always passes --compression-filter for a named filter: that
    # works on 4.2 and 4.3 alike (a forced value skips the header check).
    written = backup_into(sim, tmp_path / "target", "zstd")
    passfile = tmp_path / "pass"
    passfile.write_text("pass\n")
    sim.restore_release = release
    code, _ = sim.backup_restore(["--verify-only", *options, "-d", "carrier", "-p",
                                  str(passfile), f"cat {written}"], capture=True)
    assert code == expected


def test_the_vm_list_stays_as_first_listed_until_refreshed(sim: SimulatedQubes) -> None:
    # qubesadmin/app.py VMCollection: one admin.vm.List per app; VMs another
    # process makes or removes show only after clear_cache(). A kinder list
    # hid that every successful restore was reported failed.
    assert sim.vm_names() == {"work", "carrier"}
    sim.add_vm("made-elsewhere")
    sim.remove_vm("work")
    assert sim.vm_names() == {"work", "carrier"}
    assert not sim.vm_exists("made-elsewhere")
    with pytest.raises(VMNotFound):
        sim.is_running("made-elsewhere")
    assert sim.vm_exists("work") and sim.is_running("work") is False  # 'NA'
    with pytest.raises(QubesError, match="No such domain"):
        sim.start("work")
    assert sim.calls.count(("admin.vm.List",)) == 1
    sim.refresh_vms()
    assert sim.vm_names() == {"made-elsewhere", "carrier"}
    sim.remove_vm("carrier")
    sim.new_process()  # the next qbackup run starts with nothing cached
    assert sim.vm_names() == {"made-elsewhere"}
