"""A server name that does not resolve is the configuration's problem (exit
78, naming where the name was set), never "temporary, try again later"; a
DNS failure that IS temporary (no server answered: EAI_AGAIN) stays 75."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from carrier_vm.config import validate_config
from carrier_vm.errors import ConfigError, TemporaryFailure
from carrier_vm.ssh import connect, resolution_failure
from qbackup_protocol.carrier_service import CarrierExit
from tests.carrier_vm.conftest import INTERPRETERS, Carrier, assert_one_safe_line

NO_SUCH_HOST = "nosuch.invalid"  # RFC 6761: never exists


def failure(code: int) -> socket.gaierror:
    """Return getaddrinfo's failure with error CODE."""
    return socket.gaierror(code, "as getaddrinfo says it")


@pytest.mark.parametrize("code", [socket.EAI_NONAME, socket.EAI_NODATA])
def test_no_such_name_is_a_config_error_naming_the_file(code: int) -> None:
    config = validate_config({"host": NO_SUCH_HOST, "ssh_config": None}, "/c/carrier.yaml", None)
    error = resolution_failure(config, failure(code))
    assert isinstance(error, ConfigError) and error.exit_code == CarrierExit.CONFIG
    assert str(error) == f"host {NO_SUCH_HOST} does not resolve: check `host` in /c/carrier.yaml"


def test_no_such_name_from_ssh_conn_names_ssh_conn() -> None:
    config = validate_config({"ssh_config": None}, "/c/carrier.yaml", f"b@{NO_SUCH_HOST}")
    error = resolution_failure(config, failure(socket.EAI_NONAME))
    assert str(error) == f"host {NO_SUCH_HOST} does not resolve: check SSH_CONN"


@pytest.mark.parametrize("code", [socket.EAI_AGAIN, socket.EAI_FAIL])
def test_a_dns_server_not_answering_is_temporary(code: int) -> None:
    config = validate_config({"host": "backup.example.org"}, "/c/carrier.yaml", None)
    error = resolution_failure(config, failure(code))
    assert type(error) is TemporaryFailure and error.exit_code == CarrierExit.TEMPORARY


@pytest.mark.parametrize(("code", "kind"), [(socket.EAI_NONAME, ConfigError),
                                            (socket.EAI_AGAIN, TemporaryFailure)])
def test_connect_tells_the_two_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: type
) -> None:
    # asyncssh passes getaddrinfo's failure on as it came.
    async def no_answer(*args: Any, **kwargs: Any) -> Any:
        raise failure(code)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", no_answer)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = validate_config({"host": "backup.example.org", "known_hosts": str(known_hosts),
                              "ssh_config": None}, "/c/carrier.yaml", None)
    with pytest.raises(kind):
        asyncio.run(connect(config))


def resolver_says_no_such_name() -> bool:
    """Return whether this machine's resolver answers NO_SUCH_HOST with EAI_NONAME."""
    try:
        socket.getaddrinfo(NO_SUCH_HOST, 22)
    except socket.gaierror as error:
        return error.errno == socket.EAI_NONAME
    return False


@pytest.mark.offline  # resolves a name, reaches no sshd
@pytest.mark.skipif(not resolver_says_no_such_name(),
                    reason="this machine's resolver does not answer (EAI_AGAIN)")
@pytest.mark.parametrize("python", sorted(INTERPRETERS))
def test_put_does_not_retry_a_name_that_does_not_resolve(carrier: Carrier, python: str) -> None:
    # put tries a server it cannot reach again for resume_window (900 s by
    # default): a name that does not exist must end it at once.
    carrier.argv0 = INTERPRETERS[python]
    carrier.write_config(host=NO_SUCH_HOST)
    result = carrier.run("put", "b", data=b"x" * 1000, timeout=30)
    assert result.returncode == CarrierExit.CONFIG
    assert_one_safe_line(result.stderr)
    assert f"host {NO_SUCH_HOST} does not resolve: check `host` in {carrier.config}".encode() \
        in result.stderr
