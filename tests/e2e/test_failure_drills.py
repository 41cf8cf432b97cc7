"""Failure drills: the whole pipeline, one fault injected at a time from outside.

    simulated Qubes (dom0) -> real qbackup-carrier -> real sshd -> real qbackup-shell -> disk

Every drill first stores one good backup, then runs a second backup (or a
restore) and breaks something while the stream flows (or just before). A
drill the backup must survive asserts it is stored whole; one it must not
survive asserts the exit code cron sees, the journal line a user would search
for, that the failed backup is neither on the server's disk (not even staged)
nor in `qbackup list`, and that the earlier backup is still there and still
checks out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from dom0 import history
from dom0.errors import QbackupExit
from testbed.carrier import write_carrier_config
from testbed.gated_commit import kill_the_waiting_commit, staged_upload_locked
from testbed.netproxy import NetProxy
from testbed.processes import account_pids, shell_pids
from testbed.qubes_sim import stream
from testbed.waiting import wait_until
from tests.dom0.conftest import CARRIER, MIB, Dom0

BIG = "big"  # a VM large enough that a fault lands while the stream still flows
BIG_SIZE = 24 * MIB
CARRIER_PROGRAM = Path(sys.executable).parent / "qbackup-carrier"  # the venv's, as dom0's sim runs


@pytest.fixture
def drill(dom0: Dom0) -> Dom0:
    """dom0 with one good backup stored already and a 24 MiB VM to back up next."""
    dom0.sim.add_vm(BIG, size=BIG_SIZE)
    assert backup(dom0, "work") == 0
    dom0.good = dom0.stored()  # type: ignore[attr-defined]
    assert len(dom0.good) == 1  # type: ignore[attr-defined]
    dom0.journal.clear()
    return dom0


def backup(dom0: Dom0, *vms: str) -> int:
    return dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), *vms)


def listed(dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Return the names `qbackup list` shows (through the real carrier)."""
    capsys.readouterr()
    assert dom0.run("list", "-t", CARRIER) == 0
    return [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]


def leftovers(dom0: Dom0) -> list[str]:
    """Return the shell's hidden upload files left in the storage (temporaries,
    staged uploads, partial uploads kept for a resume)."""
    root = dom0.account.storage
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob(".*")
        if ".ssh" not in path.parts
        and (".tmp-" in path.name or ".pending" in path.name or ".partial" in path.name)
    )


def partial_upload(dom0: Dom0) -> list[str]:
    """Return the files of the resumable partial upload of the backup dom0
    started last (the name from its journal): the data and its state record."""
    [line] = [line for line in dom0.lines() if f"backing up to {CARRIER} as " in line][-1:]
    name = line.rsplit(" as ", 1)[1].strip()
    return [f".{name}.partial", f".{name}.partial-state"]


def assert_only_the_good_backup(
    dom0: Dom0, capsys: pytest.CaptureFixture[str], left_behind: Sequence[str] = ()
) -> None:
    """Assert the server holds the good backup only (plus exactly LEFT_BEHIND,
    hidden files a killed shell could not remove), listed and intact."""
    # dom0 returns when the carrier is done; the shell of a cut session may
    # still be cleaning up. It exits when it is done.
    wait_until(lambda: not shell_pids(dom0.account), "the failed put's shell to exit")
    good = dom0.good  # type: ignore[attr-defined]
    assert dom0.stored() == good
    assert listed(dom0, capsys) == good
    assert leftovers(dom0) == list(left_behind)
    assert dom0.run("check", "-t", CARRIER, good[0]) == 0  # the earlier backup is intact


def at_progress(dom0: Dom0, percent: float, action: Callable[[], None]) -> None:
    """Run ACTION once, when the stream passes PERCENT."""
    done: list[bool] = []

    def hook(now: float) -> None:
        if now >= percent and not done:
            done.append(True)
            action()

    dom0.sim.interventions.on_progress = hook


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


# --- the drills ---------------------------------------------------------------


def carrier_puts(dom0: Dom0) -> list[int]:
    """PIDs of the `qbackup-carrier put` processes of THIS dom0 (their
    environment names its carrier config): never another test's or run's."""
    wanted = f"QBACKUP_CARRIER_CONFIG={dom0.carrier_config}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"put" in argv and any(b"qbackup-carrier" in arg for arg in argv) and (
            wanted in environ
        ):
            found.append(int(entry.name))
    return found


def test_carrier_puts_are_only_this_runs(dom0: Dom0, tmp_path: Path) -> None:
    # Another test process's (or checkout's) carrier put runs meanwhile: the
    # drill below must never kill it.
    decoy = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "qbackup-carrier", "put", "x"],
        env={**os.environ, "QBACKUP_CARRIER_CONFIG": str(tmp_path / "another.yaml")},
    )
    try:
        assert carrier_puts(dom0) == []
    finally:
        decoy.kill()
        decoy.wait()


def test_carrier_killed_mid_stream(drill: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    # The shell loses its client mid-stream: it keeps the partial upload (for
    # a resume until partial_max_age), which is never listed nor committable.
    killed: list[int] = []

    def kill_carrier() -> None:
        wait_until(lambda: leftovers(drill), "the shell's partial upload")
        killed.extend(carrier_puts(drill))
        signal_all(killed, signal.SIGKILL)

    at_progress(drill, 30, kill_carrier)
    assert backup(drill, BIG) == QbackupExit.BACKUP_FAILED
    assert len(killed) == 1  # exactly the one carrier of this backup
    assert drill.logged(f"Writing backup to VM {CARRIER} failed")
    assert drill.logged(f"outcome: FAILED (exit 1): Writing backup to VM {CARRIER} failed")
    assert_only_the_good_backup(drill, capsys, left_behind=partial_upload(drill))


def test_sshd_session_killed_mid_stream_is_resumed(
    drill: Dom0, capsys: pytest.CaptureFixture[str]
) -> None:
    # SIGKILL for the session and its shell once the shell has started its
    # partial upload: the carrier reconnects and resumes; the backup is whole.
    def kill_session() -> None:
        wait_until(lambda: leftovers(drill), "the shell's partial upload")
        signal_all(account_pids(drill.account), signal.SIGKILL)

    at_progress(drill, 30, kill_session)
    assert backup(drill, BIG) == 0
    assert_the_good_and_one_new_backup(drill, capsys)


def test_network_stalled_until_keepalive_fires_then_resumed(
    drill: Dom0, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # SIGSTOP freezes the server side of the connection: no byte, no TCP reset,
    # exactly what a dead uplink looks like. Keepalive must notice; the carrier
    # then resumes over a new connection (the frozen shell gives up its lock).
    write_carrier_config(
        drill.server, drill.account, tmp_path, keepalive_interval=1, keepalive_count_max=2
    )
    assert tmp_path / "carrier.yaml" == drill.carrier_config
    frozen: list[int] = []

    def freeze() -> None:
        frozen.extend(account_pids(drill.account))
        signal_all(frozen, signal.SIGSTOP)

    at_progress(drill, 30, freeze)
    started = time.monotonic()
    try:
        assert backup(drill, BIG) == 0
        elapsed = time.monotonic() - started
    finally:
        signal_all(frozen, signal.SIGCONT)
    assert elapsed < 30  # keepalive 1 s x 2: not the default minute, not forever
    assert_the_good_and_one_new_backup(drill, capsys)


def assert_the_good_and_one_new_backup(dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    """Assert the server holds the good backup and one new one, both listed
    and checking out, and no upload leftovers."""
    wait_until(lambda: not shell_pids(dom0.account), "the cut session's shell to exit")
    good = dom0.good  # type: ignore[attr-defined]
    [new] = [name for name in dom0.stored() if name not in good]
    assert listed(dom0, capsys) == sorted([*good, new])
    assert leftovers(dom0) == []
    assert dom0.run("check", "-t", CARRIER, new) == 0


@pytest.fixture
def small_disk(drill: Dom0, tmpfs: Callable[..., Path]) -> Iterator[Path]:
    """The account's storage moved onto a 64 MiB tmpfs (the good backup with it)."""
    mount = tmpfs("64m", owner=drill.account)
    try:
        subprocess.run(["cp", "-a", f"{drill.account.storage}/.", str(mount)], check=True)
        yield mount
    finally:
        drill.server.write_shell_config("")


def use_storage(drill: Dom0, mount: Path, reserve: str) -> None:
    drill.server.write_shell_config(
        f"[account {drill.account.name}]\nroot = {mount}\nreserve = {reserve}\n"
    )
    drill.account.home = mount  # where the test looks for the storage from now on
    # A carrier whose upload the server cut retries (resumes) for resume_window
    # (default 15 min): the space does not come back here, so keep it short.
    write_carrier_config(
        drill.server, drill.account, drill.carrier_config.parent, resume_window=5
    )


def fill(drill: Dom0, mount: Path, leave: int) -> None:
    """Once the shell writes its partial upload, fill MOUNT as root until only
    LEAVE bytes are free (0: completely)."""
    wait_until(lambda: leftovers(drill), "the shell's partial upload")
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    with open(mount / ".filler", "wb") as filler, contextlib.suppress(OSError):
        filler.write(b"\0" * max(0, free - leave))


def test_server_disk_full_mid_stream(
    drill: Dom0, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    use_storage(drill, small_disk, reserve="0")
    at_progress(drill, 20, lambda: fill(drill, small_disk, leave=0))
    assert backup(drill, BIG) == QbackupExit.BACKUP_FAILED
    assert drill.logged(f"Writing backup to VM {CARRIER} failed")
    (small_disk / ".filler").unlink()
    assert_only_the_good_backup(drill, capsys)  # the shell removed its partial upload


def test_reserve_reached_mid_stream(
    drill: Dom0, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The backup fits when it starts (info says so); then something else eats
    # the space, and the shell must stop before it eats into the reserve.
    reserve = 8 * MIB
    use_storage(drill, small_disk, reserve=f"{reserve // MIB}M")
    at_progress(drill, 20, lambda: fill(drill, small_disk, leave=reserve + 4 * MIB))
    assert backup(drill, BIG) == QbackupExit.BACKUP_FAILED
    assert drill.logged(f"Writing backup to VM {CARRIER} failed")
    stat = os.statvfs(small_disk)
    assert stat.f_bavail * stat.f_frsize >= reserve  # the reserve was never used
    (small_disk / ".filler").unlink()
    assert_only_the_good_backup(drill, capsys)


def test_server_reserve_refuses_before_qubes_runs(
    drill: Dom0, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    use_storage(drill, small_disk, reserve="50M")  # 64 MiB disk: less than 24 MiB left
    calls = len(drill.sim.calls)
    assert backup(drill, BIG) == QbackupExit.NO_SPACE
    assert drill.logged(
        "but the backup may need 24.0 MiB: free space on the server or lower its reserve"
    )
    assert "admin.backup.Execute" not in {call[0] for call in drill.sim.calls[calls:]}
    assert_only_the_good_backup(drill, capsys)


def test_host_key_changed(drill: Dom0, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A man in the middle (or a reinstalled server) presents another key.
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = tmp_path / "known_hosts"
    kind, key = other.with_suffix(".pub").read_text().split()[:2]
    forged.write_text(f"[127.0.0.1]:{drill.server.port} {kind} {key}\n")
    pinned = drill.carrier_config.read_text()
    drill.carrier_config.write_text(pinned.replace(str(drill.server.known_hosts), str(forged)))
    calls = len(drill.sim.calls)
    assert backup(drill, BIG) == QbackupExit.HOST_KEY
    assert drill.logged("the server's host key is not pinned in the carrier (or differs)")
    assert "admin.backup.Execute" not in {call[0] for call in drill.sim.calls[calls:]}
    drill.carrier_config.write_text(pinned)
    assert_only_the_good_backup(drill, capsys)


def test_passphrase_file_world_readable(drill: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    drill.passfile.chmod(0o644)
    calls = len(drill.sim.calls)
    assert backup(drill, BIG) == QbackupExit.USAGE
    assert drill.logged("accessible by group/others")
    assert drill.sim.calls[calls:] == []  # refused before Qubes was asked anything
    drill.passfile.chmod(0o600)
    assert_only_the_good_backup(drill, capsys)


def test_two_runs_at_once(drill: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    # cron fires while the previous run is still streaming through the carrier.
    second: list[int] = []
    at_progress(drill, 30, lambda: second.append(backup(drill, "work")))
    assert backup(drill, BIG) == 0
    assert second == [QbackupExit.LOCKED]
    assert drill.logged(f"another qbackup run is using carrier {CARRIER}")
    stored = drill.stored()
    assert len(stored) == 2 and drill.good[0] in stored  # type: ignore[attr-defined]
    assert leftovers(drill) == []


def test_tampered_carrier_lies_about_the_commit(
    drill: Dom0, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A compromised carrier answers `commit` with a receipt whose digest is not
    # what the server stored. dom0 cannot know better at that moment (Qubes
    # does not report a digest), so it records what it was told; the lie must
    # surface as soon as dom0 compares its history with the server's listing
    # through an honest carrier. Residual risk: a carrier that lies in every
    # answer forever is caught only by `qbackup verify` (Qubes' own HMAC).
    real = drill.sim.carrier_script
    liar = tmp_path / "qubes.BackupCarrier"
    zeros = "0" * 64
    liar.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = commit ]; then\n'
        f'    "{real}" "$@" | sed "s/[0-9a-f]\\{{64\\}}/{zeros}/"; exit 0\n'
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    liar.chmod(0o755)
    drill.sim.carrier_script = liar
    assert backup(drill, BIG) == 0
    assert zeros in drill.history.read_text().splitlines()[-1]
    drill.sim.carrier_script = real  # the carrier is honest again (rebuilt from its template)
    assert drill.run("status", "--remote") == QbackupExit.VERIFY
    [name] = [n for n in drill.stored() if n not in drill.good]  # type: ignore[attr-defined]
    assert drill.logged(f"TAMPERING? {name}: digest changed on the server")
    assert leftovers(drill) == []


@contextlib.contextmanager
def through_relay(dom0: Dom0, directory: Path, **settings: object) -> Iterator[NetProxy]:
    """Point dom0's carrier at sshd through a relay the test can cut (its
    config rewritten in DIRECTORY with SETTINGS); close the relay after."""
    proxy = NetProxy(dom0.server.port)
    try:
        key = dom0.server.known_hosts.read_text().split(None, 1)[1]
        known_hosts = directory / "proxied_known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {key}")
        write_carrier_config(
            dom0.server, dom0.account, directory, port=proxy.port,
            known_hosts=str(known_hosts), **settings,
        )
        yield proxy
    finally:
        proxy.close()


def test_a_restore_whose_get_loses_its_connection_twice_still_succeeds(
    drill: Dom0, tmp_path: Path
) -> None:
    # The restore's data pass (Qubes runs `qbackup-carrier get` three times:
    # header, qubes.xml, data) loses its connection twice mid-stream, each
    # time 8 MiB after it was made: the carrier resumes the ranged read and
    # Qubes' restore gets every byte once. The drops are armed when the data
    # pass starts (a header pass, killed once Qubes has the header, may
    # still have carried MiBs).
    assert backup(drill, BIG) == 0
    [name] = [n for n in drill.stored() if n not in drill.good]  # type: ignore[attr-defined]
    with through_relay(drill, tmp_path, resume_window=60) as proxy:

        def arm_on_the_data_pass(header_only: bool) -> None:
            if not header_only:
                proxy.cut_each_after(8 * MIB, times=2)

        drill.sim.interventions.on_restore_pass = arm_on_the_data_pass
        drill.sim.carrier_env["QBACKUP_CARRIER_LOG"] = "warning"  # its story on stderr
        drill.sim.remove_vm(BIG)  # the VM is lost: the backup must bring it back

        assert drill.run("restore", "-t", CARRIER, "-p", str(drill.passfile), name, BIG) == 0

        assert proxy.cuts == 2
        assert (drill.sim.restore_dir / f"{BIG}.img").read_bytes() == stream.vm_data(
            BIG, BIG_SIZE
        )
        data_pass = drill.sim.carrier_stderr[-1]
        assert data_pass.count(b"connection lost during the download") == 2, data_pass


def test_an_outage_longer_than_resume_window_fails_the_backup_as_before(
    drill: Dom0, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The network goes down mid-backup and stays down past the carrier's
    # resume_window (3 s here): the backup fails as a lost connection always
    # did (exit 1, Qubes' "Writing backup ... failed" with the carrier's
    # reason), nothing is committed or listed, and the partial upload stays
    # on the server until partial_max_age (the carrier tests drill its sweep).
    settings = {"resume_window": 3, "keepalive_interval": 1, "keepalive_count_max": 2}
    with through_relay(drill, tmp_path, **settings) as proxy:

        def network_down() -> None:
            wait_until(lambda: leftovers(drill), "the shell's partial upload")
            proxy.down()

        at_progress(drill, 30, network_down)
        assert backup(drill, BIG) == QbackupExit.BACKUP_FAILED
        assert drill.logged("not resumed within resume_window")
        assert drill.logged(f"outcome: FAILED (exit 1): Writing backup to VM {CARRIER} failed")
        proxy.up()
        assert_only_the_good_backup(drill, capsys, left_behind=partial_upload(drill))


def carrier_gets(dom0: Dom0) -> list[int]:
    """PIDs of `qbackup-carrier get` processes still running in dom0's
    carrier (known by the carrier's HOME: other tests' carriers run too)."""
    home = f"HOME={dom0.sim.carrier_env['HOME']}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                words = (entry / "cmdline").read_bytes().split(b"\0")
                if b"get" in words and any(word.endswith(b"qbackup-carrier") for word in words) \
                        and home in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize("command", ["restore", "drill"])
def test_sigterm_mid_restore_ends_it_and_its_transfer_within_30_s(
    drill: Dom0, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # A timer unit stopped (or a person's Ctrl-C) while Qubes' restore reads
    # the data: the server has stalled mid-stream (the relay holds the bytes),
    # so nothing would end by itself. SIGTERM must end qvm-backup-restore,
    # its qubes.Restore call and the carrier's get, record the drill as
    # interrupted and report nothing as restored, well inside 30 s.
    assert backup(drill, BIG) == 0
    [name] = [n for n in drill.stored() if n not in drill.good]  # type: ignore[attr-defined]
    drill.sim.remove_vm(BIG)
    with through_relay(drill, tmp_path) as proxy:
        stalled = threading.Event()
        signalled: list[float] = []

        def stall_the_data_pass(header_only: bool) -> None:
            if not header_only:
                proxy.hold_each_after(4 * MIB, stalled)

        def terminate() -> None:
            if stalled.wait(120):
                signalled.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGTERM)

        drill.sim.interventions.on_restore_pass = stall_the_data_pass
        threading.Thread(target=terminate, daemon=True).start()
        capsys.readouterr()
        if command == "restore":
            code = drill.run("restore", "-t", CARRIER, "-p", str(drill.passfile), name, BIG)
        else:
            code = drill.run("drill", "-f", "laptop", "-t", CARRIER, "-p", str(drill.passfile))
        ended = time.monotonic()
        assert code == QbackupExit.SIGTERM
        assert signalled and ended - signalled[0] < 30
        assert carrier_gets(drill) == []
        assert "restored" not in capsys.readouterr().out
    if command == "restore":
        # Qubes creates the VMs before their data: say which may be incomplete.
        assert drill.logged("the interrupted restore left VMs that may be incomplete: big")
    else:
        last = drill.history.with_name("drills.jsonl").read_text().splitlines()[-1]
        assert '"outcome": "interrupted: stopped by signal 15"' in last
        assert drill.run("status") == QbackupExit.VERIFY  # a drill that proved nothing


def gated_carrier(dom0: Dom0, directory: Path, verb: str) -> Path:
    """Make the carrier VM's `VERB` wait, before it starts, until DIRECTORY/go
    exists (it touches DIRECTORY/called when it got there); return DIRECTORY."""
    real = dom0.sim.carrier_script
    wrapper = directory / "qubes.BackupCarrier"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = {verb} ]; then\n'
        f'    touch "{directory}/called"\n'
        f'    while [ ! -e "{directory}/go" ]; do sleep 0.02; done\n'
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    dom0.sim.carrier_script = wrapper
    return directory


def test_a_commit_whose_session_dies_after_publishing_is_recorded_as_committed(
    drill: Dom0, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The sshd session serving dom0's commit is killed while the
    # shell is inside the commit step (held there by the staged upload's lock,
    # see testbed/gated_commit.py); the left-behind shell
    # publishes and cannot deliver the receipt. The carrier learns that the
    # backup is committed: dom0 records it as committed, and its tamper check
    # finds exactly the backups it recorded.
    (tmp_path / "gate").mkdir()
    gate = gated_carrier(drill, tmp_path / "gate", "commit")
    failures: list[BaseException] = []
    with through_relay(drill, tmp_path, resume_window=60) as proxy:

        def kill_the_commit() -> None:
            try:
                wait_until(lambda: (gate / "called").exists(), "dom0's commit")
                [staged] = [path.name for path in drill.account.storage.glob(".*.pending")]
                name = staged[1 : -len(".pending")]
                with staged_upload_locked(drill.account, name) as inode:
                    (gate / "go").touch()
                    kill_the_waiting_commit(proxy, inode)
                assert drill.server.syslog.wait_for(
                    f"command=commit {name} outcome=committed-receipt-lost", timeout=30
                )
            except BaseException as error:  # noqa: BLE001 - reported by the test below
                failures.append(error)
            finally:
                proxy.up()

        killer = threading.Thread(target=kill_the_commit, daemon=True)
        killer.start()
        assert backup(drill, "personal") == 0
        killer.join(timeout=60)
        assert failures == []
        [name] = [n for n in drill.stored() if n not in drill.good]  # type: ignore[attr-defined]
        last = json.loads(drill.history.read_text().splitlines()[-1])
        assert last["name"] == name and last["outcome"] == history.OUTCOME_OK, last
        assert drill.logged(f"backup {name} committed")
        assert drill.run("status", "--remote") == 0  # no name it never recorded
        assert_the_good_and_one_new_backup(drill, capsys)


def test_a_put_that_starts_while_the_server_restarts_still_backs_up(
    drill: Dom0, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # dom0's `info` found the server up; the moment Qubes starts the
    # put, the server refuses connections (sshd restarting); it is back once
    # the put's first connection has been refused. The put waits for it.
    (tmp_path / "gate").mkdir()
    with through_relay(drill, tmp_path, resume_window=60) as proxy:
        gate = tmp_path / "gate"
        path = gate / "bin"
        path.mkdir()
        wrapper = path / "qbackup-carrier"
        wrapper.write_text(
            "#!/bin/sh\n"
            'if [ "$1" = put ]; then\n'
            f'    touch "{gate}/called"\n'
            f'    while [ ! -e "{gate}/go" ]; do sleep 0.02; done\n'
            "fi\n"
            f'exec "{CARRIER_PROGRAM}" "$@"\n'
        )
        wrapper.chmod(0o755)
        drill.sim.carrier_env["PATH"] = f"{path}:{drill.sim.carrier_env['PATH']}"

        def restart_the_server() -> None:
            wait_until(lambda: (gate / "called").exists(), "Qubes' put")
            proxy.down()
            (gate / "go").touch()
            wait_until(lambda: proxy.refused, "the put's first connection")
            proxy.up()

        restarter = threading.Thread(target=restart_the_server, daemon=True)
        restarter.start()
        assert backup(drill, "personal") == 0
        restarter.join(timeout=60)
        assert proxy.refused >= 1
        assert_the_good_and_one_new_backup(drill, capsys)
