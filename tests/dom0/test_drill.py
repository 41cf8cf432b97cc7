"""`qbackup drill` and the drill lines of `qbackup status`: simulated Qubes,
REAL carrier, real sshd and shell."""

from __future__ import annotations

import json
import random
import time

from dom0.drill import DRILLS_FILE, choose_backups
from dom0.errors import QbackupExit
from dom0.history import Run
from tests.dom0.conftest import CARRIER, Dom0


def backup_twice(dom0: Dom0) -> list[str]:
    """Take two backups of prefix laptop (in distinct seconds: names carry
    the second); return their names, oldest first."""
    names: list[str] = []
    for _ in range(2):
        second = int(time.time())
        while int(time.time()) == second:  # wait for the clock, not for work
            time.sleep(0.05)
        assert dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), "work") == 0
        names = sorted(dom0.stored())
    return names


def drill(dom0: Dom0) -> int:
    return dom0.run("drill", "-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile))


def drills(dom0: Dom0) -> list[dict]:
    path = dom0.history.with_name(DRILLS_FILE)
    return [json.loads(line) for line in path.read_text().splitlines()]


def verified(dom0: Dom0) -> list[str]:
    return [call[-1].split()[-1] for call in dom0.sim.calls
            if call[0] == "qvm-backup-restore" and "--verify-only" in call]


def test_choose_backups_takes_the_newest_and_one_older() -> None:
    runs = [Run("j", "c", f"n-{index}", 1, "0" * 64, index, index, "ok") for index in range(5)]
    chosen = {tuple(run.name for run in choose_backups(runs, random.Random(seed)))
              for seed in range(40)}
    assert all(names[0] == "n-4" and names[1] in {"n-0", "n-1", "n-2", "n-3"}
               for names in chosen)
    assert len(chosen) == 4  # every older backup gets its turn
    assert [run.name for run in choose_backups(runs[:1], random.Random(0))] == ["n-0"]
    assert choose_backups([], random.Random(0)) == []


def test_drill_verifies_the_newest_and_an_older_backup_and_records_it(
        dom0: Dom0, capsys: object) -> None:
    older, newest = backup_twice(dom0)
    assert drill(dom0) == 0
    assert verified(dom0) == [newest, older]
    [record] = drills(dom0)
    assert record["job"] == "cli:laptop" and record["outcome"] == "ok"
    assert record["names"] == [newest, older]
    assert dom0.run("status", "--max-drill-age", "24") == 0
    assert dom0.logged("drill cli:laptop: ok")


def test_a_backup_qubes_cannot_verify_fails_the_drill_and_status(dom0: Dom0) -> None:
    # The older backup was damaged before the carrier hashed it: the server's
    # digest matches, only Qubes' --verify-only can tell.
    dom0.sim.interventions.corrupt_stream_byte = 100_000
    second = int(time.time())
    assert dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), "work") == 0
    dom0.sim.interventions.corrupt_stream_byte = None
    while int(time.time()) == second:  # wait for the clock: names carry the second
        time.sleep(0.05)
    assert dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), "work") == 0
    older = sorted(dom0.stored())[0]
    assert drill(dom0) == QbackupExit.VERIFY
    [record] = drills(dom0)
    assert record["outcome"].startswith(f"failed: verification of {older} FAILED")
    assert dom0.run("status") == QbackupExit.VERIFY  # a failed drill fails status
    assert dom0.logged("the last drill failed for: cli:laptop")


def test_a_drill_refuses_an_older_backup_other_than_committed(dom0: Dom0) -> None:
    older, _ = backup_twice(dom0)
    runs = [json.loads(line) for line in dom0.history.read_text().splitlines()]
    runs[0]["size"] += 1
    dom0.history.write_text("".join(json.dumps(run) + "\n" for run in runs))
    assert drill(dom0) == QbackupExit.VERIFY
    assert dom0.logged(f"verification of {older} FAILED: the server holds other bytes")


def test_status_fails_when_the_last_drill_is_too_old(dom0: Dom0) -> None:
    backup_twice(dom0)
    assert drill(dom0) == 0
    path = dom0.history.with_name(DRILLS_FILE)
    [record] = drills(dom0)
    record["end"] -= 48 * 3600
    path.write_text(json.dumps(record) + "\n")
    assert dom0.run("status") == 0  # no age limit asked for
    assert dom0.run("status", "--max-drill-age", "24") == QbackupExit.STALE


def test_a_job_without_backups_fails_its_drill(dom0: Dom0) -> None:
    assert drill(dom0) == QbackupExit.VERIFY
    assert drills(dom0)[0]["outcome"] == "failed: no committed backup"
    assert "qvm-backup-restore" not in {call[0] for call in dom0.sim.calls}
    assert dom0.run("drill", "-t", CARRIER, "-p", str(dom0.passfile)) == QbackupExit.USAGE
