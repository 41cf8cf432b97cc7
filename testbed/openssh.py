"""The one place that builds OpenSSH client command lines (ssh, scp, sftp) for
the test bed: key-only login with the identity given, the server's host key
pinned, no prompts, and no user or system ssh_config to change any of that."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Endpoint:
    """A server a client logs in to: port, client key, known_hosts with its pinned key."""

    port: int
    identity: Path
    known_hosts: Path
    host: str = "127.0.0.1"


def client_options(endpoint: Endpoint) -> list[str]:
    """Given an endpoint, return the options every client gets (all three
    programs take them alike; only the port flag differs)."""
    return [
        "-i",
        str(endpoint.identity),
        "-o",
        f"UserKnownHostsFile={endpoint.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        # The default post-quantum key exchange costs ~55 ms of CPU per
        # connection, a third of a login; the tests log in thousands of times
        # and test nothing about the key exchange (the carrier uses asyncssh).
        "-o",
        "KexAlgorithms=curve25519-sha256",
        "-F",
        "/dev/null",
    ]


def ssh_argv(endpoint: Endpoint, user: str, *extra: str) -> list[str]:
    """Return an ssh argv logging in as USER, EXTRA options last (append the command)."""
    return ["ssh", "-p", str(endpoint.port), *client_options(endpoint), *extra,
            f"{user}@{endpoint.host}"]


def scp_argv(endpoint: Endpoint, user: str, source: Path, target: str, *extra: str) -> list[str]:
    """Return an scp argv copying the local SOURCE to TARGET in USER's home."""
    return ["scp", "-P", str(endpoint.port), *client_options(endpoint), *extra, str(source),
            f"{user}@{endpoint.host}:{target}"]


def sftp_argv(endpoint: Endpoint, user: str, *extra: str) -> list[str]:
    """Return an sftp argv logging in as USER, EXTRA options last."""
    return ["sftp", "-P", str(endpoint.port), *client_options(endpoint), *extra,
            f"{user}@{endpoint.host}"]
