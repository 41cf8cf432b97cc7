"""The drills of one Qubes pass to two servers, at dom0's level: the
simulated dom0 drives the REAL carrier, whose carrier.yaml names the
destinations `home` and `offsite` (two accounts on the real sshd and shell,
offsite behind a relay the test takes down; testbed/destinations.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dom0 import history
from dom0.errors import QbackupExit
from testbed.destinations import HOME, OFFSITE, TwoDestinations
from testbed.qubes_sim import stream
from testbed.server import free_port
from tests.dom0.conftest import CARRIER, MIB, Dom0

# Short enough that a destination that is down is given up on quickly.
SETTINGS: dict[str, object] = {"keepalive_interval": 1, "keepalive_count_max": 2,
                               "progress_timeout": 10, "resume_window": 5}


@pytest.fixture
def two(dom0: Dom0) -> Iterator[TwoDestinations]:
    """dom0's carrier, now with the destinations home and offsite."""
    made = TwoDestinations.create(dom0.server, dom0.carrier_config)
    made.write_config(**SETTINGS)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The desktop notifications qbackup raises, as 'SUMMARY: BODY'."""
    shown: list[str] = []

    def notify(summary: str, body: str = "", critical: bool = False) -> bool:
        shown.append(f"{summary}: {body}")
        return True

    monkeypatch.setattr("dom0.processes.notify", notify)
    return shown


def stored(two: TwoDestinations, destination: str) -> dict[str, bytes]:
    """Return the backups on DESTINATION's disk: name -> bytes."""
    root = two.account(destination).storage
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*")
            if path.is_file() and not any(part.startswith(".")
                                          for part in path.relative_to(root).parts)}


def backup(dom0: Dom0) -> int:
    return dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), "work")


def test_one_destination_unreachable_from_the_start_is_a_partial_backup_named_everywhere(
        dom0: Dom0, two: TwoDestinations, notes: list[str]) -> None:
    two.proxy.down()
    assert backup(dom0) == QbackupExit.PARTIAL
    [(name, data)] = stored(two, HOME).items()
    assert stored(two, OFFSITE) == {}
    runs = history.read_runs(dom0.history)
    assert [(run.destination, run.outcome) for run in runs][0] == (HOME, history.OUTCOME_OK)
    [ok] = [run for run in runs if run.destination == HOME]
    assert (ok.name, ok.size, ok.sha256) == (name, len(data), hashlib.sha256(data).hexdigest())
    [down] = [run for run in runs if run.destination == OFFSITE]
    assert down.name is None and down.outcome.startswith("failed (exit 75): ")
    assert "unreachable" in down.outcome
    [failed] = [note for note in notes if note.startswith("qbackup FAILED")]
    assert f"stored on {HOME} only; NOT on {OFFSITE}: " in failed
    assert dom0.logged(f"backup {name} NOT stored on {OFFSITE}: ")
    assert dom0.logged("outcome: FAILED (exit 14)")


def test_both_destinations_commit_one_pass_byte_exact_and_each_has_its_history(
        dom0: Dom0, two: TwoDestinations) -> None:
    assert backup(dom0) == 0
    assert stored(two, HOME) == stored(two, OFFSITE) != {}
    runs = history.read_runs(dom0.history)
    assert sorted(str(run.destination) for run in runs) == [HOME, OFFSITE]
    assert {run.sha256 for run in runs} == {hashlib.sha256(data).hexdigest()
                                           for data in stored(two, HOME).values()}
    assert all(run.transfer == {"lost": 0, "outages": [], "resent": 0} for run in runs)


def test_restore_with_the_first_destination_down_restores_from_the_second(
        dom0: Dom0, two: TwoDestinations, tmp_path: Path) -> None:
    assert backup(dom0) == 0
    [name] = stored(two, HOME)
    # home stops answering: its port now has nothing behind it.
    two.write_config({HOME: {"port": free_port()}}, **SETTINGS)
    assert dom0.run("restore", "-t", CARRIER, "-p", str(dom0.passfile),
                    "--rename-conflicting", name, "work") == 0
    assert dom0.logged(f"destination {HOME}: ")
    assert dom0.logged(f"trying {OFFSITE}")
    for release_name in ("work1", "work-1"):
        image = dom0.sim.restore_dir / f"{release_name}.img"
        if image.exists():
            assert image.read_bytes() == stream.vm_data("work", 2 * MIB)
            break
    else:
        pytest.fail("the restore wrote no image of work")


def jobs_file(dom0: Dom0, destinations: str) -> Path:
    path = dom0.passfile.parent / "qbackup.yaml"
    path.write_text(f"jobs:\n  daily:\n    carrier: {CARRIER}\n    prefix: laptop\n"
                    f"    passphrase_file: {dom0.passfile}\n    vms: [work]\n"
                    f"    destinations: {destinations}\n")
    return path


def test_config_check_and_a_dry_run_ask_each_destination_and_refuse_an_unknown_one(
        dom0: Dom0, two: TwoDestinations, capsys: pytest.CaptureFixture[str]) -> None:
    path = jobs_file(dom0, "[offsite, home]")
    assert dom0.run("config", "check", "--config", str(path)) == 0
    assert capsys.readouterr().out.startswith(
        f"daily: ok: 1 VM(s), carrier {CARRIER} reaches offsite (")
    assert dom0.run("backup", "--job", "daily", "--config", str(path), "--dry-run",
                    "--json") == 0
    assert set(json.loads(capsys.readouterr().out)["destinations"]) == {HOME, OFFSITE}
    path = jobs_file(dom0, "[home, nas]")
    assert dom0.run("config", "check", "--config", str(path)) == QbackupExit.USAGE
    assert f"destinations: nas: not in the carrier.yaml of {CARRIER} (it has home, offsite)" \
        in capsys.readouterr().out
    assert dom0.run("backup", "--job", "daily", "--config", str(path)) == QbackupExit.USAGE
    assert stored(two, HOME) == stored(two, OFFSITE) == {}


def test_a_job_naming_one_destination_sends_to_it_alone(dom0: Dom0, two: TwoDestinations
                                                        ) -> None:
    path = jobs_file(dom0, "[offsite]")
    assert dom0.run("backup", "--job", "daily", "--config", str(path)) == 0
    assert stored(two, HOME) == {} and len(stored(two, OFFSITE)) == 1
    assert [run.destination for run in history.read_runs(dom0.history)] == [OFFSITE]


def test_the_tamper_check_runs_per_destination(
        dom0: Dom0, two: TwoDestinations, capsys: pytest.CaptureFixture[str]) -> None:
    assert backup(dom0) == 0
    [name] = stored(two, OFFSITE)
    # Threat: one server (here offsite) shrinks a backup; home still holds it whole.
    with open(two.account(OFFSITE).storage / name, "r+b") as handle:
        handle.truncate(100)
    capsys.readouterr()
    assert dom0.run("status", "--remote") == QbackupExit.VERIFY
    out = capsys.readouterr().out
    assert f"TAMPERING? {name}: shrank from " in out and f"(on {OFFSITE})" in out
    assert f"(on {HOME})" not in out
    assert backup(dom0) == QbackupExit.VERIFY  # the next backup's own check finds it too
    assert dom0.logged(f"TAMPERING? {name}: shrank from ")


def test_check_verify_and_drill_ask_the_destination_given(
        dom0: Dom0, two: TwoDestinations, capsys: pytest.CaptureFixture[str]) -> None:
    assert backup(dom0) == 0
    [name] = stored(two, OFFSITE)
    where = ["-t", CARRIER, "--destination", OFFSITE]
    passphrase = ["-p", str(dom0.passfile)]
    assert dom0.run("check", *where, name) == 0
    assert dom0.run("verify", *where, *passphrase, name) == 0
    assert dom0.run("drill", "-f", "laptop", *where, *passphrase) == 0
    two.proxy.down()  # offsite gone: each of them says so; home still answers
    for argv in (["check", *where, name], ["verify", *where, *passphrase, name],
                 ["drill", "-f", "laptop", *where, *passphrase]):
        assert dom0.run(*argv) == QbackupExit.TEMPFAIL, argv
    assert dom0.logged(f"via {CARRIER} ({OFFSITE}): the server is unreachable")
    assert dom0.run("check", "-t", CARRIER, "--destination", HOME, name) == 0
    assert dom0.run("list", "-t", CARRIER, "--destination", HOME) == 0
    assert name in capsys.readouterr().out


def test_a_destination_lost_mid_stream_is_dropped_and_the_other_commits(
        dom0: Dom0, two: TwoDestinations, notes: list[str]) -> None:
    # offsite goes away for good a third of the way in: past its resume
    # window the carrier drops it; home holds the buffer no longer and goes on.
    two.write_config(**{**SETTINGS, "resume_window": 3, "resume_buffer": 4 * MIB})
    dom0.server.write_shell_config("".join(f"[account {user.name}]\nsync_interval = 1M\n"
                                           for user in (two.home, two.offsite)))
    dom0.sim.vms["work"].size = 48 * MIB

    def cut_offsite(percent: float) -> None:
        if percent >= 30:
            two.proxy.down()

    dom0.sim.interventions.on_progress = cut_offsite
    assert backup(dom0) == QbackupExit.PARTIAL
    [(name, data)] = stored(two, HOME).items()
    assert stored(two, OFFSITE) == {}
    [ok] = [run for run in history.read_runs(dom0.history) if run.destination == HOME]
    assert ok.sha256 == hashlib.sha256(data).hexdigest()
    assert any(f"NOT on {OFFSITE}: its upload failed during the backup" in note
               for note in notes)


def test_both_destinations_unreachable_is_a_clean_failure_with_nothing_committed(
        dom0: Dom0, two: TwoDestinations) -> None:
    two.proxy.down()
    two.write_config({HOME: {"port": free_port()}}, **SETTINGS)
    assert backup(dom0) == QbackupExit.TEMPFAIL
    assert stored(two, HOME) == stored(two, OFFSITE) == {}
    # Neither answered before the backup: Qubes never ran it.
    assert not [call for call in dom0.sim.calls if call[0] == "admin.backup.Execute"]
    [run] = history.read_runs(dom0.history)
    assert run.name is None and run.outcome.startswith("failed (exit 75)")
