"""No silent failures: every outcome of a backup, failures before the backup
included, reaches the journal, the desktop, the history, the job's hooks and
its Healthchecks-style ping; one broken job does not stop the others; the end
of a backup is readable by scripts (--json).

Simulated Qubes, REAL carrier, real sshd and shell."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from dom0 import errors
from dom0.errors import QbackupExit
from dom0.monitor import ping_argv
from tests.dom0.conftest import CARRIER, Dom0

KIB = 1024


class Recorder:
    """A program standing in for notify-send / qvm-run / a hook: it appends its
    argv and chosen environment variables to a file, one JSON line per call."""

    def __init__(self, directory: Path, name: str, exit_status: int = 0) -> None:
        self.log = directory / f"{name}.calls"
        self.path = directory / name
        self.path.write_text(
            "#!/usr/bin/python3\nimport json, os, sys\n"
            f"with open({str(self.log)!r}, 'a') as log:\n"
            "    env = {k: v for k, v in os.environ.items() if k.startswith('QBACKUP_')}\n"
            "    log.write(json.dumps({'argv': sys.argv[1:], 'env': env}) + '\\n')\n"
            f"sys.exit({exit_status})\n")
        self.path.chmod(0o755)

    def calls(self) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def notify(dom0: Dom0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(tmp_path, "notify-send")
    monkeypatch.setattr("dom0.processes.NOTIFY_SEND", str(recorder.path))
    return recorder


def write_jobs(dom0: Dom0, body: str) -> Path:
    path = dom0.passfile.parent / "qbackup.yaml"
    path.write_text("jobs:\n" + body)
    return path


def job(name: str, prefix: str, extra: str = "", vms: str = "[work]", passfile: str = "") \
        -> str:
    return (f"  {name}:\n    carrier: {CARRIER}\n    prefix: {prefix}\n"
            f"    passphrase_file: {passfile}\n    vms: {vms}\n" + extra)


def summaries(recorder: Recorder) -> list[tuple[str, str]]:
    """Return (urgency, summary) of each notification."""
    return [(str(call["argv"][1]), str(call["argv"][2])) for call in recorder.calls()]  # type: ignore[index]


def outcomes(dom0: Dom0) -> list[str]:
    return [json.loads(line)["outcome"] for line in dom0.history.read_text().splitlines()]


@pytest.mark.parametrize(("setup", "code", "message"), [
    ("unknown-vm", QbackupExit.QUBES, "the VM to back up ghost does not exist (see qvm-ls)"),
    ("passphrase", QbackupExit.USAGE, "is accessible by group/others"),
    ("lock", QbackupExit.LOCKED, f"another qbackup run is using carrier {CARRIER}"),
])
def test_failures_before_the_backup_are_notified_logged_recorded_and_hooked(
        dom0: Dom0, notify: Recorder, tmp_path: Path, setup: str, code: int,
        message: str) -> None:
    hook = Recorder(tmp_path, "hook")
    vms = "[work, ghost]" if setup == "unknown-vm" else "[work]"
    config = write_jobs(dom0, job("daily", "laptop", f"    hooks: {{on_failure: [{hook.path},"
                                  " failed]}\n", vms=vms, passfile=str(dom0.passfile)))
    if setup == "passphrase":
        dom0.passfile.chmod(0o640)
    held = None
    if setup == "lock":
        dom0.lock_dir.mkdir()
        held = open(dom0.lock_dir / f"carrier-{CARRIER}.lock", "w")  # noqa: SIM115
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert dom0.run("backup", "--job", "daily", "--config", str(config)) == code
    finally:
        if held is not None:
            held.close()
    assert summaries(notify) == [("--urgency=critical", "qbackup FAILED")]
    assert dom0.logged(f"backup daily outcome: FAILED (exit {code}): ")
    assert dom0.logged(message)
    assert outcomes(dom0) == [f"failed (exit {code}): {errors.exit_meaning(code)}"]
    [call] = hook.calls()
    assert call["argv"] == ["failed"]
    assert call["env"]["QBACKUP_EVENT"] == "on_failure"  # type: ignore[index]
    assert call["env"]["QBACKUP_EXIT"] == str(code)  # type: ignore[index]
    assert message in call["env"]["QBACKUP_ERROR"]  # type: ignore[index]
    assert dom0.stored() == []


def test_a_config_error_is_notified_too(dom0: Dom0, notify: Recorder) -> None:
    config = write_jobs(dom0, job("daily", "'bad prefix'", passfile=str(dom0.passfile)))
    assert dom0.run("backup", "--job", "daily", "--config", str(config)) == QbackupExit.USAGE
    assert summaries(notify) == [("--urgency=critical", "qbackup FAILED")]
    assert dom0.logged(f"{config}:4: jobs.daily.prefix: invalid prefix")
    assert dom0.logged("backup daily outcome: FAILED (exit 2): the configuration has 1"
                       " problem(s): see the log")


def test_hooks_and_pings_on_start_and_success(dom0: Dom0, notify: Recorder, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Recorder(tmp_path, "hook")
    qvm_run = Recorder(tmp_path, "qvm-run")
    monkeypatch.setattr("dom0.monitor.QVM_RUN", str(qvm_run.path))
    dom0.sim.vms["work"].size = 64 * KIB
    config = write_jobs(dom0, job("daily", "laptop", (
        f"    hooks:\n      on_start: [{hook.path}, start]\n"
        f"      on_success: [{hook.path}, ok]\n"
        "      ping_url: https://hc-ping.com/0a1b2c\n"), passfile=str(dom0.passfile)))
    assert dom0.run("backup", "--job", "daily", "--config", str(config)) == 0
    [name] = dom0.stored()
    assert [call["argv"] for call in hook.calls()] == [["start"], ["ok"]]
    assert hook.calls()[1]["env"]["QBACKUP_NAME"] == name  # type: ignore[index]
    curl = ["--pass-io", "--no-autostart", "--no-gui", CARRIER, "--", "curl", "-fsS", "-m",
            "20", "--retry", "2", "-o", "/dev/null", "--globoff"]
    assert [call["argv"] for call in qvm_run.calls()] == [
        [*curl, "https://hc-ping.com/0a1b2c/start"], [*curl, "https://hc-ping.com/0a1b2c"]]
    assert summaries(notify) == [("--urgency=normal", "qbackup started"),
                                 ("--urgency=normal", "qbackup finished")]


@pytest.mark.parametrize("url", ["https://hc.example/ping/{uuid}", "https://hc.example/a[1-9]"])
def test_a_ping_url_reaches_curl_as_one_literal_url_never_a_glob(url: str) -> None:
    # Without --globoff curl expands {a,b} and [1-9] into several requests
    # (or refuses the URL): the job's URL must be fetched exactly as written.
    argv = ping_argv(CARRIER, url)
    assert argv[-2:] == ["--globoff", url]


def test_a_failing_hook_or_ping_never_changes_the_outcome(
        dom0: Dom0, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Recorder(tmp_path, "hook", exit_status=3)
    monkeypatch.setattr("dom0.monitor.QVM_RUN", str(Recorder(tmp_path, "qvm-run", 1).path))
    dom0.sim.vms["work"].size = 64 * KIB
    config = write_jobs(dom0, job("daily", "laptop", (
        f"    hooks:\n      on_success: [{hook.path}]\n      ping_url: http://hc/x\n"),
        passfile=str(dom0.passfile)))
    assert dom0.run("backup", "--job", "daily", "--config", str(config)) == 0
    assert dom0.logged("hook on_success of daily exited 3")
    assert dom0.logged(f"ping on_success through {CARRIER} failed (exit 1)")


def test_one_broken_job_does_not_stop_the_others(dom0: Dom0, notify: Recorder,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dom0.sim.vms["work"].size = 64 * KIB
    config = write_jobs(dom0, job("daily", "laptop/daily", passfile=str(dom0.passfile))
                        + job("weekly", "laptop/weekly", "    retries: many\n",
                              passfile=str(dom0.passfile)))
    capsys.readouterr()
    assert dom0.run("backup", "--all", "--json", "--config", str(config)) == QbackupExit.USAGE
    [name] = dom0.stored()
    assert name.startswith("laptop/daily-")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["job"], line["exit"]) for line in lines] == [("daily", 0), ("weekly", 2)]
    assert lines[0]["name"] == name and lines[0]["size"] == (dom0.account.storage /
                                                             name).stat().st_size
    assert dom0.logged(f"{config}:12: jobs.weekly.retries: expected an integer from 0 to 10")
    assert ("--urgency=critical", "qbackup FAILED") in summaries(notify)


def test_json_at_the_end_of_a_failed_backup(dom0: Dom0,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    dom0.sim.remove_vm(CARRIER)
    capsys.readouterr()
    assert dom0.run("backup", "--json", "-f", "x", "-t", CARRIER, "-p", str(dom0.passfile)) \
        == QbackupExit.QUBES
    assert json.loads(capsys.readouterr().out) == {
        "job": "cli:x", "exit": QbackupExit.QUBES,
        "error": f"the carrier VM {CARRIER} does not exist (see qvm-ls)"}


def test_list_json_and_config_check(dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    dom0.sim.vms["work"].size = 64 * KIB
    config = write_jobs(dom0, job("daily", "laptop", passfile=str(dom0.passfile)))
    capsys.readouterr()
    assert dom0.run("config", "check", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"daily: ok: 1 VM(s), carrier {CARRIER} reaches the server, ")
    assert dom0.stored() == [] and not dom0.sim.vms[CARRIER].running  # nothing changed
    assert dom0.run("backup", "--job", "daily", "--config", str(config)) == 0
    [name] = dom0.stored()
    capsys.readouterr()
    assert dom0.run("list", "--json", "--job", "daily", "--config", str(config)) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["truncated"] is False
    [entry] = listing["backups"]
    assert entry["name"] == name and entry["size"] == (dom0.account.storage / name).stat().st_size


def test_a_broken_command_line_is_notified(dom0: Dom0, notify: Recorder) -> None:
    # A cron or unit line with a typo must not fail only in a log nobody reads.
    assert dom0.run("backup", "--no-such-option") == QbackupExit.USAGE
    assert summaries(notify) == [("--urgency=critical", "qbackup FAILED")]
    assert dom0.logged("invalid command line (exit 2): see qbackup --help")


def test_the_summary_names_size_duration_and_throughput() -> None:
    from dom0.backup import Finished
    from dom0.carrier import Record

    record = Record("laptop-20261122T235959Z", 3 * 1024**3, "a" * 64, 1)
    outcome = Finished("daily", record, seconds=60.0, attempts=2, verified=True)
    assert outcome.summary() == ("laptop-20261122T235959Z: 3.0 GiB in 60.0 s (51.2 MiB/s),"
                                 " 2 attempt(s), verified")
    assert outcome.to_json() == {
        "job": "daily", "name": record.name, "size": record.size, "sha256": "a" * 64,
        "seconds": 60.0, "attempts": 2, "verified": True, "destinations": ["default"],
        "exit": 0}


def test_how_the_upload_went_is_logged_kept_and_shown(
        dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    dom0.sim.vms["work"].size = 64 * KIB
    config = write_jobs(dom0, job("daily", "laptop", passfile=str(dom0.passfile)))
    assert dom0.run("backup", "--job", "daily", "--config", str(config)) == 0
    [name] = dom0.stored()
    assert dom0.logged(f"upload of {name}: transfer: no connection lost")
    [run] = [json.loads(line) for line in dom0.history.read_text().splitlines()]
    assert run["transfer"] == {"lost": 0, "outages": [], "resent": 0}
    capsys.readouterr()
    assert dom0.run("status", "--config", str(config)) == 0
    assert "; transfer: no connection lost; last run: ok" in capsys.readouterr().out
    assert dom0.run("status", "--json", "--config", str(config)) == 0
    [entry] = json.loads(capsys.readouterr().out)["jobs"]
    assert entry["last_transfer"] == {"lost": 0, "outages": [], "resent": 0}


def test_transfer_with_losses_reads_like_a_sentence() -> None:
    from dom0.history import describe_transfer

    assert describe_transfer({"lost": 2, "outages": [3.14, 40.0], "resent": 16777216}) == \
        "transfer: connection lost 2 time(s) (outages 3.1 s, 40.0 s), 16777216 bytes sent again"
    assert describe_transfer(None) == "transfer: not reported"
    assert describe_transfer("garbage") == "transfer: not reported"  # type: ignore[arg-type]
