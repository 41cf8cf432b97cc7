"""Host key pinning and unreachable servers: refused or failed cleanly, nothing stored."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qbackup_protocol.carrier_service import CarrierExit
from testbed.server import free_port
from tests.carrier_vm.conftest import Carrier, assert_one_safe_line, failed_exit, stored_files


def other_host_key(tmp_path: Path) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, body = key.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {body}"


@pytest.mark.parametrize("case", ["unknown", "changed", "missing-file"])
def test_put_refuses_an_unpinned_host_key_before_sending_data(
    carrier: Carrier, tmp_path: Path, case: str
) -> None:
    known_hosts = tmp_path / "known_hosts"
    port = carrier.server.port
    if case == "unknown":
        # A pin for some other server only.
        known_hosts.write_text(f"[127.0.0.1]:{port + 1} {other_host_key(tmp_path)}\n")
    elif case == "changed":
        # The server's entry, but the key differs (a MITM or a reinstalled host).
        known_hosts.write_text(f"[127.0.0.1]:{port} {other_host_key(tmp_path)}\n")
    carrier.write_config(known_hosts=str(known_hosts))

    result = carrier.run("put", "secret", data=b"x" * 100_000)

    assert result.returncode == 77
    assert b"host key" in result.stderr and str(known_hosts).encode() in result.stderr
    assert_one_safe_line(result.stderr)
    assert failed_exit(result.stdout) == 77
    assert stored_files(carrier.account) == []


def test_config_cannot_switch_host_key_checking_off(carrier: Carrier) -> None:
    carrier.write_config(known_hosts=None)
    result = carrier.run("put", "b", data=b"x")
    assert result.returncode == 78
    assert b"known_hosts" in result.stderr
    assert stored_files(carrier.account) == []


@pytest.mark.offline  # reaches no sshd: needs no account
def test_closed_port_is_a_temporary_failure(carrier: Carrier) -> None:
    carrier.write_config(port=free_port())
    started = time.monotonic()
    result = carrier.run("info")
    assert result.returncode == 75
    assert time.monotonic() - started < 5
    assert_one_safe_line(result.stderr)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.offline  # reaches no sshd: needs no account
def test_silent_server_times_out_within_the_connect_timeout(
    carrier: Carrier, silent_listener: int
) -> None:
    # resume_window 0: this is about one attempt's bound (a put tries again
    # within resume_window; tests/carrier_vm/test_commit_lost.py drills that).
    carrier.write_config(port=silent_listener, connect_timeout=2, resume_window=0)
    started = time.monotonic()
    result = carrier.run("put", "b", data=b"x" * 1000, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 75
    assert elapsed < 2 + 6, elapsed
    assert b"within 2s" in result.stderr
    assert_one_safe_line(result.stderr)


def test_refused_login_exits_login_refused(carrier: Carrier, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    carrier.write_config(identity_file=str(stranger))
    result = carrier.run("info")
    assert result.returncode == CarrierExit.LOGIN_REFUSED
    assert b"authorized_keys" in result.stderr
    assert_one_safe_line(result.stderr)


@pytest.mark.parametrize("case", ["misconfigured", "host-key", "login"])
def test_misconfiguration_host_key_and_login_have_distinct_exit_codes(
    carrier: Carrier, tmp_path: Path, case: str
) -> None:
    # dom0 tells the user which of three different things to fix: the
    # carrier's config file, the pinned host key, or the account's key.
    expected = {
        "misconfigured": CarrierExit.CONFIG,
        "host-key": CarrierExit.HOST_KEY,
        "login": CarrierExit.LOGIN_REFUSED,
    }[case]
    if case == "misconfigured":
        carrier.write_config(port="not-a-port")
    elif case == "host-key":
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{carrier.server.port} {other_host_key(tmp_path)}\n")
        carrier.write_config(known_hosts=str(known_hosts))
    else:
        stranger = tmp_path / "stranger_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True
        )
        carrier.write_config(identity_file=str(stranger))

    result = carrier.run("info")

    assert result.returncode == expected, result.stderr
    assert result.stdout == b""
    assert_one_safe_line(result.stderr)


def test_help_names_the_config_file_and_every_exit_code(carrier: Carrier) -> None:
    result = carrier.run("--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    assert "~/.config/qbackup/carrier.yaml" in text and "QBACKUP_CARRIER_CONFIG" in text
    for code in CarrierExit:
        assert f"{int(code):3d}  {code.meaning}\n" in text


def test_ssh_conn_supplies_user_and_host(carrier: Carrier) -> None:
    carrier.write_config(host="192.0.2.1", user="nobody-here")
    result = carrier.run("info", SSH_CONN=f"{carrier.account.name}@127.0.0.1")
    assert result.returncode == 0, result.stderr


def test_ssh_config_supplies_what_carrier_yaml_leaves_out(carrier: Carrier, tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host backup-alias\n"
        "    Hostname 127.0.0.1\n"
        f"    Port {carrier.server.port}\n"
        f"    User {carrier.account.name}\n"
        f"    IdentityFile {carrier.server.client_key}\n"
        # A hostile or careless ~/.ssh/config cannot unpin the host key.
        "    UserKnownHostsFile /dev/null\n"
    )
    carrier.config.write_text(
        f"host: backup-alias\nssh_config: {ssh_config}\nknown_hosts: {carrier.server.known_hosts}\n"
    )
    assert carrier.run("info").returncode == 0

    carrier.config.write_text(
        f"host: backup-alias\nssh_config: {ssh_config}\nknown_hosts: {tmp_path / 'empty'}\n"
    )
    (tmp_path / "empty").write_text("")
    assert carrier.run("info").returncode == 77
