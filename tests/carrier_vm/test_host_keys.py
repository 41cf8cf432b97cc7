"""The server's host key as the carrier judges it (carrier_vm/ssh.py). Threat:
someone between the carrier and the server presenting their own key. A key
that CHANGED (the host has another pinned) is an alarm showing both
fingerprints, with no command to re-pin; a host with none pinned is told to
verify the fingerprint out of band before pinning it. asyncssh reports both
alike (HostKeyNotVerifiable), in the venv's version as in Debian's 2.10."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qbackup_protocol.carrier_service import CarrierExit
from tests.carrier_vm.conftest import (
    INTERPRETERS,
    REPO,
    Carrier,
    assert_one_safe_line,
    stored_files,
)


def fingerprint_of(public_key: Path) -> bytes:
    """Return the SHA256 fingerprint `ssh-keygen -lf` prints for PUBLIC_KEY."""
    listing = subprocess.run(["ssh-keygen", "-lf", str(public_key)], capture_output=True,
                             check=True).stdout
    [line] = listing.splitlines()
    return line.split()[1]


def other_key(tmp_path: Path) -> Path:
    """Return the public half of a new ed25519 key: a key the server does not have."""
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub")


def pin(carrier: Carrier, tmp_path: Path, label: str, public_key: Path) -> Path:
    """Write a known_hosts pinning PUBLIC_KEY for LABEL and configure the carrier with it."""
    kind, body = public_key.read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{label} {kind} {body}\n")
    carrier.write_config(known_hosts=str(known_hosts))
    return known_hosts


@pytest.mark.parametrize("python", sorted(INTERPRETERS))
def test_a_changed_host_key_is_an_alarm_with_both_fingerprints(
    carrier: Carrier, tmp_path: Path, python: str
) -> None:
    carrier.argv0 = INTERPRETERS[python]
    pinned = other_key(tmp_path)
    known_hosts = pin(carrier, tmp_path, f"[127.0.0.1]:{carrier.server.port}", pinned)

    result = carrier.run("put", "secret", data=b"x" * 100_000)

    assert result.returncode == CarrierExit.HOST_KEY
    assert_one_safe_line(result.stderr)
    assert b"CHANGED" in result.stderr and str(known_hosts).encode() in result.stderr
    assert fingerprint_of(pinned) in result.stderr
    assert fingerprint_of(carrier.server.host_key.with_suffix(".pub")) in result.stderr
    # Never an invitation to pin whatever answers now.
    assert b"ssh-keyscan" not in result.stderr and b">>" not in result.stderr
    assert stored_files(carrier.account) == []


@pytest.mark.parametrize("python", sorted(INTERPRETERS))
def test_a_host_with_no_pinned_key_is_told_to_verify_before_pinning(
    carrier: Carrier, tmp_path: Path, python: str
) -> None:
    carrier.argv0 = INTERPRETERS[python]
    # A pin for some other server only.
    pin(carrier, tmp_path, f"[127.0.0.1]:{carrier.server.port + 1}", other_key(tmp_path))

    result = carrier.run("info")

    assert result.returncode == CarrierExit.HOST_KEY
    assert_one_safe_line(result.stderr)
    assert b"no host key of" in result.stderr and b"CHANGED" not in result.stderr
    # The fingerprint offered, to compare with the admin's.
    assert fingerprint_of(carrier.server.host_key.with_suffix(".pub")) in result.stderr
    assert b"out of band" in result.stderr and b"before pinning" in result.stderr
    assert b"ssh-keyscan" not in result.stderr


@pytest.mark.offline  # refused before any contact
def test_a_missing_known_hosts_is_told_to_verify_before_pinning(
    carrier: Carrier, tmp_path: Path
) -> None:
    carrier.write_config(known_hosts=str(tmp_path / "none"))
    result = carrier.run("info")
    assert result.returncode == CarrierExit.HOST_KEY
    assert_one_safe_line(result.stderr)
    assert b"does not exist" in result.stderr
    assert b"out of band" in result.stderr and b"before pinning" in result.stderr
    assert b"ssh-keyscan" not in result.stderr


def test_the_readme_verifies_the_fingerprint_before_pinning() -> None:
    # The step the refusals point to: the key scanned goes to a file of its
    # own, and into known_hosts only after its fingerprint was compared.
    readme = (REPO / "README.md").read_text()
    step = readme.split("Then pin the\nserver's host key", 1)[1].split("```sh\n", 1)[1]
    lines = step.split("```", 1)[0].splitlines()
    scan = next(number for number, line in enumerate(lines) if line.startswith("ssh-keyscan"))
    compare = next(number for number, line in enumerate(lines) if "ssh-keygen -lf" in line)
    append = next(number for number, line in enumerate(lines) if ">> ~/.ssh/known_hosts" in line)
    assert scan < compare < append
    assert ">>" not in lines[scan]
