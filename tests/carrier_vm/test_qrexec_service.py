"""qubes.BackupCarrier driven the way qrexec drives it: argument in $1 and
QREXEC_SERVICE_ARGUMENT, caller in QREXEC_REMOTE_DOMAIN, name on stdin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from qbackup_protocol.wire import PROTOCOL_VERSION
from tests.carrier_vm.conftest import REPO, SERVICE, Carrier, assert_one_safe_line, call_service


def test_service_is_executable_sh() -> None:
    assert os.access(SERVICE, os.X_OK)
    assert SERVICE.read_bytes().startswith(b"#!/bin/sh\n")


def test_service_answers_info_list_check_and_get(carrier: Carrier) -> None:
    data = os.urandom(300_000)
    assert carrier.run("put", "--commit", "host/2026-01-02", data=data).returncode == 0

    info = call_service(carrier, "info")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["protocol"] == PROTOCOL_VERSION

    listing = call_service(carrier, "list", b"host/\n")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == carrier.run("list", "host/").stdout
    everything = call_service(carrier, "list", b"")  # no line: no prefix
    assert everything.returncode == 0 and b'"count":1' in everything.stdout

    check = call_service(carrier, "check", b"host/2026-01-02\n")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["ok"] is True

    for _ in range(2):  # restore reads twice
        got = call_service(carrier, "get", b"host/2026-01-02\n")
        assert got.returncode == 0, got.stderr
        assert got.stdout == data


def test_service_logs_the_calling_domain(carrier: Carrier) -> None:
    result = call_service(carrier, "info", QBACKUP_CARRIER_LOG="info")
    assert result.returncode == 0
    assert b"qubes.BackupCarrier+info called by dom0" in result.stderr


@pytest.mark.offline  # reaches no sshd: needs no account
@pytest.mark.parametrize(
    ("argument", "stdin", "env_argument"),
    [
        ("put", b"name\n", None),  # backups arrive through qubes.Backup only
        ("", b"", None),
        ("frobnicate", b"", None),
        ("LIST", b"", None),
        ("list+x", b"", None),
        ("get", b"name\n", "info"),  # $1 and the environment disagree
        ("get", b"../etc/passwd\n", None),
        ("get", b".hidden\n", None),
        ("check", b"a\nb\n", None),  # exactly one line
        ("check", b"a" * 600 + b"\n", None),
        ("get", "caf\u00e9\n".encode(), None),
        ("get", b"", None),  # a name is required
        ("commit", b"", None),
        ("commit", b"../x\n", None),
        ("commit", b".x.pending\n", None),  # the staged file itself is never nameable
        ("commit", b"a\nb\n", None),
        ("list", b"../\n", None),
    ],
)
def test_service_refuses_bad_requests_without_contacting_the_server(
    carrier: Carrier,
    tripwire: socket.socket,
    argument: str,
    stdin: bytes,
    env_argument: str | None,
) -> None:
    result = call_service(carrier, argument, stdin, env_argument)
    assert result.returncode == 64, result.stderr
    assert result.stdout == b""
    assert_one_safe_line(result.stderr)
    with pytest.raises(BlockingIOError):
        tripwire.accept()  # nobody connected


@pytest.mark.parametrize("caller", ["sys-net", "untrusted", "dom0 ", "Dom0", "", None])
@pytest.mark.parametrize(
    ("argument", "stdin"),
    [("get", b"name\n"), ("commit", b"name\n"), ("list", b""), ("info", b""), ("abort", b"")],
)
def test_service_refuses_every_caller_but_dom0(
    carrier: Carrier,
    tripwire: socket.socket,
    argument: str,
    stdin: bytes,
    caller: str | None,
) -> None:
    # Threat: another VM calling the service (a policy edited by mistake):
    # it could read backups (get), publish an aborted upload (commit) or end
    # the running one (abort). Residual risk: none beyond dom0 itself.
    result = call_service(carrier, argument, stdin, caller=caller)
    assert result.returncode == 64, result.stderr
    assert result.stdout == b""
    assert b"dom0 only" in result.stderr
    assert_one_safe_line(result.stderr)
    with pytest.raises(BlockingIOError):
        tripwire.accept()  # nobody connected


def test_templatevm_install_runs_under_debian_python(carrier: Carrier, tmp_path: Path) -> None:
    """`make templatevm` into a temporary tree: the installed launcher (Debian's
    python3, asyncssh 2.10 from apt) and the installed service work."""
    root = tmp_path / "tvm"
    subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "templatevm",
            "DESTDIR=",
            f"LIBDIR={root}/lib",
            f"BINDIR={root}/bin",
            f"QUBES_RPC_DIR={root}/rpc",
        ],
        check=True,
    )
    launcher = root / "bin" / "qbackup-carrier"
    assert launcher.read_bytes().startswith(b"#!/usr/bin/python3\n")
    data = os.urandom(70_000)
    env = {**carrier.env(), "PATH": f"{root / 'bin'}:/usr/bin:/bin", "PYTHONPATH": ""}
    put = subprocess.run(
        [str(launcher), "put", "installed"],
        input=data,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert put.returncode == 0, put.stderr
    assert put.stderr == b""
    # What dom0 does once Qubes' backup succeeded: commit through the service.
    commit = subprocess.run(
        [str(root / "rpc" / "qubes.BackupCarrier"), "commit"],
        input=b"installed\n",
        capture_output=True,
        timeout=60,
        check=False,
        env={**env, "QREXEC_SERVICE_ARGUMENT": "commit", "QREXEC_REMOTE_DOMAIN": "dom0"},
    )
    assert commit.returncode == 0, commit.stderr
    assert json.loads(commit.stdout) == json.loads(put.stdout)
    got = subprocess.run(
        [str(root / "rpc" / "qubes.BackupCarrier"), "get"],
        input=b"installed\n",
        capture_output=True,
        timeout=60,
        check=False,
        env={**env, "QREXEC_SERVICE_ARGUMENT": "get", "QREXEC_REMOTE_DOMAIN": "dom0"},
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout == data
