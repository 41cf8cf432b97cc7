"""The test bed's OpenSSH client command lines (testbed/openssh.py): every
client pins the host key and never prompts."""

from __future__ import annotations

from pathlib import Path

from testbed import openssh

ENDPOINT = openssh.Endpoint(port=2222, identity=Path("/k/id"), known_hosts=Path("/k/known"))


def test_every_client_pins_the_host_key_and_never_prompts() -> None:
    for argv in (
        openssh.ssh_argv(ENDPOINT, "u"),
        openssh.scp_argv(ENDPOINT, "u", Path("/src"), "dst"),
        openssh.sftp_argv(ENDPOINT, "u"),
    ):
        options = " ".join(argv)
        assert "-o UserKnownHostsFile=/k/known -o StrictHostKeyChecking=yes" in options
        assert "-o BatchMode=yes -o IdentitiesOnly=yes" in options
        assert "-i /k/id" in options and "-F /dev/null" in options
    assert openssh.ssh_argv(ENDPOINT, "u", "-tt")[-2:] == ["-tt", "u@127.0.0.1"]
    assert openssh.ssh_argv(ENDPOINT, "u")[1:3] == ["-p", "2222"]
    assert openssh.scp_argv(ENDPOINT, "u", Path("/src"), "dst", "-O")[1:3] == ["-P", "2222"]
    assert openssh.scp_argv(ENDPOINT, "u", Path("/src"), "dst", "-O")[-3:] == [
        "-O", "/src", "u@127.0.0.1:dst"]
    assert openssh.sftp_argv(ENDPOINT, "u", "-b", "f")[-3:] == ["-b", "f", "u@127.0.0.1"]
