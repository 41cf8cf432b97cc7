"""The Qubes simulator is no kinder than Qubes: what Qubes refuses, it refuses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dom0.errors import BackupEngineError, QubesError, VMNotFound
from tests.qubes_sim import SimulatedQubes, SimulationError
from tests.qubes_sim.stream import StreamError, build_stream, check_stream, vm_data

PROFILE = "include: [work]\ndestination_vm: carrier\ndestination_path: cat\n"


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedQubes:
    sim = SimulatedQubes(profile_dir=tmp_path, restore_dir=tmp_path / "r",
                         carrier_env={"PATH": "/usr/bin:/bin"})
    sim.add_vm("work", size=1000)
    sim.add_vm("carrier")
    return sim


def write_profile(sim: SimulatedQubes, text: str, mode: int = 0o600) -> None:
    path = sim.profile_dir / "p.conf"
    path.write_text(text)
    path.chmod(mode)


@pytest.mark.parametrize(("text", "mode", "error"), [
    (PROFILE + "passphrase_text: x\n", 0o644, SimulationError),  # readable passphrase
    (PROFILE, 0o600, QubesError),  # no passphrase source
    (PROFILE + "passphrase_text: x\npassphrase_vm: v\n", 0o600, QubesError),
    ("destination_vm: carrier\ndestination_path: cat\npassphrase_text: x\n", 0o600, QubesError),
    (PROFILE + "passphrase_text: x\ncolour: blue\n", 0o600, QubesError),
    (PROFILE.replace("[work]", "[nope]") + "passphrase_text: x\n", 0o600, VMNotFound),
])
def test_engine_refuses_bad_profiles(sim: SimulatedQubes, text: str, mode: int,
                                     error: type[Exception]) -> None:
    write_profile(sim, text, mode)
    with pytest.raises(error):
        sim.backup_info("p")


def test_engine_needs_the_profile_and_a_running_destination(sim: SimulatedQubes) -> None:
    with pytest.raises(QubesError, match="does not exist"):
        sim.backup_execute("p", lambda _: None)
    write_profile(sim, PROFILE + "passphrase_text: x\n")
    with pytest.raises(QubesError, match="not running"):
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


@pytest.mark.parametrize("destination", ["no-such-command put x", "false"])
def test_a_failing_destination_command_fails_execute(sim: SimulatedQubes,
                                                     destination: str) -> None:
    write_profile(sim, f"include: [work]\ndestination_vm: carrier\n"
                       f"destination_path: {destination}\npassphrase_text: pass\n")
    sim.vms["carrier"].running = True
    with pytest.raises(BackupEngineError, match="Writing backup to VM carrier failed"):
        sim.backup_execute("p", lambda _: None)
