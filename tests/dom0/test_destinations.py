"""Several destinations from one pass, as dom0 sees them: the job setting and
the profile's `put --to`, the commit's outcome lines (a hostile carrier's
refused), the partial end, the history and `status` per destination,
`--destination` (the service's second stdin line) and restore's fallback.

The carrier's answers are scripted at the Qubes boundary (what qrexec hands
back from the carrier VM), so each hostile or old-carrier case is exact."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from dom0 import history
from dom0.backup import Preflight, publish
from dom0.carrier import CarrierClient, Record, ReplyError
from dom0.cli import main
from dom0.config import PassphraseSource, Target
from dom0.errors import CarrierFailed, NoSuchBackup, QbackupExit, TemporaryFailure
from dom0.profile import destination_path
from dom0.restore import reachable_holder
from dom0.settings import check_value
from qbackup_protocol.carrier_service import CarrierExit, DestinationOutcome

NAME = "laptop-20261122T235959Z"
DIGEST = "c" * 64
RECORD = Record(NAME, 7, DIGEST, 1)
HOUR = 3600


def line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


def receipt(destination: str) -> bytes:
    return line(DestinationOutcome(destination, RECORD, CarrierExit.OK).to_reply())


def failed(destination: str, status: int = 75, reason: str = "connection refused") -> bytes:
    return line({"destination": destination, "failed": {"exit": status, "reason": reason}})


LISTING = line(RECORD.to_reply()) + line({"end": True, "count": 1, "truncated": False})
EMPTY = line({"end": True, "count": 0, "truncated": False})


class Carrier:
    """Answers qubes.BackupCarrier+VERB per destination (the stdin's second
    line; '' for none) from a table: (exit status, stdout)."""

    profile_dir = Path("/nonexistent")

    def __init__(self, answers: dict[tuple[str, str], tuple[int, bytes]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, bytes]] = []

    def run_service_for_stdio(self, vm: str, service: str, input_data: bytes = b"",
                              max_output: int = 65536, timeout: float | None = None) -> bytes:
        verb = service.removeprefix("qubes.BackupCarrier+")
        self.asked.append((verb, input_data))
        lines = input_data.decode().split("\n")
        status, stdout = self.answers[(verb, lines[1])]
        if status:
            raise subprocess.CalledProcessError(status, service, stdout, b"carrier: reason")
        return stdout


def client(answers: dict[tuple[str, str], tuple[int, bytes]]) -> CarrierClient:
    return CarrierClient(Carrier(answers), "c")  # type: ignore[arg-type]


# --- the job setting and the profile -----------------------------------------------
def test_a_job_names_its_destinations_and_the_profile_sends_to_them() -> None:
    assert check_value("destinations", ["home", "offsite"]) == []
    assert destination_path(NAME, ("home", "offsite")) == \
        f"qbackup-carrier put --to home,offsite {NAME}"
    assert destination_path(NAME) == f"qbackup-carrier put {NAME}"  # a carrier of old
    # To several, a put that staged on some exits 0, or Qubes fails the backup.
    assert destination_path(NAME, None, True) == f"qbackup-carrier put --partial-ok {NAME}"
    assert destination_path(NAME, ("home", "offsite"), True) == \
        f"qbackup-carrier put --to home,offsite --partial-ok {NAME}"


# Threat: a destination name reaches the carrier's `eval` in destination_path.
@pytest.mark.parametrize("value", [["Home"], ["home", "home"], "home", ["a;b"], [],
                                   ["$(reboot)"]])
def test_a_job_refuses_anything_but_a_list_of_destination_names(value: object) -> None:
    assert check_value("destinations", value)


# --- commit: one outcome line per destination -----------------------------------
def test_commit_returns_each_destinations_outcome() -> None:
    both = client({("commit", ""): (0, receipt("home") + receipt("offsite"))})
    assert [outcome.destination for outcome in both.commit(NAME)] == ["home", "offsite"]
    partial = client({("commit", ""): (79, receipt("home") + failed("offsite"))}).commit(NAME)
    assert partial[1] == DestinationOutcome("offsite", None, CarrierExit.TEMPORARY,
                                            "connection refused")


def test_an_old_carriers_bare_receipt_is_the_default_destination() -> None:
    old = client({("commit", ""): (0, line(RECORD.to_reply()))})
    assert old.commit(NAME) == (DestinationOutcome("default", RECORD, CarrierExit.OK),)


# Threat: a hostile carrier VM (networked, less trusted than dom0) lying about
# where a backup is stored, or smuggling text into dom0's messages.
@pytest.mark.parametrize("answer", [
    (0, receipt("home") + failed("offsite")),  # status "all" while a line failed
    (79, receipt("home") + receipt("offsite")),  # status "partial" while all succeeded
    (79, receipt("home") + failed("offsite", reason="\x1b[2Jgone")),
    (79, receipt("home") + failed("offsite", status=79)),
    (0, receipt("home") + receipt("home")),
    (0, receipt("Home")),
    (0, receipt("home")[:-1]),
    (75, b"garbage\n"),
])
def test_a_hostile_commit_answer_is_refused(answer: tuple[int, bytes]) -> None:
    with pytest.raises(ReplyError):
        client({("commit", ""): answer}).commit(NAME)


def test_a_commit_with_nothing_staged_anywhere_fails() -> None:
    with pytest.raises(CarrierFailed, match="nothing staged"):
        client({("commit", ""): (66, b"")}).commit(NAME)


def ready(*reachable: str) -> Preflight:
    return Preflight(list(reachable), 10**9, set(), {}, [])


def test_publish_names_each_destination_that_failed_and_why() -> None:
    published = publish(client({("commit", ""): (79, receipt("home") + failed("offsite"))}),
                        NAME, ready("home", "offsite"))
    assert published.records == {"home": RECORD}
    assert published.missed["offsite"].code == QbackupExit.TEMPFAIL
    assert published.partial() == ("stored on home only; NOT on offsite: the server is"
                                   " unreachable (temporary): connection refused")


def test_a_destination_the_carrier_does_not_report_is_missed() -> None:
    published = publish(client({("commit", ""): (0, receipt("home"))}), NAME,
                        ready("home", "offsite"))
    assert "its upload failed during the backup" in published.missed["offsite"].reason


def test_an_outcome_for_a_destination_never_sent_to_is_refused() -> None:
    with pytest.raises(ReplyError, match="not sent to"):
        publish(client({("commit", ""): (0, receipt("home") + receipt("other"))}), NAME,
                ready("home"))


def test_stored_nowhere_fails_with_the_first_failures_class() -> None:
    # Temporary everywhere: a retry may succeed (the run's retries apply).
    with pytest.raises(TemporaryFailure, match="home: .*offsite: "):
        publish(client({("commit", ""): (75, failed("home") + failed("offsite"))}), NAME,
                ready("home", "offsite"))


# --- --destination: the second stdin line ------------------------------------------
def test_a_destination_is_the_second_stdin_line_and_default_is_never_sent() -> None:
    app = Carrier({("list", "offsite"): (0, LISTING), ("list", ""): (0, LISTING)})
    CarrierClient(app, "c", destination="offsite").listing("laptop")  # type: ignore[arg-type]
    CarrierClient(app, "c", destination="default").listing("laptop")  # type: ignore[arg-type]
    CarrierClient(app, "c").listing("laptop")  # type: ignore[arg-type]
    assert app.asked == [("list", b"laptop\noffsite\n"), ("list", b"laptop\n"),
                         ("list", b"laptop\n")]


@pytest.mark.usefixtures("quiet_state")
@pytest.mark.parametrize("command", ["list", "check", "verify", "restore", "drill"])
def test_an_invalid_destination_is_a_usage_error(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-o", command, "-t", "sys-backup", "--destination", "Off;site"]
    argv += {"check": [NAME], "verify": [NAME], "restore": [NAME], "drill": ["-f", "p"]
             }.get(command, [])
    assert main(argv, app=object()) == QbackupExit.USAGE  # type: ignore[arg-type]
    assert "--destination: a destination is a lowercase word" in capsys.readouterr().err


# --- restore: the first destination that answers -----------------------------------
def target(destinations: tuple[str, ...] | None = None, destination: str | None = None
           ) -> Target:
    return Target("c", PassphraseSource(), 10.0, destination, destinations)


def test_restore_falls_back_to_the_next_destination_in_the_carriers_order(
        caplog: pytest.LogCaptureFixture) -> None:
    # The carrier's first (home) is asked without naming it: its list only then.
    app = Carrier({("destinations", ""): (0, line({"destinations": ["home", "offsite"]})),
                   ("list", ""): (75, b""), ("list", "offsite"): (0, LISTING)})
    assert reachable_holder(app, target(), NAME) == "offsite"  # type: ignore[arg-type]
    assert [verb for verb, _ in app.asked] == ["list", "destinations", "list"]
    assert "destination home: " in caplog.text and "trying offsite" in caplog.text


def test_restore_tries_the_jobs_order_and_a_destination_lacking_the_backup() -> None:
    app = Carrier({("list", "offsite"): (0, EMPTY), ("list", "home"): (0, LISTING)})
    assert reachable_holder(app, target(("offsite", "home")), NAME) == "home"  # type: ignore[arg-type]
    assert [stdin for _, stdin in app.asked] == [f"{NAME}\noffsite\n".encode(),
                                                f"{NAME}\nhome\n".encode()]


def test_restore_fails_with_the_last_destinations_error() -> None:
    app = Carrier({("list", "home"): (75, b""), ("list", "offsite"): (75, b"")})
    with pytest.raises(TemporaryFailure):
        reachable_holder(app, target(("home", "offsite")), NAME)  # type: ignore[arg-type]
    only = Carrier({("list", "offsite"): (0, EMPTY)})
    with pytest.raises(NoSuchBackup):  # --destination: that one only
        reachable_holder(only, target(("home",), "offsite"), NAME)  # type: ignore[arg-type]


def test_an_old_carrier_is_one_unnamed_destination() -> None:
    app = Carrier({("destinations", ""): (64, b""), ("list", ""): (0, LISTING)})
    assert reachable_holder(app, target(), NAME) is None  # type: ignore[arg-type]


# --- history and status per destination ---------------------------------------------
def run_line(destination: str | None, hours_ago: float, outcome: str = "ok") -> str:
    end = time.time() - hours_ago * HOUR
    value: dict[str, object] = {
        "job": "daily", "carrier": "c", "name": NAME if outcome == "ok" else None,
        "size": 7 if outcome == "ok" else None, "sha256": DIGEST if outcome == "ok" else None,
        "start": end - 60, "end": end, "outcome": outcome}
    if destination != "old":
        value["destination"] = destination
    return json.dumps(value) + "\n"


def test_history_reads_old_entries_as_the_default_destination(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(run_line("old", 1) + run_line("home", 1) + run_line("../x", 1))
    assert [run.destination for run in history.read_runs(path)] == ["default", "home"]


@pytest.mark.usefixtures("quiet_state")
def test_status_shows_and_judges_each_destination(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "history.jsonl").write_text(
        run_line("home", 1) + run_line("offsite", 40)
        + run_line("offsite", 1, "failed (exit 75): the server is unreachable (temporary)"))
    assert main(["-o", "status", "--max-age", "36h"]) == QbackupExit.STALE
    captured = capsys.readouterr()
    assert f"daily: last success on home {NAME}" in captured.out
    assert f"daily: last success on offsite {NAME}" in captured.out
    assert "daily: newest backup on offsite 40.0h old > 36h" in captured.err
    assert "on home" not in captured.err
    assert main(["-o", "status", "--max-age", "41h"]) == 0
    assert "last run: failed (exit 75)" in capsys.readouterr().out  # offsite's, not home's


@pytest.mark.usefixtures("quiet_state")
def test_status_alarms_for_a_destination_that_never_got_a_backup(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The job names no destinations (all the carrier has); offsite always fails.
    (tmp_path / "history.jsonl").write_text(
        run_line("home", 2) + run_line("offsite", 2, "failed (exit 75): unreachable")
        + run_line(None, 1, "failed (exit 5): another backup through this carrier is running"))
    assert main(["-o", "status"]) == QbackupExit.STALE
    captured = capsys.readouterr()
    assert "daily: no successful backup on offsite yet (last run: failed (exit 5)" \
        in captured.out
    assert "daily: no successful backup on offsite yet" in captured.err
    assert "default" not in captured.out + captured.err


@pytest.mark.usefixtures("quiet_state")
def test_status_alarms_for_a_named_destination_never_stored_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "qbackup.yaml"
    config.write_text("jobs:\n  daily:\n    carrier: c\n    prefix: laptop\n"
                      "    passphrase_vm: vault\n    destinations: [home, offsite]\n")
    (tmp_path / "history.jsonl").write_text(run_line("home", 1))
    assert main(["-o", "--config", str(config), "status", "--json"]) == QbackupExit.STALE
    report = json.loads(capsys.readouterr().out)
    assert report["stale"] == ["daily: no successful backup on offsite yet"]
    assert list(report["jobs"][0]["destinations"]) == ["home"]
